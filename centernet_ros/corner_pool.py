"""Directional max pools of CornerNet / CenterNet, in exportable pure-tensor form.

Legend: B batch, C channels, H/W spatial size.

``top_pool``: out[i, j] = max(x[i:, j])  (every row below, inclusive — a top-left corner looks down);
``left_pool``: out[i, j] = max(x[i, j:]) (every column to the right, inclusive);
``bottom_pool`` / ``right_pool`` are the mirror images (rows above / columns to the left).

``torch.cummax`` has no ONNX operator, so the suffix/prefix maximum is computed with log2(n)
shift-and-max steps (Hillis-Steele scan): after step s every position holds the max of the
2**(s+1) positions starting at it. Slice, Max and Concat export to every ONNX opset and
TensorRT, and the cost is a handful of element-wise passes.

``center_pool_*`` take the max over a whole row / column (the paper's center pooling).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "top_pool",
    "bottom_pool",
    "left_pool",
    "right_pool",
    "row_max",
    "col_max",
    "DirectionalPool",
]


def _suffix_max(x: Tensor, dim: int) -> Tensor:
    """out[..., i, ...] = max(x[..., i:, ...]) along ``dim``."""
    n = x.shape[dim]
    step = 1
    while step < n:
        head = torch.maximum(x.narrow(dim, 0, n - step), x.narrow(dim, step, n - step))
        x = torch.cat([head, x.narrow(dim, n - step, step)], dim=dim)
        step *= 2
    return x


def _prefix_max(x: Tensor, dim: int) -> Tensor:
    """out[..., i, ...] = max(x[..., :i+1, ...]) along ``dim``."""
    n = x.shape[dim]
    step = 1
    while step < n:
        tail = torch.maximum(x.narrow(dim, step, n - step), x.narrow(dim, 0, n - step))
        x = torch.cat([x.narrow(dim, 0, step), tail], dim=dim)
        step *= 2
    return x


def top_pool(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the rows at and below each position."""
    return _suffix_max(x, 2)


def bottom_pool(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the rows at and above each position."""
    return _prefix_max(x, 2)


def left_pool(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the columns at and right of each position."""
    return _suffix_max(x, 3)


def right_pool(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the columns at and left of each position."""
    return _prefix_max(x, 3)


def row_max(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the whole row (left pool after right pool)."""
    return x.amax(dim=3, keepdim=True).expand_as(x)


def col_max(x: Tensor) -> Tensor:
    """Tensor[B, C, H, W] -> same shape; max over the whole column (top pool after bottom pool)."""
    return x.amax(dim=2, keepdim=True).expand_as(x)


_POOLS = {
    "top": top_pool,
    "bottom": bottom_pool,
    "left": left_pool,
    "right": right_pool,
    "row": row_max,
    "col": col_max,
}


class DirectionalPool(nn.Module):
    """nn.Module wrapper: ``DirectionalPool("top")`` etc."""

    def __init__(self, direction: str) -> None:
        super().__init__()
        if direction not in _POOLS:
            raise ValueError(f"direction must be one of {sorted(_POOLS)}, got {direction!r}")
        self.direction = direction
        self._fn = _POOLS[direction]

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.direction
