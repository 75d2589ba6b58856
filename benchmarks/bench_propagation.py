"""C-GSPN propagation benchmarks on one GPU, every baseline measured in the same run (issue 4).

Measures for B=32, C=1152, Cc=64, bf16 and images of 378/518/1036/2058 px at patch 14
(grids 27, 37, 74, 147):

(a) the ``propagate`` op (each fast backend): forward (inference), forward in training mode
    (states kept), forward+backward; achieved bandwidth of the forward on the minimum traffic
    (read 21*Cc + write Cc values a position) against a device-to-device copy;
(b) the model's own layers: the C-GSPN propagation sublayer (``CGSPNPropagation``: down, heads,
    propagate, up) against transformers' ``SiglipAttention`` with sdpa (16 heads), forward;
(c) a C-GSPN block (``CGSPNLayer``) against transformers' ``SiglipEncoderLayer`` (sdpa, MLP 4304),
    forward and forward+backward;
(d) peak memory of forward+backward for the op and both blocks;
(e) the CUDA kernel under each launch-shape override (``CUDA_CONFIGS``), at B=32 and at the batch the tower
    benchmark uses at that resolution.

Whole towers (``CGSPNVisionModel`` against ``SiglipVisionModel``) are timed by ``bench_tower.py``.
Writes one JSON file (device, versions, shapes, times in ms, ratios) and prints a table.

Usage: ``python benchmarks/bench_propagation.py [--out benchmarks/results/propagation_h100.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # after PYTHONPATH: an installed cgspn wins

from bench_tower import SHAPES as TOWER_SHAPES  # noqa: E402
from timing import median_ms  # noqa: E402

from cgspn import CGSPNVisionConfig  # noqa: E402
from cgspn.modeling_cgspn import CGSPNLayer, CGSPNPropagation  # noqa: E402
from cgspn.propagation import available_backends, load_backend  # noqa: E402

PATCH = 14
RESOLUTIONS = (378, 518, 1036, 2058)
BATCH = 32
WIDTH = 1152
PROPAGATION_CHANNELS = 64
HEADS = 16
MLP_WIDTH = 4304
DTYPE = torch.bfloat16


def bench(fn: Callable[[], object], min_reps: int = 5, budget_s: float = 1.0) -> float:
    """Median device time (ms) of ``fn`` on the GPU."""
    return median_ms(fn, torch.device("cuda"), min_reps, budget_s)


def peak_memory_gb(fn: Callable[[], object]) -> float:
    """Peak allocated memory (GB) during ``fn`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def copy_bandwidth_gbs(nbytes: int = 2 * 1024**3) -> float:
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------
# The model's own layers (C-GSPN) and transformers' SigLIP layers (the attention baseline)
# ---------------------------------------------------------------------------------------------


def model_layers(backend: str, device: str = "cuda") -> dict[str, nn.Module]:
    """One-block configs of the benchmark's width: C-GSPN sublayer and block, SigLIP attention and block."""
    shape = {"hidden_size": WIDTH, "intermediate_size": MLP_WIDTH, "num_attention_heads": HEADS, "patch_size": PATCH}
    cgspn = CGSPNVisionConfig(
        **shape, num_hidden_layers=1, propagation_channels=PROPAGATION_CHANNELS, propagation_backend=backend
    )
    siglip = SiglipVisionConfig(**shape, num_hidden_layers=1)
    siglip._attn_implementation = "sdpa"
    layers = {
        "cgspn_sublayer": CGSPNPropagation(cgspn),
        "sdpa_sublayer": SiglipAttention(siglip),
        "cgspn_block": CGSPNLayer(cgspn, 0),
        "vit_block": SiglipEncoderLayer(siglip),
    }
    return {name: layer.to(device=device, dtype=DTYPE) for name, layer in layers.items()}


def run_layer(name: str, layer: nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
    """The layer's output tensor (C-GSPN layers take the grid; SigLIP's take an attention mask)."""
    out = layer(x, grid, grid) if name.startswith("cgspn") else layer(x, None)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def bench_op(backend: str, grid: int, copy_gbs: float) -> dict:
    fn = load_backend(backend)
    z = torch.randn(BATCH, grid, grid, PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    g = 2 * torch.randn(BATCH, grid, grid, 20 * PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    dy = torch.randn_like(z)
    zg, gg = z.clone().requires_grad_(), g.clone().requires_grad_()

    def forward() -> None:
        with torch.no_grad():
            fn(z, g)

    def train_forward() -> None:
        fn(zg, gg)

    def forward_backward() -> None:  # gradients returned, not accumulated into .grad (as inside a model)
        torch.autograd.grad(fn(zg, gg), (zg, gg), dy)

    fwd_ms = bench(forward)
    train_fwd_ms = bench(train_forward)
    fwd_bwd_ms = bench(forward_backward)
    min_bytes = BATCH * grid * grid * 22 * PROPAGATION_CHANNELS * z.element_size()
    gbs = min_bytes / (fwd_ms * 1e-3) / 1e9
    return {
        "fwd_ms": fwd_ms,
        "train_fwd_ms": train_fwd_ms,
        "fwd_bwd_ms": fwd_bwd_ms,
        "fwd_bwd_over_fwd": fwd_bwd_ms / fwd_ms,
        "fwd_min_bytes": min_bytes,
        "fwd_gbs": gbs,
        "fwd_fraction_of_copy": gbs / copy_gbs,
        "peak_mem_fwd_bwd_gb": peak_memory_gb(forward_backward),
    }


def bench_triton_configs(grid: int) -> dict:
    """Forward time (ms) of the Triton kernel for a few (BLOCK_M, BLOCK_C, num_warps) choices."""
    from cgspn.kernel_loader import load_build, universal_build

    launch = load_build(universal_build(), "triton")._triton
    _propagate_fwd, launch_config = launch._propagate_fwd, launch.launch_config
    z = torch.randn(BATCH, grid, grid, PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    g = 2 * torch.randn(BATCH, grid, grid, 20 * PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    results = {"default": "BLOCK_M={},BLOCK_C={},warps={}".format(*launch_config(BATCH, grid, grid, 64, z.device))}
    for block_m, block_c, warps in [(16, 64, 4), (32, 64, 4), (32, 64, 8), (64, 64, 8), (64, 32, 4), (128, 16, 4)]:
        key = f"BLOCK_M={block_m},BLOCK_C={block_c},warps={warps}"
        results[key] = bench(lambda c=(block_m, block_c, warps): _propagate_fwd(z, g, False, c))
    return results


CUDA_CONFIGS = {  # launch-shape overrides read by the CUDA kernel's host code
    "default": {},
    "stages0": {"CGSPN_CUDA_STAGES": "0"},
    "stages1": {"CGSPN_CUDA_STAGES": "1"},
    "stages2": {"CGSPN_CUDA_STAGES": "2"},
    "stages3": {"CGSPN_CUDA_STAGES": "3"},
    "stages4": {"CGSPN_CUDA_STAGES": "4"},
    "vec4": {"CGSPN_CUDA_VEC_DIVISOR": "2"},
    "block32": {"CGSPN_CUDA_BLOCK_CHANNELS": "32"},
    "block16": {"CGSPN_CUDA_BLOCK_CHANNELS": "16"},
    "block8": {"CGSPN_CUDA_BLOCK_CHANNELS": "8"},
    "block8_stages4": {"CGSPN_CUDA_BLOCK_CHANNELS": "8", "CGSPN_CUDA_STAGES": "4"},
    # blocks narrower than a 16-byte vector: more blocks for small batches (2058 px, B=1: 32 blocks of 8 by default)
    "vec4_block4": {"CGSPN_CUDA_VEC_DIVISOR": "2", "CGSPN_CUDA_BLOCK_CHANNELS": "4"},
    "vec1_block2": {"CGSPN_CUDA_VEC_DIVISOR": "8", "CGSPN_CUDA_BLOCK_CHANNELS": "2"},
}
TOWER_BATCH = dict(TOWER_SHAPES)  # resolution -> the tower benchmark's batch: the op's shapes inside those towers


def bench_cuda_configs(grid: int, batch: int = BATCH) -> dict:
    """Forward and forward+backward (ms) of the CUDA kernel under each launch-shape override."""
    fn = load_backend("cuda")
    z = torch.randn(batch, grid, grid, PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    g = 2 * torch.randn(batch, grid, grid, 20 * PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    dy = torch.randn_like(z)
    zg, gg = z.clone().requires_grad_(), g.clone().requires_grad_()
    results = {}
    for name, env in CUDA_CONFIGS.items():
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            with torch.no_grad():
                fwd = bench(lambda: fn(z, g))
            fwd_bwd = bench(lambda: torch.autograd.grad(fn(zg, gg), (zg, gg), dy))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        results[name] = {"fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}
    return results


def bench_layers(grid: int, backend: str) -> dict:
    x = torch.randn(BATCH, grid * grid, WIDTH, device="cuda", dtype=DTYPE)
    layers = model_layers(backend)
    out = {}
    with torch.no_grad():
        for name, layer in layers.items():
            out[f"{name}_ms"] = bench(lambda name=name, layer=layer: run_layer(name, layer, x, grid))
        block = layers["cgspn_block"]
        out["mlp_half_block_ms"] = bench(lambda: x + block.mlp(block.layer_norm2(x)))
    out["sublayer_speedup"] = out["sdpa_sublayer_ms"] / out["cgspn_sublayer_ms"]
    out["block_speedup"] = out["vit_block_ms"] / out["cgspn_block_ms"]
    xg = x.clone().requires_grad_()
    for name in ("cgspn_block", "vit_block"):

        def fwd_bwd(name: str = name) -> None:
            run_layer(name, layers[name], xg, grid).float().sum().backward()

        out[f"{name}_fwd_bwd_ms"] = bench(fwd_bwd, min_reps=3)
        out[f"{name}_peak_mem_fwd_bwd_gb"] = peak_memory_gb(fwd_bwd)
    out["block_fwd_bwd_speedup"] = out["vit_block_fwd_bwd_ms"] / out["cgspn_block_fwd_bwd_ms"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/propagation_h100.json"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--skip-layers", action="store_true", help="only the op (a) and memory (d)")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True

    backends = [b for b in available_backends("cuda") if b != "torch"]
    copy_gbs = copy_bandwidth_gbs()
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": str(DTYPE),
        "batch": BATCH,
        "width": WIDTH,
        "propagation_channels": PROPAGATION_CHANNELS,
        "heads": HEADS,
        "mlp_width": MLP_WIDTH,
        "backends": backends,
        "copy_gbs": copy_gbs,
        "resolutions": {},
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"device {result['device']}  copy {copy_gbs:.0f} GB/s  backends {backends}", flush=True)
    fastest = backends[0]
    for resolution in args.resolutions:
        grid = resolution // PATCH
        entry: dict = {"grid": grid, "tokens": grid * grid, "op": {}}
        for backend in backends:
            entry["op"][backend] = bench_op(backend, grid, copy_gbs)
            op = entry["op"][backend]
            print(
                f"{resolution:5d} {backend:7s} fwd {op['fwd_ms']:8.3f} ms"
                f" ({100 * op['fwd_fraction_of_copy']:5.1f}% of copy)"
                f"  train-fwd {op['train_fwd_ms']:8.3f}  fwd+bwd {op['fwd_bwd_ms']:8.3f} ms"
                f" ({op['fwd_bwd_over_fwd']:.2f}x)  peak {op['peak_mem_fwd_bwd_gb']:.2f} GB",
                flush=True,
            )
        if "cuda" in backends:
            entry["cuda_configs"] = bench_cuda_configs(grid)
            print_configs(f"{resolution} B={BATCH}", entry["cuda_configs"])
            batch = TOWER_BATCH.get(resolution, BATCH)
            if batch != BATCH:
                entry["cuda_configs_tower_batch"] = {"batch": batch, **bench_cuda_configs(grid, batch)}
                print_configs(f"{resolution} B={batch}", entry["cuda_configs_tower_batch"])
        if "triton" in backends and grid >= 74:
            entry["triton_configs_fwd_ms"] = bench_triton_configs(grid)
            print(f"{resolution:5d} triton configs {entry['triton_configs_fwd_ms']}", flush=True)
        fastest = min(backends, key=lambda name: entry["op"][name]["fwd_bwd_ms"])
        if not args.skip_layers:
            entry["layers"] = bench_layers(grid, fastest)
            entry["layers"]["backend"] = fastest
            print(f"{resolution:5d} layers ({fastest}) {json.dumps(entry['layers'])}", flush=True)
        result["resolutions"][str(resolution)] = entry
        torch.cuda.empty_cache()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_configs(label: str, configs: dict) -> None:
    """One line of forward / forward+backward times (us) per launch configuration."""
    cells = [
        f"{name} {t['fwd_ms'] * 1e3:.0f}/{t['fwd_bwd_ms'] * 1e3:.0f}" for name, t in configs.items() if name != "batch"
    ]
    print(f"{label} cuda configs fwd/fwd+bwd us: " + "  ".join(cells), flush=True)


def print_table(result: dict) -> None:
    print(f"\n{result['device']}, {result['dtype']}, B={result['batch']}, copy {result['copy_gbs']:.0f} GB/s")
    header = "res   grid backend  fwd ms  %copy  fwd+bwd ms  ratio | sub cgspn  sub sdpa  x  | blk cgspn  blk vit  x"
    print(header)
    for resolution, entry in result["resolutions"].items():
        layers = entry.get("layers", {})
        for backend, op in entry["op"].items():
            line = (
                f"{resolution:>5} {entry['grid']:4d} {backend:7s} {op['fwd_ms']:7.3f}"
                f" {100 * op['fwd_fraction_of_copy']:5.1f}"
                f"  {op['fwd_bwd_ms']:9.3f}  {op['fwd_bwd_over_fwd']:5.2f}"
            )
            if layers and backend == layers.get("backend"):
                line += (
                    f" | {layers['cgspn_sublayer_ms']:9.3f} {layers['sdpa_sublayer_ms']:9.3f}"
                    f" {layers['sublayer_speedup']:5.1f}"
                    f" | {layers['cgspn_block_ms']:9.3f} {layers['vit_block_ms']:8.3f} {layers['block_speedup']:4.1f}"
                )
            print(line)


if __name__ == "__main__":
    main()
