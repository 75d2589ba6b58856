"""Initialization of propagation sublayers from a teacher's attention (SPEC §4, "conversion init").

With uniform attention weights, a multi-head attention sublayer maps every token to
``mean_tokens(W_O (W_V x + b_V)) + b_O``: the value-output path ``A = W_O W_V`` (C x C) followed by averaging.
A propagation sublayer computes ``up(scan(down(x)))``, so the closest start is

* ``down`` / ``up``: the best rank-Cc approximation of ``A`` (truncated SVD ``A ~ U_k S_k V_k^T``), split
  symmetrically: ``down.weight = S_k^{1/2} V_k^T`` (Cc x C), ``up.weight = U_k S_k^{1/2}`` (C x Cc);
  ``down.bias = 0`` and ``up.bias = W_O b_V + b_O`` (attention rows sum to one, so the biases pass through).
* ``heads`` (Cc -> 20 Cc, fields per SPEC §2 in the order direction (TD, BU, LR, RL) x field
  (lambda, u, wt_prev, wt_self, wt_next) x channel): weight zero and bias
  ``lambda = 1``, ``u = 1 / (H0 + W0 + 2)``, ``wt_* = 0``, with ``(H0, W0)`` the nominal patch grid.
  Equal logits make every scan step average its valid neighbours; for a spatially constant input ``Z`` the four
  directions then return ``(i + 1) + (H0 - i) + (j + 1) + (W0 - j) = H0 + W0 + 2`` times ``Z``, so the chosen ``u``
  makes the merged output equal ``Z``: the sublayer starts as ``up(down(x)) ~ A x + bias``, i.e. exactly the uniform
  attention's value-output map on smooth inputs, at the right scale. Training then learns content-dependent
  lambda/u/weights from the zero weight matrix (its gradient is ``dG Z^T``, non-zero).
"""

from __future__ import annotations

import torch

NUM_DIRECTIONS = 4
NUM_FIELDS = 5
LAMBDA, U, WT_PREV, WT_SELF, WT_NEXT = range(NUM_FIELDS)


def value_output_factors(
    v_weight: torch.Tensor,
    out_weight: torch.Tensor,
    rank: int,
    v_bias: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Rank-``rank`` factors of the value-output map ``A = W_O W_V`` (torch Linear convention, ``y = A x``).

    Returns ``down.weight`` (rank x C), ``down.bias`` (zeros), ``up.weight`` (C x rank) and ``up.bias``
    (``W_O b_V + b_O``), in the input dtype and on the input device; the SVD runs in float64.
    """
    width = v_weight.shape[1]
    if not 1 <= rank <= width:
        raise ValueError(f"propagation rank must be in [1, {width}], got {rank}")
    dtype = v_weight.dtype
    value_output = out_weight.double() @ v_weight.double()
    left, singular, right_t = torch.linalg.svd(value_output)
    root = singular[:rank].sqrt()
    down = root[:, None] * right_t[:rank]
    up = left[:, :rank] * root[None, :]
    bias = torch.zeros(out_weight.shape[0], dtype=torch.float64, device=out_weight.device)
    if v_bias is not None:
        bias = bias + out_weight.double() @ v_bias.double()
    if out_bias is not None:
        bias = bias + out_bias.double()
    return {
        "down.weight": down.to(dtype),
        "down.bias": torch.zeros(rank, dtype=dtype, device=v_weight.device),
        "up.weight": up.to(dtype),
        "up.bias": bias.to(dtype),
    }


def propagation_heads_init(
    channels: int, grid: tuple[int, int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
):
    """Weight (20 Cc x Cc, zeros) and bias (20 Cc) of the heads Linear, as documented in the module docstring."""
    height, width = grid
    bias = torch.zeros(NUM_DIRECTIONS, NUM_FIELDS, channels, dtype=dtype, device=device)
    bias[:, LAMBDA] = 1.0
    bias[:, U] = 1.0 / (height + width + 2)
    weight = torch.zeros(NUM_DIRECTIONS * NUM_FIELDS * channels, channels, dtype=dtype, device=device)
    return {"heads.weight": weight, "heads.bias": bias.reshape(-1)}


def init_propagation_from_attention(
    attention: dict[str, torch.Tensor], channels: int, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """All parameters of a `CGSPNPropagation` (``down``, ``heads``, ``up``) from a teacher block's attention tensors.

    Args:
        attention: the block's attention in C-GSPN names: ``v_proj.weight``, ``out_proj.weight`` and optionally
            ``v_proj.bias`` / ``out_proj.bias`` (query/key tensors are ignored: uniform attention needs none).
        channels: ``Cc``, the propagation width.
        grid: the nominal patch grid (height, width) for the heads' ``u`` bias.
    """
    factors = value_output_factors(
        attention["v_proj.weight"],
        attention["out_proj.weight"],
        channels,
        attention.get("v_proj.bias"),
        attention.get("out_proj.bias"),
    )
    value = attention["v_proj.weight"]
    return {**factors, **propagation_heads_init(channels, grid, value.dtype, value.device)}


__all__ = ["init_propagation_from_attention", "propagation_heads_init", "value_output_factors"]
