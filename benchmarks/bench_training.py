"""Distillation training throughput and peak memory of a SO400M-shaped C-GSPN student (issue 7).

Trains with the real trainer (:class:`cgspn.training.DistillationTrainer`) on synthetic images:

- stage 1: sublayer-wise MSE of the 27 propagation layers against a random all-attention teacher;
- stage 2: end-to-end PP/PB distillation with adaptors at blocks 8, 17, 26;

both in bf16 autocast with gradient checkpointing, AdamW, batch 32 at 378 px (patch 14, 729 tokens) by default.
Reports steady-state images/s (steps after ``--skip`` warm-up steps), ms/step and peak CUDA memory per stage,
writes JSON to ``$OUT/bench_training.json`` (or ``--out``, default ``benchmarks/results/``) and prints a table.
No checkpoints or exports are written.

Usage::

    python benchmarks/bench_training.py [--steps 200] [--batch-size 32] [--stages stage1,stage2]
    python benchmarks/bench_training.py --tiny --steps 2      # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH

SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 378,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "patch_size": 8,
    "image_size": 32,
}


class SyntheticImages(Dataset):
    """``length`` items cycling through a fixed bank of random normalized images (no decoding cost)."""

    def __init__(self, image_size: int, length: int, bank: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(bank, 3, image_size, image_size, generator=generator).clamp_(-1, 1)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index % len(self.images)]}


def build_models(shape: dict, seed: int = 0):
    """A random all-attention teacher (position embeddings, MAP head) and its propagation student."""
    from cgspn import CGSPNVisionConfig, CGSPNVisionModel
    from cgspn.conversion import student_from_teacher

    torch.manual_seed(seed)
    config = CGSPNVisionConfig(
        **shape,
        attention_layer_indices=list(range(shape["num_hidden_layers"])),
        use_position_embeddings=True,
        attn_implementation="sdpa",
    )
    teacher = CGSPNVisionModel(config)
    return teacher, student_from_teacher(teacher)


def run_stage(stage: str, options: argparse.Namespace, shape: dict, device: str) -> dict:
    """Train one stage for ``options.steps`` steps; return throughput and memory numbers."""
    from cgspn.training import FeatureTask, SublayerTask, TrainingArguments
    from cgspn.training.trainer import DistillationTrainer

    teacher, student = build_models(shape, options.seed)
    if stage == "stage1":
        task = SublayerTask(teacher, student, gradient_checkpointing=options.gradient_checkpointing)
    else:
        every = options.distill_every or max(1, shape["num_hidden_layers"] // 3)
        task = FeatureTask(teacher, student, distill_every=every, seed=options.seed)
    cuda = device == "cuda"
    length = options.steps * options.batch_size + options.batch_size
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=options.steps,
            per_device_batch_size=options.batch_size,
            mixed_precision=options.mixed_precision if cuda else "no",
            gradient_checkpointing=options.gradient_checkpointing,
            learning_rate=options.learning_rate,
            logging_steps=max(1, options.steps // 10),
            report_to="none",
            save_outputs=False,
            cpu=not cuda,
            num_workers=options.num_workers,
            seed=options.seed,
        )
        trainer = DistillationTrainer(task, SyntheticImages(shape["image_size"], length), args)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    times = result.step_times
    skip = min(options.skip, max(0, len(times) - 2))
    measured = len(times) - skip
    steady = (times[-1] - (times[skip - 1] if skip else 0.0)) / max(measured, 1)
    trainable = sum(p.numel() for p in task.module.parameters() if p.requires_grad)
    return {
        "stage": stage,
        "steps": result.global_step,
        "measured_steps": measured,
        "batch_size": options.batch_size,
        "images_per_second": options.batch_size / steady,
        "ms_per_step": 1000 * steady,
        "images_per_second_all_steps": result.images_per_second,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "wall_seconds": wall,
        "trainable_parameters": trainable,
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per stage")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the steady-state numbers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, help="override the resolution (default 378)")
    parser.add_argument("--stages", default="stage1,stage2", help="comma-separated: stage1, stage2")
    parser.add_argument("--distill-every", type=int, help="default: a third of the depth (9 for 27 layers)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--backend", help="propagation backend (sets CGSPN_PROPAGATION_BACKEND)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny shape (CPU smoke test of this script)")
    parser.add_argument("--out", help="output JSON path (default $OUT/bench_training.json or benchmarks/results/)")
    options = parser.parse_args(argv)
    stages = [s.strip() for s in options.stages.split(",") if s.strip()]
    if not stages or any(s not in ("stage1", "stage2") for s in stages):
        parser.error(f"--stages must list stage1 and/or stage2, got {options.stages!r}")
    if options.steps < 1 or options.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    options.stages = stages
    return options


def output_path(options: argparse.Namespace) -> Path:
    if options.out:
        return Path(options.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "bench_training.json"
    name = "bench_training_tiny.json" if options.tiny else "bench_training.json"
    return Path(__file__).resolve().parent / "results" / name


def print_table(report: dict) -> None:
    print(f"\n{report['device']} | {report['shape_name']} | batch {report['options']['batch_size']}")
    print(f"{'stage':<8} {'steps':>6} {'img/s':>10} {'ms/step':>10} {'peak GiB':>9} {'loss first->last':>22}")
    for row in report["stages"]:
        if "error" in row:
            print(f"{row['stage']:<8} failed: {row['error'].splitlines()[-1][:90]}")
            continue
        memory = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "-"
        losses = f"{row['first_loss']:.4g} -> {row['last_loss']:.4g}"
        print(
            f"{row['stage']:<8} {row['steps']:>6} {row['images_per_second']:>10.1f} {row['ms_per_step']:>10.1f} "
            f"{memory:>9} {losses:>22}"
        )


def main(argv: list[str] | None = None) -> dict:
    options = parse_args(argv)
    if options.backend:
        os.environ["CGSPN_PROPAGATION_BACKEND"] = options.backend
    import transformers

    from cgspn.propagation import available_backends

    cuda = torch.cuda.is_available() and not options.tiny
    device = "cuda" if cuda else "cpu"
    shape = dict(TINY if options.tiny else SO400M)
    if options.image_size:
        shape["image_size"] = options.image_size
    if not cuda and not options.tiny:
        print("No CUDA device: running the full shape on CPU will be very slow (use --tiny for a smoke test)")
    report = {
        "benchmark": "bench_training",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "shape_name": "tiny" if options.tiny else "SO400M",
        "shape": shape,
        "options": {k: v for k, v in vars(options).items() if k != "out"},
        "propagation_backends": available_backends(device),
        "requested_backend": options.backend or os.environ.get("CGSPN_PROPAGATION_BACKEND", "auto"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version},
        "stages": [],
    }
    for stage in options.stages:
        print(f"== {stage}: {options.steps} steps, batch {options.batch_size}, {shape['image_size']} px", flush=True)
        try:
            report["stages"].append(run_stage(stage, options, shape, device))
        except Exception:  # keep going: a failed stage (e.g. out of memory) is reported, the next one still runs
            report["stages"].append({"stage": stage, "error": traceback.format_exc()})
            traceback.print_exc()
        if cuda:
            torch.cuda.empty_cache()
    path = output_path(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any("error" in row for row in result["stages"]) else 0)
