"""Where the fast propagation backends come from, loaded through the ``kernels`` package.

Every fast backend lives in the kernel package of ``kernels_src/`` (shipped in wheels as
``cgspn/_kernels``); this module only finds its builds and loads them:

- ``triton``: the ``torch-universal`` build (the Triton kernel). A wheel ships it prebuilt; a
  source checkout builds it on first use into the user cache (it is only Python files).
- ``cuda``: the compiled build for this torch (``torch211-cxx11-cu130-x86_64-linux``), from
  ``$CGSPN_KERNEL_PATH``, the kernel sources' own ``build/`` (``python kernels_src/build.py``) or the
  user cache (``cgspn kernels build``).
- ``hub``: ``kernels.get_kernel(repo_id, version=N)``, pinned (never a moving branch); fetched only
  on an explicit user choice (see :mod:`cgspn.propagation`).

Builds are recognised by their metadata ``id``, which names the hash of the sources they were built
from: a stale build is reported, never loaded. The user cache is ``$CGSPN_KERNEL_CACHE`` (default
``~/.cache/cgspn/kernels``); ``<cache>/<source tag>`` is a complete kernel repository
(``build/<variant>/``) that ``kernels.LocalLayerRepository`` and transformers' ``KernelConfig`` accept.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .configuration_cgspn import HUB_KERNEL_REPO_ID, HUB_KERNEL_VERSION
from .propagation import LAYER_NAME, BackendUnavailableError, PropagateFn

logger = logging.getLogger(__name__)

ENV_LOCAL_PATH = "CGSPN_KERNEL_PATH"
ENV_CACHE = "CGSPN_KERNEL_CACHE"
ENV_HUB_REPO = "CGSPN_KERNEL_REPO"
ENV_HUB_VERSION = "CGSPN_KERNEL_VERSION"
UNIVERSAL = "torch-universal"
PACKAGED_SOURCES = Path(__file__).resolve().parent / "_kernels"  # wheel installs (see setup.py)
CHECKOUT_SOURCES = Path(__file__).resolve().parents[1] / "kernels_src"
BUILD_HINT = "build it with `cgspn kernels build` (or `python kernels_src/build.py` in a checkout)"


def kernel_sources() -> Path:
    """The kernel package's sources: ``cgspn/_kernels`` in a wheel, ``kernels_src/`` in a checkout."""
    for folder in (PACKAGED_SOURCES, CHECKOUT_SOURCES):
        if (folder / "build.py").is_file():
            return folder
    raise BackendUnavailableError(
        f"the C-GSPN kernel sources are missing (neither {PACKAGED_SOURCES} nor {CHECKOUT_SOURCES} exists): "
        "reinstall cgspn"
    )


@functools.cache
def build_script() -> ModuleType:
    """The kernel sources' ``build.py`` (source tag, variant names, builders)."""
    path = kernel_sources() / "build.py"
    spec = importlib.util.spec_from_file_location("cgspn_kernel_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_kernel_repo() -> Path:
    """``<cache>/<source tag>``: where ``cgspn kernels build`` and on-demand builds go."""
    cache = os.environ.get(ENV_CACHE)
    root = Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cgspn/kernels"
    return root / build_script().source_tag()


def import_kernels() -> ModuleType:
    try:
        import kernels
    except ImportError as error:
        raise BackendUnavailableError(f"kernels package missing (pip install 'kernels>=0.18.3'): {error}") from error
    return kernels


def find_build(variant: str, backend: str) -> Path:
    """The first build of ``variant`` from the current sources; BackendUnavailableError naming where it looked.

    Looks in ``$CGSPN_KERNEL_PATH/build`` (taken as it is), then the sources' ``build/``, then the user cache.
    """
    seen = []
    explicit = os.environ.get(ENV_LOCAL_PATH)
    if explicit:
        folder = Path(explicit) / "build" / variant
        if (folder / "metadata.json").is_file():
            return folder
        seen.append(f"{folder} (${ENV_LOCAL_PATH}): no build")
    expected = build_script().module_id(backend)
    for repo in (kernel_sources(), user_kernel_repo()):
        folder = repo / "build" / variant
        metadata = folder / "metadata.json"
        if not metadata.is_file():
            seen.append(f"{folder}: no build")
        elif json.loads(metadata.read_text()).get("id") != expected:
            seen.append(f"{folder}: stale (built from other sources)")
        else:
            return folder
    raise BackendUnavailableError(f"no local build found for variant {variant} ({'; '.join(seen)}); {BUILD_HINT}")


def publish_build(build: Any, repo: Path, replace: bool = False) -> Path:
    """Run ``build(out_dir)`` in a temporary folder of ``repo/build``, then move the variant in place.

    Concurrent builders (test workers) never see a half-written variant: the first one to finish
    wins, unless ``replace`` (an explicit rebuild) removes the existing build first.
    """
    target_root = repo / "build"
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target_root))
    try:
        built = build(staging)
        target = target_root / built.name
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            built.rename(target)
        except OSError:  # another process published it first
            if not (target / "metadata.json").is_file():
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def universal_build() -> Path:
    """The ``torch-universal`` (Triton) build: found, or built into the user cache (Python files only)."""
    try:
        return find_build(UNIVERSAL, "triton")
    except BackendUnavailableError:
        return publish_build(build_script().build_universal, user_kernel_repo())


def triton_unavailable_reason(device_type: str) -> str | None:
    """Why the Triton kernel cannot run on ``device_type`` tensors here, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    return (
        f"Triton runs on CUDA tensors, or on CPU tensors only under Triton's interpreter "
        f"(TRITON_INTERPRET=1 set before triton is imported); got {device_type} tensors"
    )


def cuda_build() -> Path:
    """The compiled CUDA build for this torch, or BackendUnavailableError saying what is missing."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError("Propagation backend 'cuda' needs a CUDA device: none found")
    return find_build(build_script().torch_variant(), "cuda")


def load_build(folder: Path, backend: str) -> ModuleType:
    """Import a build folder with ``kernels.get_local_kernel`` and check it is the ``backend`` variant."""
    module = import_kernels().get_local_kernel(folder)
    variant_backend = getattr(module, "BACKEND", None)
    if variant_backend != backend:
        raise BackendUnavailableError(f"the build at {folder} is the {variant_backend!r} variant, not {backend!r}")
    return module


def hub_kernel() -> tuple[str, int]:
    """(repo id, version) of the hub kernel: ``$CGSPN_KERNEL_REPO`` / ``$CGSPN_KERNEL_VERSION``, else the pinned one."""
    version = os.environ.get(ENV_HUB_VERSION, str(HUB_KERNEL_VERSION))
    if not version.isdigit():
        raise BackendUnavailableError(f"${ENV_HUB_VERSION} must be a kernel version number (e.g. 1), got {version!r}")
    return os.environ.get(ENV_HUB_REPO, HUB_KERNEL_REPO_ID), int(version)


def load_hub_kernel(repo_id: str, version: int) -> ModuleType:
    """``kernels.get_kernel(repo_id, version=version)``; BackendUnavailableError when it fails."""
    kernels = import_kernels()
    try:
        return kernels.get_kernel(repo_id, version=version, trust_remote_code=[repo_id])
    except Exception as error:  # network, missing repo/version, no matching variant
        raise BackendUnavailableError(
            f"could not load the hub kernel {repo_id}@v{version} (set ${ENV_HUB_REPO}/${ENV_HUB_VERSION}; offline "
            f"use needs HF_HUB_OFFLINE=1 and the version in the cache): {type(error).__name__}: {error}"
        ) from error


def load_backend(name: str) -> PropagateFn:
    """Propagate function of backend ``triton``, ``cuda`` or ``hub`` for :mod:`cgspn.propagation`."""
    if name == "triton":
        reason = triton_unavailable_reason("cuda" if torch.cuda.is_available() else "cpu")
        if reason:
            raise BackendUnavailableError(f"Propagation backend 'triton' cannot run here: {reason}")
        return load_build(universal_build(), "triton").propagate
    if name == "cuda":
        return load_build(cuda_build(), "cuda").propagate
    if name == "hub":
        return load_hub_kernel(*hub_kernel()).propagate
    raise BackendUnavailableError(f"cgspn.kernel_loader provides 'triton', 'cuda' and 'hub', not {name!r}")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE``, as huggingface_hub reads it."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_kernel_cached(repo_id: str, version: int) -> bool:
    """Whether version ``version`` of ``repo_id`` is in the local kernels/HF cache with a build variant for this
    system (torch, CUDA, platform: what kernels would load offline), without loading it."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    from kernels.variants import get_variants_local, resolve_variant

    cache = os.environ.get("KERNELS_CACHE") or constants.HF_HUB_CACHE
    folder = Path(cache) / repo_folder_name(repo_id=repo_id, repo_type="kernel")
    ref = folder / "refs" / f"v{version}"
    if not ref.is_file():
        return False
    build = folder / "snapshots" / ref.read_text().strip() / "build"
    return resolve_variant(get_variants_local(build))[0] is not None


def layer_repository(device_type: str, hub: tuple[str, int] | None) -> tuple[Any | None, str]:
    """The ``kernels`` repository of the fastest kernel layer that fits ``device_type``, and its source.

    CUDA: the local compiled build, else the pinned hub kernel when ``hub`` is given (the caller's
    opt-in; offline only when it is cached), else the Triton build; other devices: the Triton build
    where Triton runs. Returns ``(None, reasons)`` when nothing fits.
    """
    kernels = import_kernels()
    reasons = []
    if device_type == "cuda":
        try:
            folder = cuda_build()
            return kernels.LocalLayerRepository(folder, layer_name=LAYER_NAME), str(folder)
        except BackendUnavailableError as error:
            reasons.append(f"cuda: {error}")
        if hub is not None and hub_offline() and not hub_kernel_cached(*hub):
            reasons.append(f"hub: {hub[0]}@v{hub[1]} has no build for this system in the local cache (offline)")
        elif hub is not None:
            repo_id, version = hub
            repository = kernels.LayerRepository(
                repo_id=repo_id, layer_name=LAYER_NAME, version=version, trust_remote_code=[repo_id]
            )
            return repository, f"{repo_id}@v{version}"
    reason = triton_unavailable_reason(device_type)
    if reason is None:
        folder = universal_build()
        return kernels.LocalLayerRepository(folder, layer_name=LAYER_NAME), str(folder)
    reasons.append(f"triton: {reason}")
    return None, "; ".join(reasons)


@functools.cache
def warn_no_kernel(device_type: str, reasons: str) -> None:
    """Say once (per device type and reasons) that ``use_kernels`` keeps the layers' own forward."""
    logger.warning(
        "C-GSPN use_kernels: no propagation kernel fits %s tensors (%s); the layers keep their own forward",
        device_type,
        reasons,
    )


def kernel_mapping(device_type: str, hub: tuple[str, int] | None) -> dict[str, dict]:
    """``kernels`` mapping of ``CGSPNPropagation`` on ``device_type`` for every mode (inference, training,
    torch.compile). When no kernel fits the device: one warning, and a mapping without that device, so
    ``kernelize`` keeps the layers' own forward without a warning per layer."""
    kernels = import_kernels()
    repository, source = layer_repository(device_type, hub)
    if repository is None:
        warn_no_kernel(device_type, source)
        return {LAYER_NAME: {}}
    logger.info("C-GSPN use_kernels: CGSPNPropagation layers on %s use the kernel from %s", device_type, source)
    mode = kernels.Mode
    modes = (mode.INFERENCE, mode.TRAINING, mode.INFERENCE | mode.TORCH_COMPILE, mode.TRAINING | mode.TORCH_COMPILE)
    return {LAYER_NAME: {device_type: dict.fromkeys(modes, repository)}}


def backend_info() -> dict[str, dict[str, Any]]:
    """Per backend: ``source`` (a local path, or ``repo@version`` for the hub), ``available`` and ``reason``.

    Local builds are loaded to check them; the hub kernel is never fetched or loaded here (remote
    native code): it counts as available when its pinned version is in the local cache.
    """
    info: dict[str, dict[str, Any]] = {"torch": {"source": "cgspn.propagation_reference", "available": True}}
    for name, locate in (("triton", universal_build), ("cuda", cuda_build)):
        try:
            load_backend(name)
            info[name] = {"source": str(locate()), "available": True}
        except BackendUnavailableError as error:
            variant = UNIVERSAL if name == "triton" else variant_or_none()
            info[name] = {"source": str(user_kernel_repo() / "build" / variant), "available": False}
            info[name]["reason"] = str(error)
    repo_id, version = hub_kernel()
    cached = hub_kernel_cached(repo_id, version)
    info["hub"] = {"source": f"{repo_id}@v{version}", "available": cached}
    if not cached:
        info["hub"]["reason"] = (
            "no build for this system in the local cache; fetched only on an explicit choice "
            "(from_pretrained(..., use_kernels=True) or CGSPN_PROPAGATION_BACKEND=hub)"
        )
    return info


def variant_or_none() -> str:
    """This torch's compiled-variant name, or a placeholder on a torch without CUDA."""
    try:
        return build_script().torch_variant()
    except RuntimeError:
        return "<none: this torch has no CUDA>"


def build_kernels(cuda: bool = True, archs: tuple[str, ...] | None = None) -> list[Path]:
    """Build the Triton (and, with ``cuda``, the compiled CUDA) variant into the user cache."""
    script = build_script()
    repo = user_kernel_repo()
    built = [publish_build(script.build_universal, repo, replace=True)]
    if cuda:
        build_cuda = functools.partial(script.build_cuda, archs=tuple(archs or script.DEFAULT_ARCHS))
        built.append(publish_build(build_cuda, repo, replace=True))
    return built
