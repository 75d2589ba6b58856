"""CUDA kernel of ``kernels_src/`` through the ``kernels`` package: backends ``cuda`` and ``hub``.

- ``cuda``: a local build, ``kernels.get_local_kernel(<path>)`` with ``<path>`` the ``kernels_src``
  folder of this checkout or ``$CGSPN_KERNEL_PATH``; build it with ``python kernels_src/build.py``.
- ``hub``: ``kernels.get_kernel($CGSPN_KERNEL_REPO, revision=$CGSPN_KERNEL_REVISION)`` (defaults
  :data:`DEFAULT_REPO_ID` / :data:`DEFAULT_REVISION`); offline it needs ``HF_HUB_OFFLINE=1`` and the
  revision in the cache.

:func:`kernelize_model` swaps the forward of every ``CGSPNPropagation`` module of a model (the
class is marked with ``kernels.use_kernel_forward_from_hub("CGSPNPropagation")``) for the hub
layer ``cgspn_propagation.layers.CGSPNPropagation``, from a local build or from the Hub.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ENV_LOCAL_PATH = "CGSPN_KERNEL_PATH"
ENV_REPO = "CGSPN_KERNEL_REPO"
ENV_REVISION = "CGSPN_KERNEL_REVISION"
DEFAULT_REPO_ID = "cgspn/propagation"
DEFAULT_REVISION = "main"
LAYER_NAME = "CGSPNPropagation"
BUILD_HINT = "build it with `python kernels_src/build.py`"

PropagateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unavailable(message: str) -> Exception:
    from cgspn.propagation import BackendUnavailableError

    return BackendUnavailableError(message)


def _import_kernels() -> ModuleType:
    try:
        import kernels
    except ImportError as error:
        raise _unavailable(f"kernels package missing (pip install 'kernels>=0.17.2'): {error}") from error
    return kernels


def local_kernel_path() -> Path:
    """``$CGSPN_KERNEL_PATH``, else the ``kernels_src`` folder next to the ``cgspn`` package."""
    configured = os.environ.get(ENV_LOCAL_PATH)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "kernels_src"


def torch_variant() -> str | None:
    """The compiled variant this torch loads (``torch211-cxx11-cu130-x86_64-linux``), or None on CPU torch."""
    if torch.version.cuda is None:
        return None
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    abi = "cxx11" if torch._C._GLIBCXX_USE_CXX11_ABI else "cxx98"
    cuda = torch.version.cuda.replace(".", "")
    return f"torch{major}{minor}-{abi}-cu{cuda}-{platform.machine()}-{platform.system().lower()}"


def load_local_kernel(path: Path | None = None, *, require_cuda: bool = True) -> ModuleType:
    """The kernel module of a local build folder (``<path>/build/<variant>/``).

    With ``require_cuda`` the compiled CUDA variant must exist and a CUDA device must be present;
    otherwise any variant ``kernels`` accepts (e.g. ``torch-universal``) will do.
    """
    kernels = _import_kernels()
    path = Path(path) if path is not None else local_kernel_path()
    build = path / "build"
    if require_cuda:
        if not torch.cuda.is_available():
            raise _unavailable("Propagation backend 'cuda' needs a CUDA device: none found")
        variant = torch_variant()
        if not (build / str(variant) / "metadata.json").is_file():
            found = sorted(p.name for p in build.iterdir() if p.is_dir()) if build.is_dir() else []
            raise _unavailable(
                f"no local build found at {build / str(variant)} (variants there: {found or 'none'}); {BUILD_HINT}"
            )
    elif not build.is_dir():
        raise _unavailable(f"no local build found at {build}; {BUILD_HINT}")
    module = kernels.get_local_kernel(path)
    if require_cuda and getattr(module, "BACKEND", None) != "cuda":
        raise _unavailable(f"the local build at {build} loaded the {module.BACKEND!r} variant, not CUDA; {BUILD_HINT}")
    return module


def hub_repo() -> tuple[str, str]:
    """(repo id, revision) of the Hub kernel: ``$CGSPN_KERNEL_REPO`` / ``$CGSPN_KERNEL_REVISION``."""
    return os.environ.get(ENV_REPO, DEFAULT_REPO_ID), os.environ.get(ENV_REVISION, DEFAULT_REVISION)


def load_hub_kernel(repo_id: str | None = None, revision: str | None = None) -> ModuleType:
    """``kernels.get_kernel(repo_id, revision=revision)``; BackendUnavailableError when it fails."""
    kernels = _import_kernels()
    default_repo, default_revision = hub_repo()
    repo_id, revision = repo_id or default_repo, revision or default_revision
    try:
        return kernels.get_kernel(repo_id, revision=revision)
    except Exception as error:  # network, missing repo/revision, no matching variant
        raise _unavailable(
            f"could not load the hub kernel {repo_id}@{revision} (set {ENV_REPO}/{ENV_REVISION}; offline use needs "
            f"HF_HUB_OFFLINE=1 and the revision in the cache): {type(error).__name__}: {error}"
        ) from error


def load_backend(name: str) -> PropagateFn:
    """Propagate function of backend ``"cuda"`` (local build) or ``"hub"`` for :mod:`cgspn.propagation`."""
    if name == "cuda":
        return load_local_kernel().propagate
    if name == "hub":
        return load_hub_kernel().propagate
    raise _unavailable(f"cgspn.ops.hub provides the 'cuda' and 'hub' backends, not {name!r}")


def kernel_mapping(
    source: str = "local",
    *,
    devices: tuple[str, ...] = ("cuda",),
    path: Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``kernels`` layer mapping of ``CGSPNPropagation`` for ``devices``, from a local build or the Hub."""
    kernels = _import_kernels()
    if source == "local":
        repo = kernels.LocalLayerRepository(Path(path) if path else local_kernel_path(), layer_name=LAYER_NAME)
    elif source == "hub":
        default_repo, default_revision = hub_repo()
        repo = kernels.LayerRepository(
            repo_id or default_repo, layer_name=LAYER_NAME, revision=revision or default_revision
        )
    else:
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    return {LAYER_NAME: dict.fromkeys(devices, repo)}


def kernelize_model(
    model: torch.nn.Module,
    *,
    mode: Any = None,
    device: str | None = None,
    source: str = "local",
    path: Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
) -> torch.nn.Module:
    """``kernels.kernelize`` the model's ``CGSPNPropagation`` layers with the fused kernel.

    ``mode`` defaults to ``Mode.TRAINING`` for a model in training mode, else ``Mode.INFERENCE``;
    ``device`` defaults to the type of the model's parameters.
    """
    kernels = _import_kernels()
    if mode is None:
        mode = kernels.Mode.TRAINING if model.training else kernels.Mode.INFERENCE
    if device is None:
        device = next(model.parameters()).device.type
    mapping = kernel_mapping(source, devices=(device,), path=path, repo_id=repo_id, revision=revision)
    with kernels.use_kernel_mapping(mapping):
        return kernels.kernelize(model, mode=mode, device=device)
