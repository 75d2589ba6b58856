"""PyTorch reference of the C-GSPN propagation operator (SPEC.md sections 2-3).

The four directional scans are written once, for the canonical top-down direction, and
the other directions are flip/transpose *views* of the same tensors. Everything is
computed in float32 (float64 stays float64) and autograd gives the exact backward pass.
This file is the oracle the fast kernels are tested against: it shares no code with them.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

NUM_DIRECTIONS = 4
NUM_FIELDS = 5  # lambda, u, wt_prev, wt_self, wt_next
WEIGHT_EPS = 1e-6


class ScanDirection(enum.IntEnum):
    """Direction order of the heads' output (SPEC §2)."""

    TOP_DOWN = 0
    BOTTOM_UP = 1
    LEFT_RIGHT = 2
    RIGHT_LEFT = 3


class Field(enum.IntEnum):
    """Field order inside one direction of the heads' output (SPEC §2)."""

    LAMBDA = 0
    U = 1
    WT_PREV = 2
    WT_SELF = 3
    WT_NEXT = 4


def check_propagate_inputs(z: torch.Tensor, g: torch.Tensor) -> None:
    """Raise a ValueError naming the tensor and the expected shape when inputs are malformed."""
    for name, tensor in (("Z", z), ("G", g)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (B, H, W, channels), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    batch, height, width, channels = z.shape
    if min(batch, height, width, channels) < 1:
        raise ValueError(f"Z must have non-empty dimensions (B, H, W, Cc), got shape {tuple(z.shape)}")
    expected_g = (batch, height, width, NUM_DIRECTIONS * NUM_FIELDS * channels)
    if tuple(g.shape) != expected_g:
        raise ValueError(
            f"G must have shape (B, H, W, 20*Cc) = {expected_g} for Z of shape {tuple(z.shape)}, got {tuple(g.shape)}"
        )
    if z.dtype != g.dtype:
        raise ValueError(f"Z and G must share a dtype, got Z {z.dtype} and G {g.dtype}")
    if z.device != g.device:
        raise ValueError(f"Z and G must be on one device, got Z on {z.device} and G on {g.device}")


def split_heads(g: torch.Tensor) -> torch.Tensor:
    """View G (B, H, W, 20*Cc) as (B, H, W, direction, field, Cc)."""
    *lead, width = g.shape
    return g.view(*lead, NUM_DIRECTIONS, NUM_FIELDS, width // (NUM_DIRECTIONS * NUM_FIELDS))


def neighbour_weights(wt_prev: torch.Tensor, wt_self: torch.Tensor, wt_next: torch.Tensor) -> torch.Tensor:
    """Row-stochastic weights of the (p-1, p, p+1) neighbours; the position axis is dim -2.

    Returns a tensor of shape (..., M, C, 3) where invalid neighbours (off the line's ends)
    have weight 0 and the valid ones sum to 1 (normalizer clamped at 1e-6).
    """
    length = wt_prev.shape[-2]
    position = torch.arange(length, device=wt_prev.device).unsqueeze(-1)
    logits = torch.stack((wt_prev, wt_self, wt_next), dim=-1)
    valid = torch.stack((position >= 1, torch.ones_like(position, dtype=torch.bool), position <= length - 2), dim=-1)
    gates = torch.where(valid, torch.sigmoid(logits), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return gates / gates.sum(dim=-1, keepdim=True).clamp_min(WEIGHT_EPS)


def _scan_lines(z: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """Top-down line scan. z: (N, L, M, C); fields: (N, L, M, 5, C). Returns y: (N, L, M, C)."""
    weights = neighbour_weights(
        fields[..., Field.WT_PREV, :], fields[..., Field.WT_SELF, :], fields[..., Field.WT_NEXT, :]
    )
    source = fields[..., Field.LAMBDA, :] * z
    state = torch.zeros_like(z[:, 0])
    outputs = []
    for line in range(z.shape[1]):
        from_prev = F.pad(state, (0, 0, 1, 0))[:, :-1]  # h[t-1, p-1]
        from_next = F.pad(state, (0, 0, 0, 1))[:, 1:]  # h[t-1, p+1]
        line_weights = weights[:, line]
        state = (
            line_weights[..., 0] * from_prev
            + line_weights[..., 1] * state
            + line_weights[..., 2] * from_next
            + source[:, line]
        )
        outputs.append(fields[:, line, :, Field.U, :] * state)
    return torch.stack(outputs, dim=1)


def _scan_pair(z: torch.Tensor, forward_fields: torch.Tensor, backward_fields: torch.Tensor) -> torch.Tensor:
    """Scan lines along dim 1 forwards with one field set and backwards with another; sum both.

    z: (B, L, M, C); *_fields: (B, L, M, 5, C). Both scans run in one batched loop.
    """
    z_both = torch.cat((z, z.flip(1)), dim=0)
    fields_both = torch.cat((forward_fields, backward_fields.flip(1)), dim=0)
    y_forward, y_backward = _scan_lines(z_both, fields_both).chunk(2, dim=0)
    return y_forward + y_backward.flip(1)


def propagate_ref(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """C-GSPN 4-direction propagation, ``Y = propagate(Z, G)`` (SPEC §3).

    Args:
        z: (B, H, W, Cc) down-projected patch features, channels-last.
        g: (B, H, W, 20*Cc) heads' output, viewed as (B, H, W, 4 directions, 5 fields, Cc)
            with directions (TD, BU, LR, RL) and fields (lambda, u, wt_prev, wt_self, wt_next).

    Returns:
        Y (B, H, W, Cc) in the dtype of ``z``: the sum of the four directional scans.
    """
    check_propagate_inputs(z, g)
    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z32 = z.to(compute_dtype)
    heads = split_heads(g.to(compute_dtype))
    # rows as lines: top-down and bottom-up
    y = _scan_pair(z32, heads[..., ScanDirection.TOP_DOWN, :, :], heads[..., ScanDirection.BOTTOM_UP, :, :])
    # columns as lines: transpose H and W, then left-right and right-left
    y_columns = _scan_pair(
        z32.transpose(1, 2),
        heads[..., ScanDirection.LEFT_RIGHT, :, :].transpose(1, 2),
        heads[..., ScanDirection.RIGHT_LEFT, :, :].transpose(1, 2),
    )
    return (y + y_columns.transpose(1, 2)).to(z.dtype)
