"""``cgspn convert`` (``cgspn-convert``): command-line front end of `cgspn.conversion.convert`.

```
cgspn-convert --teacher open_clip:ViT-SO400M-14-SigLIP-384:webli --out cgspn-so400m
cgspn-convert --teacher hf:google/siglip-base-patch16-224 --out cgspn-b16 --attention-layers 5,11
```

Exits 1 when a verification check fails (the folder is written but does not match the teacher), 2 when the output
folder is not empty and ``--overwrite`` is not given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import ALL_LAYERS, parse_attention_layers
from .convert import check_output_dir, convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgspn-convert", description="Convert an OpenCLIP / SigLIP / CLIP ViT teacher into a C-GSPN model folder."
    )
    parser.add_argument(
        "--teacher",
        required=True,
        help="open_clip:<name>[:<pretrained>] or hf:<repo-or-folder> (a plain folder path works too)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--propagation-channels", type=int, default=None, help="Cc (default: hidden_size // 18)")
    parser.add_argument(
        "--attention-layers",
        default=None,
        help="comma-separated blocks that keep attention (negative counts from the end), or 'all'",
    )
    parser.add_argument(
        "--keep-position-embeddings", action="store_true", help="keep the teacher's absolute position embeddings"
    )
    parser.add_argument("--vision-only", action="store_true", help="convert only the image tower")
    parser.add_argument("--atol", type=float, default=1e-5, help="embedding parity tolerance (relative to max(1, |x|))")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out when it already holds a model (deleted as a whole)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0: converted and verified, 1: a check failed, 2: the output
    folder may not be written)."""
    args = build_parser().parse_args(argv)
    if args.attention_layers not in (None, ALL_LAYERS):
        parse_attention_layers(args.attention_layers, 10**9)  # syntax check before loading the teacher
    try:
        check_output_dir(args.out, args.overwrite)  # before loading the teacher
    except (FileExistsError, ValueError) as error:
        print(f"cgspn-convert: error: {error}", file=sys.stderr)
        return 2
    report = convert(
        args.teacher,
        args.out,
        propagation_channels=args.propagation_channels,
        attention_layers=args.attention_layers,
        keep_position_embeddings=args.keep_position_embeddings,
        vision_only=args.vision_only,
        atol=args.atol,
        overwrite=args.overwrite,
    )
    print(f"Converted {report.spec.description} -> {report.out}")
    for note in report.spec.notes:
        print(f"note: {note}")
    for check in report.checks:
        print(check)
    if not report.passed:
        print("Verification FAILED: the folder was written but does not match the teacher", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
