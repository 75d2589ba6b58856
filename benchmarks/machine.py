"""Facts about the machine a benchmark ran on, recorded in every results JSON."""

from __future__ import annotations

import os
import platform

import torch
import transformers


def machine_facts(**versions: str) -> dict:
    """Device name, CPU count and library versions (python, torch, transformers and any passed in)."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            **versions,
        },
    }
