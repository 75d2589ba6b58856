"""Run one propagate forward (and backward) a few times, for ``ncu`` to profile.

Usage: ``ncu -k regex:propagate python benchmarks/profile_propagation.py --backend cuda --grid 147``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH

from cgspn.propagation import load_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--grid", type=int, default=147)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()
    fn = load_backend(args.backend)
    shape = (args.batch, args.grid, args.grid, args.channels)
    z = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=args.backward)
    g = (2 * torch.randn(*shape[:3], 20 * args.channels, device="cuda", dtype=torch.bfloat16)).requires_grad_(
        args.backward
    )
    for _ in range(3):
        y = fn(z, g)
        if args.backward:
            y.backward(torch.ones_like(y))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
