"""C-GSPN through transformers' kernel switch and the kernels hub route (issue 15 items 1-3, issue 16 item 7).

On CPU the fast kernel is the Triton (``torch-universal``) build under Triton's interpreter; which
forward ran is observed with spies on the model's own dispatch and on the kernel package's
``propagate``. The hub route runs offline from a hub-layout snapshot in a temporary cache.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first import of triton (decoration time)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

kernels = pytest.importorskip("kernels")

from transformers import AutoModel, KernelConfig  # noqa: E402

from cgspn import CGSPNVisionConfig, CGSPNVisionModel, kernel_loader, modeling_cgspn  # noqa: E402
from cgspn.cli import main as cgspn_main  # noqa: E402
from cgspn.configuration_cgspn import HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_CUDA = torch.cuda.is_available()


def tiny_config(**overrides) -> CGSPNVisionConfig:
    settings = dict(
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
    return CGSPNVisionConfig(**{**settings, **overrides})


@pytest.fixture
def saved_model(tmp_path) -> Path:
    torch.manual_seed(0)
    CGSPNVisionModel(tiny_config()).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def host_calls(monkeypatch) -> list:
    """Calls of the model's own dispatch (the host forward of CGSPNPropagation)."""
    calls = []
    host = modeling_cgspn.propagate
    monkeypatch.setattr(modeling_cgspn, "propagate", lambda *a, **k: calls.append(1) or host(*a, **k))
    return calls


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    """Calls of the Triton build's ``propagate`` (what the swapped-in hub layer calls)."""
    kernel = kernel_loader.load_build(kernel_loader.universal_build(), "triton")
    original = kernel.propagate
    calls = []

    def spy(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(z, g)

    monkeypatch.setattr(kernel, "propagate", spy)
    return calls


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def loss(outputs) -> torch.Tensor:
    return outputs.last_hidden_state.square().sum() + outputs.pooler_output.sum()


def reference_output(folder: Path) -> torch.Tensor:
    model = AutoModel.from_pretrained(folder).to(DEVICE).eval()
    with torch.no_grad():
        return model(pixel_values=pixels()).last_hidden_state


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the Triton build under the interpreter (the GPU test covers CUDA)")
def test_use_kernels_swaps_the_propagation_layers(saved_model, host_calls, kernel_calls):
    expected = reference_output(saved_model)
    host_calls.clear()
    model = AutoModel.from_pretrained(saved_model, use_kernels=True).eval()
    with torch.no_grad():
        actual = model(pixel_values=pixels()).last_hidden_state
    assert host_calls == [], "the host forward ran: use_kernels did not swap CGSPNPropagation"
    assert len(kernel_calls) == 2  # one call per propagation layer
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the Triton build under the interpreter")
@pytest.mark.parametrize("offline", [False, True])
def test_use_kernels_offline_maps_only_the_propagation(saved_model, host_calls, kernel_calls, monkeypatch, offline):
    """Offline, transformers' own hub mapping (activation kernels on CUDA) is left out: kernels would raise for any
    that is not cached instead of falling back. The C-GSPN layers are swapped either way, in both modes."""
    import huggingface_hub.constants
    from transformers.integrations import hub_kernels

    registered, modes = [], []
    monkeypatch.setattr(hub_kernels, "register_kernel_mapping_transformers", lambda *a: registered.append(1))
    kernelize = kernels.kernelize

    def spy(model, *, mode, **options):
        modes.append(mode)
        return kernelize(model, mode=mode, **options)

    monkeypatch.setattr(kernels, "kernelize", spy)
    monkeypatch.setattr(hub_kernels, "_kernels_kernelize", spy)
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: offline)
    model = AutoModel.from_pretrained(saved_model, use_kernels=True).eval()
    with torch.no_grad():
        model(pixel_values=pixels())
    assert model.use_kernels and bool(registered) != offline
    assert host_calls == [] and len(kernel_calls) == 2
    model.train()  # re-kernelized for training through the same path
    model(pixel_values=pixels())
    assert host_calls == [] and len(kernel_calls) == 4
    assert list(dict.fromkeys(modes)) == [kernels.Mode.INFERENCE, kernels.Mode.TRAINING]


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the Triton build under the interpreter")
def test_use_kernels_false_gives_the_layers_their_forward_back(saved_model, host_calls, kernel_calls, caplog):
    expected = reference_output(saved_model)
    host_calls.clear()
    with caplog.at_level(logging.WARNING):
        model = AutoModel.from_pretrained(saved_model, use_kernels=True).eval()
    assert "No kernel mapping found" not in caplog.text  # offline: only the C-GSPN layers are kernelized
    with torch.no_grad():
        model(pixel_values=pixels())
    assert host_calls == [] and len(kernel_calls) == 2
    model.set_use_kernels(False)
    with torch.no_grad():
        output = model(pixel_values=pixels()).last_hidden_state
    assert not model.use_kernels and len(host_calls) == 2 and len(kernel_calls) == 2
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    model.train()  # transformers re-kernelizes in train()/eval() only while use_kernels is on
    model(pixel_values=pixels())
    assert len(host_calls) == 4 and len(kernel_calls) == 2


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the Triton build under the interpreter")
def test_use_kernels_training_mode_gives_the_reference_gradients(saved_model, host_calls, kernel_calls):
    reference = AutoModel.from_pretrained(saved_model).train()
    expected = reference(pixel_values=pixels())
    expected_grads = torch.autograd.grad(loss(expected), list(reference.parameters()))
    host_calls.clear()
    model = AutoModel.from_pretrained(saved_model, use_kernels=True)
    model.train()  # transformers re-kernelizes for the training mode
    grads = torch.autograd.grad(loss(model(pixel_values=pixels())), list(model.parameters()))
    assert host_calls == [] and len(kernel_calls) == 2
    for got, ref in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the Triton build under the interpreter")
def test_use_kernels_torch_compile_mode(saved_model, host_calls):
    expected = reference_output(saved_model)
    host_calls.clear()
    model = AutoModel.from_pretrained(saved_model).eval()
    model.set_use_kernels(True, mode=kernels.Mode.INFERENCE | kernels.Mode.TORCH_COMPILE)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        actual = compiled(pixel_values=pixels()).last_hidden_state
    assert host_calls == []
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_use_kernels_mapping_on_cuda_prefers_local_then_pinned_hub_then_triton(tmp_path, monkeypatch):
    """The CUDA entry for every mode: the compiled build, else the hub kernel pinned by version, else Triton."""
    mode = kernels.Mode
    modes = {mode.INFERENCE, mode.TRAINING, mode.INFERENCE | mode.TORCH_COMPILE, mode.TRAINING | mode.TORCH_COMPILE}
    hub = ("someone/cgspn-propagation", 3)

    def repositories():
        entry = kernel_loader.kernel_mapping("cuda", hub)["CGSPNPropagation"]["cuda"]
        assert set(entry) == modes and len(set(map(id, entry.values()))) == 1
        return next(iter(entry.values()))

    monkeypatch.setattr(kernel_loader, "cuda_build", lambda: tmp_path / "cuda-variant")
    assert isinstance(repositories(), kernels.LocalLayerRepository)

    def no_build():
        raise kernel_loader.BackendUnavailableError("no build")

    monkeypatch.setattr(kernel_loader, "cuda_build", no_build)
    monkeypatch.setattr(kernel_loader, "hub_offline", lambda: False)
    pinned = repositories()
    assert isinstance(pinned, kernels.LayerRepository) and str(pinned).startswith("`someone/cgspn-propagation`")
    assert "version 3" in str(pinned)
    monkeypatch.setattr(kernel_loader, "triton_unavailable_reason", lambda device: None)
    triton = str(kernel_loader.universal_build())
    repository, source = kernel_loader.layer_repository("cuda", None)  # no opt-in: never the hub
    assert isinstance(repository, kernels.LocalLayerRepository) and source == triton
    monkeypatch.setattr(kernel_loader, "hub_offline", lambda: True)  # offline: the hub kernel only from the cache
    assert kernel_loader.layer_repository("cuda", hub)[1] == triton
    monkeypatch.setattr(kernel_loader, "hub_kernel_cached", lambda repo_id, version: True)
    assert kernel_loader.layer_repository("cuda", hub)[1] == "someone/cgspn-propagation@v3"


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU without Triton's interpreter")
def test_no_kernel_fits_one_message_and_the_reference(saved_model, host_calls, monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton can no longer run CPU tensors
    kernel_loader.warn_no_kernel.cache_clear()
    expected = reference_output(saved_model)
    host_calls.clear()
    caplog.set_level("WARNING")
    model = AutoModel.from_pretrained(saved_model, use_kernels=True)
    model.train().eval()  # each mode change kernelizes again: still one message
    with torch.no_grad():
        actual = model(pixel_values=pixels()).last_hidden_state
    assert len(host_calls) == 2
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    messages = [
        r.getMessage() for r in caplog.records if "CGSPNPropagation" in r.getMessage() or "C-GSPN" in r.getMessage()
    ]
    assert len(messages) == 1, messages
    assert "no propagation kernel fits cpu tensors" in messages[0] and "TRITON_INTERPRET" in messages[0]


def test_kernel_config_with_the_local_kernel_repo(saved_model, host_calls, monkeypatch):
    """transformers' KernelConfig + use_local_kernel with the kernel repository the loader uses.

    transformers accepts only accelerator devices in a KernelConfig; on CPU the list is widened for the test.
    """
    if not HAS_CUDA:
        import transformers.utils.kernel_config as kernel_config_module

        supported = [*kernel_config_module.KERNELS_SUPPORTED_DEVICE_TYPES, "cpu"]
        monkeypatch.setattr(kernel_config_module, "KERNELS_SUPPORTED_DEVICE_TYPES", supported)
    expected = reference_output(saved_model)
    host_calls.clear()
    repo = kernel_loader.universal_build().parents[1]
    if HAS_CUDA:  # the compiled build's repository when there is one (kernels picks its CUDA variant)
        try:
            repo = kernel_loader.cuda_build().parents[1]
        except kernel_loader.BackendUnavailableError:
            pass
    config = KernelConfig({"CGSPNPropagation": f"{repo}:CGSPNPropagation"}, use_local_kernel=True)
    model = AutoModel.from_pretrained(saved_model, kernel_config=config, device_map=DEVICE).eval()
    with torch.no_grad():
        actual = model(pixel_values=pixels()).last_hidden_state
    assert host_calls == []
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_saved_hub_backend_never_fetches(tmp_path, monkeypatch, caplog):
    """A downloaded config.json saying "hub" does not call kernels.get_kernel: it acts as "auto", with a warning."""
    from cgspn import propagation

    def fail(*args, **kwargs):
        raise AssertionError("a saved config made the model fetch remote native code")

    CGSPNVisionModel(tiny_config(propagation_backend="hub")).save_pretrained(tmp_path / "downloaded")
    assert json.loads((tmp_path / "downloaded" / "config.json").read_text())["propagation_backend"] == "hub"
    monkeypatch.setattr(kernels, "get_kernel", fail)
    monkeypatch.delenv("CGSPN_PROPAGATION_BACKEND", raising=False)
    monkeypatch.setattr(propagation, "_loaded", {"torch": propagation.propagate_ref})
    monkeypatch.setattr(propagation, "_warned_hub_config", [])
    caplog.set_level("WARNING")
    model = AutoModel.from_pretrained(tmp_path / "downloaded").to(DEVICE).eval()
    with torch.no_grad():
        model(pixel_values=pixels())
    assert "hub" not in propagation._loaded
    assert any("does not fetch remote native code" in r.getMessage() for r in caplog.records)


def make_hub_snapshot(cache: Path) -> Path:
    """A hub-layout snapshot of the Triton build in a Hugging Face cache: refs/v1 -> snapshots/<commit>/build/."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_folder = cache / ("kernels--" + HUB_KERNEL_REPO_ID.replace("/", "--"))
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / f"v{HUB_KERNEL_VERSION}").write_text(commit)
    kernel_loader.build_script().build_universal(repo_folder / "snapshots" / commit / "build")
    return repo_folder / "snapshots" / commit


def test_hub_kernel_counts_as_cached_only_with_a_build_for_this_system(tmp_path, monkeypatch):
    """Offline, the hub kernel is chosen only when its version's snapshot holds a variant kernels would load here;
    a bare ref (or a snapshot without such a build) leaves the choice to the next kernel."""
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "hf-cache"))
    assert not kernel_loader.hub_kernel_cached(HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION)
    snapshot = make_hub_snapshot(tmp_path / "hf-cache")
    assert kernel_loader.hub_kernel_cached(HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION)
    assert not kernel_loader.hub_kernel_cached(HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION + 1)
    (snapshot / "build" / "torch-universal").rename(snapshot / "build" / "not-a-variant")
    assert not kernel_loader.hub_kernel_cached(HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION)


HUB_SCRIPT = """
import json, sys, torch
from cgspn import CGSPNVisionConfig, CGSPNVisionModel, propagate_ref, propagation
import cgspn.kernel_loader as loader

model = CGSPNVisionModel(CGSPNVisionConfig(**json.loads(sys.argv[1]))).eval()
with torch.no_grad():
    model(pixel_values=torch.randn(1, 3, 12, 12))  # config "hub" + the environment's opt-in
z, g = torch.randn(1, 3, 4, 2), torch.randn(1, 3, 4, 40)
torch.testing.assert_close(propagation._loaded["hub"](z, g), propagate_ref(z, g), rtol=1e-5, atol=1e-5)
kernel = loader.load_hub_kernel(*loader.hub_kernel())
report = {"loaded": sorted(propagation._loaded), "file": kernel.__file__, "info": loader.backend_info()["hub"]}
print(json.dumps(report))
"""


@pytest.mark.skipif(HAS_CUDA, reason="the snapshot holds the Triton build only: on CUDA the hub gives the CUDA build")
def test_hub_kernel_loads_offline_through_get_kernel(tmp_path):
    """The real get_kernel(repo, version=1) path, offline, from a populated cache, opted in by the environment."""
    snapshot = make_hub_snapshot(tmp_path / "hf-cache")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "CGSPN_PROPAGATION_BACKEND": "hub",
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("KERNELS_CACHE", None)  # kernels would look there instead of the HF cache
    config = tiny_config().to_diff_dict()
    config["propagation_backend"] = "hub"
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, json.dumps(config)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == ["hub", "torch"]  # the model's layers went to the hub kernel
    assert Path(report["file"]).is_relative_to(snapshot)
    assert report["info"] == {"source": f"{HUB_KERNEL_REPO_ID}@v{HUB_KERNEL_VERSION}", "available": True}


REMOTE_SCRIPT = """
import json, sys
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
remote = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".propagation"]
print(json.dumps({"remote": remote.__name__, "cuda": remote.available_backends("cuda")}))
"""


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback on a machine without CUDA")
def test_remote_code_with_the_package_installed_falls_back(saved_model, tmp_path):
    """Remote code whose fast backends come from the installed package treats its errors as its own."""
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": str(REPO),
        "TRITON_INTERPRET": "0",
    }
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(saved_model)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["remote"].startswith("cgspn.")
    assert report["cuda"] == ["torch"]


def test_build_toml_and_config_pin_the_same_hub_kernel():
    general = kernel_loader.build_script().build_config()  # kernels_src/build.toml [general]
    assert general["hub"]["repo-id"] == HUB_KERNEL_REPO_ID
    assert general["version"] == HUB_KERNEL_VERSION
    config = CGSPNVisionConfig()
    assert (config.kernel_repo_id, config.kernel_version) == (HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION)
    with pytest.raises(StrictDataclassClassValidationError, match="kernel_version must be a kernel version number"):
        CGSPNVisionConfig(kernel_version="main")


def test_kernels_info_json(capsys):
    assert cgspn_main(["kernels-info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"torch", "triton", "cuda", "hub"}
    for name, entry in info.items():
        assert entry["available"] is True or entry["reason"], name
    assert info["hub"]["source"] == f"{HUB_KERNEL_REPO_ID}@v{HUB_KERNEL_VERSION}"
    assert info["triton"]["available"] is True
    assert (Path(info["triton"]["source"]) / "metadata.json").is_file()
    if not HAS_CUDA:
        assert "needs a CUDA device" in info["cuda"]["reason"]


def test_kernels_build_command_writes_the_user_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CGSPN_KERNEL_CACHE", str(tmp_path / "cache"))
    assert cgspn_main(["kernels", "build", "--triton-only"]) == 0
    built = Path(capsys.readouterr().out.split("built ")[-1].strip())
    assert built == kernel_loader.user_kernel_repo() / "build" / "torch-universal"
    monkeypatch.setattr(kernel_loader, "kernel_sources", lambda: tmp_path / "no-sources-build")
    assert kernel_loader.find_build("torch-universal", "triton") == built


def test_stale_build_is_reported_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("CGSPN_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel_loader, "kernel_sources", lambda: tmp_path / "no-sources-build")
    stale = kernel_loader.user_kernel_repo() / "build" / "torch-universal"
    stale.mkdir(parents=True)
    (stale / "metadata.json").write_text(json.dumps({"id": "cgspn_propagation_triton_0000000000"}))
    with pytest.raises(kernel_loader.BackendUnavailableError, match="stale"):
        kernel_loader.find_build("torch-universal", "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_use_kernels_on_cuda_uses_the_compiled_build(saved_model, host_calls):
    try:
        folder = kernel_loader.cuda_build()
    except kernel_loader.BackendUnavailableError as error:
        pytest.skip(f"no CUDA build ({error})")
    model = AutoModel.from_pretrained(saved_model, use_kernels=True, device_map="cuda").eval()
    assert kernel_loader.layer_repository("cuda", None)[1] == str(folder)
    expected = reference_output(saved_model)
    host_calls.clear()
    with torch.no_grad():
        actual = model(pixel_values=pixels()).last_hidden_state
    assert host_calls == []
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)
    model.set_use_kernels(False)  # the layers' own forward again
    with torch.no_grad():
        model(pixel_values=pixels())
    assert len(host_calls) == 2
