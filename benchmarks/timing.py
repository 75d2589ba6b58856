"""One timer for the benchmarks: the median of repeated calls, device time on CUDA, wall time elsewhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], object], device: torch.device, min_reps: int = 5, budget_s: float = 1.0, max_reps: int = 100
) -> float:
    """Median time of ``fn`` in ms after two warm-up calls: CUDA events around each call on a CUDA device (the
    GPU's time, launch gaps included), the synchronized wall clock elsewhere. Repeats at least ``min_reps`` times and
    until ``budget_s`` seconds are spent, at most ``max_reps`` times."""
    for _ in range(2):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < 1e3 * budget_s and len(times) < max_reps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)
