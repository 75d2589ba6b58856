"""Triton backend of the C-GSPN propagation operator (SPEC §3).

One launch scans all four directions: program ``(channel block, direction, batch)`` walks the
``L`` lines of its direction, each line in chunks of ``BLOCK_M`` positions x ``BLOCK_C``
channels. Channels are the contiguous axis of Z and G, so every load is a ``BLOCK_C``-wide
coalesced segment per position, read in place for every direction (no transposed or flipped
copies); with ``BLOCK_C = 64`` a position's five fields are five adjacent 128-byte lines, which
the DRAM serves far better than scattered 32-byte pieces (measured: 2x). The float32 state of
the previous line, ``h[t-1, p-1..p+1]``, is read back from a small line buffer (two slots,
one barrier a line; it stays in L1/L2), so a line of any length fits one program.

The four directional outputs are written as float32 partials and merged, in the fixed order
``(TD + BU) + (LR + RL)`` of the reference, by a second small kernel that also casts to the input
dtype; so the result is bitwise deterministic (no atomics).

Backward is a reverse scan. The training forward stores every line's state ``h`` (float32); the
reverse scan reads ``h[t]`` and ``h[t-1]`` from it and carries the adjoint ``dL/dh`` across
lines through the same kind of line buffer. Storing costs the forward 16 bytes per element
(H100, 2058 px, B=32: training forward 1.61 ms against 1.31 ms for inference, CUDA backend)
where recomputing would cost the backward a whole forward pass that writes the same states.

This module holds the kernels and their launchers only: the package's ``__init__`` registers
them as the ops of the ``torch-universal`` variant (its own namespace), and ``_autograd`` gives
them shapes and a backward, as for the compiled CUDA ops. Importing it needs only torch and triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._layout import NUM_DIRECTIONS, NUM_FIELDS, WEIGHT_EPS

# the same numbers as compile-time constants for the kernels
_DIRECTIONS = tl.constexpr(NUM_DIRECTIONS)
_FIELDS = tl.constexpr(NUM_FIELDS)
_EPS = tl.constexpr(WEIGHT_EPS)


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _line_geometry(direction, height, width):
    """Lines of ``direction``: count, length, grid step between lines and between positions."""
    is_column = direction >= 2
    num_lines = tl.where(is_column, width, height)
    line_len = tl.where(is_column, height, width)
    line_step = tl.where(is_column, 1, width)
    pos_step = tl.where(is_column, width, 1)
    return num_lines, line_len, line_step, pos_step


@triton.jit
def _div(a, b, PRECISE: tl.constexpr):
    """a / b, correctly rounded for float32 inputs (PRECISE); else the fast approximate division."""
    if PRECISE:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _sigmoid(x, PRECISE: tl.constexpr):
    return _div(1.0, 1.0 + tl.exp(-x), PRECISE)


@triton.jit(do_not_specialize=["batch", "height", "width", "numel", "state_dir_stride", "state_batch_stride"])
def _propagate_fwd_kernel(
    # tensors: inputs (B, H, W, Cc) and (B, H, W, 20*Cc); partials (4, B*H*W*Cc) float32;
    # state: line buffer (ring of 2 lines) or every line's state (training), float32
    z_ptr,
    g_ptr,
    partial_ptr,
    state_ptr,
    # sizes
    batch,
    height,
    width,
    channels,
    numel,
    # state buffer layout: offset of (direction, batch) region
    state_dir_stride,
    state_batch_stride,
    # meta
    RING: tl.constexpr,  # 0: keep every line's state (training), else a ring of 2 lines
    BLOCK_M: tl.constexpr,  # positions a chunk (a line is scanned in chunks of BLOCK_M)
    BLOCK_C: tl.constexpr,
    PRECISE: tl.constexpr,  # correctly rounded divisions (float32 inputs)
):
    pid_c = tl.program_id(0)
    direction = tl.program_id(1)
    b = tl.program_id(2)
    num_lines, line_len, line_step, pos_step = _line_geometry(direction, height, width)
    reverse = (direction % 2) == 1

    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = (c < channels)[None, :]
    grid_base = b.to(tl.int64) * height * width
    partial_base = partial_ptr + direction * numel
    field_base = g_ptr + direction * _FIELDS * channels + c[None, :]
    state_base = state_ptr + direction.to(tl.int64) * state_dir_stride + b.to(tl.int64) * state_batch_stride
    line_elems = line_len * channels

    for t in range(0, num_lines):
        line = tl.where(reverse, num_lines - 1 - t, t)
        if RING == 0:
            prev_slot = t - 1
            slot = t
        else:
            prev_slot = (t + 1) % 2
            slot = t % 2
        for start in range(0, line_len, BLOCK_M):
            p = start + tl.arange(0, BLOCK_M)
            mask = (p < line_len)[:, None] & c_ok
            has_prev = (p >= 1)[:, None]
            has_next = (p + 1 < line_len)[:, None]
            cell = grid_base + line * line_step + (p * pos_step).to(tl.int64)
            z_off = cell[:, None] * channels + c[None, :]
            g_row = field_base + cell[:, None] * (_DIRECTIONS * _FIELDS * channels)
            z = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
            lam = tl.load(g_row, mask=mask, other=0.0).to(tl.float32)
            u = tl.load(g_row + channels, mask=mask, other=0.0).to(tl.float32)
            wt_prev = tl.load(g_row + 2 * channels, mask=mask, other=0.0).to(tl.float32)
            wt_self = tl.load(g_row + 3 * channels, mask=mask, other=0.0).to(tl.float32)
            wt_next = tl.load(g_row + 4 * channels, mask=mask, other=0.0).to(tl.float32)

            # h[t-1, p-1 .. p+1] from the state buffer (zero for t = 0)
            state_pos = p[:, None] * channels + c[None, :]
            prev_line = state_base + prev_slot * line_elems + state_pos
            has_line_before = t > 0
            h_left = tl.load(prev_line - channels, mask=mask & has_prev & has_line_before, other=0.0)
            h_mid = tl.load(prev_line, mask=mask & has_line_before, other=0.0)
            h_right = tl.load(prev_line + channels, mask=mask & has_next & has_line_before, other=0.0)

            gate_prev = tl.where(has_prev, _sigmoid(wt_prev, PRECISE), 0.0)
            gate_self = _sigmoid(wt_self, PRECISE)
            gate_next = tl.where(has_next, _sigmoid(wt_next, PRECISE), 0.0)
            norm = tl.maximum(gate_prev + gate_self + gate_next, _EPS)
            h = (
                _div(gate_prev, norm, PRECISE) * h_left
                + _div(gate_self, norm, PRECISE) * h_mid
                + _div(gate_next, norm, PRECISE) * h_right
                + lam * z
            )

            tl.store(state_base + slot * line_elems + state_pos, h, mask=mask)
            tl.store(partial_base + z_off, u * h, mask=mask)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["batch", "height", "width", "numel", "carry_line_elems"])
def _propagate_bwd_kernel(
    # tensors: z, g as in forward; dy (B, H, W, Cc); state: saved float32 line states
    # (4, B, H*W, Cc); carry: float32 ring (4, B, 2 slots, 3 arrays, max(H, W)*Cc) of what
    # line t+1 drew from each position of line t; dz_partial (4, B*H*W*Cc) float32;
    # dg (B, H, W, 20*Cc) in the input dtype
    z_ptr,
    g_ptr,
    dy_ptr,
    state_ptr,
    carry_ptr,
    dz_partial_ptr,
    dg_ptr,
    # sizes
    batch,
    height,
    width,
    channels,
    numel,
    carry_line_elems,
    # meta
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISE: tl.constexpr,
):
    pid_c = tl.program_id(0)
    direction = tl.program_id(1)
    b = tl.program_id(2)
    num_lines, line_len, line_step, pos_step = _line_geometry(direction, height, width)
    reverse = (direction % 2) == 1

    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = (c < channels)[None, :]
    grid_base = b.to(tl.int64) * height * width
    dz_base = dz_partial_ptr + direction * numel
    g_stride = _DIRECTIONS * _FIELDS * channels
    field_offset = direction * _FIELDS * channels + c[None, :]
    state_base = state_ptr + (direction.to(tl.int64) * batch + b) * height * width * channels
    carry_base = carry_ptr + (direction.to(tl.int64) * batch + b) * 6 * carry_line_elems
    line_elems = line_len * channels
    out_ty = dg_ptr.dtype.element_ty

    for step in range(0, num_lines):
        t = num_lines - 1 - step  # line index in scan order, visited last to first
        line = tl.where(reverse, num_lines - 1 - t, t)
        read_slot = carry_base + ((step + 1) % 2) * 3 * carry_line_elems  # written at step - 1
        write_slot = carry_base + (step % 2) * 3 * carry_line_elems
        for start in range(0, line_len, BLOCK_M):
            p = start + tl.arange(0, BLOCK_M)
            mask = (p < line_len)[:, None] & c_ok
            has_prev = (p >= 1)[:, None]
            has_next = (p + 1 < line_len)[:, None]
            cell = grid_base + line * line_step + (p * pos_step).to(tl.int64)
            z_off = cell[:, None] * channels + c[None, :]
            g_off = cell[:, None] * g_stride + field_offset
            z = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
            lam = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
            u = tl.load(g_ptr + g_off + channels, mask=mask, other=0.0).to(tl.float32)
            wt_prev = tl.load(g_ptr + g_off + 2 * channels, mask=mask, other=0.0).to(tl.float32)
            wt_self = tl.load(g_ptr + g_off + 3 * channels, mask=mask, other=0.0).to(tl.float32)
            wt_next = tl.load(g_ptr + g_off + 4 * channels, mask=mask, other=0.0).to(tl.float32)
            line_pos = p[:, None] * channels + c[None, :]
            this_line = state_base + t * line_elems + line_pos
            h = tl.load(this_line, mask=mask, other=0.0)
            has_line_before = t > 0
            h_left = tl.load(this_line - line_elems - channels, mask=mask & has_prev & has_line_before, other=0.0)
            h_mid = tl.load(this_line - line_elems, mask=mask & has_line_before, other=0.0)
            h_right = tl.load(this_line - line_elems + channels, mask=mask & has_next & has_line_before, other=0.0)

            # adjoint a = dL/dh[t]: own output plus what line t+1 drew from p
            later = step > 0
            from_right = tl.load(read_slot + line_pos + channels, mask=mask & has_next & later, other=0.0)
            from_self = tl.load(read_slot + carry_line_elems + line_pos, mask=mask & later, other=0.0)
            from_left = tl.load(
                read_slot + 2 * carry_line_elems + line_pos - channels, mask=mask & has_prev & later, other=0.0
            )
            adj = dy * u + from_self + from_right + from_left

            gate_prev = tl.where(has_prev, _sigmoid(wt_prev, PRECISE), 0.0)
            gate_self = _sigmoid(wt_self, PRECISE)
            gate_next = tl.where(has_next, _sigmoid(wt_next, PRECISE), 0.0)
            total = gate_prev + gate_self + gate_next
            norm = tl.maximum(total, _EPS)
            w_prev = _div(gate_prev, norm, PRECISE)
            w_self = _div(gate_self, norm, PRECISE)
            w_next = _div(gate_next, norm, PRECISE)
            tl.store(write_slot + line_pos, w_prev * adj, mask=mask)
            tl.store(write_slot + carry_line_elems + line_pos, w_self * adj, mask=mask)
            tl.store(write_slot + 2 * carry_line_elems + line_pos, w_next * adj, mask=mask)

            # weights: w_k = gate_k / max(sum gates, eps); gate_k = sigmoid(logit_k) where valid
            dw_prev = adj * h_left
            dw_self = adj * h_mid
            dw_next = adj * h_right
            d_norm = -_div(dw_prev * w_prev + dw_self * w_self + dw_next * w_next, norm, PRECISE)
            d_total = tl.where(total >= _EPS, d_norm, 0.0)
            d_prev = tl.where(has_prev, (_div(dw_prev, norm, PRECISE) + d_total) * gate_prev * (1.0 - gate_prev), 0.0)
            d_self = (_div(dw_self, norm, PRECISE) + d_total) * gate_self * (1.0 - gate_self)
            d_next = tl.where(has_next, (_div(dw_next, norm, PRECISE) + d_total) * gate_next * (1.0 - gate_next), 0.0)

            dg_row = dg_ptr + g_off
            tl.store(dg_row, (adj * z).to(out_ty), mask=mask)
            tl.store(dg_row + channels, (dy * h).to(out_ty), mask=mask)
            tl.store(dg_row + 2 * channels, d_prev.to(out_ty), mask=mask)
            tl.store(dg_row + 3 * channels, d_self.to(out_ty), mask=mask)
            tl.store(dg_row + 4 * channels, d_next.to(out_ty), mask=mask)
            tl.store(dz_base + z_off, adj * lam, mask=mask)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["numel"])
def _merge_directions_kernel(partial_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out = (p_TD + p_BU) + (p_LR + p_RL), cast to out's dtype (the reference's order)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    td = tl.load(partial_ptr + offs, mask=mask, other=0.0)
    bu = tl.load(partial_ptr + numel + offs, mask=mask, other=0.0)
    lr = tl.load(partial_ptr + 2 * numel + offs, mask=mask, other=0.0)
    rl = tl.load(partial_ptr + 3 * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, ((td + bu) + (lr + rl)).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def launch_config(batch: int, height: int, width: int, channels: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps).

    Whole 64-channel rows a program while the grid fills the GPU (each position then reads
    five consecutive 128-byte lines: DRAM-friendly), halved down to 16 channels while there are
    fewer programs than half the SMs; lines in chunks of up to 2048 / BLOCK_C positions.
    """
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    block_c = min(triton.next_power_of_2(channels), 64)
    while block_c > 16 and 2 * batch * NUM_DIRECTIONS * triton.cdiv(channels, block_c) < sms:
        block_c //= 2
    block_m = min(triton.next_power_of_2(max(height, width)), max(16, 2048 // block_c))
    num_warps = 8 if block_m * block_c >= 2048 else 4
    return block_m, block_c, num_warps


def _merge(partials: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(like)
    numel = like.numel()
    block = 1024
    _merge_directions_kernel[(triton.cdiv(numel, block),)](partials, out, numel, BLOCK=block, num_warps=4)
    return out


def _propagate_fwd(
    z: torch.Tensor, g: torch.Tensor, save_states: bool, config: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch. Returns (Y, states); states is (4, B, H*W, Cc) float32 or empty."""
    z, g = z.contiguous(), g.contiguous()
    batch, height, width, channels = z.shape
    block_m, block_c, num_warps = config or launch_config(batch, height, width, channels, z.device)
    partials = torch.empty((NUM_DIRECTIONS, *z.shape), device=z.device, dtype=torch.float32)
    if save_states:
        states = torch.empty((NUM_DIRECTIONS, batch, height * width, channels), device=z.device, dtype=torch.float32)
        buffer, ring = states, 0
    else:
        states = z.new_empty((0,), dtype=torch.float32)
        buffer = torch.empty(
            (NUM_DIRECTIONS, batch, 2, max(height, width), channels), device=z.device, dtype=torch.float32
        )
        ring = 2
    grid = (triton.cdiv(channels, block_c), NUM_DIRECTIONS, batch)
    _propagate_fwd_kernel[grid](
        z,
        g,
        partials,
        buffer,
        batch,
        height,
        width,
        channels,
        z.numel(),
        buffer.stride(0),
        buffer.stride(1),
        RING=ring,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
        PRECISE=z.dtype == torch.float32,
        num_warps=num_warps,
    )
    return _merge(partials, z), states


def _propagate_bwd(
    dy: torch.Tensor,
    z: torch.Tensor,
    g: torch.Tensor,
    states: torch.Tensor,
    config: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward launch from the saved states. Returns (dZ, dG) in the input dtype."""
    z, g, dy = z.contiguous(), g.contiguous(), dy.contiguous().to(z.dtype)
    batch, height, width, channels = z.shape
    block_m, block_c, num_warps = config or launch_config(batch, height, width, channels, z.device)
    carry_line = max(height, width) * channels
    carry = torch.empty((NUM_DIRECTIONS, batch, 2, 3, carry_line), device=z.device, dtype=torch.float32)
    dz_partials = torch.empty((NUM_DIRECTIONS, *z.shape), device=z.device, dtype=torch.float32)
    dg = torch.empty_like(g)
    grid = (triton.cdiv(channels, block_c), NUM_DIRECTIONS, batch)
    _propagate_bwd_kernel[grid](
        z,
        g,
        dy,
        states,
        carry,
        dz_partials,
        dg,
        batch,
        height,
        width,
        channels,
        z.numel(),
        carry_line,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
        PRECISE=z.dtype == torch.float32,
        num_warps=num_warps,
    )
    return _merge(dz_partials, z), dg


def propagate_fwd(z: torch.Tensor, g: torch.Tensor, save_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``propagate_fwd`` op of the Triton variant: (Y, states), as the compiled CUDA op."""
    return _propagate_fwd(z, g, save_states)


def propagate_bwd(
    dy: torch.Tensor, z: torch.Tensor, g: torch.Tensor, states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``propagate_bwd`` op of the Triton variant: (dZ, dG); empty ``states`` are recomputed."""
    if states.numel() == 0:  # forward ran without saving: recompute the states
        states = _propagate_fwd(z, g, True)[1]
    return _propagate_bwd(dy, z, g, states)
