"""One ``propagate()`` over several backends (SPEC §3 kernel boundary).

Backend resolution, first match wins: the ``backend`` argument (unless ``"auto"``), the
:func:`use_backend` context, the ``CGSPN_PROPAGATION_BACKEND`` environment variable, then
``"auto"``: the fastest backend available for the tensor's device (``cuda`` > ``triton`` >
``torch``). ``auto`` logs its choice once per device type; a backend asked for by name that
cannot be loaded raises :class:`BackendUnavailableError` saying what is missing.

Remote native code is never chosen by a saved config: ``"hub"`` in ``config.propagation_backend``
acts as ``"auto"`` (:func:`backend_from_config`); the hub kernel is fetched, pinned by version, only
on the user's explicit choice: the ``backend`` argument, :func:`use_backend`, the environment
variable, or transformers' ``use_kernels=True`` (:func:`kernel_mapping`).

This module is flat on purpose: it travels with the model as ``trust_remote_code`` hub code.
Fast backends live in the kernel package of ``kernels_src/``; ``cgspn.kernel_loader`` finds and
loads its builds and is imported by name only when a fast backend is asked for.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
from collections.abc import Callable, Iterator

import torch

from .propagation_reference import check_propagate_inputs, propagate_ref

logger = logging.getLogger(__name__)

PropagateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ENV_VAR = "CGSPN_PROPAGATION_BACKEND"
BACKENDS = ("auto", "hub", "cuda", "triton", "torch")
# Backends tried by "auto", fastest first, per device type. "hub" needs the network, so
# auto never picks it: ask for it by name.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch")}
DEFAULT_AUTO_ORDER = ("torch",)
# Fast backends: module (imported by name, so remote code does not require it) exposing
# ``load_backend(name) -> PropagateFn``.
KERNEL_LOADER = "cgspn.kernel_loader"
LAYER_NAME = "CGSPNPropagation"  # the name the model's propagation layer is registered under for kernelize
FAST_BACKEND_MODULES = {"triton": KERNEL_LOADER, "cuda": KERNEL_LOADER, "hub": KERNEL_LOADER}

_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("cgspn_backend", default=None)
_loaded: dict[str, PropagateFn] = {"torch": propagate_ref}
_auto_choice: dict[str, str] = {}
_warned_hub_config: list[str] = []


class BackendUnavailableError(RuntimeError):
    """A propagation backend was asked for by name but cannot be used here."""


def validate_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown propagation backend {name!r}; choose one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend ``name`` for every :func:`propagate` call without an explicit backend."""
    token = _backend_override.set(validate_backend_name(name))
    try:
        yield
    finally:
        _backend_override.reset(token)


def requested_backend(backend: str | None = None) -> str:
    """The backend name in force: argument > :func:`use_backend` > environment > ``"auto"``."""
    for candidate in (backend, _backend_override.get(), os.environ.get(ENV_VAR)):
        if candidate and candidate != "auto":
            return validate_backend_name(candidate)
    return "auto"


def load_backend(name: str) -> PropagateFn:
    """Return the propagate function of backend ``name`` or raise :class:`BackendUnavailableError`."""
    validate_backend_name(name)
    if name == "auto":
        raise ValueError("load_backend needs a concrete backend name, not 'auto'")
    if name not in _loaded:
        try:
            module = importlib.import_module(FAST_BACKEND_MODULES[name])
        except ImportError as error:
            raise BackendUnavailableError(
                f"Propagation backend {name!r} needs the installed cgspn package with its fast "
                f"kernels ({FAST_BACKEND_MODULES[name]}): {error}"
            ) from error
        try:
            _loaded[name] = module.load_backend(name)
        except RuntimeError as error:
            # run as a saved model's remote code, this file's error class differs from the package's one
            if isinstance(error, BackendUnavailableError) or type(error).__name__ != "BackendUnavailableError":
                raise
            raise BackendUnavailableError(str(error)) from error
    return _loaded[name]


def backend_from_config(name: str) -> str:
    """The backend a saved config may select: ``"hub"`` (remote native code) becomes ``"auto"``, with a warning."""
    validate_backend_name(name)
    if name != "hub":
        return name
    if not _warned_hub_config and os.environ.get(ENV_VAR) != "hub":
        _warned_hub_config.append(name)
        logger.warning(
            "config.propagation_backend='hub' does not fetch remote native code by itself; using 'auto'. "
            "Opt in with from_pretrained(..., use_kernels=True), %s=hub or cgspn.use_backend('hub')",
            ENV_VAR,
        )
    return "auto"


def kernel_mapping(device_type: str, hub_kernel: tuple[str, int]) -> dict:
    """``kernels`` mapping of ``CGSPNPropagation`` for ``use_kernels=True`` on ``device_type``.

    ``use_kernels=True`` is the user's explicit choice, so it may fetch ``hub_kernel`` (repo id,
    version) where no local build fits. Empty (after one warning) when no kernel fits.
    """
    try:
        loader = importlib.import_module(KERNEL_LOADER)
    except ImportError as error:
        logger.warning(
            "C-GSPN use_kernels needs the installed cgspn package (%s); the layers keep their forward", error
        )
        return {LAYER_NAME: {}}
    return loader.kernel_mapping(device_type, hub_kernel)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that load and accept tensors on ``device``, fastest first (``hub`` excluded)."""
    device_type = torch.device(device).type
    names = []
    for name in AUTO_ORDER.get(device_type, DEFAULT_AUTO_ORDER):
        try:
            load_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def _auto_backend(device: torch.device) -> str:
    if device.type not in _auto_choice:
        choice = available_backends(device)[0]
        _auto_choice[device.type] = choice
        logger.info("C-GSPN propagation: backend 'auto' chose %r for %s tensors", choice, device.type)
    return _auto_choice[device.type]


def propagate(z: torch.Tensor, g: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Fused 4-direction C-GSPN propagation ``Y = propagate(Z, G)``.

    Args:
        z: (B, H, W, Cc) features, channels-last, float32/bfloat16/float16.
        g: (B, H, W, 20*Cc) heads' output (see :func:`propagate_ref`).
        backend: one of ``BACKENDS``; ``None`` or ``"auto"`` defers to the context/env/auto rule.

    Returns:
        Y (B, H, W, Cc) in the dtype of ``z``.
    """
    check_propagate_inputs(z, g)
    name = requested_backend(backend)
    if name == "auto":
        name = _auto_backend(z.device)
    return load_backend(name)(z, g)
