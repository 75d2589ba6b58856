"""Every fast propagation backend against the reference operator (SPEC §3).

Oracle: ``propagate_ref`` on float64 copies. Baseline: the same reference run in the test dtype
(float32 inside, output and gradients rounded to the dtype). A backend passes when, for the
output and every gradient under one shared random ``dY``,
``max|kernel - oracle| <= 2 * max|baseline - oracle| + eps(dtype) * max|oracle|`` (the last
term: one rounding step of the largest value).

Without CUDA the Triton kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set below before ``triton`` is imported) on a few small shapes; with CUDA (``-m gpu``) every
available backend runs on >= 200 random shapes.
"""

import os
import random
import zlib

import torch

if not torch.cuda.is_available():  # must precede the first import of triton (decoration time)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from cgspn import kernel_loader, propagation
from cgspn.propagation import BackendUnavailableError, load_backend, propagate, use_backend
from cgspn.propagation_reference import propagate_ref

HAS_CUDA = torch.cuda.is_available()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_SHAPES = [  # (B, H, W, Cc): H or W = 1, odd and non-square grids, Cc not a multiple of 8
    (1, 1, 1, 1),
    (1, 1, 6, 3),
    (1, 6, 1, 2),
    (2, 5, 7, 3),
    (1, 4, 9, 16),
    (3, 3, 2, 5),
]


def triton_kernel():
    """The Triton (torch-universal) build of the kernel package, loaded through ``kernels``."""
    from cgspn.kernel_loader import load_build, universal_build

    return load_build(universal_build(), "triton")


def gpu_backends() -> list[str]:
    return [name for name in propagation.available_backends("cuda") if name != "torch"] if HAS_CUDA else []


def case_seed(shape, dtype) -> int:
    """A seed of its own for each test case, the same in every process (``hash`` of a str is salted per process)."""
    return zlib.crc32(f"{shape}{dtype}".encode()) % 10_000


def random_inputs(shape, dtype, device, seed):
    batch, height, width, channels = shape
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, height, width, channels, generator=generator, dtype=torch.float64)
    g = 2 * torch.randn(batch, height, width, 20 * channels, generator=generator, dtype=torch.float64)
    dy = torch.randn(batch, height, width, channels, generator=generator, dtype=torch.float64)
    return (t.to(device=device, dtype=dtype) for t in (z, g, dy))


def forward_and_grads(fn, z, g, dy):
    z = z.detach().clone().requires_grad_()
    g = g.detach().clone().requires_grad_()
    y = fn(z, g)
    grad_z, grad_g = torch.autograd.grad(y, (z, g), dy)
    return y.detach(), grad_z, grad_g


def assert_matches_reference(fn, shape, dtype, device, seed):
    z, g, dy = random_inputs(shape, dtype, device, seed)
    actual = forward_and_grads(fn, z, g, dy)
    oracle = forward_and_grads(propagate_ref, z.double(), g.double(), dy.double())
    baseline = forward_and_grads(propagate_ref, z, g, dy)
    for name, got, ref, base in zip(("Y", "dZ", "dG"), actual, oracle, baseline, strict=True):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values for finite inputs"
        error = (got.double() - ref).abs().max().item()
        base_error = (base.double() - ref).abs().max().item()
        # four direction sums merged in another order than the reference's: a few units in the last place
        bound = 2 * base_error + 4 * torch.finfo(dtype).eps * ref.abs().max().item()
        message = f"{name} {shape} {dtype}: max error {error:.3g} > bound {bound:.3g} (baseline {base_error:.3g})"
        assert error <= bound, message


# ---------------------------------------------------------------------------------------------
# Triton on CPU (interpreter): a small fast subset
# ---------------------------------------------------------------------------------------------

cpu_triton = pytest.mark.skipif(HAS_CUDA, reason="CPU interpreter subset; the GPU tests cover Triton on CUDA")


@cpu_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
def test_triton_interpreter_matches_reference(shape, dtype):
    assert_matches_reference(load_backend("triton"), shape, dtype, "cpu", seed=case_seed(shape, dtype))


@cpu_triton
@pytest.mark.parametrize("config", [(2, 4, 1), (4, 2, 1)], ids=["chunks_of_2", "channel_blocks_of_2"])
def test_triton_lines_in_chunks(config):
    """Lines longer than BLOCK_M are scanned in chunks; channel blocks narrower than Cc."""
    launch = triton_kernel()._triton
    z, g, dy = random_inputs((1, 3, 5, 6), torch.float32, "cpu", seed=4)
    y, states = launch._propagate_fwd(z, g, True, config)
    grad_z, grad_g = launch._propagate_bwd(dy, z, g, states, config)
    expected = forward_and_grads(propagate_ref, z, g, dy)
    for got, ref in zip((y, grad_z, grad_g), expected, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(launch._propagate_fwd(z, g, False, config)[0], y, rtol=0, atol=0)


@cpu_triton
def test_triton_interpreter_sliced_inputs():
    """Non-contiguous inputs (sliced from wider tensors) give the same result as contiguous ones."""
    z_wide, g_wide, _ = random_inputs((2, 4, 5, 6), torch.float32, "cpu", seed=3)
    z, g = z_wide[..., :3], g_wide[..., :60]
    torch.testing.assert_close(load_backend("triton")(z, g), propagate_ref(z, g), rtol=1e-5, atol=1e-5)


def check_non_finite(fn, device):
    z, g, dy = random_inputs((1, 5, 6, 3), torch.float32, device, seed=11)
    z[0, 1, 2, 0] = float("nan")
    z[0, 4, 0, 1] = float("inf")
    g[0, 2, 3, 7] = float("-inf")  # a TD weight logit
    g[0, 0, 5, 50] = float("nan")  # an LR field
    expected = propagate_ref(z, g)
    actual = fn(z, g)
    assert (~torch.isfinite(expected)).any()
    assert torch.equal(torch.isfinite(actual), torch.isfinite(expected))
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    _, grad_z, grad_g = forward_and_grads(fn, z, g, dy)  # must neither crash nor hang
    assert grad_z.shape == z.shape and grad_g.shape == g.shape


@cpu_triton
def test_triton_interpreter_non_finite_pattern():
    check_non_finite(load_backend("triton"), "cpu")


@cpu_triton
def test_triton_interpreter_deterministic():
    fn = load_backend("triton")
    z, g, dy = random_inputs((2, 6, 5, 4), torch.bfloat16, "cpu", seed=5)
    first = forward_and_grads(fn, z, g, dy)
    second = forward_and_grads(fn, z, g, dy)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@cpu_triton
def test_triton_torch_compile_smoke():
    fn = load_backend("triton")
    compiled = torch.compile(lambda z, g: fn(z, g) * 2, backend="aot_eager", fullgraph=True)
    z, g, dy = random_inputs((1, 3, 5, 2), torch.float32, "cpu", seed=9)
    expected = forward_and_grads(lambda a, b: propagate_ref(a, b) * 2, z, g, dy)
    actual = forward_and_grads(compiled, z, g, dy)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backward_without_saved_states_recomputes():
    """propagate_bwd with empty states (forward run without saving) recomputes them."""
    if not (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs CUDA or the Triton interpreter")
    device = "cuda" if HAS_CUDA else "cpu"
    ops = triton_kernel()
    z, g, dy = random_inputs((2, 4, 3, 5), torch.float32, device, seed=13)
    empty = torch.empty(0, device=device)
    saved = ops.propagate_fwd(z, g, True)[1]
    for a, b in zip(ops.propagate_bwd(dy, z, g, empty), ops.propagate_bwd(dy, z, g, saved), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dispatcher(monkeypatch):
    """Empty caches of loaded backends and auto choices; restored afterwards."""
    monkeypatch.setattr(propagation, "_loaded", {"torch": propagate_ref})
    monkeypatch.setattr(propagation, "_auto_choice", {})
    monkeypatch.delenv(propagation.ENV_VAR, raising=False)
    return propagation


@pytest.mark.skipif(HAS_CUDA, reason="checks the message for a machine without CUDA")
def test_cuda_backend_without_device_names_the_missing_device(fresh_dispatcher):
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        load_backend("cuda")


def test_cuda_backend_without_build_names_the_folder(fresh_dispatcher, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CGSPN_KERNEL_PATH", str(tmp_path / "explicit"))
    monkeypatch.setenv("CGSPN_KERNEL_CACHE", str(tmp_path / "cache"))
    kernel_loader.build_script()  # the real build script (cached) names the variant; only the builds are missing
    monkeypatch.setattr("cgspn.kernel_loader.kernel_sources", lambda: tmp_path / "sources")
    with pytest.raises(
        BackendUnavailableError, match=r"no local build found for variant torch.*explicit.*kernels build"
    ):
        load_backend("cuda")


def test_missing_kernels_package_is_named(fresh_dispatcher, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "kernels", None)
    with pytest.raises(BackendUnavailableError, match="kernels package missing"):
        load_backend("hub")


def test_missing_triton_is_named(fresh_dispatcher, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "triton" else object())
    with pytest.raises(BackendUnavailableError, match="triton package is not installed"):
        load_backend("triton")


def test_hub_backend_offline_names_repo_and_version(fresh_dispatcher, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("CGSPN_KERNEL_REPO", "nobody/no-such-kernel")
    monkeypatch.setenv("CGSPN_KERNEL_VERSION", "3")
    with pytest.raises(BackendUnavailableError, match="nobody/no-such-kernel@v3"):
        load_backend("hub")


def test_hub_backend_refuses_a_moving_revision(fresh_dispatcher, monkeypatch):
    monkeypatch.setenv("CGSPN_KERNEL_VERSION", "main")
    with pytest.raises(BackendUnavailableError, match="must be a kernel version number"):
        load_backend("hub")


def test_named_backend_that_is_missing_raises_from_propagate(fresh_dispatcher, monkeypatch):
    def unavailable(name):
        raise BackendUnavailableError(f"{name} is not here")

    module = __import__("cgspn.kernel_loader", fromlist=["load_backend"])
    monkeypatch.setattr(module, "load_backend", unavailable)
    z, g, _ = random_inputs((1, 2, 2, 1), torch.float32, "cpu", seed=0)
    with pytest.raises(BackendUnavailableError, match="cuda is not here"):
        propagate(z, g, backend="cuda")


def test_auto_falls_back_and_logs_once(fresh_dispatcher, monkeypatch, caplog):
    tried = []

    def fake_load(name):
        tried.append(name)
        raise BackendUnavailableError(f"{name} missing")

    monkeypatch.setattr(__import__("cgspn.kernel_loader", fromlist=["x"]), "load_backend", fake_load)
    caplog.set_level("INFO", logger="cgspn.propagation")
    assert propagation._auto_backend(torch.device("cuda")) == "torch"
    assert propagation._auto_backend(torch.device("cuda")) == "torch"
    assert tried == ["cuda", "triton"]
    messages = [r.getMessage() for r in caplog.records if "chose" in r.getMessage()]
    assert messages == ["C-GSPN propagation: backend 'auto' chose 'torch' for cuda tensors"]


def test_env_var_and_context_select_the_backend(fresh_dispatcher, monkeypatch):
    calls = []

    def spy(name):
        def fn(z, g):
            calls.append(name)
            return propagate_ref(z, g)

        return fn

    monkeypatch.setitem(propagation._loaded, "triton", spy("triton"))
    monkeypatch.setitem(propagation._loaded, "cuda", spy("cuda"))
    z, g, _ = random_inputs((1, 2, 3, 2), torch.float32, "cpu", seed=1)
    monkeypatch.setenv(propagation.ENV_VAR, "triton")
    propagate(z, g)
    with use_backend("cuda"):
        propagate(z, g)  # context beats the environment
        propagate(z, g, backend="triton")  # argument beats the context
    monkeypatch.setenv(propagation.ENV_VAR, "auto")
    torch.testing.assert_close(propagate(z, g), propagate_ref(z, g))  # auto on CPU: the reference
    assert calls == ["triton", "cuda", "triton"]
    with pytest.raises(ValueError, match="Unknown propagation backend"):
        propagate(z, g, backend="fast")


# ---------------------------------------------------------------------------------------------
# GPU: every available backend, >= 200 random shapes
# ---------------------------------------------------------------------------------------------


def random_gpu_cases(count: int = 216, seed: int = 0):
    rng = random.Random(seed)
    special = [(1, 1, 1, 1), (1, 1, 37, 64), (2, 29, 1, 7), (1, 27, 27, 64), (2, 37, 37, 33), (1, 74, 9, 64)]
    cases = [(shape, DTYPES[i % 3]) for i, shape in enumerate(special)]
    while len(cases) < count:
        length = rng.choice([1, 2, 3, 5, 8, 13, 16, 27, 31, 33, 40, 64, 74])
        shape = (
            rng.choice([1, 1, 2, 3]),
            length if rng.random() < 0.5 else rng.randint(1, 40),
            rng.randint(1, 40),
            rng.choice([1, 3, 8, 12, 16, 20, 24, 32, 40, 64, 72, 96]),
        )
        cases.append((shape, DTYPES[len(cases) % 3]))
    return cases


GPU_CASES = random_gpu_cases()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize(("shape", "dtype"), GPU_CASES, ids=[f"{s}-{d}" for s, d in GPU_CASES])
def test_gpu_backend_matches_reference(backend, shape, dtype):
    if backend not in gpu_backends():
        pytest.skip(f"backend {backend!r} not available")
    assert_matches_reference(load_backend(backend), shape, dtype, "cuda", seed=case_seed(shape, dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_large_grid_bf16(backend):
    """The benchmark's layout at 518 px (37x37) and a 147-long line, Cc = 64, bf16."""
    if backend not in gpu_backends():
        pytest.skip(f"backend {backend!r} not available")
    for shape in [(4, 37, 37, 64), (2, 147, 147, 64), (1, 150, 20, 64)]:
        assert_matches_reference(load_backend(backend), shape, torch.bfloat16, "cuda", seed=1)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_non_finite_deterministic_compile(backend):
    if backend not in gpu_backends():
        pytest.skip(f"backend {backend!r} not available")
    fn = load_backend(backend)
    check_non_finite(fn, "cuda")
    z, g, dy = random_inputs((4, 40, 33, 64), torch.bfloat16, "cuda", seed=5)
    first = forward_and_grads(fn, z, g, dy)
    for _ in range(3):
        for a, b in zip(first, forward_and_grads(fn, z, g, dy), strict=True):
            assert torch.equal(a, b), "not bitwise deterministic"
    compiled = torch.compile(lambda a, b: fn(a, b) * 2, fullgraph=True)
    for a, b in zip(forward_and_grads(compiled, z, g, dy), forward_and_grads(lambda a, b: fn(a, b) * 2, z, g, dy)):
        assert torch.equal(a, b)


CUDA_LAUNCH_OVERRIDES = [  # the launch shapes benchmarks/bench_propagation.py compares
    {"CGSPN_CUDA_STAGES": "0"},
    {"CGSPN_CUDA_STAGES": "1"},
    {"CGSPN_CUDA_STAGES": "3"},
    {"CGSPN_CUDA_STAGES": "4"},
    {"CGSPN_CUDA_VEC_DIVISOR": "2"},
    {"CGSPN_CUDA_VEC_DIVISOR": "2", "CGSPN_CUDA_STAGES": "0"},
    {"CGSPN_CUDA_VEC_DIVISOR": "2", "CGSPN_CUDA_STAGES": "4"},
    {"CGSPN_CUDA_BLOCK_CHANNELS": "32"},
    {"CGSPN_CUDA_BLOCK_CHANNELS": "8"},
    {"CGSPN_CUDA_BLOCK_CHANNELS": "16", "CGSPN_CUDA_VEC_DIVISOR": "2"},
    {"CGSPN_CUDA_BLOCK_CHANNELS": "4", "CGSPN_CUDA_VEC_DIVISOR": "2"},
    {"CGSPN_CUDA_BLOCK_CHANNELS": "2", "CGSPN_CUDA_VEC_DIVISOR": "8"},
]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("overrides", CUDA_LAUNCH_OVERRIDES, ids=str)
def test_gpu_cuda_launch_shapes(overrides, monkeypatch):
    if "cuda" not in gpu_backends():
        pytest.skip("backend 'cuda' not available")
    for key, value in overrides.items():
        monkeypatch.setenv(key, value)
    for i, (shape, dtype) in enumerate([*GPU_CASES[:40], ((2, 147, 147, 64), torch.bfloat16)]):
        assert_matches_reference(load_backend("cuda"), shape, dtype, "cuda", seed=i)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_cuda_vec_divisor_without_a_kernel_is_refused(monkeypatch):
    """bf16 kernels are built for 8-, 4- and 1-value vectors: a divisor giving 2 names itself, never runs a scalar
    kernel on a grid laid out for pairs."""
    if "cuda" not in gpu_backends():
        pytest.skip("backend 'cuda' not available")
    monkeypatch.setenv("CGSPN_CUDA_VEC_DIVISOR", "4")
    z, g, _ = random_inputs((1, 4, 5, 16), torch.bfloat16, "cuda", seed=0)
    with pytest.raises(RuntimeError, match="CGSPN_CUDA_VEC_DIVISOR=4 gives vectors of 2 BFloat16 values"):
        load_backend("cuda")(z, g)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_opcheck():
    from cgspn.kernel_loader import cuda_build, load_build

    op_sets = [triton_kernel()]
    if "cuda" in gpu_backends():
        op_sets.append(load_build(cuda_build(), "cuda"))
    for ops in op_sets:
        z, g, dy = random_inputs((2, 5, 6, 8), torch.bfloat16, "cuda", seed=7)
        torch.library.opcheck(ops.propagate_fwd, (z.requires_grad_(), g.requires_grad_(), True))
        torch.library.opcheck(ops.propagate_fwd, (z.detach(), g.detach(), False))
        states = ops.propagate_fwd(z.detach(), g.detach(), True)[1]
        torch.library.opcheck(ops.propagate_bwd, (dy, z.detach(), g.detach(), states))
