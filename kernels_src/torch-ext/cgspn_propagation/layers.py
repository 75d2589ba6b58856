"""Hub layer that ``kernels.kernelize`` puts in place of the model's ``CGSPNPropagation.forward``."""

from __future__ import annotations

import torch
from torch import nn


class CGSPNPropagation(nn.Module):
    """Propagation sublayer (SPEC §2) with the fused kernel; stateless, reads the host's layers.

    The host module provides ``down`` (Linear C->Cc), ``heads`` (Linear Cc->20*Cc) and ``up``
    (Linear Cc->C). Input (B, P+H*W, C): P prefix tokens then the H*W patch tokens, row-major.
    """

    can_torch_compile: bool = True
    has_backward: bool = True

    down: nn.Linear
    heads: nn.Linear
    up: nn.Linear

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        from . import propagate

        batch, seq_len, channels = hidden_states.shape
        num_prefix = seq_len - height * width
        patches = hidden_states[:, num_prefix:].reshape(batch, height, width, channels)
        z = self.down(patches)
        y = propagate(z, self.heads(z))
        out = self.up(y).reshape(batch, height * width, -1)
        if num_prefix == 0:
            return out
        # prefix tokens: up() of the grid mean of Y, the mean accumulated in float32 (SPEC §2)
        prefix = self.up(y.mean(dim=(1, 2), dtype=torch.float32).to(y.dtype)).unsqueeze(1)
        return torch.cat((prefix.expand(-1, num_prefix, -1), out), dim=1)
