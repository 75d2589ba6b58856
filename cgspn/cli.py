"""The `cgspn` command: one entry point whose subcommands live in their own modules.

Each subcommand's module is imported only when it runs, so `cgspn kernels-info` stays fast and
heavy optional dependencies (open_clip, accelerate launchers) load only where needed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

SUBCOMMANDS = {
    "demo": ("cgspn.demo.cli", "offline end-to-end demo: teacher, conversion, distillation, evaluation"),
    "convert": ("cgspn.conversion.cli", "initialize a C-GSPN student from an OpenCLIP or transformers teacher"),
    "train": ("cgspn.training.cli", "distillation: stage1, stage2, curriculum (runs under accelerate launch)"),
    "eval": ("cgspn.evaluation.cli", "zero-shot classification and segmentation evaluation"),
    "kernels-info": ("cgspn.cli", "where each propagation backend comes from and whether it loads here [--json]"),
    "kernels": ("cgspn.cli", "`cgspn kernels build`: build the Triton and CUDA kernels into the user cache"),
}


def kernels_info(argv: list[str] | None = None) -> int:
    """Print, per backend, where it comes from and whether it loads here (``--json``: one JSON object)."""
    parser = argparse.ArgumentParser(prog="cgspn kernels-info", description=kernels_info.__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by backend name")
    args = parser.parse_args(argv)
    import torch

    from .kernel_loader import backend_info, user_kernel_repo
    from .propagation import ENV_VAR, available_backends

    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    for name, entry in info.items():
        status = "available" if entry["available"] else f"unavailable: {entry['reason']}"
        print(f"{name}: {entry['source']} ({status})")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"{device}: {', '.join(available_backends(device))} (auto picks the first)")
    print(f"Override with {ENV_VAR}=<hub|cuda|triton|torch>; `cgspn kernels build` builds into {user_kernel_repo()}")
    return 0


def kernels_command(argv: list[str] | None = None) -> int:
    """``cgspn kernels build``: build the kernel variants into the user cache, where the loader finds them."""
    parser = argparse.ArgumentParser(prog="cgspn kernels", description=kernels_command.__doc__)
    parser.add_argument("action", choices=["build"])
    parser.add_argument("--triton-only", action="store_true", help="only the Triton (torch-universal) variant")
    parser.add_argument("--archs", nargs="+", help="CUDA capabilities to compile for (default 8.0 9.0)")
    args = parser.parse_args(argv)
    from .kernel_loader import build_kernels

    for folder in build_kernels(cuda=not args.triton_only, archs=tuple(args.archs) if args.archs else None):
        print(f"built {folder}")
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
    if parsed.command == "kernels":
        return kernels_command(rest)
    module = importlib.import_module(SUBCOMMANDS[parsed.command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
