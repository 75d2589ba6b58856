"""C-GSPN propagation benchmarks on one GPU, every baseline measured in the same run (issue 4).

Measures for B=32, C=1152, Cc=64, bf16 and images of 378/518/1036/2058 px at patch 14
(grids 27, 37, 74, 147):

(a) the ``propagate`` op (each fast backend): forward (inference), forward in training mode
    (states kept), forward+backward; achieved bandwidth of the forward on the minimum traffic
    (read 21*Cc + write Cc values a position) against a device-to-device copy;
(b) the C-GSPN sublayer (down, heads, propagate, up) against an SDPA attention sublayer of the
    same width (16 heads), forward;
(c) a C-GSPN block against a ViT block with SDPA attention (pre-norm, MLP 4304), forward;
(d) peak memory of forward+backward for the op and both blocks;
(e) a 27-layer C-GSPN tower at 2058 px, B=8, forward+backward with gradient checkpointing.

Blocks are built from plain torch modules here so the script runs on any transformers version.
Writes one JSON file (device, versions, shapes, times in ms, ratios) and prints a table.

Usage: ``python benchmarks/bench_propagation.py [--out benchmarks/results/propagation_h100.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH

from cgspn.propagation import available_backends, load_backend

PATCH = 14
RESOLUTIONS = (378, 518, 1036, 2058)
BATCH = 32
WIDTH = 1152
PROPAGATION_CHANNELS = 64
HEADS = 16
MLP_WIDTH = 4304
DTYPE = torch.bfloat16


def bench(fn: Callable[[], object], min_reps: int = 5, budget_s: float = 1.0) -> float:
    """Median time (ms) of ``fn`` with CUDA events, after warm-up; repetitions fit ``budget_s``."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - start
    reps = max(min_reps, min(100, int(budget_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


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
# Sublayers and blocks from plain torch modules (SPEC §2)
# ---------------------------------------------------------------------------------------------


class Propagation(nn.Module):
    """C-GSPN sublayer: down (C->Cc), heads (Cc->20Cc), propagate, up (Cc->C)."""

    def __init__(self, width: int, channels: int, propagate: Callable) -> None:
        super().__init__()
        self.down = nn.Linear(width, channels)
        self.heads = nn.Linear(channels, 20 * channels)
        self.up = nn.Linear(channels, width)
        self.propagate = propagate

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        z = self.down(x.view(x.shape[0], height, width, x.shape[-1]))
        y = self.propagate(z, self.heads(z))
        return self.up(y).view(x.shape[0], height * width, -1)


class Attention(nn.Module):
    """ViT self-attention sublayer with SDPA (fused qkv, 16 heads)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, height: int = 0, width: int = 0) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class Block(nn.Module):
    """Pre-norm transformer block with a given token mixer and a GELU MLP."""

    def __init__(self, width: int, mixer: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, MLP_WIDTH), nn.GELU(approximate="tanh"), nn.Linear(MLP_WIDTH, width))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x))


def make(module: nn.Module) -> nn.Module:
    return module.to(device="cuda", dtype=DTYPE)


def fwd_bwd(module: nn.Module, x: torch.Tensor, height: int, width: int) -> Callable[[], None]:
    def run() -> None:
        module(x, height, width).float().sum().backward()

    return run


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
    "no_prefetch": {"CGSPN_CUDA_PREFETCH": "0"},
    "vec4": {"CGSPN_CUDA_VEC_DIVISOR": "2"},
    "vec4_no_prefetch": {"CGSPN_CUDA_VEC_DIVISOR": "2", "CGSPN_CUDA_PREFETCH": "0"},
    "block32": {"CGSPN_CUDA_BLOCK_CHANNELS": "32"},
    "block32_vec4": {"CGSPN_CUDA_BLOCK_CHANNELS": "32", "CGSPN_CUDA_VEC_DIVISOR": "2"},
}


def bench_cuda_configs(grid: int) -> dict:
    """Forward and forward+backward (ms) of the CUDA kernel under each launch-shape override."""
    fn = load_backend("cuda")
    z = torch.randn(BATCH, grid, grid, PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
    g = 2 * torch.randn(BATCH, grid, grid, 20 * PROPAGATION_CHANNELS, device="cuda", dtype=DTYPE)
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


def bench_layers(grid: int, propagate: Callable) -> dict:
    tokens = grid * grid
    x = torch.randn(BATCH, tokens, WIDTH, device="cuda", dtype=DTYPE)
    out = {}
    with torch.no_grad():
        prop, attn = make(Propagation(WIDTH, PROPAGATION_CHANNELS, propagate)), make(Attention(WIDTH, HEADS))
        out["cgspn_sublayer_ms"] = bench(lambda: prop(x, grid, grid))
        out["sdpa_sublayer_ms"] = bench(lambda: attn(x, grid, grid))
        cblock = make(Block(WIDTH, Propagation(WIDTH, PROPAGATION_CHANNELS, propagate)))
        vblock = make(Block(WIDTH, Attention(WIDTH, HEADS)))
        out["cgspn_block_ms"] = bench(lambda: cblock(x, grid, grid))
        out["vit_block_ms"] = bench(lambda: vblock(x, grid, grid))
        mlp_half = lambda: x + cblock.mlp(cblock.norm2(x))  # noqa: E731
        out["mlp_half_block_ms"] = bench(mlp_half)
    out["sublayer_speedup"] = out["sdpa_sublayer_ms"] / out["cgspn_sublayer_ms"]
    out["block_speedup"] = out["vit_block_ms"] / out["cgspn_block_ms"]
    xg = x.clone().requires_grad_()
    out["cgspn_block_fwd_bwd_ms"] = bench(fwd_bwd(cblock, xg, grid, grid), min_reps=3)
    out["cgspn_block_peak_mem_fwd_bwd_gb"] = peak_memory_gb(fwd_bwd(cblock, xg, grid, grid))
    out["vit_block_fwd_bwd_ms"] = bench(fwd_bwd(vblock, xg, grid, grid), min_reps=3)
    out["vit_block_peak_mem_fwd_bwd_gb"] = peak_memory_gb(fwd_bwd(vblock, xg, grid, grid))
    out["block_fwd_bwd_speedup"] = out["vit_block_fwd_bwd_ms"] / out["cgspn_block_fwd_bwd_ms"]
    return out


def bench_tower(propagate: Callable, layers: int = 27, batch: int = 8, resolution: int = 2058) -> dict:
    grid = resolution // PATCH
    blocks = nn.ModuleList(
        make(Block(WIDTH, Propagation(WIDTH, PROPAGATION_CHANNELS, propagate))) for _ in range(layers)
    )
    x = torch.randn(batch, grid * grid, WIDTH, device="cuda", dtype=DTYPE, requires_grad=True)

    def run() -> None:
        h = x
        for block in blocks:
            h = checkpoint(block, h, grid, grid, use_reentrant=False)
        h.float().mean().backward()

    peak = peak_memory_gb(run)
    ms = bench(run, min_reps=2, budget_s=0.1)
    params = sum(p.numel() for p in blocks.parameters())
    return {
        "layers": layers,
        "batch": batch,
        "resolution": resolution,
        "params_m": params / 1e6,
        "fwd_bwd_ms": ms,
        "peak_mem_gb": peak,
        "device_mem_gb": torch.cuda.get_device_properties(0).total_memory / 1e9,
        "fits_80gb": peak < 80,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/propagation_h100.json"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--skip-layers", action="store_true", help="only the op (a) and memory (d)")
    parser.add_argument("--skip-tower", action="store_true")
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
        if "cuda" in backends and grid >= 74:
            entry["cuda_configs"] = bench_cuda_configs(grid)
            print(f"{resolution:5d} cuda configs {json.dumps(entry['cuda_configs'])}", flush=True)
        if "triton" in backends and grid >= 74:
            entry["triton_configs_fwd_ms"] = bench_triton_configs(grid)
            print(f"{resolution:5d} triton configs {entry['triton_configs_fwd_ms']}", flush=True)
        fastest = min(backends, key=lambda name: entry["op"][name]["fwd_bwd_ms"])
        if not args.skip_layers:
            entry["layers"] = bench_layers(grid, load_backend(fastest))
            entry["layers"]["backend"] = fastest
            print(f"{resolution:5d} layers ({fastest}) {json.dumps(entry['layers'])}", flush=True)
        result["resolutions"][str(resolution)] = entry
        torch.cuda.empty_cache()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.skip_tower:
        result["tower"] = bench_tower(load_backend(fastest))
        result["tower"]["backend"] = fastest
        print(f"tower {json.dumps(result['tower'])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


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
    if "tower" in result:
        tower = result["tower"]
        print(
            f"tower {tower['layers']} layers @ {tower['resolution']} B={tower['batch']}:"
            f" fwd+bwd {tower['fwd_bwd_ms']:.0f} ms,"
            f" peak {tower['peak_mem_gb']:.1f} GB (fits 80 GB: {tower['fits_80gb']})"
        )


if __name__ == "__main__":
    main()
