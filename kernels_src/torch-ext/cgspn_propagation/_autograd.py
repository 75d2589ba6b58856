"""The one autograd glue of the ``propagate_fwd`` / ``propagate_bwd`` ops, for every variant.

The compiled CUDA variant defines its ops in C++ (``torch_binding.cpp``), the Triton variant with
``torch.library.custom_op``; both have the schemas
``propagate_fwd(Tensor z, Tensor g, bool save_states) -> (Tensor y, Tensor states)`` and
``propagate_bwd(Tensor dy, Tensor z, Tensor g, Tensor states) -> (Tensor dz, Tensor dg)``, and get
their fake (meta) implementations and their backward here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._layout import NUM_DIRECTIONS


def register_fake_and_autograd(op_name: Callable[[str], str]) -> None:
    """Give ``<ns>::propagate_fwd`` / ``propagate_bwd`` shapes for tracing and a backward."""
    fwd_name, bwd_name = op_name("propagate_fwd"), op_name("propagate_bwd")

    @torch.library.register_fake(fwd_name)
    def _fwd_fake(z, g, save_states):
        batch, height, width, channels = z.shape
        shape = (NUM_DIRECTIONS, batch, height * width, channels) if save_states else (0,)
        return torch.empty_like(z, memory_format=torch.contiguous_format), z.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake(bwd_name)
    def _bwd_fake(dy, z, g, states):
        return (
            torch.empty_like(z, memory_format=torch.contiguous_format),
            torch.empty_like(g, memory_format=torch.contiguous_format),
        )

    namespace, _, _ = fwd_name.partition("::")
    bwd_op = getattr(torch.ops, namespace).propagate_bwd

    def setup_context(ctx, inputs, output):
        z, g, _ = inputs
        ctx.save_for_backward(z, g, output[1])

    def backward(ctx, grad_y, _grad_states):
        z, g, states = ctx.saved_tensors
        grad_z, grad_g = bwd_op(grad_y.contiguous(), z, g, states)
        return grad_z, grad_g, None

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def make_propagate(fwd_op) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``propagate(z, g)`` over a forward op: saves the states only when a gradient is needed."""

    def propagate(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """C-GSPN 4-direction propagation ``Y = propagate(Z, G)``; Z (B,H,W,Cc), G (B,H,W,20*Cc)."""
        save_states = torch.is_grad_enabled() and (z.requires_grad or g.requires_grad)
        return fwd_op(z.contiguous(), g.contiguous(), save_states)[0]

    return propagate
