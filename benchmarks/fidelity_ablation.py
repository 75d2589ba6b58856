"""The ablation that chose the default distillation recipe (README "Fidelity"): one teacher, one variant per run.

Runs stage 1 and a stage-2 variant through the library (``distill_stage1`` / ``DistillationTrainer``) on the teachers
that ``fidelity_setup.py`` trains, and prints one JSON line: zero-shot top-1/top-5 and 10-NN top-1 of teacher and
student (after conversion, stage 1 and stage 2) on the digits' test split. Stage-2 variants:

* ``paper``: the SPEC's PP/PB taps through MLP adaptors every ``--every`` blocks (``distill_stage2``, paper recipe);
* ``out_pool``: the student's final tokens and pooled embedding (what became the ``"cgspn"`` recipe);
* ``taps_out_pool``: both; ``alltaps_out_pool``: direct (adaptor-free) PP/PB taps at every block + output;
* ``--aug``: random resized crops and flips of the distillation images.

    python benchmarks/fidelity_ablation.py --root outputs/fidelity/cpu --size cpu --kind clip --variant out_pool

Results of the device run (one run per row, seed 0; teachers of ``fidelity_setup.SIZES`` at 1200 x 64 (cpu) and
3000 x 128 (gpu) steps; relative errors then normalized over the batch, the library now per example):
``benchmarks/results/fidelity_ablation_h200.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity_setup as setup

from cgspn.conversion import build_model, load_teacher, resolve_teacher
from cgspn.evaluation.zero_shot import zero_shot_classifier
from cgspn.taps import FeatureTaps
from cgspn.tokenization import build_processor
from cgspn.training import DistillationTrainer, TrainingArguments, distill_stage1, distill_stage2
from cgspn.training.losses import output_loss, relative_mse
from cgspn.training.stages import FeatureTask


class Images(torch.utils.data.Dataset):
    """Pixel values, optionally with a random resized crop (scale 0.6-1) and a horizontal flip."""

    def __init__(self, pixel_values: torch.Tensor, augment: bool):
        self.pixel_values, self.augment = pixel_values, augment

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.pixel_values[index]
        if self.augment:
            n = x.shape[-1]
            k = max(4, round(n * math.sqrt(torch.empty(1).uniform_(0.6, 1.0).item())))
            i, j = (torch.randint(0, n - k + 1, (1,)).item() for _ in range(2))
            x = F.interpolate(x[None, :, i : i + k, j : j + k], size=(n, n), mode="bilinear", align_corners=False)[0]
            if torch.rand(1).item() < 0.5:
                x = x.flip(-1)
        return {"pixel_values": x}


class VariantTask(FeatureTask):
    """Stage 2 with the variant's loss: adaptor taps and/or direct taps at every block and/or the output loss."""

    def __init__(self, teacher, student, variant: str, every: int):
        super().__init__(teacher, student, distill_every=every, tap_weight=1.0, output_weight=1.0)
        self.variant = variant
        self.all_layers = list(range(len(self.teacher.encoder.layers)))

    def loss(self, module, pixel_values, step, autocast):
        direct = "alltaps" in self.variant
        layers = self.all_layers if direct else self.layers
        with autocast(), torch.no_grad(), FeatureTaps(self.teacher, layers, detach=True) as teacher_taps:
            target = self.teacher(pixel_values)
        with FeatureTaps(module.student, layers) as taps:
            output = module.student(pixel_values)
        total = 0.0
        if direct:
            for index in layers:
                for kind in ("pp", "pb"):
                    total = total + relative_mse(taps.records[index][kind], teacher_taps.records[index][kind])
            total = total / len(layers)
        elif "taps" in self.variant:
            total = total + module.criterion(taps.records, teacher_taps.records)[0]
        if "out" in self.variant:
            tokens, pooled = target.last_hidden_state, target.pooler_output
            total = total + output_loss(output.last_hidden_state, tokens, output.pooler_output, pooled)[0]
        return total, {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with data/ and teacher_<kind>/")
    parser.add_argument("--size", choices=sorted(setup.SIZES), default="cpu")
    parser.add_argument("--kind", choices=setup.TEACHER_KINDS, default="siglip")
    parser.add_argument("--variant", default="out_pool")
    parser.add_argument("--cc", type=int, help="propagation channels (default: width // 18)")
    parser.add_argument("--s1", type=int, default=300, help="stage-1 steps")
    parser.add_argument("--s2", type=int, default=600, help="stage-2 steps")
    parser.add_argument("--lr1", type=float, default=2e-3)
    parser.add_argument("--lr2", type=float, default=1e-3)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--every", type=int, default=2, help="tap every N blocks (paper taps)")
    parser.add_argument("--aug", action="store_true")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = args.root / f"teacher_{args.kind}"
    spec = f"open_clip:local-dir:{folder}" if args.kind == "mean" else f"hf:{folder}"
    torch.manual_seed(0)
    teacher = load_teacher(spec)
    student = build_model(resolve_teacher(spec), propagation_channels=args.cc).model
    size = setup.SIZES[args.size]
    tokenizer = setup.teacher_tokenizer(args.kind)
    processor = build_processor(tokenizer, image_size=size.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits = {split: setup.load_split(args.root / "data", split) for split in ("train", "test")}
    pixels = {split: processor.image_processor(images, return_tensors="pt")["pixel_values"]
              for split, (images, _) in splits.items()}  # fmt: skip
    labels = {split: torch.tensor(values) for split, (_, values) in splits.items()}

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        model.eval().to(device)
        classes = zero_shot_classifier(model, tokenizer, list(setup.CLASS_NAMES), setup.TEMPLATES, device=device)

        def embed(x):
            chunks = [model.get_image_features(pixel_values=x[i : i + 256].to(device)).pooler_output
                      for i in range(0, len(x), 256)]  # fmt: skip
            return F.normalize(torch.cat(chunks).float(), dim=-1)

        test, train = embed(pixels["test"]), embed(pixels["train"])
        logits = test @ classes.T
        truth = labels["test"].to(device)
        votes = F.one_hot(labels["train"].to(device)[(test @ train.T).topk(10, -1).indices], 10).sum(1)
        return {
            "top1": (logits.argmax(-1) == truth).float().mean().item(),
            "top5": (logits.topk(5, -1).indices == truth[:, None]).any(-1).float().mean().item(),
            "knn10": (votes.argmax(-1) == truth).float().mean().item(),
        }

    def training_args(steps: int, learning_rate: float) -> TrainingArguments:
        return TrainingArguments(output_dir="/tmp/fidelity_ablation", max_steps=steps, per_device_batch_size=args.bs,
                                 learning_rate=learning_rate, save_outputs=False, report_to="none",
                                 logging_steps=10**9, cpu=device == "cpu")  # fmt: skip

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher": evaluate(teacher)}
    teacher.cpu()
    result["convert"] = evaluate(student)
    dataset = Images(pixels["train"], args.aug)
    start = time.perf_counter()
    if args.s1:
        distill_stage1(teacher, student, dataset, training_args(args.s1, args.lr1))
        result["stage1"] = evaluate(student)
    if args.s2:
        stage2_args = training_args(args.s2, args.lr2)
        if args.variant == "paper":
            distill_stage2(
                teacher, student, dataset, stage2_args, distill_every=args.every, tap_weight=1, output_weight=0
            )
        else:
            DistillationTrainer(VariantTask(teacher, student, args.variant, args.every), dataset, stage2_args).train()
        result["stage2"] = evaluate(student)
    result["time_s"] = time.perf_counter() - start
    final = result.get("stage2", result.get("stage1", result["convert"]))
    result["ratio"] = final["top1"] / result["teacher"]["top1"]
    print("RESULT", json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
