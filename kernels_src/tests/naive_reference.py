"""The operator written out position by position (float64): the kernel tests' own oracle.

Slow and only for small shapes; it keeps these tests independent of the model package. Layout of
G (B, H, W, 20*Cc): (direction, field, channel) with directions (top-down, bottom-up, left-right,
right-left) and fields (lambda, u, wt_prev, wt_self, wt_next). Rows are the lines of the first two
directions, columns those of the last two; the odd directions visit their lines in reverse.
"""

import torch


def naive_propagate(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    z, g = z.double(), g.double()
    batch, height, width, channels = z.shape
    fields = g.view(batch, height, width, 4, 5, channels)
    y = torch.zeros_like(z)
    for direction in range(4):
        num_lines, length = (height, width) if direction < 2 else (width, height)
        previous = z.new_zeros(batch, length, channels)
        for step in range(num_lines):
            line = step if direction % 2 == 0 else num_lines - 1 - step
            state = torch.zeros_like(previous)
            for p in range(length):
                row, col = (line, p) if direction < 2 else (p, line)
                lam, u, wt_prev, wt_self, wt_next = fields[:, row, col, direction].unbind(1)
                gate_prev = torch.sigmoid(wt_prev) if p > 0 else torch.zeros_like(wt_prev)
                gate_next = torch.sigmoid(wt_next) if p < length - 1 else torch.zeros_like(wt_next)
                gate_self = torch.sigmoid(wt_self)
                norm = (gate_prev + gate_self + gate_next).clamp_min(1e-6)
                value = lam * z[:, row, col] + gate_self / norm * previous[:, p]
                if p > 0:
                    value = value + gate_prev / norm * previous[:, p - 1]
                if p < length - 1:
                    value = value + gate_next / norm * previous[:, p + 1]
                state[:, p] = value
                y[:, row, col] += u * value
            previous = state
    return y
