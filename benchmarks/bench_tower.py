"""Whole vision towers as users run them: ``CGSPNVisionModel`` against transformers' ``SiglipVisionModel``.

Both towers are the libraries' own classes in the SO400M shape (width 1152, 27 layers, 16 heads, MLP 4304,
patch 14, MAP head), bf16, ``attn_implementation="sdpa"``; the C-GSPN tower once hybrid (attention kept at
blocks 8, 17, 26, as the paper's student) and once all propagation. For each resolution and batch (issue 14:
378 px B=32, 518 B=16, 1036 B=4, 2058 B=1) it times, in one process:

- inference: ``model(pixel_values)`` under ``torch.inference_mode()``;
- a training step: forward, a loss on the pooled output, backward, AdamW step;
- SigLIP twice: as shipped, and with contiguous embeddings (its residual stream otherwise keeps the patch
  convolution's transposed strides); speed-ups are given against both;
- where each tower's time goes: one profiled forward and one profiled training step, device time by kernel category
  (matmul, attention, propagation, norm, elementwise/copy, conv, other), and the bound it sets: the
  SigLIP tower's time over the C-GSPN tower's matmul time (the speed-up if everything but the matmuls
  were free);
- optionally (``--memory``) the peak memory of a C-GSPN training step at 2058 px, B=32, with gradient
  checkpointing (does it fit one 80 GB GPU?).

Writes one JSON file (device, versions, shapes, times in ms, ratios, the attention kernels each tower ran, the
issue's targets and whether each is met) and prints a table. ``--compile`` runs the C-GSPN towers' layers under
``torch.compile`` (regional compilation; SigLIP both eager, as shipped, and compiled alike); ``--towers`` picks the
C-GSPN towers, among them ``hybrid_cudnn``: the hybrid tower with cuDNN first in sdpa's backend order (eager only).
``--smoke`` runs a tiny shape on any device (the test suite runs it on CPU).

Usage: ``python benchmarks/bench_tower.py [--out benchmarks/results/tower_h100.json] [--memory] [--compile]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # after PYTHONPATH: an installed cgspn wins

from machine import machine_facts  # noqa: E402
from timing import median_ms, synchronize  # noqa: E402

from cgspn import CGSPNVisionConfig, CGSPNVisionModel  # noqa: E402
from cgspn.modeling_cgspn import CGSPNLayer  # noqa: E402


@dataclass(frozen=True)
class TowerShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    hybrid_layers: tuple[int, ...]


SO400M = TowerShape(1152, 4304, 27, 16, 14, (8, 17, 26))


class CGSPNTower(NamedTuple):
    keeps_attention: bool  # at the shape's hybrid layers, else propagation everywhere
    sdpa_first: SDPBackend | None = None  # put first in sdpa's backend order (eager only), else torch's own order


CGSPN_TOWERS = {
    "hybrid": CGSPNTower(keeps_attention=True),
    "all_propagation": CGSPNTower(keeps_attention=False),
    "hybrid_cudnn": CGSPNTower(keeps_attention=True, sdpa_first=SDPBackend.CUDNN_ATTENTION),
}
DEFAULT_TOWERS = ("hybrid", "all_propagation")
# torch's default sdpa order; a tower's backend goes before it (the rest stay as fallbacks for unsupported shapes)
SDPA_ORDER = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION)
TINY = TowerShape(64, 128, 4, 4, 4, (2,))
# (resolution, batch) of issue 14's measurements; the smoke run's one shape
SHAPES = ((378, 32), (518, 16), (1036, 4), (2058, 1))
SMOKE_SHAPES = ((32, 2),)
# Issue 14's targets: SigLIP time / C-GSPN time, (tower, measurement) -> {resolution: at least}
TARGETS = {
    ("hybrid", "inference"): {378: 1.8, 1036: 2.5, 2058: 5.0},
    ("all_propagation", "inference"): {2058: 6.0},
    ("hybrid", "train_step"): {378: 2.0, 1036: 3.0},
}
# Kernel (device) or operator (CPU) names -> category, the first match wins.
CATEGORIES = (
    ("propagation", ("propagat", "merge_directions")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax", "mha")),  # cuDNN's sdpa kernels say "fprop" too
    ("conv", ("conv", "fprop", "nchw")),  # cuDNN's patch-embedding kernels (before "cutlass")
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "linear")),
    ("norm", ("layer_norm", "layernorm", "norm")),
    ("elementwise/copy", ("elementwise", "copy", "vectorized", "gelu", "tanh", "add", "mul", "cat", "reduce", "fill")),
)


def tower_shape_kwargs(shape: TowerShape, resolution: int) -> dict:
    """The config fields both libraries share, at ``resolution``."""
    return {
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "patch_size": shape.patch_size,
        "image_size": resolution,
    }


def cgspn_tower(shape: TowerShape, resolution: int, hybrid_layers: list[int]) -> CGSPNVisionModel:
    """A C-GSPN tower (MAP head, sdpa) that keeps attention at ``hybrid_layers``."""
    config = CGSPNVisionConfig(
        **tower_shape_kwargs(shape, resolution), attention_layer_indices=hybrid_layers, pooling="map"
    )
    return CGSPNVisionModel._from_config(config, attn_implementation="sdpa")


class SdpaBackendFirst(nn.Module):
    """``tower`` run with ``backend`` first in sdpa's priority order. Eager only: dynamo does not guard on that order,
    so a compiled layer would reuse a graph traced under another one. The backward keeps the forward's backend."""

    def __init__(self, tower: nn.Module, backend: SDPBackend):
        super().__init__()
        self.tower = tower
        self.order = [backend, *(other for other in SDPA_ORDER if other != backend)]

    def forward(self, pixel_values: torch.Tensor):
        with sdpa_kernel(self.order, set_priority=True):
            return self.tower(pixel_values)


def compile_layers(tower: nn.Module, backend: str) -> nn.Module:
    """Regional compilation (torch's recipe for repeated blocks): each encoder layer compiled in place. Identical
    layers reuse one compiled graph, so a 27-layer tower compiles in about the time of its one or two kinds of layer
    (whole-tower compiles of three towers did not fit a 10-minute device call); the patch embedding, final norm and
    head stay eager."""
    for module in tower.modules():
        if isinstance(module, (SiglipEncoderLayer, CGSPNLayer)):
            module.compile(backend=backend)
    return tower


def build_towers(
    shape: TowerShape,
    resolution: int,
    device: torch.device,
    dtype: torch.dtype,
    cgspn_towers: tuple[str, ...] = DEFAULT_TOWERS,
    compile_backend: str | None = None,
) -> dict[str, nn.Module]:
    """SigLIP as shipped, a second SigLIP baseline, and the C-GSPN towers at ``resolution`` on ``device`` in ``dtype``.

    Eager: the second baseline, ``siglip_contiguous``, is SigLIP with its embeddings made contiguous (a forward hook):
    transformers' ``SiglipVisionEmbeddings`` hands the encoder the convolution's transposed strides, which slow every
    residual add. With ``compile_backend`` the C-GSPN towers' layers run under ``torch.compile``
    (:func:`compile_layers`) and the second baseline is ``siglip_compiled``, compiled alike; ``siglip`` stays eager
    (issue 14's baseline). Speed-ups are reported against both.
    """
    siglip_config = SiglipVisionConfig(**tower_shape_kwargs(shape, resolution))
    siglip = SiglipVisionModel._from_config(siglip_config, attn_implementation="sdpa").to(device=device, dtype=dtype)
    towers: dict[str, nn.Module] = {"siglip": siglip}
    if compile_backend is None:
        towers["siglip_contiguous"] = copy.deepcopy(siglip)
        towers["siglip_contiguous"].embeddings.register_forward_hook(lambda module, args, output: output.contiguous())
    else:
        towers["siglip_compiled"] = compile_layers(copy.deepcopy(siglip), compile_backend)
    for name in cgspn_towers:
        keeps_attention, sdpa_first = CGSPN_TOWERS[name]
        hybrid_layers = list(shape.hybrid_layers) if keeps_attention else []
        tower = cgspn_tower(shape, resolution, hybrid_layers).to(device=device, dtype=dtype)
        if compile_backend is not None:
            tower = compile_layers(tower, compile_backend)
        towers[name] = tower if sdpa_first is None else SdpaBackendFirst(tower, sdpa_first)
    return towers


def training_step(tower: nn.Module, pixel_values: torch.Tensor) -> Callable[[], None]:
    """One optimizer step as a user's fine-tuning loop runs it (AdamW, loss on the pooled output)."""
    optimizer = torch.optim.AdamW(tower.parameters(), lr=1e-6)

    def step() -> None:
        loss = tower(pixel_values).pooler_output.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def category(name: str) -> str:
    lowered = name.lower()
    for label, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


def kernel_times(fn: Callable[[], object], device: torch.device) -> list[tuple[str, float]]:
    """(name, ms) of each kernel (device time) or, on CPU, operator (self time) in one call of ``fn``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        fn()
        synchronize(device)
    entries = profile.key_averages()
    if device.type == "cuda":  # kernels; operators (their device time) if the kernels are not listed apart
        kernels = [entry for entry in entries if entry.device_type == torch.autograd.DeviceType.CUDA]
        timed = [(entry.key, entry.self_device_time_total) for entry in kernels or entries]
    else:
        timed = [(entry.key, entry.self_cpu_time_total) for entry in entries]
    return [(name, micros / 1e3) for name, micros in timed]


def by_category(timed: list[tuple[str, float]]) -> dict[str, float]:
    """Summed ms by kernel category, largest first."""
    totals: dict[str, float] = {}
    for name, ms in timed:
        totals[category(name)] = totals.get(category(name), 0.0) + ms
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def bench_resolution(
    shape: TowerShape,
    resolution: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    budget_s: float,
    cgspn_towers: tuple[str, ...] = DEFAULT_TOWERS,
    compile_backend: str | None = None,
) -> dict:
    towers = build_towers(shape, resolution, device, dtype, cgspn_towers, compile_backend)
    pixel_values = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
    entry: dict = {"batch": batch, "grid": resolution // shape.patch_size, "towers": {}}
    for name, tower in towers.items():
        tower.eval()
        forward = partial(tower, pixel_values)
        with torch.inference_mode():
            inference = median_ms(forward, device, 3, budget_s)
            kernels = kernel_times(forward, device)
        tower.train()
        step = training_step(tower, pixel_values)
        train_step = median_ms(step, device, 2, budget_s)
        categories, train_categories = by_category(kernels), by_category(kernel_times(step, device))
        entry["towers"][name] = {
            "parameters_m": sum(p.numel() for p in tower.parameters()) / 1e6,
            "inference_ms": inference,
            "train_step_ms": train_step,
            "inference_ms_by_category": categories,
            "train_step_ms_by_category": train_categories,
            "attention_kernels": sorted({kernel for kernel, _ in kernels if category(kernel) == "attention"}),
        }
        print(
            f"{resolution:5d} B={batch:<3d} {name:17s} inference {inference:9.2f} ms  train step {train_step:9.2f} ms"
        )
        for label, split in (("inference", categories), ("train step", train_categories)):
            print(f"{'':10s}{label:>17s} " + "  ".join(f"{k} {v:.2f}" for k, v in split.items()), flush=True)
        attention = entry["towers"][name]["attention_kernels"]
        print(f"{'':10s}{'attention kernels':>17s} " + "  ".join(kernel[:60] for kernel in attention), flush=True)
    second_baseline = "siglip_contiguous" if compile_backend is None else "siglip_compiled"
    for name in cgspn_towers:
        tower = entry["towers"][name]
        matmul = tower["inference_ms_by_category"].get("matmul", 0.0)
        for baseline, suffix in (
            ("siglip", ""),
            (second_baseline, f"_vs_{second_baseline.removeprefix('siglip_')}_siglip"),
        ):
            reference = entry["towers"][baseline]
            tower[f"inference_speedup{suffix}"] = reference["inference_ms"] / tower["inference_ms"]
            tower[f"train_step_speedup{suffix}"] = reference["train_step_ms"] / tower["train_step_ms"]
        siglip_ms = entry["towers"]["siglip"]["inference_ms"]
        tower["inference_speedup_bound_by_matmuls"] = siglip_ms / matmul if matmul else None
    del towers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def training_peak_memory_gb(shape: TowerShape, resolution: int, batch: int, device: torch.device) -> dict:
    """Peak memory of one checkpointed bf16 training step of the hybrid C-GSPN tower (reserved memory decides the
    fit: that is what the allocator takes from the GPU); an out-of-memory error is recorded, not raised."""
    tower = cgspn_tower(shape, resolution, list(shape.hybrid_layers)).to(device=device, dtype=torch.bfloat16)
    tower.gradient_checkpointing_enable()
    tower.train()
    result: dict = {"resolution": resolution, "batch": batch, "gpu_memory_gb": torch.cuda.mem_get_info(device)[1] / 1e9}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        pixel_values = torch.randn(batch, 3, resolution, resolution, device=device, dtype=torch.bfloat16)
        start = time.perf_counter()
        training_step(tower, pixel_values)()
        synchronize(device)
        result["step_s"] = time.perf_counter() - start
    except torch.OutOfMemoryError as error:
        result["out_of_memory"] = str(error).splitlines()[0]
    result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    result["fits_80gb"] = "out_of_memory" not in result and result["peak_reserved_gb"] < 80
    return result


def check_targets(resolutions: dict) -> list[dict]:
    """Issue 14's tower targets at the measured resolutions: measured speed-up and whether it is met (a C-GSPN tower
    that puts an sdpa backend first is held to the targets of the tower it varies)."""
    rows = []
    for resolution, entry in resolutions.items():
        for tower in (name for name in entry["towers"] if name in CGSPN_TOWERS):
            base = "hybrid" if CGSPN_TOWERS[tower].keeps_attention else "all_propagation"
            for measurement in ("inference", "train_step"):
                goal = TARGETS.get((base, measurement), {}).get(int(resolution))
                if goal is None:
                    continue
                got = entry["towers"][tower][f"{measurement}_speedup"]
                rows.append(
                    {
                        "tower": tower,
                        "measurement": measurement,
                        "resolution": int(resolution),
                        "target": goal,
                        "measured": got,
                        "met": got >= goal,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tower.json")
    parser.add_argument("--smoke", action="store_true", help="a tiny tower at 32 px (any device, fp32 on CPU)")
    parser.add_argument("--memory", action="store_true", help="also the 2058 px B=32 checkpointed training step")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds of repetitions a measurement")
    parser.add_argument("--resolutions", type=int, nargs="+", help="a subset of 378 518 1036 2058")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the C-GSPN towers' layers (SigLIP timed eager as shipped and compiled alike)",
    )
    parser.add_argument(
        "--towers", nargs="+", choices=CGSPN_TOWERS, default=list(DEFAULT_TOWERS), help="the C-GSPN towers to time"
    )
    args = parser.parse_args(argv)
    eager_only = [name for name in args.towers if CGSPN_TOWERS[name].sdpa_first is not None]
    if args.compile and eager_only:
        parser.error(f"--towers {' '.join(eager_only)} is eager only: dynamo does not guard on sdpa's backend order")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape, shapes = (TINY, SMOKE_SHAPES) if args.smoke else (SO400M, SHAPES)
    if args.resolutions:
        unknown = set(args.resolutions) - {resolution for resolution, _ in shapes}
        if unknown:
            parser.error(f"--resolutions {sorted(unknown)}: choose from {[resolution for resolution, _ in shapes]}")
        shapes = tuple((resolution, batch) for resolution, batch in shapes if resolution in args.resolutions)
    torch.manual_seed(0)
    result: dict = {
        "benchmark": "tower",
        **machine_facts(),
        "dtype": str(dtype),
        "tower_shape": asdict(shape),
        "attn_implementation": "sdpa",
        "torch_compile_backend": args.compile,
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "resolutions": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Compiled layers share one code object: each kind of layer, mode and shape of every tower takes one of its cache
    # entries (6 in the smoke run, 9 with a second batch size; dynamo's default limit is 8, past which it would
    # silently run the remaining calls eager). The limit is raised, and a run that still hits it fails.
    compile_limits = torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True)
    with compile_limits if args.compile else contextlib.nullcontext():
        for resolution, batch in shapes:
            if args.compile:
                torch._dynamo.reset()  # each resolution's towers compile afresh
            result["resolutions"][str(resolution)] = bench_resolution(
                shape, resolution, batch, device, dtype, args.budget_s, tuple(args.towers), args.compile
            )
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # what is measured survives a later failure
    if args.memory and device.type == "cuda":
        result["training_memory"] = training_peak_memory_gb(shape, 2058, 32, device)
        print(f"training step 2058 px B=32, checkpointing: {json.dumps(result['training_memory'])}")
    result["targets"] = check_targets(result["resolutions"])
    for row in result["targets"]:
        print(
            f"target {row['tower']} {row['measurement']} @ {row['resolution']}: "
            f"{row['measured']:.2f}x (>= {row['target']}x: {'met' if row['met'] else 'MISSED'})"
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
