"""The kernel package as ``kernels`` loads it: build layout, metadata digest, ops, layer swap.

Each test builds the ``torch-universal`` variant (the Triton kernel) into a temporary repository and
loads it with ``kernels.get_local_kernel``; on a GPU machine the compiled build of this checkout is
checked too. The oracle is :func:`naive_reference.naive_propagate`, so the kernel repository tests
itself without the model package.
"""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from naive_reference import naive_propagate
from torch import nn

kernels = pytest.importorskip("kernels")

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load_build_script():
    spec = importlib.util.spec_from_file_location("cgspn_kernel_build_test", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def universal_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("kernel_repo")
    load_build_script().build_universal(repo / "build")
    return repo


def test_build_metadata_names_the_kernel_and_its_digest(universal_repo):
    script = load_build_script()
    folder = universal_repo / "build" / "torch-universal"
    metadata = json.loads((folder / "metadata.json").read_text())
    general = script.build_config()
    assert metadata["name"] == general["name"] == "cgspn-propagation"
    assert metadata["version"] == general["version"]
    assert metadata["id"] == f"cgspn_propagation_triton_{script.source_tag()}"
    assert "torch" not in metadata["python-depends"]
    files = {p.name for p in folder.iterdir() if p.name != "metadata.json"}
    assert set(metadata["digest"]["files"]) == files
    assert {"__init__.py", "_ops.py", "_triton.py", "_autograd.py", "_layout.py", "layers.py"} <= files


def test_kernels_loads_the_build_without_digest_warning_and_refuses_a_modified_one(universal_repo, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="kernels")
    kernel = kernels.get_local_kernel(universal_repo)
    assert kernel.BACKEND == "triton"
    assert not [r for r in caplog.records if "digest" in r.getMessage() and r.levelno >= logging.WARNING]
    assert any("match the digest" in r.getMessage() for r in caplog.records)
    tampered = tmp_path / "tampered"
    load_build_script().build_universal(tampered / "build")
    with open(tampered / "build" / "torch-universal" / "layers.py", "a") as file:
        file.write("# changed after the build\n")
    with pytest.raises(RuntimeError, match="do not match the digest"):
        kernels.get_local_kernel(tampered)


def test_kernel_matches_reference_forward_and_backward(universal_repo):
    kernel = kernels.get_local_kernel(universal_repo)
    assert kernel.add_op_namespace_prefix("propagate_fwd").startswith("_cgspn_propagation_triton_")
    z = torch.randn(2, 3, 5, 4, device=DEVICE, requires_grad=True)
    g = (2 * torch.randn(2, 3, 5, 80, device=DEVICE)).requires_grad_()
    y = kernel.propagate(z, g)
    expected = naive_propagate(z, g).float()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (z, g), dy), torch.autograd.grad(expected, (z, g), dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_kernel_ops_pass_opcheck(universal_repo):
    kernel = kernels.get_local_kernel(universal_repo)
    z = torch.randn(1, 3, 4, 2, device=DEVICE, requires_grad=True)
    g = torch.randn(1, 3, 4, 40, device=DEVICE, requires_grad=True)
    dy = torch.randn(1, 3, 4, 2, device=DEVICE)
    torch.library.opcheck(kernel.propagate_fwd, (z, g, True))
    torch.library.opcheck(kernel.propagate_fwd, (z.detach(), g.detach(), False))
    states = kernel.propagate_fwd(z.detach(), g.detach(), True)[1]
    torch.library.opcheck(kernel.propagate_bwd, (dy, z.detach(), g.detach(), states))


@kernels.use_kernel_forward_from_hub("CGSPNPropagation")
class HostPropagation(nn.Module):
    """Stand-in for the model's mixer: same attributes and forward signature, reference math."""

    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, channels)
        self.heads = nn.Linear(channels, 20 * channels)
        self.up = nn.Linear(channels, width)
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self.calls += 1
        batch, seq_len, channels = hidden_states.shape
        num_prefix = seq_len - height * width
        z = self.down(hidden_states[:, num_prefix:].reshape(batch, height, width, channels))
        y = naive_propagate(z, self.heads(z)).to(z.dtype)
        out = self.up(y).reshape(batch, height * width, -1)
        prefix = self.up(y.mean(dim=(1, 2), dtype=torch.float32).to(y.dtype)).unsqueeze(1)
        return torch.cat((prefix.expand(-1, num_prefix, -1), out), dim=1)


@pytest.mark.parametrize("num_prefix", [0, 2])
@pytest.mark.parametrize("training", [False, True])
def test_kernelize_swaps_the_layer(universal_repo, num_prefix, training):
    torch.manual_seed(0)
    model = HostPropagation(12, 3).to(DEVICE).train(training)
    x = torch.randn(2, num_prefix + 3 * 4, 12, device=DEVICE, requires_grad=True)
    expected = model(x, 3, 4)
    expected_grads = torch.autograd.grad(expected.sum(), [x, *model.parameters()])
    mapping = {
        "CGSPNPropagation": {DEVICE: kernels.LocalLayerRepository(universal_repo, layer_name="CGSPNPropagation")}
    }
    with kernels.use_kernel_mapping(mapping):
        mode = kernels.Mode.TRAINING if training else kernels.Mode.INFERENCE
        kernels.kernelize(model, mode=mode, device=DEVICE, use_fallback=False)
    actual = model(x, 3, 4)
    assert model.calls == 1, "kernelize did not swap the forward: the host's forward ran"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    if training:
        for got, ref in zip(torch.autograd.grad(actual.sum(), [x, *model.parameters()]), expected_grads, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_build_of_this_checkout():
    script = load_build_script()
    folder = ROOT / "build" / script.torch_variant()
    if not (folder / "metadata.json").is_file():
        pytest.skip("no CUDA build; run python kernels_src/build.py")
    kernel = kernels.get_local_kernel(folder)
    assert kernel.BACKEND == "cuda"
    z = torch.randn(2, 5, 6, 8, device="cuda", dtype=torch.bfloat16)
    g = 2 * torch.randn(2, 5, 6, 160, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(kernel.propagate(z, g).float(), naive_propagate(z, g).float(), rtol=2e-2, atol=2e-2)
