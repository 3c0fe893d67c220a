"""Directional pools against torch.cummax and a brute-force loop; exportable formulation."""
import pytest
import torch

from centernet_ros.corner_pool import (
    DirectionalPool,
    bottom_pool,
    col_max,
    left_pool,
    right_pool,
    row_max,
    top_pool,
)

from devices import DEVICES  # noqa: E402


def brute(x, direction):
    out = torch.empty_like(x)
    H, W = x.shape[2:]
    for i in range(H):
        for j in range(W):
            if direction == "top":
                region = x[:, :, i:, j]
            elif direction == "bottom":
                region = x[:, :, : i + 1, j]
            elif direction == "left":
                region = x[:, :, i, j:]
            elif direction == "right":
                region = x[:, :, i, : j + 1]
            elif direction == "row":
                region = x[:, :, i, :]
            else:
                region = x[:, :, :, j]
            out[:, :, i, j] = region.amax(dim=-1)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 2, 7, 5), (2, 4, 16, 9), (1, 1, 33, 2)])
def test_pools_equal_cummax(device, shape):
    x = torch.randn(shape, device=device)
    assert torch.equal(top_pool(x), x.flip(2).cummax(2).values.flip(2))
    assert torch.equal(bottom_pool(x), x.cummax(2).values)
    assert torch.equal(left_pool(x), x.flip(3).cummax(3).values.flip(3))
    assert torch.equal(right_pool(x), x.cummax(3).values)


@pytest.mark.parametrize("direction", ["top", "bottom", "left", "right", "row", "col"])
def test_pools_equal_brute_force(direction):
    x = torch.randn(2, 3, 6, 7)
    assert torch.equal(DirectionalPool(direction)(x), brute(x, direction))


def test_center_pool_is_row_plus_col_max():
    x = torch.randn(1, 2, 5, 4)
    assert torch.equal(row_max(x), left_pool(right_pool(x)))
    assert torch.equal(col_max(x), top_pool(bottom_pool(x)))


def test_empty_and_half_inputs():
    empty = torch.zeros(0, 3, 8, 8)
    for fn in (top_pool, bottom_pool, left_pool, right_pool, row_max, col_max):
        assert fn(empty).shape == empty.shape
    x = torch.randn(1, 2, 8, 8).half()
    assert torch.equal(top_pool(x), x.flip(2).cummax(2).values.flip(2))


def test_gradient_flows_to_the_max():
    x = torch.zeros(1, 1, 4, 1)
    x[0, 0, 2, 0] = 5.0
    x.requires_grad_(True)
    top_pool(x).sum().backward()
    # positions 0, 1, 2 all see the max at row 2; row 3 sees itself.
    assert x.grad[0, 0, 2, 0] == 3 and x.grad[0, 0, 3, 0] == 1


def test_bad_direction_is_rejected():
    with pytest.raises(ValueError, match="'diagonal'"):
        DirectionalPool("diagonal")
