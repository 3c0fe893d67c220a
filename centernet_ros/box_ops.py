"""Box geometry, class-aware batched (soft-)NMS and the CornerNet Gaussian radius.

Legend: B batch, N boxes (candidates), M boxes of a second set / NMS output slots.
Boxes are ``(x1, y1, x2, y2)`` with continuous coordinates (area = (x2 - x1) * (y2 - y1),
no "+1" pixel convention).

Public API (``targets.py`` imports :func:`gaussian_radius` from here):

- :func:`box_area`, :func:`box_intersection`, :func:`box_iou`
- :func:`gaussian_radius` -- radius of the corner / centre Gaussians used by the targets
- :func:`soft_nms` -- batched, class-aware Gaussian / linear soft-NMS (and hard NMS)
- :func:`batched_nms` -- batched, class-aware greedy hard NMS
Both NMS functions return an :class:`NMSResult`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NMS_METHODS",
    "NMSResult",
    "batched_nms",
    "box_area",
    "box_intersection",
    "box_iou",
    "gaussian_radius",
    "nms_decay_matrix",
    "soft_nms",
    "soft_nms_numpy",
]

NMS_METHODS = ("gaussian", "linear", "hard")


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``Tensor[..., 4]`` boxes -> ``Tensor[...]`` (negative extents count as 0)."""
    w = (boxes[..., 2] - boxes[..., 0]).clamp_min(0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp_min(0)
    return w * h


def _intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection areas of ``Tensor[..., N, 4]`` and ``Tensor[..., M, 4]`` -> ``Tensor[..., N, M]``.

    Broadcasts (N, 1) columns of ``a`` against contiguous (1, M) rows of ``b``, which vectorises
    much better than (..., N, M, 2) views with a stride-4 inner dimension.
    """
    bt = b.transpose(-1, -2).contiguous()  # (..., 4, M)
    ax1, ay1, ax2, ay2 = (a[..., i : i + 1] for i in range(4))  # (..., N, 1) each
    bx1, by1, bx2, by2 = (bt[..., i : i + 1, :] for i in range(4))  # (..., 1, M) each
    iw = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_min_(0)  # (..., N, M)
    ih = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_min_(0)
    return iw.mul_(ih)


def _iou_from(inter: Tensor, area_a: Tensor, area_b: Tensor) -> Tensor:
    """IoU ``Tensor[..., N, M]`` from intersections and the areas ``Tensor[..., N]``, ``Tensor[..., M]``
    (overwrites ``inter``).  union >= inter >= 0 holds in floats too, and union == 0 only when
    inter == 0, so dividing by ``union.clamp_min(tiny)`` gives 0 for an empty union."""
    union = (area_a.unsqueeze(-1) + area_b.unsqueeze(-2)).sub_(inter)  # (..., N, M)
    return inter.div_(union.clamp_min_(torch.finfo(inter.dtype).tiny))


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection areas of ``Tensor[..., N, 4]`` and ``Tensor[..., M, 4]`` ->
    ``Tensor[..., N, M]`` (0 for disjoint boxes).  Leading dimensions broadcast."""
    return _intersection(a, b)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of ``Tensor[..., N, 4]`` and ``Tensor[..., M, 4]`` -> ``Tensor[..., N, M]``.

    Leading dimensions broadcast.  A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    area_a = box_area(a)  # (..., N)
    area_b = area_a if b is a else box_area(b)  # (..., M)
    return _iou_from(_intersection(a, b), area_a, area_b)


def gaussian_radius(
    height: Tensor | float,
    width: Tensor | float,
    min_overlap: float = 0.7,
    *,
    variant: str = "exact",
) -> Tensor:
    """CornerNet's Gaussian radius for boxes of size ``height`` x ``width`` (broadcasting tensors).

    The radius r is the smallest of three cases, each a quadratic in r, such that moving the two
    corners of a box by up to r (per axis) still gives IoU >= ``min_overlap`` with the box:

    - both corners move inwards:   (h - 2r)(w - 2r) / (h w) >= o
      -> 4 r^2 - 2 (h + w) r + (1 - o) h w >= 0, smaller root;
    - both corners move outwards:  h w / ((h + 2r)(w + 2r)) >= o
      -> 4 o r^2 + 2 o (h + w) r - (1 - o) h w <= 0, positive root;
    - the box is shifted by (r, r): (h - r)(w - r) / (2 h w - (h - r)(w - r)) >= o
      -> r^2 - (h + w) r + h w (1 - o) / (1 + o) >= 0, smaller root.

    ``variant="exact"`` (default) returns the exact roots above (IoU is exactly ``min_overlap`` at
    the binding case).  ``variant="cornernet"`` reproduces the numbers of the CornerNet / CenterNet
    reference training code, which takes the larger root in the first two cases and divides by 2
    instead of 2a; its radii are larger (about 0.27 x side for a square and min_overlap 0.7, against 0.08 x side
    for "exact"), i.e. wider Gaussians.

    Returns a float tensor (>= 0, not rounded) with the broadcast shape of the inputs.
    """
    if not 0.0 < float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap!r}")
    if variant not in ("exact", "cornernet"):
        raise ValueError(f"variant must be 'exact' or 'cornernet', got {variant!r}")
    h = torch.as_tensor(height)
    w = torch.as_tensor(width)
    dtype = torch.promote_types(torch.promote_types(h.dtype, w.dtype), torch.float32)
    h = h.to(dtype)
    w = w.to(dtype)
    o = float(min_overlap)
    s, p = h + w, h * w  # sum and product of the sides
    # shifted box: r^2 - s r + p (1 - o) / (1 + o) = 0
    sq1 = (s * s - 4.0 * p * (1.0 - o) / (1.0 + o)).clamp_min(0).sqrt()
    # both corners inwards: 4 r^2 - 2 s r + (1 - o) p = 0
    sq2 = (4.0 * s * s - 16.0 * (1.0 - o) * p).clamp_min(0).sqrt()
    # both corners outwards: 4 o r^2 + 2 o s r - (1 - o) p = 0
    sq3 = (4.0 * o * o * s * s + 16.0 * o * (1.0 - o) * p).clamp_min(0).sqrt()
    if variant == "exact":
        r1 = (s - sq1) / 2.0
        r2 = (2.0 * s - sq2) / 8.0
        r3 = (-2.0 * o * s + sq3) / (8.0 * o)
    else:
        r1 = (s + sq1) / 2.0
        r2 = (2.0 * s + sq2) / 2.0
        r3 = (-2.0 * o * s + sq3) / 2.0
    return torch.minimum(torch.minimum(r1, r2), r3).clamp_min(0)


class NMSResult(NamedTuple):
    """Output of :func:`soft_nms` / :func:`batched_nms`, rows sorted by (decayed) score.

    boxes ``Tensor[B, M, 4]``, scores ``Tensor[B, M]`` (decayed scores for soft-NMS),
    labels ``Tensor[B, M]`` long, indices ``Tensor[B, M]`` long (row of the input box).
    Invalid rows: boxes 0, score 0, label -1, index -1; valid rows come first.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    indices: Tensor


def nms_decay_matrix(
    boxes: Tensor,
    labels: Tensor | None,
    *,
    method: str,
    sigma: float = 0.5,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Score multipliers ``Tensor[B, N, N]``: entry (i, j) multiplies box j's score when box i is kept.

    gaussian: exp(-iou^2 / sigma); linear: 1 - iou where iou > iou_threshold else 1;
    hard: 0 where iou > iou_threshold else 1.  Boxes of different labels never decay each other (1).
    """
    inter = _intersection(boxes, boxes)  # (B, N, N)
    if labels is not None:  # other labels: IoU 0, i.e. factor exactly 1 for every method
        inter.mul_(labels.unsqueeze(-1) == labels.unsqueeze(-2))
    area = box_area(boxes)  # (B, N)
    iou = _iou_from(inter, area, area)  # (B, N, N)
    if method == "gaussian":
        return iou.mul_(iou).neg_().div_(sigma).exp_()  # exp(-(iou * iou) / sigma)
    if method == "linear":
        return torch.where(iou > iou_threshold, 1.0 - iou, 1.0)
    if method == "hard":
        return torch.where(iou > iou_threshold, 0.0, 1.0).to(iou.dtype)
    raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")


def _greedy(s: Tensor, decay: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` greedy picks on ``Tensor[B, N]`` scores with the factor rows ``decay[B, N, N]``
    (row i multiplies every score when i is picked; its own factor is 0).  Sync-free torch loop.
    Returns picked indices ``Tensor[B, steps]`` long and their scores at pick time."""
    B, N = s.shape
    rows = decay.view(B * N, N)
    base = None if B == 1 else torch.arange(B, device=s.device) * N  # (B,)
    s = s.clone()
    picks, picked_scores = [], []
    for _ in range(steps):
        v, i = s.max(1)  # (B,) best remaining score and its (lowest) index
        picks.append(i)
        picked_scores.append(v)
        s.mul_(rows.index_select(0, i if base is None else i + base))  # (B, N)
    return torch.stack(picks, 1), torch.stack(picked_scores, 1)


def soft_nms_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    max_out: int,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`soft_nms` of one image on numpy arrays (the CPU path of ``soft_nms`` and ``decode``).

    On small inputs one numpy call costs about a microsecond against several for a torch op, and the
    pick loop is sequential anyway.  The float32 arithmetic is the same as the torch path's, op for
    op (the Gaussian's ``exp`` runs through torch on the same memory), so results are bit-identical.

    Args:
        boxes: ``ndarray[N, 4]`` float32; scores: ``ndarray[N]`` float32; labels: ``ndarray[N]``
            int or None -- as in :func:`soft_nms`, without the batch dimension.

    Returns:
        indices ``ndarray[M]`` int64 (input rows of the kept boxes, in output order) and their
        (decayed) scores ``ndarray[M]`` float32, with M <= ``max_out``; only valid rows.
    """
    valid = scores > score_threshold
    if labels is not None:
        valid &= labels >= 0
    cand = np.flatnonzero(valid)  # ascending input rows
    order = cand[np.argsort(-scores[cand], kind="stable")]  # score descending, ties: lowest row first
    n = len(order)
    steps = min(int(max_out), n)
    if steps == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    s = scores[order].astype(np.float32)  # (n,) a copy
    sb = boxes[order].astype(np.float32, copy=False)  # (n, 4)
    x1, y1, x2, y2 = (np.ascontiguousarray(sb[:, i]) for i in range(4))  # (n,) each
    # intersections, IoU and factors exactly as _intersection / _iou_from / nms_decay_matrix
    iw = np.minimum(x2[:, None], x2[None, :])  # (n, n)
    iw -= np.maximum(x1[:, None], x1[None, :])
    np.maximum(iw, 0.0, out=iw)
    ih = np.minimum(y2[:, None], y2[None, :])
    ih -= np.maximum(y1[:, None], y1[None, :])
    np.maximum(ih, 0.0, out=ih)
    inter = iw
    inter *= ih
    if labels is not None:
        sl = labels[order]
        inter *= sl[:, None] == sl[None, :]
    area = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)  # (n,)
    union = area[:, None] + area[None, :]
    union -= inter
    np.maximum(union, np.finfo(np.float32).tiny, out=union)
    iou = inter
    iou /= union
    if method == "gaussian":
        iou *= iou
        np.negative(iou, out=iou)
        iou /= np.float32(sigma)
        decay = iou
        torch.from_numpy(decay).exp_()  # torch's exp on the same memory: the same bits as the torch path
    elif method == "linear":
        decay = np.where(iou > np.float32(iou_threshold), np.float32(1.0) - iou, np.float32(1.0))
    elif method == "hard":
        decay = np.where(iou > np.float32(iou_threshold), np.float32(0.0), np.float32(1.0))
    else:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    decay[np.arange(n), np.arange(n)] = 0.0  # a kept box's own factor: never picked again
    # the pick loop on Python scalars (float32 values are exact as floats; the threshold is compared as
    # float32, as torch compares a tensor with a Python number): ~2 numpy calls per pick, up to 100 picks
    thr = float(np.float32(score_threshold))
    picks: list[int] = []
    kept: list[float] = []
    for _ in range(steps):
        i = int(s.argmax())  # first index of the maximum, as torch's max
        v = s.item(i)
        if not v > thr:
            break  # scores only decrease: no valid row can follow
        picks.append(i)
        kept.append(v)
        s *= decay[i]
    return order[np.array(picks, dtype=np.int64)], np.array(kept, dtype=np.float32)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    *,
    max_out: int,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    host_sync: bool = True,
) -> NMSResult:
    """Batched class-aware soft-NMS (Bodla et al. 2017); ``method="hard"`` gives greedy NMS.

    Args:
        boxes: ``Tensor[B, N, 4]`` (or ``Tensor[N, 4]``, then outputs have no batch dim).
        scores: ``Tensor[B, N]``; a candidate is valid when its score > ``score_threshold``
            (and its label >= 0).  Scores should be >= 0.
        labels: ``Tensor[B, N]`` long or None (class-agnostic).  Different labels never suppress
            each other; label < 0 marks an invalid candidate.
        max_out: number of output rows M (kept boxes, padded with invalid rows).
        method: "gaussian" (score *= exp(-iou^2/sigma)), "linear" (score *= 1 - iou if
            iou > iou_threshold) or "hard" (drop if iou > iou_threshold).
        host_sync: allow one device->host sync to drop invalid candidates first (faster when
            few are valid); on the CPU run :func:`soft_nms_numpy` per image instead (numpy on
            the same memory, stops once no valid candidate is left).  False keeps the whole
            computation sync-free (a torch loop of ``min(max_out, N)`` steps).  Bit-identical
            results either way.

    Each of the ``min(max_out, N)`` iterations takes, for every image at once, the remaining
    box with the highest current score (ties: lowest input index), outputs it with that score and
    multiplies the scores of the remaining same-class boxes by the decay factor.  Kept scores are
    non-increasing, so the M rows are the M best of a full soft-NMS run; a box whose decayed
    score drops to <= ``score_threshold`` is never output.
    """
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if int(max_out) != max_out or max_out < 0:
        raise ValueError(f"max_out must be an int >= 0, got {max_out!r}")
    if not score_threshold >= 0:
        raise ValueError(f"score_threshold must be >= 0, got {score_threshold!r}")
    unbatched = boxes.dim() == 2
    if unbatched:
        boxes, scores = boxes.unsqueeze(0), scores.unsqueeze(0)
        labels = None if labels is None else labels.unsqueeze(0)
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(
            f"expected boxes (B, N, 4) and scores (B, N), got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    if labels is not None and labels.shape != scores.shape:
        raise ValueError(f"labels must have shape {tuple(scores.shape)}, got {tuple(labels.shape)}")
    B, N = scores.shape
    M = int(max_out)
    dev = boxes.device
    scores = scores.float()
    if host_sync and dev.type == "cpu" and B > 0:
        return _soft_nms_cpu(boxes, scores, labels, M, unbatched, method=method, sigma=sigma,
                             iou_threshold=iou_threshold, score_threshold=score_threshold)
    valid = scores > score_threshold
    if labels is not None:
        valid &= labels >= 0
    s = torch.where(valid, scores, -1.0)  # (B, N), -1 = not a candidate
    # Stable sort so that ties resolve to the lowest input index, as in a plain argmax.
    s, order = torch.sort(s, dim=1, descending=True, stable=True)  # (B, N)
    if host_sync and N > 0 and B > 0:
        n_keep = int(valid.sum(1).max())  # the one host sync: largest number of candidates
        s, order = s[:, :n_keep], order[:, :n_keep]
    N2 = s.shape[1]
    sboxes = boxes.float().gather(1, order.unsqueeze(-1).expand(B, N2, 4))  # (B, N2, 4)
    slabels = None if labels is None else labels.gather(1, order)  # (B, N2)

    steps = min(M, N2) if B > 0 else 0
    if steps > 0:
        decay = nms_decay_matrix(sboxes, slabels, method=method, sigma=sigma, iou_threshold=iou_threshold)
        # A kept box's own factor is 0: its score drops to 0 <= score_threshold, so it is never kept
        # again while a valid candidate is left (and every row after the last valid one is invalid).
        decay.diagonal(dim1=1, dim2=2).zero_()
        pick, kept = _greedy(s, decay, steps)
    else:
        pick = torch.zeros(B, 0, dtype=torch.long, device=dev)
        kept = torch.zeros(B, 0, dtype=torch.float32, device=dev)
    # kept scores are non-increasing -> valid rows first; invalid rows point at an all-zero dummy row
    ok = kept > score_threshold  # (B, steps)
    at = F.pad(torch.where(ok, pick, N2), (0, M - steps), value=N2)  # (B, M) row of sboxes, N2 = dummy
    out_boxes = torch.cat([sboxes, sboxes.new_zeros(B, 1, 4)], 1).gather(1, at.unsqueeze(-1).expand(B, M, 4))
    out_scores = F.pad(torch.where(ok, kept, 0.0), (0, M - steps))
    out_idx = torch.cat([order, order.new_full((B, 1), -1)], 1).gather(1, at)
    if slabels is None:
        out_labels = torch.where(out_idx >= 0, 0, -1)
    else:
        out_labels = torch.cat([slabels.long(), slabels.new_full((B, 1), -1, dtype=torch.long)], 1).gather(1, at)
    res = NMSResult(out_boxes, out_scores, out_labels, out_idx)
    if unbatched:
        res = NMSResult(*(t.squeeze(0) for t in res))
    return res


def _soft_nms_cpu(boxes: Tensor, scores: Tensor, labels: Tensor | None, M: int, unbatched: bool,
                  **kw) -> NMSResult:
    """:func:`soft_nms` on the CPU with ``host_sync``: :func:`soft_nms_numpy` per image."""
    B = scores.shape[0]
    bn = boxes.detach().float().numpy()  # (B, N, 4), views where possible
    sn = scores.detach().numpy()  # (B, N) float32
    ln = None if labels is None else labels.detach().numpy()
    out_boxes = np.zeros((B, M, 4), dtype=np.float32)
    out_scores = np.zeros((B, M), dtype=np.float32)
    out_labels = np.full((B, M), -1, dtype=np.int64)
    out_idx = np.full((B, M), -1, dtype=np.int64)
    for b in range(B):
        idx, kept = soft_nms_numpy(bn[b], sn[b], None if ln is None else ln[b], max_out=M, **kw)
        m = len(idx)
        out_boxes[b, :m] = bn[b, idx]
        out_scores[b, :m] = kept
        out_labels[b, :m] = 0 if ln is None else ln[b, idx]
        out_idx[b, :m] = idx
    res = NMSResult(*(torch.from_numpy(a) for a in (out_boxes, out_scores, out_labels, out_idx)))
    if unbatched:
        res = NMSResult(*(t.squeeze(0) for t in res))
    return res


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    *,
    max_out: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    host_sync: bool = True,
) -> NMSResult:
    """Batched class-aware greedy hard NMS: keep the best box, drop same-class boxes with
    IoU > ``iou_threshold``, repeat.  Shapes and outputs as :func:`soft_nms` (scores unchanged).
    """
    return soft_nms(
        boxes,
        scores,
        labels,
        max_out=max_out,
        method="hard",
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        host_sync=host_sync,
    )

