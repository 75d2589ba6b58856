"""The PyTorch reference operator against SPEC §3, written out per element."""

import math

import pytest
import torch

from cgspn.propagation_reference import ScanDirection, neighbour_weights, propagate_ref

SHAPES = [  # (B, H, W, Cc)
    (1, 1, 1, 1),
    (1, 1, 6, 2),
    (1, 6, 1, 2),
    (2, 5, 7, 3),
    (1, 4, 4, 5),
    (3, 3, 8, 1),
    (1, 7, 2, 4),
]

# (line t, position p) -> grid (i, j) for each direction, and line count L / length M (SPEC §3 table)
GRID_OF = {
    ScanDirection.TOP_DOWN: lambda t, p, H, W: (t, p),
    ScanDirection.BOTTOM_UP: lambda t, p, H, W: (H - 1 - t, p),
    ScanDirection.LEFT_RIGHT: lambda t, p, H, W: (p, t),
    ScanDirection.RIGHT_LEFT: lambda t, p, H, W: (p, W - 1 - t),
}
LINES_OF = {
    ScanDirection.TOP_DOWN: lambda H, W: (H, W),
    ScanDirection.BOTTOM_UP: lambda H, W: (H, W),
    ScanDirection.LEFT_RIGHT: lambda H, W: (W, H),
    ScanDirection.RIGHT_LEFT: lambda H, W: (W, H),
}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def naive_propagate(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """SPEC §3 literally: one Python float at a time, in double precision."""
    B, H, W, C = z.shape
    zl = z.double().tolist()
    gl = g.double().reshape(B, H, W, 4, 5, C).tolist()
    y = [[[[0.0] * C for _ in range(W)] for _ in range(H)] for _ in range(B)]
    for b in range(B):
        for d in ScanDirection:
            L, M = LINES_OF[d](H, W)
            for c in range(C):
                prev_line = [0.0] * M
                for t in range(L):
                    line = []
                    for p in range(M):
                        i, j = GRID_OF[d](t, p, H, W)
                        lam, u, wp, ws, wn = (gl[b][i][j][d][f][c] for f in range(5))
                        gates = {k: sigmoid(w) for k, w in ((-1, wp), (0, ws), (1, wn)) if 0 <= p + k < M}
                        norm = max(sum(gates.values()), 1e-6)
                        h = sum(gate / norm * prev_line[p + k] for k, gate in gates.items())
                        h += lam * zl[b][i][j][c]
                        line.append(h)
                        y[b][i][j][c] += u * h
                    prev_line = line
    return torch.tensor(y, dtype=torch.float64)


def random_inputs(shape, dtype=torch.float32, seed=0, requires_grad=False):
    B, H, W, C = shape
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, H, W, C, generator=generator, dtype=torch.float64).to(dtype)
    g = (2 * torch.randn(B, H, W, 20 * C, generator=generator, dtype=torch.float64)).to(dtype)
    return z.requires_grad_(requires_grad), g.requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_naive_per_element_implementation(shape):
    z, g = random_inputs(shape)
    expected = naive_propagate(z, g)
    actual = propagate_ref(z, g)
    assert actual.dtype == torch.float32 and actual.shape == shape
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_float64_matches_naive_to_double_precision():
    z, g = random_inputs((2, 4, 5, 3), dtype=torch.float64)
    torch.testing.assert_close(propagate_ref(z, g), naive_propagate(z, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 4, 2), (2, 2, 3, 1), (1, 1, 4, 2)])
def test_gradcheck_float64(shape):
    z, g = random_inputs(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(propagate_ref, (z, g), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_dtype_and_accuracy(dtype):
    z, g = random_inputs((2, 6, 5, 4), dtype=dtype)
    y = propagate_ref(z, g)
    assert y.dtype == dtype
    exact = propagate_ref(z.float(), g.float())  # same (rounded) inputs, float32 output
    # float32 accumulation inside: the only error left is the final rounding to `dtype`
    eps = torch.finfo(dtype).eps
    assert (y.float() - exact).abs().max() <= eps * exact.abs().max()


def test_weights_are_row_stochastic_and_drop_invalid_neighbours():
    # gates sum to at least 1e-6 unless all three logits are below about -14.5
    logits = (6 * torch.randn(3, 7, 5, 3, generator=torch.Generator().manual_seed(0))).clamp(-12, 12)
    weights = neighbour_weights(logits[..., 0], logits[..., 1], logits[..., 2])
    assert weights.shape == (3, 7, 5, 3)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7, 5))
    assert (weights[:, 0, :, 0] == 0).all() and (weights[:, -1, :, 2] == 0).all()
    single = neighbour_weights(logits[:, :1, :, 0], logits[:, :1, :, 1], logits[:, :1, :, 2])
    torch.testing.assert_close(single, torch.tensor([0.0, 1.0, 0.0]).expand(3, 1, 5, 3))


def test_normalizer_is_clamped_for_vanishing_gates():
    # a lone neighbour whose gate is below 1e-6 keeps weight gate / 1e-6 (SPEC: max(sum, 1e-6))
    logit = torch.full((1, 1, 1), -20.0)
    weights = neighbour_weights(logit, logit, logit)
    torch.testing.assert_close(weights[0, 0, 0], torch.tensor([0.0, torch.sigmoid(logit).item() / 1e-6, 0.0]))


def test_invalid_neighbour_logits_and_first_line_weights_get_zero_gradient():
    z, g = random_inputs((1, 3, 4, 2), requires_grad=True)
    propagate_ref(z, g).square().sum().backward()
    grad = g.grad.view(1, 3, 4, 4, 5, 2)
    td, lr = ScanDirection.TOP_DOWN, ScanDirection.LEFT_RIGHT
    assert (grad[:, :, 0, td, 2] == 0).all()  # wt_prev at column 0 (TD lines are rows)
    assert (grad[:, :, -1, td, 4] == 0).all()  # wt_next at the last column
    assert (grad[:, 0, :, lr, 2] == 0).all()  # wt_prev at row 0 (LR lines are columns)
    assert (grad[:, 0, :, td, 2:] == 0).all()  # first TD line: no previous line to weigh
    assert (grad[:, :, 0, lr, 2:] == 0).all()  # first LR line
    assert grad[:, 1:, 1:-1, td, 2:].abs().sum() > 0


def test_single_row_is_pointwise_vertically_and_cumulative_horizontally():
    """H = 1: TD/BU lines have no predecessor (y = u*lam*z); LR/RL lines have length 1
    (weight 1 on itself), so they become a running sum along the row."""
    z, g = random_inputs((2, 1, 6, 3), dtype=torch.float64)
    f = g.view(2, 1, 6, 4, 5, 3)
    lam, u = f[..., 0, :], f[..., 1, :]
    source = lam * z.unsqueeze(3)
    expected = (
        u[:, :, :, 0] * source[:, :, :, 0]
        + u[:, :, :, 1] * source[:, :, :, 1]
        + u[:, :, :, 2] * source[:, :, :, 2].cumsum(dim=2)
        + u[:, :, :, 3] * source[:, :, :, 3].flip(2).cumsum(dim=2).flip(2)
    )
    torch.testing.assert_close(propagate_ref(z, g), expected)


def _swap_directions(g: torch.Tensor, order) -> torch.Tensor:
    B, H, W, _ = g.shape
    return g.view(B, H, W, 4, -1)[:, :, :, list(order)].reshape(B, H, W, -1)


def test_vertical_flip_swaps_top_down_and_bottom_up():
    z, g = random_inputs((2, 5, 4, 3), dtype=torch.float64)
    # flipping rows: TD <-> BU; LR/RL lines (columns) are reversed in position, so prev <-> next
    flipped_g = _swap_directions(g, (1, 0, 2, 3)).view(2, 5, 4, 4, 5, 3).clone()
    flipped_g[:, :, :, 2:, [2, 4]] = flipped_g[:, :, :, 2:, [4, 2]]
    y = propagate_ref(z.flip(1), flipped_g.view(2, 5, 4, -1).flip(1))
    torch.testing.assert_close(y, propagate_ref(z, g).flip(1))


def test_transpose_swaps_row_and_column_scans():
    z, g = random_inputs((1, 3, 6, 2), dtype=torch.float64)
    y = propagate_ref(z.transpose(1, 2), _swap_directions(g, (2, 3, 0, 1)).transpose(1, 2))
    torch.testing.assert_close(y, propagate_ref(z, g).transpose(1, 2))


def test_accepts_non_contiguous_inputs():
    z, g = random_inputs((2, 4, 5, 3))
    z_wide = torch.cat((z, z), dim=-1)[..., :3]
    assert not z_wide.is_contiguous()
    torch.testing.assert_close(propagate_ref(z_wide, g), propagate_ref(z, g))


def test_propagates_non_finite_values_without_failing():
    z, g = random_inputs((1, 3, 3, 2))
    z[0, 1, 1, 0] = float("nan")
    y = propagate_ref(z, g)
    assert y[..., 0].isnan().any() and y[..., 1].isfinite().all()


@pytest.mark.parametrize(
    "z_shape, g_shape, dtype, message",
    [
        ((4, 4, 2), (4, 4, 40), torch.float32, "Z must have 4 dimensions"),
        ((1, 4, 4, 2), (1, 4, 4, 39), torch.float32, r"G must have shape \(B, H, W, 20\*Cc\)"),
        ((1, 4, 4, 2), (2, 4, 4, 40), torch.float32, r"G must have shape"),
        ((1, 4, 4, 2), (1, 4, 5, 40), torch.float32, r"G must have shape"),
        ((1, 4, 4, 2), (1, 4, 4, 40), torch.int64, "floating-point"),
        ((1, 0, 4, 2), (1, 0, 4, 40), torch.float32, "non-empty"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_tensor(z_shape, g_shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        propagate_ref(torch.zeros(z_shape, dtype=dtype), torch.zeros(g_shape, dtype=dtype))


def test_mismatched_dtypes_raise():
    with pytest.raises(ValueError, match="share a dtype"):
        propagate_ref(torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 20, dtype=torch.float64))
