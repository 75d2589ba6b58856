"""``cgspn-eval``: zero-shot classification and semantic segmentation evaluation from the command line.

Examples::

    cgspn-eval zero-shot --model out/student --data out/data --split test
    cgspn-eval zero-shot --model out/student --data /data/imagenet --split validation \\
        --class-names classnames.txt --templates-file templates.txt --output results.json
    cgspn-eval segmentation --model out/seg --data /data/ade20k --split validation --reduce-labels

Results are printed as JSON and, with ``--output``, written to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..data import DEFAULT_TEMPLATES, image_processor_of, load_image_dataset, load_processor, read_dataset_metadata


def _read_list(value: str | None) -> list[str] | None:
    """A list from a file (JSON list, or one item per line) or from a comma-separated string."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        text = path.read_text()
        if path.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(f"{path} must contain a JSON list")
            return [str(item) for item in items]
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_common(parser: argparse.ArgumentParser, default_split: str, default_batch: int) -> None:
    parser.add_argument("--model", required=True, help="saved model folder (or hub id)")
    parser.add_argument("--data", required=True, help="saved dataset folder, image folder, data file or hub id")
    parser.add_argument("--split", default=default_split)
    parser.add_argument("--data-config", default=None, help="dataset configuration name")
    parser.add_argument("--streaming", action="store_true", help="stream the dataset")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--batch-size", type=int, default=default_batch)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--output", default=None, help="write the JSON results here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgspn-eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    zero_shot = commands.add_parser("zero-shot", help="zero-shot classification top-1/top-5 accuracy")
    _add_common(zero_shot, "test", 64)
    zero_shot.add_argument("--label-column", default="label")
    zero_shot.add_argument(
        "--class-names", default=None, help="comma-separated names or a file (one per line or JSON list)"
    )
    zero_shot.add_argument("--templates", nargs="+", default=None, help="prompt templates, each with one '{}'")
    zero_shot.add_argument("--templates-file", default=None, help="templates file (one per line or JSON list)")
    zero_shot.add_argument("--top-k", type=int, nargs="+", default=[1, 5])

    segmentation = commands.add_parser("segmentation", help="semantic segmentation mIoU")
    _add_common(segmentation, "validation", 8)
    segmentation.add_argument("--mask-column", default=None, help="default: the other image column")
    segmentation.add_argument("--ignore-index", type=int, default=255)
    segmentation.add_argument("--reduce-labels", action="store_true", help="ADE20K: label 0 is ignored, rest -1")
    segmentation.add_argument("--num-labels", type=int, default=None, help="default: model.config.num_labels")
    return parser


def _device(name: str | None):
    import torch

    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_processor(model_path: str, trust_remote_code: bool):
    """The model folder's processor (`cgspn.data.load_processor`); zero-shot needs its image processor and tokenizer."""
    processor = load_processor(model_path, trust_remote_code=trust_remote_code)
    missing = ["image processor"] if image_processor_of(processor) is None else []
    missing += ["tokenizer"] if getattr(processor, "tokenizer", None) is None else []
    if missing:
        raise ValueError(
            f"{model_path} ships no {' and no '.join(missing)}: zero-shot evaluation needs a dual encoder saved with "
            "its processor (image processor + tokenizer)"
        )
    return processor


def _check_model(model: str) -> None:
    """A model given as a path must exist (otherwise transformers reports a confusing repo-id error)."""
    if Path(model).exists():
        if not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"{model} has no config.json: not a saved model folder")
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"model folder {model} does not exist")


def _check_dual_encoder(model: str, trust_remote_code: bool) -> None:
    """Zero-shot needs a text tower: say so for a vision-only folder (the tokenizer lookup blames sentencepiece)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    if getattr(config, "text_config", None) is None:
        raise ValueError(
            f"{model} holds a vision-only model ({config.model_type}); zero-shot classification needs a dual encoder "
            "with a text tower and its tokenizer, e.g. a folder written by `cgspn convert` from a CLIP/SigLIP teacher"
        )


def run_zero_shot(args: argparse.Namespace) -> dict:
    """Load model, processor and data as described by parsed CLI arguments and run `evaluate_zero_shot`."""
    from transformers import AutoModel

    import cgspn  # noqa: F401  (registers the C-GSPN classes with the Auto classes)

    from .zero_shot import evaluate_zero_shot

    _check_model(args.model)
    _check_dual_encoder(args.model, args.trust_remote_code)
    metadata = read_dataset_metadata(args.data) or {}
    class_names = _read_list(args.class_names) or metadata.get("class_names")
    templates = args.templates or _read_list(args.templates_file) or metadata.get("templates") or DEFAULT_TEMPLATES
    dataset = load_image_dataset(args.data, args.split, args.data_config, args.streaming)
    device = _device(args.device)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).to(device).eval()
    processor = _load_processor(args.model, args.trust_remote_code)
    results = evaluate_zero_shot(
        model,
        processor,
        dataset,
        class_names=class_names,
        templates=templates,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        top_k=args.top_k,
        device=device,
        max_examples=args.max_examples,
        progress=not args.no_progress,
    )
    return {"task": "zero-shot", "model": str(args.model), "data": str(args.data), "split": args.split, **results}


def run_segmentation(args: argparse.Namespace) -> dict:
    """Load model, image processor and data as described by parsed CLI arguments and run `evaluate_segmentation`."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import cgspn  # noqa: F401  (registers the C-GSPN classes with the Auto classes)

    from .segmentation import evaluate_segmentation

    _check_model(args.model)
    dataset = load_image_dataset(args.data, args.split, args.data_config, args.streaming)
    device = _device(args.device)
    model = AutoModelForSemanticSegmentation.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = model.to(device).eval()
    image_processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    results = evaluate_segmentation(
        model,
        image_processor,
        dataset,
        image_column=args.image_column,
        mask_column=args.mask_column,
        num_labels=args.num_labels,
        ignore_index=args.ignore_index,
        reduce_labels=args.reduce_labels,
        batch_size=args.batch_size,
        device=device,
        max_examples=args.max_examples,
        progress=not args.no_progress,
    )
    return {"task": "segmentation", "model": str(args.model), "data": str(args.data), "split": args.split, **results}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cgspn-eval``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    runner = run_zero_shot if args.command == "zero-shot" else run_segmentation
    try:
        results = runner(args)
    except (ValueError, OSError, ImportError) as error:  # OSError: missing files, models or offline hub access
        print(f"cgspn-eval: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
