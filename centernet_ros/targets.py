"""Training targets of the CenterNet keypoint-triplet detector.

Letters: B batch, C classes, H/W output map height/width, M max objects (target slots),
N objects in one image, D side of the local Gaussian window (2 * max radius + 1).

For every object (box ``x1, y1, x2, y2`` in network-input pixels, class ``c``) three keypoints
are mapped onto the output map of stride ``s``: top-left ``(x1, y1) / s``, bottom-right
``(x2, y2) / s`` and center ``((x1 + x2) / 2, (y1 + y2) / 2) / s``. Each keypoint gives

* a Gaussian splat with peak 1.0 at its integer cell on heatmap channel ``c`` (CornerNet
  "penalty reduction"): radius ``r = floor(gaussian_radius(h, w, min_overlap))`` (variant from
  ``TargetConfig.radius_variant``) where ``h, w`` is the box size on the output map rounded up,
  ``sigma = (2 r + 1) / 6``, truncated to the ``(2 r + 1)^2`` window; overlapping splats are
  merged by element-wise max,
* a flat index ``y * W + x`` of the integer cell,
* a sub-pixel offset ``(x, y)``: the fractional part ``p - floor(p)`` of the scaled position ``p``.

Scaled positions are clamped into ``[0, W] x [0, H]`` and integer cells into the map; for a
keypoint exactly on the right/bottom border (``p == W``) the offset is therefore
``p - (W - 1) = 1`` so that ``cell + offset`` still reproduces the keypoint.

Corners that exist only because a training crop cut the box ("cut corners") can be left out of the corner
heatmaps with ``TargetConfig.cut_corners = "ignore"`` (see :func:`build_image_targets`).

Use :func:`build_image_targets` in a ``Dataset.__getitem__`` (DataLoader workers) and
:func:`collate_targets` in the ``collate_fn``, or :func:`build_targets` for a whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from centernet_ros.box_ops import gaussian_radius

__all__ = [
    "TargetConfig",
    "build_image_targets",
    "build_targets",
    "collate_targets",
    "draw_gaussians",
    "ignore_map",
    "keypoint_radii",
    "window_mask",
    "TARGET_KEYS",
]

HEADS = ("tl", "br", "ct")
TARGET_KEYS = (
    "tl_heat",
    "br_heat",
    "ct_heat",
    "tl_inds",
    "br_inds",
    "ct_inds",
    "tl_regr",
    "br_regr",
    "ct_regr",
    "ct_size",
    "size_cut",
    "mask",
    "ignore",
    "tl_ignore",
    "br_ignore",
)


@dataclass
class TargetConfig:
    """Options of :func:`build_targets`."""

    num_classes: int  # number of heatmap channels C
    stride: int = 4  # output stride of the network (input pixels per map cell)
    max_objects: int = 128  # M, target slots per image; extra objects are dropped with a warning
    min_overlap: float = 0.7  # CornerNet IoU a box from corners within the radius must keep
    min_radius: int = 0  # lower bound on the Gaussian radius in cells (CornerNet: 0)
    # box_ops.gaussian_radius variant: "cornernet" reproduces the radii of the CornerNet /
    # CenterNet reference training code (wider splats, what the paper's settings were tuned with);
    # "exact" uses the exact roots of the three IoU cases (about 3x smaller radii)
    radius_variant: str = "cornernet"
    # corners that exist only because the training crop cut the box ("cut corners", see build_image_targets):
    # "positive" draws them like any corner (CornerNet / CenterNet); "ignore" draws none and leaves their
    # Gaussian window out of that corner head's focal loss, so the network is not taught that the input
    # border is full of corners (on uncut camera frames it made whole-frame boxes)
    cut_corners: str = "positive"

    def __post_init__(self) -> None:
        for name, lo in (("num_classes", 1), ("stride", 1), ("max_objects", 1), ("min_radius", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        v = self.min_overlap
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
            raise ValueError(f"min_overlap must be in (0, 1), got {v!r}")
        if self.radius_variant not in ("cornernet", "exact"):
            raise ValueError(f"radius_variant must be 'cornernet' or 'exact', got {self.radius_variant!r}")
        if self.cut_corners not in ("positive", "ignore"):
            raise ValueError(f"cut_corners must be 'positive' or 'ignore', got {self.cut_corners!r}")


def _as_tensor(x, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def keypoint_radii(
    box_h: Tensor, box_w: Tensor, *, min_overlap: float = 0.7, min_radius: int = 0, variant: str = "cornernet"
) -> Tensor:
    """Integer Gaussian radii from box sizes measured on the output map.

    Args:
        box_h, box_w: ``Tensor[N]`` box height / width in map cells (rounded up as in CornerNet).
    Returns:
        ``Tensor[N]`` long, ``max(min_radius, floor(gaussian_radius(h, w, min_overlap, variant=variant)))``.
    """
    if box_h.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=box_h.device)
    r = torch.as_tensor(gaussian_radius(box_h, box_w, min_overlap, variant=variant), device=box_h.device)
    return r.floor().long().clamp(min=min_radius)  # (N,)


def draw_gaussians(heat: Tensor, cells: Tensor, classes: Tensor, radii: Tensor) -> Tensor:
    """Max-merge truncated Gaussians into ``heat`` in place, all objects at once.

    Each object ``n`` contributes ``exp(-(dx^2 + dy^2) / (2 sigma_n^2))`` with
    ``sigma_n = (2 r_n + 1) / 6`` for ``|dx|, |dy| <= r_n`` around its cell on channel
    ``classes[n]`` (values below float32 eps are dropped, as in CornerNet). The work is done on
    ``N`` local windows of side ``D = 2 max(r) + 1``, never on ``N`` full maps.

    Args:
        heat: ``Tensor[C, H, W]`` float, modified in place.
        cells: ``Tensor[N, 2]`` long integer cells (x, y) inside the map.
        classes: ``Tensor[N]`` long channel of each object.
        radii: ``Tensor[N]`` long radius of each object.
    Returns:
        ``heat``.
    """
    if cells.shape[0] == 0:
        return heat
    _, h, w = heat.shape
    rmax = int(radii.max())
    d = torch.arange(-rmax, rmax + 1, device=heat.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")  # (D, D)
    r = radii.view(-1, 1, 1)  # (N, 1, 1)
    xs = cells[:, 0].view(-1, 1, 1) + dx  # (N, D, D)
    ys = cells[:, 1].view(-1, 1, 1) + dy  # (N, D, D)
    sigma = (2 * r + 1).to(heat.dtype) / 6  # (N, 1, 1)
    g = torch.exp(-(dx * dx + dy * dy).to(heat.dtype) / (2 * sigma * sigma))  # (N, D, D)
    valid = (dx.abs() <= r) & (dy.abs() <= r) & (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    valid &= g >= torch.finfo(heat.dtype).eps
    flat = (classes.view(-1, 1, 1) * h + ys) * w + xs  # (N, D, D)
    heat.view(-1).scatter_reduce_(0, flat[valid], g[valid], reduce="amax", include_self=True)
    return heat


def _keypoints(points: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Scaled positions ``Tensor[N, 2]`` (x, y) -> (cells ``Tensor[N, 2]`` long, offsets ``Tensor[N, 2]``)."""
    limit = points.new_tensor([w, h])
    p = torch.minimum(points.clamp(min=0), limit)
    cells = torch.minimum(p.floor(), limit - 1)
    return cells.long(), p - cells


def window_mask(cells: Tensor, radii: Tensor, *, output_size: tuple[int, int]) -> Tensor:
    """Cells within the ``(2 r + 1)^2`` window (the Gaussian splat's support) of any keypoint.

    Args:
        cells: ``Tensor[N, 2]`` long integer cells (x, y) (N may be 0).
        radii: ``Tensor[N]`` long radii in cells.
        output_size: ``(H, W)`` of the map.
    Returns:
        ``Tensor[H, W]`` bool on the device of ``cells``.
    """
    h, w = (int(v) for v in output_size)
    xs = torch.arange(w, device=cells.device)
    ys = torch.arange(h, device=cells.device)
    in_x = (xs[None, :] - cells[:, 0:1]).abs() <= radii[:, None]  # (N, W)
    in_y = (ys[None, :] - cells[:, 1:2]).abs() <= radii[:, None]  # (N, H)
    return (in_y[:, :, None] & in_x[:, None, :]).any(dim=0)  # (H, W); all False for N = 0


def ignore_map(ignore_boxes: Tensor | np.ndarray | None, *, output_size: tuple[int, int], stride: int) -> Tensor:
    """Map cells covered by ignore regions (COCO crowd boxes, unmapped source classes).

    A cell ``(x, y)`` covers input pixels ``[x s, (x + 1) s) x [y s, (y + 1) s)``; it is ignored when that
    square overlaps a region with positive area (the region is clipped to the input first).

    Args:
        ignore_boxes: ``Tensor[K, 4]`` or array x1, y1, x2, y2 in network-input pixels, or None (K may be 0).
        output_size: ``(H, W)`` of the output map; stride: input pixels per cell.
    Returns:
        ``Tensor[H, W]`` bool, on the device of ``ignore_boxes`` (CPU for arrays / None).
    """
    h, w = (int(v) for v in output_size)
    device = ignore_boxes.device if isinstance(ignore_boxes, Tensor) else None
    out = torch.zeros(h, w, dtype=torch.bool, device=device)
    if ignore_boxes is None:
        return out
    b = _as_tensor(ignore_boxes, torch.float32, device).reshape(-1, 4) / float(stride)  # (K, 4) map units
    if b.shape[0] == 0:
        return out
    x1 = b[:, 0].clamp(0, w).floor().long()
    y1 = b[:, 1].clamp(0, h).floor().long()
    x2 = b[:, 2].clamp(0, w).ceil().long()  # exclusive
    y2 = b[:, 3].clamp(0, h).ceil().long()
    xs = torch.arange(w, device=out.device)
    ys = torch.arange(h, device=out.device)
    valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # (K,), NaN compares False
    in_x = (xs[None, :] >= x1[:, None]) & (xs[None, :] < x2[:, None])  # (K, W)
    in_y = (ys[None, :] >= y1[:, None]) & (ys[None, :] < y2[:, None])  # (K, H)
    cover = (in_y[:, :, None] & in_x[:, None, :] & valid[:, None, None]).any(dim=0)  # (H, W)
    return out | cover


def build_image_targets(
    boxes: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    output_size: tuple[int, int],
    cfg: TargetConfig,
    ignore_boxes: Tensor | np.ndarray | None = None,
    cut: Tensor | np.ndarray | None = None,
) -> dict[str, Tensor]:
    """Targets of one image (use in ``Dataset.__getitem__``; stack with :func:`collate_targets`).

    Boxes are clipped to the network input ``[0, W * stride] x [0, H * stride]``; boxes whose
    width or height is then ``<= 0`` (or not finite) are ignored; after that, objects beyond
    ``cfg.max_objects`` are dropped with a warning (once per process).

    Args:
        boxes: ``Tensor[N, 4]`` or array, x1, y1, x2, y2 in network-input pixels (N may be 0).
        labels: ``Tensor[N]`` or array of class ids in ``[0, num_classes)``.
        output_size: ``(H, W)`` of the output map (input size // stride).
        cfg: target options.
        ignore_boxes: ``Tensor[K, 4]`` ignore regions in network-input pixels (see :func:`ignore_map`).
        cut: ``Tensor[N, 2]`` bool or None: whether the training crop cut the box at its top-left corner
            (left or top side) and at its bottom-right corner (``augment.augment``). With
            ``cfg.cut_corners == "ignore"`` such a corner gets no Gaussian and its window goes into
            ``tl_ignore`` / ``br_ignore``; its embedding and offset targets stay (the box is still there).
    Returns:
        dict with ``{tl,br,ct}_heat`` ``Tensor[C, H, W]`` float32, ``{tl,br,ct}_inds``
        ``Tensor[M]`` long, ``{tl,br,ct}_regr`` ``Tensor[M, 2]`` float32, ``ct_size`` ``Tensor[M, 2]``
        float32 (log of the clipped box width and height in map cells), ``size_cut`` ``Tensor[M]`` bool
        (the crop cut the box, see ``cut``: its size is only a lower bound of the object's), ``mask``
        ``Tensor[M]`` bool, ``ignore`` ``Tensor[H, W]`` bool (cells where the focal loss takes no negative
        term on any head) and ``tl_ignore`` / ``br_ignore`` ``Tensor[H, W]`` bool (the same for one corner
        head: windows of cut corners), on the device of ``boxes`` (CPU for arrays).
    """
    h, w = (int(v) for v in output_size)
    if h < 1 or w < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    device = boxes.device if isinstance(boxes, Tensor) else None
    b = _as_tensor(boxes, torch.float32, device).reshape(-1, 4)  # (N, 4)
    lab = _as_tensor(labels, torch.long, b.device).reshape(-1)  # (N,)
    if lab.shape[0] != b.shape[0]:
        raise ValueError(f"got {b.shape[0]} boxes but {lab.shape[0]} labels")
    if lab.numel() and (lab.min() < 0 or lab.max() >= cfg.num_classes):
        bad = lab[(lab < 0) | (lab >= cfg.num_classes)][0].item()
        raise ValueError(f"labels must be in [0, {cfg.num_classes}), got {bad!r}")
    if cut is None:
        cut_t = torch.zeros(b.shape[0], 2, dtype=torch.bool, device=b.device)
    else:
        cut_t = _as_tensor(cut, torch.bool, b.device).reshape(-1, 2)  # (N, 2) tl, br
        if cut_t.shape[0] != b.shape[0]:
            raise ValueError(f"got {b.shape[0]} boxes but {cut_t.shape[0]} rows of cut flags")

    s = float(cfg.stride)
    b = torch.stack(
        [b[:, 0].clamp(0, w * s), b[:, 1].clamp(0, h * s), b[:, 2].clamp(0, w * s), b[:, 3].clamp(0, h * s)], dim=1
    )  # (N, 4)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # NaN compares False
    b, lab, cut_t = b[keep], lab[keep], cut_t[keep]
    m = cfg.max_objects
    if b.shape[0] > m:
        warnings.warn(
            f"more than max_objects={m} objects in an image; the extra objects are dropped from the targets",
            stacklevel=2,
        )
        b, lab, cut_t = b[:m], lab[:m], cut_t[:m]
    n = b.shape[0]

    pts = b / s  # (N, 4) on the output map
    points = {
        "tl": pts[:, 0:2],
        "br": pts[:, 2:4],
        "ct": (pts[:, 0:2] + pts[:, 2:4]) / 2,
    }
    box_w = (pts[:, 2] - pts[:, 0]).ceil()
    box_h = (pts[:, 3] - pts[:, 1]).ceil()
    radii = keypoint_radii(
        box_h, box_w, min_overlap=cfg.min_overlap, min_radius=cfg.min_radius, variant=cfg.radius_variant
    )  # (N,)

    out: dict[str, Tensor] = {}
    for k in HEADS:
        cells, offsets = _keypoints(points[k], h, w)  # (N, 2), (N, 2)
        heat = torch.zeros(cfg.num_classes, h, w, dtype=torch.float32, device=b.device)
        draw = torch.ones(n, dtype=torch.bool, device=b.device)  # (N,)
        if k != "ct":
            skip = cut_t[:, HEADS.index(k)] if cfg.cut_corners == "ignore" else torch.zeros_like(draw)
            out[f"{k}_ignore"] = window_mask(cells[skip], radii[skip], output_size=(h, w))
            draw = ~skip
        out[f"{k}_heat"] = draw_gaussians(heat, cells[draw], lab[draw], radii[draw])
        inds = torch.zeros(m, dtype=torch.long, device=b.device)
        inds[:n] = cells[:, 1] * w + cells[:, 0]
        regr = torch.zeros(m, 2, dtype=torch.float32, device=b.device)
        regr[:n] = offsets
        out[f"{k}_inds"] = inds
        out[f"{k}_regr"] = regr
    size = torch.zeros(m, 2, dtype=torch.float32, device=b.device)
    size[:n] = (pts[:, 2:4] - pts[:, 0:2]).log()  # log(w), log(h) in map cells, for the centre size head
    out["ct_size"] = size
    mask = torch.zeros(m, dtype=torch.bool, device=b.device)
    mask[:n] = True
    out["mask"] = mask
    # a box the crop cut is smaller than its object: its size is a lower bound for the size head
    out["size_cut"] = torch.zeros(m, dtype=torch.bool, device=b.device)
    out["size_cut"][:n] = cut_t.any(1)
    out["ignore"] = ignore_map(ignore_boxes, output_size=(h, w), stride=cfg.stride).to(b.device)
    return {k: out[k] for k in TARGET_KEYS}


def collate_targets(targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack per-image targets (from :func:`build_image_targets`) into batched ones.

    Returns:
        dict with ``*_heat`` ``Tensor[B, C, H, W]``, ``*_inds`` ``Tensor[B, M]``,
        ``*_regr`` and ``ct_size`` ``Tensor[B, M, 2]``, ``mask`` and ``size_cut`` ``Tensor[B, M]``,
        ``ignore`` ``Tensor[B, H, W]``.
    """
    if len(targets) == 0:
        raise ValueError("collate_targets needs at least one image, got 0")
    return {k: torch.stack([t[k] for t in targets]) for k in TARGET_KEYS}


def build_targets(
    boxes: Sequence[Tensor | np.ndarray],
    labels: Sequence[Tensor | np.ndarray],
    *,
    output_size: tuple[int, int],
    cfg: TargetConfig,
) -> dict[str, Tensor]:
    """Batched targets (see ``docs/architecture.md``).

    Args:
        boxes: B entries of ``Tensor[N_b, 4]`` (x1, y1, x2, y2, network-input pixels).
        labels: B entries of ``Tensor[N_b]`` long.
        output_size: ``(H, W)`` of the output map.
        cfg: target options.
    Returns:
        dict with ``{tl,br,ct}_heat`` ``Tensor[B, C, H, W]``, ``{tl,br,ct}_inds`` ``Tensor[B, M]``,
        ``{tl,br,ct}_regr`` ``Tensor[B, M, 2]``, ``mask`` ``Tensor[B, M]`` bool.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"got {len(boxes)} box tensors but {len(labels)} label tensors")
    return collate_targets(
        [build_image_targets(bx, lb, output_size=output_size, cfg=cfg) for bx, lb in zip(boxes, labels)]
    )

