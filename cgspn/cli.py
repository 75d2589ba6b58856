"""The `cgspn` command: one entry point whose subcommands live in their own modules.

Each subcommand's module is imported only when it runs, so `cgspn kernels-info` stays fast and
heavy optional dependencies (open_clip, accelerate launchers) load only where needed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("cgspn.demo.cli", "offline end-to-end demo: teacher, conversion, distillation, evaluation"),
    "convert": ("cgspn.conversion.cli", "initialize a C-GSPN student from an OpenCLIP or transformers teacher"),
    "train": ("cgspn.training.cli", "distillation: stage1, stage2, curriculum (runs under accelerate launch)"),
    "eval": ("cgspn.evaluation.cli", "zero-shot classification and segmentation evaluation"),
    "kernels-info": ("cgspn.cli", "list the propagation backends available on this machine"),
}


def kernels_info(argv: list[str] | None = None) -> int:
    """Print the propagation backends that load here, per device type."""
    import torch

    from .propagation import ENV_VAR, available_backends

    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"{device}: {', '.join(available_backends(device))} (auto picks the first)")
    print(f"Override with {ENV_VAR}=<hub|cuda|triton|torch> or config.propagation_backend.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="cgspn", description="C-GSPN vision backbones for Hugging Face.")
    parser.add_argument("command", choices=SUBCOMMANDS, help=" | ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the subcommand (see `cgspn CMD -h`)")
    parsed = parser.parse_args(argv[:1])
    rest = argv[1:]
    if parsed.command == "kernels-info":
        return kernels_info(rest)
    module = importlib.import_module(SUBCOMMANDS[parsed.command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
