"""The kernel through the ``kernels`` package: build folder layout, loading, ``kernelize``.

On CPU this uses the ``torch-universal`` variant (the Triton kernel under Triton's interpreter)
built into a temporary folder; on the GPU also the compiled CUDA variant of ``kernels_src/``.
"""

import importlib.util
import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first import of triton (decoration time)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from torch import nn

from cgspn.propagation_reference import propagate_ref

kernels = pytest.importorskip("kernels")

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load_build_script():
    spec = importlib.util.spec_from_file_location("cgspn_kernel_build", REPO / "kernels_src" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def universal_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("kernel_repo")
    load_build_script().build_universal(repo / "build")
    return repo


@kernels.use_kernel_forward_from_hub("CGSPNPropagation")
class HostPropagation(nn.Module):
    """Stand-in for the model's mixer: same attributes and forward signature, reference math."""

    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, channels)
        self.heads = nn.Linear(channels, 20 * channels)
        self.up = nn.Linear(channels, width)
        self.propagation_backend = "torch"
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self.calls += 1
        batch, seq_len, channels = hidden_states.shape
        num_prefix = seq_len - height * width
        z = self.down(hidden_states[:, num_prefix:].reshape(batch, height, width, channels))
        y = propagate_ref(z, self.heads(z))
        out = self.up(y).reshape(batch, height * width, -1)
        prefix = self.up(y.mean(dim=(1, 2), dtype=torch.float32).to(y.dtype)).unsqueeze(1)
        return torch.cat((prefix.expand(-1, num_prefix, -1), out), dim=1)


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixer = HostPropagation(12, 3)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.mixer(x, height, width)


def test_universal_build_layout(universal_repo):
    folder = universal_repo / "build" / "torch-universal"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["name"] == "cgspn-propagation"
    assert metadata["id"].startswith("cgspn_propagation_triton_")
    assert "torch" not in metadata["python-depends"]
    for name in ("__init__.py", "_ops.py", "_triton.py", "layers.py", "_autograd.py"):
        assert (folder / name).is_file(), name


def test_local_universal_kernel_matches_reference(universal_repo):
    kernel = kernels.get_local_kernel(universal_repo)
    assert kernel.BACKEND == "triton"
    assert kernel.add_op_namespace_prefix("propagate_fwd").startswith("_cgspn_propagation_triton_")
    z = torch.randn(2, 3, 5, 4, device=DEVICE, requires_grad=True)
    g = (2 * torch.randn(2, 3, 5, 80, device=DEVICE)).requires_grad_()
    y = kernel.propagate(z, g)
    expected = propagate_ref(z, g)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (z, g), dy), torch.autograd.grad(expected, (z, g), dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_prefix", [0, 2])
@pytest.mark.parametrize("training", [False, True])
def test_kernelize_swaps_the_layer(universal_repo, num_prefix, training):
    from cgspn.ops.hub import kernelize_model

    torch.manual_seed(0)
    model = TinyModel().to(DEVICE).train(training)
    x = torch.randn(2, num_prefix + 3 * 4, 12, device=DEVICE, requires_grad=True)
    expected = model(x, 3, 4)
    expected_grads = torch.autograd.grad(expected.sum(), [x, *model.parameters()])
    assert model.mixer.calls == 1
    kernelize_model(model, device=DEVICE, path=universal_repo)
    actual = model(x, 3, 4)
    assert model.mixer.calls == 1, "kernelize did not swap the forward: the host's forward ran"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    if training:
        for got, ref in zip(torch.autograd.grad(actual.sum(), [x, *model.parameters()]), expected_grads, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_kernelize_the_cgspn_model(universal_repo, monkeypatch):
    """The model's own CGSPNPropagation layers are swapped, and the outputs agree."""
    modeling = pytest.importorskip("cgspn.modeling_cgspn")
    from cgspn import CGSPNVisionConfig
    from cgspn.ops.hub import kernelize_model

    config = CGSPNVisionConfig(
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=4,
        image_size=12,
        propagation_channels=3,
        attention_layer_indices=[],
        num_prefix_tokens=1,
        propagation_backend="torch",
    )
    host_calls = []
    host_propagate = modeling.propagate
    monkeypatch.setattr(modeling, "propagate", lambda *a, **k: host_calls.append(1) or host_propagate(*a, **k))
    torch.manual_seed(0)
    model = modeling.CGSPNVisionModel(config).to(DEVICE).eval()
    pixels = torch.randn(2, 3, 12, 16, device=DEVICE)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
    assert len(host_calls) == 2  # one propagation layer each
    kernelize_model(model, device=DEVICE, path=universal_repo)
    with torch.no_grad():
        actual = model(pixel_values=pixels).last_hidden_state
    assert len(host_calls) == 2, "kernelize did not swap the model's CGSPNPropagation forward"
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_kernel_mapping_sources(universal_repo):
    from cgspn.ops.hub import LAYER_NAME, kernel_mapping

    local = kernel_mapping("local", devices=("cpu", "cuda"), path=universal_repo)
    assert set(local[LAYER_NAME]) == {"cpu", "cuda"}
    assert isinstance(local[LAYER_NAME]["cuda"], kernels.LocalLayerRepository)
    hub = kernel_mapping("hub", repo_id="someone/cgspn-propagation", revision="abc")
    assert isinstance(hub[LAYER_NAME]["cuda"], kernels.LayerRepository)
    with pytest.raises(ValueError, match="local' or 'hub"):
        kernel_mapping("elsewhere")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_build_loads_and_kernelizes():
    from cgspn.ops.hub import kernelize_model, load_local_kernel, torch_variant

    if not (REPO / "kernels_src" / "build" / str(torch_variant())).is_dir():
        pytest.skip("no CUDA build; run python kernels_src/build.py")
    kernel = load_local_kernel()
    assert kernel.BACKEND == "cuda"
    model = TinyModel().cuda().to(torch.bfloat16)
    x = torch.randn(2, 1 + 5 * 6, 12, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x, 5, 6)
        kernelize_model(model, mode=kernels.Mode.INFERENCE, device="cuda")
        actual = model(x, 5, 6)
    assert model.mixer.calls == 1
    torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)
