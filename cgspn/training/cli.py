"""``cgspn-train {stage1,stage2,curriculum}``: distillation from the command line (runs under ``accelerate launch``).

Examples:

```bash
cgspn-train stage1 --teacher open_clip:ViT-SO400M-14-SigLIP-384:webli --student out/converted \\
    --data /data/images --output-dir out/stage1 --batch-size 64 --max-steps 5000 --mixed-precision bf16
accelerate launch -m cgspn.training.cli stage2 --teacher out/teacher --student out/stage1 \\
    --data /data/shards --streaming --output-dir out/stage2 --config stage2.yaml
cgspn-train curriculum --student out/stage2 --data /data/images --output-dir out/hires \\
    --resolutions 378,518,756,1036 --max-steps 2000
```

``--config file.yaml|json`` supplies defaults for any flag (keys in ``snake_case`` or ``kebab-case``); flags given
on the command line win.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .defaults import RECIPE_NAMES
from .trainer import MIXED_PRECISION, SCHEDULERS, TrainingArguments

logger = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "curriculum")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in str(text).split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _add_common(parser: argparse.ArgumentParser, stage: str) -> None:
    models = parser.add_argument_group("models and data")
    models.add_argument("--config", help="YAML or JSON file of defaults for any of these flags")
    models.add_argument(
        "--teacher",
        required=stage != "curriculum",
        help="saved C-GSPN folder or any cgspn.conversion teacher spec (open_clip:NAME[:TAG], hf:REPO, folder)"
        + ("; curriculum: optional, trains the first resolution against it" if stage == "curriculum" else ""),
    )
    models.add_argument(
        "--student", help="saved C-GSPN student folder (default: built from the teacher as `cgspn convert` does)"
    )
    models.add_argument("--data", required=True, help="image folder, saved dataset, parquet/arrow/tar files, hub id")
    models.add_argument("--output-dir", required=True)
    models.add_argument("--split", default="train")
    models.add_argument("--dataset-config-name", help="configuration of a hub dataset")
    models.add_argument("--streaming", action="store_true", help="stream the dataset (IterableDataset)")
    models.add_argument("--shuffle-buffer", type=int, default=1000, help="shuffle buffer of streamed data")
    models.add_argument("--image-column", help="column holding the images (default: detected)")
    models.add_argument("--image-size", type=int, help="training resolution (default: the teacher's)")
    models.add_argument("--image-mean", type=_float_list, help="normalization mean (default: teacher processor)")
    models.add_argument("--image-std", type=_float_list, help="normalization std (default: teacher processor)")

    optim = parser.add_argument_group("optimization (unset: the default of the stage in --recipe)")
    optim.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        default="cgspn",
        help="cgspn: the measured best (output distillation, rates scaled to the width); paper: SPEC §4 as published",
    )
    optim.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (per curriculum phase)")
    optim.add_argument("--batch-size", type=int, default=32, dest="per_device_batch_size", help="per device")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument(
        "--learning-rate",
        type=float,
        help="cgspn: stage1 2e-3, stage2/curriculum 1e-3, times min(1, 256/width); paper: 4e-5 / 4e-4",
    )
    optim.add_argument("--lr-scheduler", choices=SCHEDULERS, help="stage1: linear, stage2/curriculum: cosine")
    optim.add_argument("--warmup-steps", type=int, help="stage1: 300, stage2: 10000 (at most max_steps/10)")
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--adam-beta1", type=float, default=0.9)
    optim.add_argument("--adam-beta2", type=float, default=0.999)
    optim.add_argument("--adam-epsilon", type=float, default=1e-8)
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    optim.add_argument("--gradient-checkpointing", action="store_true")
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    optim.add_argument("--cpu", action="store_true", help="train on CPU even where a GPU exists")

    run = parser.add_argument_group("checkpoints, logging, export")
    run.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    run.add_argument("--save-total-limit", type=int, default=3, help="checkpoints kept")
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--report-to", default="auto", help="'auto' (tensorboard if installed), 'none', or trackers")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    run.add_argument("--stop-after-steps", type=int, help="end this run after N steps (schedule of --max-steps)")
    run.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the exported student to this hub repo")
    run.add_argument("--hub-private", action="store_true")
    run.add_argument(
        "--hub-token",
        help="hub token; visible to other users of the machine in `ps`: prefer `hf auth login` or HF_TOKEN",
    )

    loss = parser.add_argument_group("stage options")
    if stage == "stage1":
        loss.add_argument("--train-layer-norm", action="store_true", help="also train LN1 of propagation layers")
        return
    loss.add_argument("--output-weight", type=float, help="weight of the output loss (cgspn: 1, paper: 0)")
    loss.add_argument("--tap-weight", type=float, help="weight of the PP/PB tap loss (cgspn: 0, paper: 1)")
    loss.add_argument("--distill-every", type=int, default=9, help="tap PP/PB every N blocks (paper: 9 of 27)")
    loss.add_argument("--kl-weight", type=float, default=7.0 / 3.0, help="lam of MSE + lam*KL (PP and PB)")
    loss.add_argument("--alpha", type=float, default=0.5, help="weight of the PP terms")
    loss.add_argument("--beta", type=float, default=0.5, help="weight of the PB terms")
    loss.add_argument(
        "--batch-resolutions", type=_int_list, help="multi-resolution sampling per batch, e.g. 378,448,518"
    )
    if stage == "curriculum":
        loss.add_argument("--resolutions", type=_int_list, default=[378, 518, 756, 1036])


def build_parser() -> argparse.ArgumentParser:
    """The ``cgspn-train`` parser; ``parser.stage_parsers`` maps each stage to its subparser."""
    parser = argparse.ArgumentParser(prog="cgspn-train", description="C-GSPN distillation (SPEC §4).")
    subparsers = parser.add_subparsers(dest="stage", required=True)
    helps = {
        "stage1": "sublayer-wise MSE of every propagation layer against the teacher's attention",
        "stage2": "end-to-end distillation of the student's output (--recipe paper: PP/PB taps through MLP adaptors)",
        "curriculum": "high-resolution curriculum: each phase distills from the previous one's student",
    }
    parser.stage_parsers = {}
    for stage in STAGES:
        parser.stage_parsers[stage] = subparsers.add_parser(stage, help=helps[stage], description=helps[stage])
        _add_common(parser.stage_parsers[stage], stage)
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Flag defaults from a YAML or JSON mapping (keys may use dashes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of flag names to values")
    return {key.replace("-", "_").lstrip("_"): value for key, value in values.items()}


def _apply_config(subparser: argparse.ArgumentParser, path: str) -> None:
    """Make the values of config file ``path`` the subparser's defaults (explicit flags still win)."""
    aliases = {"batch_size": "per_device_batch_size"}
    config = {aliases.get(key, key): value for key, value in load_config_file(path).items()}
    actions = {action.dest: action for action in subparser._actions}
    unknown = sorted(set(config) - set(actions))
    if unknown:
        subparser.error(f"unknown keys in {path}: {unknown}")
    for dest, value in config.items():
        action = actions[dest]
        if action.type is not None and isinstance(value, str):
            value = action.type(value)
        action.required = False
        subparser.set_defaults(**{dest: value})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (``STAGE [flags]``); values of ``--config`` become defaults that explicit flags override."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in STAGES:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        config = pre.parse_known_args(argv[1:])[0].config
        if config:
            _apply_config(parser.stage_parsers[argv[0]], config)
    return parser.parse_args(argv)


def training_arguments(namespace: argparse.Namespace) -> TrainingArguments:
    names = {f.name for f in fields(TrainingArguments)}
    values = {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}
    if values.get("max_grad_norm") == 0:
        values["max_grad_norm"] = None
    return TrainingArguments(**values)


def check_output_dir(namespace: argparse.Namespace) -> None:
    """Refuse an ``--output-dir`` that is the ``--teacher`` or ``--student`` folder: the export would replace the
    model that ``--resume`` needs to start from."""
    output_dir = Path(namespace.output_dir).resolve()
    for flag in ("teacher", "student"):
        source = getattr(namespace, flag)
        if source and Path(source).resolve() == output_dir:
            raise SystemExit(
                f"--output-dir {namespace.output_dir} is the --{flag} folder: the export would overwrite the {flag} "
                "that the run (and any --resume) starts from; choose another --output-dir"
            )


def run(namespace: argparse.Namespace) -> int:
    """Load models and data as the namespace says and run its stage."""
    from ..conversion import load_cgspn_model, load_teacher_and_processor, student_from_teacher
    from ..data import build_image_processor, load_image_dataset, load_processor, prepare_dataset, resized_processor
    from . import recipes

    args = training_arguments(namespace)
    args.validate()
    if args.hub_token:
        logger.warning(
            "--hub-token is visible to other users of this machine (e.g. in `ps`); prefer `hf auth login` or the "
            "HF_TOKEN environment variable"
        )
    check_output_dir(namespace)
    teacher, processor = load_teacher_and_processor(namespace.teacher) if namespace.teacher else (None, None)
    if namespace.student is not None:
        student = load_cgspn_model(namespace.student)
        processor = processor or load_processor(
            namespace.student
        )  # the teacher's preprocessing first: it sees the data
    elif teacher is not None:
        student = student_from_teacher(teacher)  # what `cgspn convert` with defaults builds
    else:
        raise SystemExit("cgspn-train curriculum: give --student (or --teacher to derive one)")
    student_tower = recipes.vision_tower(student)
    patch = student_tower.config.patch_size
    base_size = namespace.image_size or student_tower.config.image_size
    if base_size % patch:
        # e.g. SigLIP-384 at patch 14: train at 378, the largest multiple of the patch (as the paper does)
        print(
            f"Image size {base_size} is not a multiple of the patch size {patch}; using {base_size - base_size % patch}"
        )
        base_size -= base_size % patch
    if processor is None and (namespace.image_mean is None or namespace.image_std is None):
        raise SystemExit(
            "No image processor in the --student or --teacher (transformers' AutoProcessor/AutoImageProcessor found "
            "none): pass the teacher's normalization with --image-mean and --image-std (e.g. SigLIP 0.5,0.5,0.5; "
            "OpenAI CLIP 0.4815,0.4578,0.4082 / 0.2686,0.2613,0.2758), or a --student folder written by `cgspn convert`"
        )
    raw = load_image_dataset(namespace.data, namespace.split, namespace.streaming, namespace.dataset_config_name)

    def image_processor_at(size: int):
        return build_image_processor(processor, size, namespace.image_mean, namespace.image_std)

    def dataset_at(size: int):
        return prepare_dataset(
            raw, image_processor_at(size), size, namespace.image_column, args.seed, namespace.shuffle_buffer
        )

    # the export ships the processor the student was trained with (a complete, directly usable model folder)
    export_processor = resized_processor(processor, base_size, image_processor_at(base_size))
    if getattr(export_processor, "tokenizer", None) is None and hasattr(student, "text_model"):
        print("note: no tokenizer in the --student or --teacher: the export ships the image processor only")
    card_info = {"teacher": namespace.teacher, "student_init": namespace.student, "data": namespace.data}
    if namespace.stage == "stage1":
        result = recipes.distill_stage1(
            teacher,
            student,
            dataset_at(base_size),
            args,
            namespace.train_layer_norm,
            card_info=card_info,
            processor=export_processor,
        )
        results = [result]
    else:
        options = {
            "distill_every": namespace.distill_every,
            "kl_weight": namespace.kl_weight,
            "alpha": namespace.alpha,
            "beta": namespace.beta,
            "tap_weight": namespace.tap_weight,
            "output_weight": namespace.output_weight,
        }
        batch_resolutions = namespace.batch_resolutions
        if namespace.stage == "stage2":
            size = max([base_size, *(batch_resolutions or [])])
            result = recipes.distill_stage2(
                teacher,
                student,
                dataset_at(size),
                args,
                batch_resolutions=batch_resolutions,
                card_info=card_info,
                processor=export_processor,
                **options,
            )
            results = [result]
        else:
            results = recipes.distill_curriculum(
                teacher,
                student,
                dataset_at,
                args,
                resolutions=namespace.resolutions,
                batch_resolutions=batch_resolutions,
                card_info=card_info,
                processor=export_processor,
                **options,
            )
    if results and not results[-1].finished:
        print(f"Stopped at step {results[-1].global_step}; continue with --resume")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``cgspn-train``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
