"""C-GSPN propagation kernel (Hugging Face kernels layout).

``propagate(z, g)``: fused 4-direction spatial propagation, Z (B, H, W, Cc) and G
(B, H, W, 20*Cc) channels-last, Y (B, H, W, Cc) in the input dtype, differentiable and
``torch.compile``-friendly. ``propagate_fwd`` / ``propagate_bwd`` are the raw ops, registered
under this build's own namespace (``add_op_namespace_prefix``); ``BACKEND`` says whether this
variant is the compiled CUDA kernel (``"cuda"``) or the Triton one (``"triton"``, the
``torch-universal`` variant). ``layers.CGSPNPropagation`` is the layer ``kernels.kernelize`` swaps
into a C-GSPN model.
"""

from __future__ import annotations

import torch

from . import layers
from ._autograd import make_propagate, register_fake_and_autograd
from ._ops import BACKEND, add_op_namespace_prefix, ops

if BACKEND == "triton":  # the compiled variant defines its ops in torch_binding.cpp
    from . import _triton

    torch.library.custom_op(add_op_namespace_prefix("propagate_fwd"), mutates_args=())(_triton.propagate_fwd)
    torch.library.custom_op(add_op_namespace_prefix("propagate_bwd"), mutates_args=())(_triton.propagate_bwd)
register_fake_and_autograd(add_op_namespace_prefix)

propagate_fwd = ops.propagate_fwd
propagate_bwd = ops.propagate_bwd
propagate = make_propagate(propagate_fwd)

__all__ = ["BACKEND", "add_op_namespace_prefix", "layers", "propagate", "propagate_bwd", "propagate_fwd"]
