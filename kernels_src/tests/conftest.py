"""The kernel package's tests: without CUDA the Triton variant runs under Triton's CPU interpreter."""

import os

import torch

if not torch.cuda.is_available():  # must precede the first import of triton (decoration time)
    os.environ.setdefault("TRITON_INTERPRET", "1")
