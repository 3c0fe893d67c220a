"""Batched CenterNet (Keypoint Triplets) decoding: heatmaps -> boxes, on the outputs' device.

Legend: B batch, C classes, H/W map height/width, K top-k keypoints, N candidate pairs
(``min(num_dets, K*K)``), D detections per image (``max_per_image``), F columns of the packed
keypoints copied to the host (plan "copy").

Test procedure of "CenterNet: Keypoint Triplets for Object Detection" (Duan et al., ICCV 2019):

1. sigmoid, keep only 3x3 local maxima (max-pool), top-K over all classes and positions, separately
   for top-left (tl), bottom-right (br) and centre (ct) heatmaps; add the sub-pixel offsets;
2. all K x K tl/br pairs; reject different classes, |tl_tag - br_tag| > ae_threshold and br left of
   or above tl; pair score = mean of the two corner scores; keep the best ``num_dets`` pairs;
3. boxes in network-input pixels (map coords * stride); central region with n = ``n_small``
   (area <= ``small_area``) or ``n_large``; keep a box only if a top-K centre keypoint of the same
   class lies strictly inside; score = (tl + br + best matching centre) / 3  (mode "triplet");
4. score threshold, per-class soft / hard / no NMS, best ``max_per_image``;
5. undo the letterbox (``orig = (input_px - offset) / scale``) and clip to the original image.

Two implementations with bit-identical results on the CPU (``test_decode.py`` compares them):

- batched tensor code on the outputs' device (``host_sync=False``, or the plan "device").  It is
  sync-free with ``host_sync=False`` (CUDA graphs, async pipelines); the plan "device" reads two sizes
  (the number of valid pairs, the number of NMS candidates) back to the host to skip empty work;
- numpy per image on the host (``_pairs_to_detections_numpy``, ``box_ops.soft_nms_numpy``): after the
  top-k keypoints everything is small, and a numpy call costs about a microsecond against several for a
  torch op (and tens of microseconds for a handful of small CUDA kernel launches).  With ``host_sync``
  (default) this is where a decode ends: on the CPU the heatmap passes (sigmoid, peak test, block
  maxima) are tensor ops and the top-k selection is numpy too (``_peak_topk_numpy``,
  ``_assemble_keypoints_numpy``: plan "host"); on a GPU the heatmap passes and the top-k run there and
  the keypoints come to the host in one copy (plan "copy", ``_keypoints_to_host``).  ``_HOST_SYNC_PLAN``
  holds the plan per device type.

``reference_decode.py`` is a straightforward per-image numpy version for tests and the benchmark.

Speed notes (CPU, where one op costs microseconds and element-wise passes are memory-bound): the
keypoint extraction runs on cache-sized chunks with a separable max filter and in-place arithmetic
instead of comparisons/``where``; the top-k is two-level and exact; only valid pairs go on to the
centre check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .box_ops import soft_nms, soft_nms_numpy
from .preprocess import boxes_to_original

__all__ = ["NMS_CHOICES", "MODES", "DecodeConfig", "Detections", "decode"]

NMS_CHOICES = ("soft", "soft_linear", "hard", "none")
MODES = ("triplet", "pairs")
_NMS_METHOD = {"soft": "gaussian", "soft_linear": "linear", "hard": "hard"}


@dataclass
class DecodeConfig:
    """Decoding hyper-parameters (defaults follow the paper's test setting)."""

    topk: int = 70  # K keypoints kept per heatmap (tl, br and ct separately), over all classes
    ae_threshold: float = 0.5  # reject a pair when |tl_tag - br_tag| > this
    num_dets: int = 1000  # best pairs kept (by pair score) before the centre check
    kernel: int = 3  # max-pool window for the local-maximum (peak) test; odd
    stride: int = 4  # network-input pixels per map cell
    mode: str = "triplet"  # "triplet" (centre check) or "pairs" (CornerNet: no centre check)
    small_area: float = 150.0**2  # box area (network-input px^2) up to which n_small applies
    n_small: int = 3  # central-region scale n for small boxes
    n_large: int = 5  # central-region scale n for large boxes
    score_threshold: float = 0.0  # detections need score > this (the ROS node applies its own)
    nms: str = "soft"  # "soft" (Gaussian soft-NMS), "soft_linear", "hard" or "none"
    nms_sigma: float = 0.5  # Gaussian soft-NMS: score *= exp(-iou^2 / sigma)
    nms_iou: float = 0.5  # IoU threshold of hard and linear soft NMS
    max_per_image: int = 100  # D, detections returned per image
    host_sync: bool = True  # allow device->host reads (pair count, NMS candidates): faster, same results

    def __post_init__(self) -> None:
        for name in ("topk", "num_dets", "kernel", "stride", "n_small", "n_large", "max_per_image"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {self.kernel!r}")
        if not self.ae_threshold > 0:
            raise ValueError(f"ae_threshold must be > 0, got {self.ae_threshold!r}")
        if not self.small_area >= 0:
            raise ValueError(f"small_area must be >= 0, got {self.small_area!r}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.nms not in NMS_CHOICES:
            raise ValueError(f"nms must be one of {NMS_CHOICES}, got {self.nms!r}")
        if not self.nms_sigma > 0:
            raise ValueError(f"nms_sigma must be > 0, got {self.nms_sigma!r}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou!r}")


class Detections(NamedTuple):
    """boxes ``Tensor[B, D, 4]`` (x1, y1, x2, y2), scores ``Tensor[B, D]``, labels ``Tensor[B, D]``
    long, num ``Tensor[B]`` long.  Rows sorted by score; invalid rows: score 0, label -1, box 0."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num: Tensor


class _Keypoints(NamedTuple):
    scores: Tensor  # (B, K), 0 for a non-peak filler
    labels: Tensor  # (B, K) long; a filler gets a negative label that differs between kinds of map
    xy: Tensor  # (B, K, 2) map coords (x, y) incl. offset
    pix: Tensor  # (B, K) flat index y * W + x


def _empty(B: int, D: int, device: torch.device) -> Detections:
    return Detections(
        torch.zeros(B, D, 4, device=device),
        torch.zeros(B, D, device=device),
        torch.full((B, D), -1, dtype=torch.long, device=device),
        torch.zeros(B, dtype=torch.long, device=device),
    )


# CPU: float32 values handled per pass of the keypoint extraction.  Small heatmaps go together (all
# maps of the batch, or one map of several images, up to 4 MiB) to save per-op overhead; a larger
# image is cut into groups of class maps of up to 1 MiB, so every element-wise pass stays
# cache-resident and its scratch allocations stay small (no fresh pages from the OS per call).
_CPU_PASS_ELEMS = 1 << 20
_CPU_GROUP_ELEMS = 1 << 18
# GPU: all maps of a batch in one pass up to this many values (256 MiB of float32 scratch), else one per map.
_DEVICE_PASS_ELEMS = 1 << 26
# Where a decode with host_sync runs, by device type (all plans give bit-identical results):
#   "host":   CPU only: the heatmap passes as tensor ops, the top-k selection and everything after it in numpy;
#   "copy":   heatmap passes and top-k keypoints on the device, one copy of the keypoints (a few KB) to the
#             host, pairs / centre check / NMS / letterbox undo in numpy (one sync instead of the tensor
#             path's two, and none of its hundreds of small kernel launches at small batches);
#   "device": the batched tensor path on the device (two syncs: pair count, NMS candidates).
# Tests and benchmarks switch plans here (bench_decode.py --decode-plan).
HOST_SYNC_PLANS = ("host", "copy", "device")
_HOST_SYNC_PLAN = {"cpu": "host", "cuda": "copy"}


def _max_filter3_numpy(heat: Tensor) -> Tensor:
    """3 x 3 max filter of a contiguous float32 CPU ``Tensor[B, C, H, W]`` (H, W >= 2) in six numpy
    passes over the flat array: the window max along W from maxima of neighbouring elements (the two
    border columns, where the flat shift crosses rows, fixed afterwards), then the same along H."""
    n, C, H, W = heat.shape
    p = heat.numpy().reshape(-1)
    L = p.size
    a = np.empty(L, dtype=np.float32)
    w = np.empty(L, dtype=np.float32)
    np.maximum(p[:-1], p[1:], out=a[:-1])  # a[i] = max(p[i], p[i + 1])
    np.maximum(a[:-2], a[1:-1], out=w[1:-1])  # w[i] = max(p[i - 1 .. i + 1]), wrong in the border columns
    a2, w2 = a.reshape(-1, W), w.reshape(-1, W)
    w2[:, 0] = a2[:, 0]
    w2[:, W - 1] = a2[:, W - 2]
    w3, t3 = w.reshape(n * C, H, W), a.reshape(n * C, H, W)
    np.maximum(w3[:, 1:], w3[:, :-1], out=t3[:, 1:])
    t3[:, 0] = w3[:, 0]
    np.maximum(t3[:, :-1], w3[:, 1:], out=t3[:, :-1])
    return torch.from_numpy(a).view(n, C, H, W)


def _max_filter(heat: Tensor, kernel: int, *, separable: bool | None = None) -> Tensor:
    """Max over each ``kernel`` x ``kernel`` window (stride 1, -inf padding) of ``Tensor[B, C, H, W]``.

    ``F.max_pool2d`` on CUDA; on CPU separable: for 3 x 3 numpy passes (``_max_filter3_numpy``),
    otherwise a 1-D max-pool along W, then maxima of shifted slices along H written into a scratch
    tensor.  Exact, and much faster there than the CPU 2-D max-pool kernel for stride 1.
    """
    if separable is None:
        separable = heat.device.type == "cpu"
    r = (kernel - 1) // 2
    if r == 0:
        return heat.clone()
    if not separable or heat.numel() == 0:
        return F.max_pool2d(heat, kernel, stride=1, padding=r)
    B, C, H, W = heat.shape
    if r == 1 and H >= 2 and W >= 2 and heat.dtype == torch.float32 and heat.is_contiguous():
        return _max_filter3_numpy(heat)  # fewer, cheaper calls than the torch passes below
    src = F.max_pool1d(heat.reshape(B * C * H, 1, W), kernel, stride=1, padding=r).view(B, C, H, W)  # max along W
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    # out[y] = max(src[y - r], ..., src[y + r]), clipped at the borders
    dim = 2
    torch.maximum(src.narrow(dim, 1, H - 1), src.narrow(dim, 0, H - 1), out=out.narrow(dim, 1, H - 1))
    out.narrow(dim, 0, 1).copy_(src.narrow(dim, 0, 1))
    for d in range(1, min(r, H - 1) + 1):
        if d > 1:  # neighbour above at distance d (distance 1 was done above)
            head = out.narrow(dim, d, H - d)
            torch.maximum(head, src.narrow(dim, 0, H - d), out=head)
        tail = out.narrow(dim, 0, H - d)
        torch.maximum(tail, src.narrow(dim, d, H - d), out=tail)
    return out


def _peak_values(prob: Tensor, kernel: int) -> Tensor:
    """Local maxima of probabilities ``Tensor[n, C, H, W]`` (float32, >= 0), in place: a value that
    equals its window max is kept exactly, every other value becomes negative.

    One pass (the float arithmetic is several times faster on CPU than a comparison plus ``where``):
    ``lerp(prob, hmax, w) = prob + w * (hmax - prob)`` with w = -2**25 is exactly ``prob`` where
    hmax == prob; elsewhere hmax - prob is at least one ulp of prob (> prob / 2**24), so the result
    is < 0 (with either of torch's two lerp formulas).
    """
    return prob.lerp_(_max_filter(prob, kernel), -(2.0**25))


def _order_keys(values: Tensor, index: Tensor | None = None) -> Tensor:
    """Unique int64 keys of ``Tensor[n, L]`` float32 values that sort like (value descending,
    index ascending): the value's bit pattern above the index.  Exact for values >= 0 (their bit
    patterns order like the values); negative values rank below them, in no useful order.

    ``index`` ``Tensor[n, L]`` int64 in [0, 2**32), unique per row; default: the position.
    """
    if index is None:
        index = torch.arange(values.shape[1], device=values.device)
    return (values.view(torch.int32).long() << 32) - index


def _peak_topk(peaks: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of ``Tensor[n, C, H, W]`` peak values (< 0: not a peak) over C*H*W, ordered by score
    descending then flat index ascending (ties included) -> scores (fillers: 0), flat indices
    ``Tensor[n, k]``.  The peaks (values >= 0) come out exactly as from a full stable sort; which
    non-peaks fill the remaining slots is unspecified.

    Two levels, both exact: the flat map is cut into blocks of G consecutive values, each ranked by
    its best value (ties: lower block first); the k best blocks hold the k best values (a block
    outside them has k better blocks, each with a better value); then top-k of those k*G values.
    Unique keys make ``topk`` deterministic.
    """
    n, C, H, W = peaks.shape
    E = C * H * W
    dev = peaks.device
    G = 64 if E % 64 == 0 else W  # block length (64: fast reduction, fits the cache line pair)
    nb = E // G
    blocks = peaks.reshape(n * nb, G)  # (n*nb, G)
    kb = min(k, nb)
    best = blocks.amax(1).view(n, nb)  # (n, nb)
    top = _order_keys(best).topk(kb, dim=1, sorted=False).indices.sort(dim=1).values  # (n, kb) ascending
    if n > 1:
        top_flat = top + torch.arange(n, device=dev).unsqueeze(1) * nb
    else:
        top_flat = top
    cand = blocks.index_select(0, top_flat.view(-1)).view(n, kb * G)  # (n, kb*G) in flat-index order
    cand_flat = (top.unsqueeze(2) * G + torch.arange(G, device=dev)).view(n, kb * G)  # their flat indices
    sel = _order_keys(cand).topk(k, dim=1).indices  # (n, k) sorted
    return cand.gather(1, sel).clamp_min_(0.0), cand_flat.gather(1, sel)  # non-peak fillers (< 0) -> score 0


def _sigmoid_into(dst: Tensor, src: Tensor) -> None:
    """``dst`` (contiguous float32) = sigmoid(``src``.float()), always with the vectorised kernel."""
    if src.dtype == torch.float32 and src.is_contiguous():
        torch.sigmoid(src, out=dst)
    else:  # copy first: sigmoid of a strided / non-float32 input takes a path that can differ in the last bit
        dst.copy_(src).sigmoid_()


def _cpu_pieces(nm: int, B: int, C: int, HW: int) -> list[list[tuple[int, int, int, int, int]]]:
    """Split ``nm`` maps ``[B, C, H*W]`` into CPU passes (see ``_CPU_PASS_ELEMS``): each pass is a
    list of (map, b0, b1, c0, c1) pieces, in (map, image) order."""
    E = C * HW
    if nm * B * E <= _CPU_PASS_ELEMS:
        return [[(i, 0, B, 0, C) for i in range(nm)]]  # everything in one pass
    if E <= _CPU_GROUP_ELEMS:
        per = max(1, _CPU_PASS_ELEMS // E)  # whole images
        return [[(i, b, min(b + per, B), 0, C)] for i in range(nm) for b in range(0, B, per)]
    per = max(1, _CPU_GROUP_ELEMS // HW)  # classes of one image
    return [[(i, b, b + 1, c, min(c + per, C))] for i in range(nm) for b in range(B) for c in range(0, C, per)]


def _peak_topk_numpy(peaks: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_peak_topk` of CPU ``Tensor[n, C, H, W]`` peak values with the selection in numpy,
    all n rows at once -> scores (fillers: 0), flat indices ``ndarray[n, k]``; the same peaks in
    the same order.

    Two levels as there: t = the k-th best block maximum of a row (a block's maximum is its best
    peak, or negative), so the row has at least k peaks >= t and its k best peaks are among the
    values >= t of its blocks whose maximum is >= t; those few go through one stable sort by
    (row, score descending), ties in flat-index order.
    """
    n, C, H, W = peaks.shape
    E = C * H * W
    G = 64 if E % 64 == 0 else W  # block length
    nb = E // G
    best = peaks.reshape(n, nb, G).amax(2).numpy()  # (n, nb); torch reduces short rows much faster than numpy
    pk = peaks.numpy().reshape(n, nb, G)
    if k < nb:
        t = np.partition(best, nb - k, axis=1)[:, nb - k]  # (n,) k-th best block maximum
    else:
        t = np.full(n, -np.inf, dtype=np.float32)
    rows, blks = np.nonzero(best >= t[:, None])  # (m,) each, row-major: flat-index order per row
    cand = pk[rows, blks]  # (m, G)
    j, pos = np.nonzero(cand >= t[rows, None])  # (q,) each
    r, vals = rows[j], cand[j, pos]  # (q,)
    counts = np.bincount(r, minlength=n)  # (n,) >= k, unless NaN got in
    if counts.min() < k:  # NaN maps only: plain stable sort of every row, NaN last
        flat = pk.reshape(n, E)
        top = np.argsort(-np.where(np.isnan(flat), -np.inf, flat), axis=1, kind="stable")[:, :k]
        return np.maximum(np.take_along_axis(flat, top, 1), np.float32(0)), top
    order = np.lexsort((-vals, r))  # stable: by row, then score descending, then flat index
    starts = np.cumsum(counts) - counts  # (n,)
    take = order[(starts[:, None] + np.arange(k)).reshape(-1)]  # (n*k,)
    scores = np.maximum(vals[take], np.float32(0)).reshape(n, k)  # non-peak fillers (< 0) -> score 0
    inds = (blks[j[take]] * G + pos[take]).reshape(n, k)
    return scores, inds


def _topk_keypoints(
    heats: list[Tensor], regrs: list[Tensor], k: int, kernel: int, *, host: bool = False
) -> list[_Keypoints]:
    """Peaks of each ``Tensor[B, C, H, W]`` logit map in ``heats`` -> top-k keypoints with offsets
    from the matching ``regrs`` ``Tensor[B, 2, H, W]``.

    Peaks and scores come from the float32 sigmoid, as in the per-image reference.  GPU: all maps in
    one pass (one per map above ``_DEVICE_PASS_ELEMS`` values).  CPU: passes of at most
    ``_CPU_PASS_ELEMS`` values (several small maps joined, or a large one cut into images / groups of
    class maps), so each pass stays in the cache; the top-k of the class groups of one image are
    merged exactly (the image's top-k is among them).
    ``host`` (CPU only): the sigmoid, peak test and block maxima stay torch passes, the selection
    and everything after it is numpy; the keypoints then hold numpy arrays (same values).
    """
    B, C, H, W = heats[0].shape
    nm = len(heats)
    dev = heats[0].device
    HW = H * W
    if dev.type == "cpu":
        passes = _cpu_pieces(nm, B, C, HW)
    elif nm * B * C * HW <= _DEVICE_PASS_ELEMS:  # all maps in one pass: a third of the kernel launches
        passes = [[(i, 0, B, 0, C) for i in range(nm)]]
    else:
        passes = [[(i, 0, B, 0, C)] for i in range(nm)]
    scores, inds = [], []
    for parts in passes:
        n = sum(b1 - b0 for _, b0, b1, _, _ in parts)
        c0, c1 = parts[0][3], parts[0][4]  # the same class range for every piece of a pass
        prob = torch.empty(n, c1 - c0, H, W, device=dev)  # float32, contiguous
        at = 0
        for i, b0, b1, _, _ in parts:
            _sigmoid_into(prob[at : at + b1 - b0], heats[i][b0:b1, c0:c1])
            at += b1 - b0
        topk = _peak_topk_numpy if host else _peak_topk
        s, idx = topk(_peak_values(prob, kernel), min(k, prob[0].numel()))  # (n, k')
        scores.append(s)
        inds.append(idx + c0 * HW)
    if host:
        return _assemble_keypoints_numpy(scores, inds, regrs, nm, k, len(passes) > nm * B)
    if len(passes) > nm * B:  # class groups of one image each: merge the groups of every image
        per_img = len(passes) // (nm * B)
        merged_s, merged_i = [], []
        for j in range(0, len(passes), per_img):
            s = torch.cat(scores[j : j + per_img], 1)  # (1, groups*k')
            idx = torch.cat(inds[j : j + per_img], 1)
            sel = _order_keys(s, idx).topk(k, dim=1).indices  # (1, k)
            merged_s.append(s.gather(1, sel))
            merged_i.append(idx.gather(1, sel))
        scores, inds = merged_s, merged_i
    score = (torch.cat(scores, 0) if len(scores) > 1 else scores[0]).view(nm, B, k)
    ind = (torch.cat(inds, 0) if len(inds) > 1 else inds[0]).view(nm, B, k)
    labels = torch.div(ind, HW, rounding_mode="floor")  # (nm, B, K)
    # fillers (score 0): label -1 for the first map, -2 for the second, ...: never equal across maps
    labels = torch.where(score > 0, labels, torch.arange(-1, -nm - 1, -1, device=dev).view(nm, 1, 1))
    pix = ind % HW  # (nm, B, K)
    xy = torch.stack([pix % W, torch.div(pix, W, rounding_mode="floor")], -1).float()  # (nm, B, K, 2)
    off = torch.stack(
        [r.reshape(B, 2, HW).gather(2, pix[i].unsqueeze(1).expand(B, 2, k)) for i, r in enumerate(regrs)]
    )  # (nm, B, 2, K)
    xy = xy + off.transpose(2, 3).float()  # (nm, B, K, 2)
    return [_Keypoints(score[i], labels[i], xy[i], pix[i]) for i in range(nm)]


def _assemble_keypoints_numpy(
    scores: list[np.ndarray], inds: list[np.ndarray], regrs: list[Tensor], nm: int, k: int, grouped: bool
) -> list[_Keypoints]:
    """The end of :func:`_topk_keypoints` in numpy: per-pass top-k rows (in (map, image[, class
    group]) order) -> keypoints of numpy arrays, the same values as the tensor version."""
    B, _, H, W = regrs[0].shape
    HW = H * W
    if grouped:  # class groups of one image each: merge the groups of every image
        per_img = len(scores) // (nm * B)
        merged_s, merged_i = [], []
        for j in range(0, len(scores), per_img):
            s = np.concatenate(scores[j : j + per_img], 1)  # (1, groups*k') in class order
            idx = np.concatenate(inds[j : j + per_img], 1)
            sel = np.argsort(-s[0], kind="stable")[:k]  # ties: lower class group, then lower index
            merged_s.append(s[:, sel])
            merged_i.append(idx[:, sel])
        scores, inds = merged_s, merged_i
    score = np.concatenate(scores, 0).reshape(nm, B, k)
    ind = np.concatenate(inds, 0).reshape(nm, B, k)
    # fillers (score 0): label -1 for the first map, -2 for the second, ...: never equal across maps
    labels = np.where(score > 0, ind // HW, np.arange(-1, -nm - 1, -1).reshape(nm, 1, 1))  # (nm, B, K)
    pix = ind % HW  # (nm, B, K)
    xy = np.stack([pix % W, pix // W], -1).astype(np.float32)  # (nm, B, K, 2)
    rows = np.arange(B)[:, None]  # (B, 1)
    for i, r in enumerate(regrs):
        xy[i] += r.float().numpy().reshape(B, 2, HW).transpose(0, 2, 1)[rows, pix[i]]  # (B, K, 2) offsets
    return [_Keypoints(score[i], labels[i], xy[i], pix[i]) for i in range(nm)]


def _pairs_to_detections_torch(
    kps: list[_Keypoints], tl_tag: Tensor, br_tag: Tensor, cfg: DecodeConfig, C: int
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Pairs, centre check and NMS as batched tensor ops (CUDA, or ``host_sync=False``): keypoints
    of ``Tensor[B, K]`` -> boxes ``Tensor[B, D, 4]`` (network-input px), scores and labels ``Tensor[B, D]``
    (invalid rows: label -1); None when no image has a valid pair."""
    tl, br = kps[0], kps[1]
    B, K = tl.scores.shape
    dev = tl.scores.device
    D = cfg.max_per_image
    triplet = cfg.mode == "triplet"
    # All K x K pairs: rows index tl, columns index br.  Fillers have labels that match nothing.
    bad = tl.labels.unsqueeze(2) != br.labels.unsqueeze(1)  # (B, K, K)
    bad |= (tl_tag.unsqueeze(2) - br_tag.unsqueeze(1)).abs() > cfg.ae_threshold
    bad |= br.xy[..., 0].unsqueeze(1) < tl.xy[..., 0].unsqueeze(2)  # br left of tl
    bad |= br.xy[..., 1].unsqueeze(1) < tl.xy[..., 1].unsqueeze(2)  # br above tl
    bad = bad.view(B, K * K)
    filled = None  # (B, P) False where a row is padding (host-sync path with B > 1)
    if cfg.host_sync:
        # Keep only the valid pairs, in pair-index order: one host sync for their number P.
        ok = ~bad
        if B == 1:
            pidx = ok.view(-1).nonzero().view(1, -1)  # (1, P)
        else:  # padded to the largest count
            count = ok.sum(1, keepdim=True)  # (B, 1)
            P = int(count.max())
            slot = torch.where(ok, ok.cumsum(1) - 1, P)  # (B, K*K) column of each valid pair; P = dropped
            pidx = torch.zeros(B, P + 1, dtype=torch.long, device=dev)
            pidx = pidx.scatter_(1, slot, torch.arange(K * K, device=dev).expand(B, K * K))[:, :P]  # (B, P)
            filled = torch.arange(P, device=dev) < count  # (B, P)
        if pidx.shape[1] == 0:
            return None
        ti = torch.div(pidx, K, rounding_mode="floor")  # (B, P) tl index
        bi = pidx % K  # (B, P) br index
        ts, bs = tl.scores.gather(1, ti), br.scores.gather(1, bi)
        pair = (ts + bs) / 2  # (B, P)
        if filled is not None:
            pair = torch.where(filled, pair, -1.0)
        N = min(cfg.num_dets, pair.shape[1])
        score, order = pair.sort(dim=1, descending=True, stable=True)  # ties: lower pair index first
        score, order = score[:, :N], order[:, :N]  # (B, N)
        ti, bi, ts, bs = ti.gather(1, order), bi.gather(1, order), ts.gather(1, order), bs.gather(1, order)
        ok = None if filled is None else score > 0  # (B, N) or None: every pair is valid
    else:
        pair = ((tl.scores.unsqueeze(2) + br.scores.unsqueeze(1)) / 2).view(B, K * K)  # (B, K*K)
        pair = pair.masked_fill(bad, -1.0)
        N = min(cfg.num_dets, K * K)
        score, pidx = pair.sort(dim=1, descending=True, stable=True)  # ties: lower pair index first
        score, pidx = score[:, :N], pidx[:, :N]  # (B, N)
        ti = torch.div(pidx, K, rounding_mode="floor")  # (B, N) tl index
        bi = pidx % K  # (B, N) br index
        ts, bs = tl.scores.gather(1, ti), br.scores.gather(1, bi)
        ok = score > 0  # (B, N) pair passed all tests
    boxes = torch.cat(
        [tl.xy.gather(1, ti.unsqueeze(2).expand(B, N, 2)), br.xy.gather(1, bi.unsqueeze(2).expand(B, N, 2))], 2
    ) * float(cfg.stride)  # (B, N, 4) network-input pixels
    labels = tl.labels.gather(1, ti)  # (B, N)

    if triplet:
        ct = kps[2]
        x1y1, x2y2 = boxes[..., :2], boxes[..., 2:]  # (B, N, 2) each
        wh = x2y2 - x1y1
        area = wh[..., 0] * wh[..., 1]  # (B, N)
        n = torch.where(area <= cfg.small_area, float(cfg.n_small), float(cfg.n_large)).unsqueeze(2)  # (B, N, 1)
        n_plus, n_minus, n_twice = n + 1, n - 1, 2 * n
        ctl = (n_plus * x1y1 + n_minus * x2y2) / n_twice  # (B, N, 2) central region, top-left
        cbr = (n_minus * x1y1 + n_plus * x2y2) / n_twice  # bottom-right
        cxy = ct.xy * float(cfg.stride)  # (B, K, 2) centre keypoints, input pixels
        cx, cy = cxy[..., 0].unsqueeze(1), cxy[..., 1].unsqueeze(1)  # (B, 1, K)
        # Float arithmetic instead of comparisons (several times faster on CPU): the sign of a float
        # difference is exact, so the smallest of the four margins is > 0 iff the centre lies
        # strictly inside the central region.
        margin = cx - ctl[..., 0:1]  # (B, N, K)
        torch.minimum(margin, cbr[..., 0:1] - cx, out=margin)
        torch.minimum(margin, cy - ctl[..., 1:2], out=margin)
        torch.minimum(margin, cbr[..., 1:2] - cy, out=margin)
        inside = margin.sign_().clamp_min_(0.0)  # (B, N, K) 1.0 inside, else 0.0
        # score of each centre keypoint in its class row (fillers: score 0): (B, C, K)
        by_class = torch.zeros(B, C, K, device=dev).scatter_(
            1, ct.labels.clamp_min(0).unsqueeze(1), ct.scores.unsqueeze(1)
        )
        rows = labels.clamp_min(0) if B == 1 else labels.clamp_min(0) + torch.arange(B, device=dev).unsqueeze(1) * C
        same = by_class.view(B * C, K).index_select(0, rows.view(-1)).view(B, N, K)  # centre scores of the pair's class
        best_ct = inside.mul_(same).amax(2)  # (B, N) best centre score inside, 0 if none
        found = best_ct > 0
        ok = found if ok is None else ok & found
        score = (ts + bs + best_ct) / 3

    if ok is not None:
        score = torch.where(ok, score, -1.0)  # (B, N); -1 = rejected
        labels = torch.where(ok, labels, -1)
    if cfg.nms == "none":
        M = min(D, N)
        top, order = score.sort(dim=1, descending=True, stable=True)
        top, order = top[:, :M], order[:, :M]  # (B, M)
        keep = top > cfg.score_threshold
        out_boxes = torch.zeros(B, D, 4, device=dev)
        out_scores = torch.zeros(B, D, device=dev)
        out_labels = torch.full((B, D), -1, dtype=torch.long, device=dev)
        out_boxes[:, :M] = boxes.gather(1, order.unsqueeze(-1).expand(B, M, 4))
        out_scores[:, :M] = torch.where(keep, top, 0.0)
        out_labels[:, :M] = torch.where(keep, labels.gather(1, order), -1)
    else:
        res = soft_nms(
            boxes,
            score,
            labels,
            max_out=D,
            method=_NMS_METHOD[cfg.nms],
            sigma=cfg.nms_sigma,
            iou_threshold=cfg.nms_iou,
            score_threshold=cfg.score_threshold,
            host_sync=cfg.host_sync,
        )
        out_boxes, out_scores, out_labels = res.boxes, res.scores, res.labels
    return out_boxes, out_scores, out_labels


def _pairs_to_detections_numpy(
    kps: list[_Keypoints], tl_tag: np.ndarray, br_tag: np.ndarray, cfg: DecodeConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_pairs_to_detections_torch` for CPU with ``host_sync``: per image in numpy, on keypoints
    of numpy arrays ``ndarray[B, K]`` (``_topk_keypoints(..., host=True)``) and tags ``ndarray[B, K]``.

    After the keypoints everything is small (K = 70: a 4900-entry pair matrix, tens of valid pairs,
    a few hundred NMS candidates at most), where a torch op costs 2-5 us of dispatch against ~1 us
    for numpy.  The same float32 operations in the same order as the tensor path, so the results are
    bit-identical (``test_decode.py`` checks it); invalid pairs are dropped instead of masked.
    Returns boxes ``ndarray[B, D, 4]`` (network-input px), scores ``ndarray[B, D]``, labels
    ``ndarray[B, D]`` int64 (invalid rows: zeros, label -1).
    """
    tl, br = kps[0], kps[1]
    B, K = tl.scores.shape
    D = cfg.max_per_image
    triplet = cfg.mode == "triplet"
    t_s, t_l, t_xy, t_tag = tl.scores, tl.labels, tl.xy, tl_tag  # (B, K[, 2])
    b_s, b_l, b_xy, b_tag = br.scores, br.labels, br.xy, br_tag
    if triplet:
        c_s, c_l = kps[2].scores, kps[2].labels  # (B, K)
        c_xy = kps[2].xy * np.float32(cfg.stride)  # (B, K, 2) centre keypoints, input pixels
    stride = np.float32(cfg.stride)
    ae = np.float32(cfg.ae_threshold)
    out_boxes = np.zeros((B, D, 4), dtype=np.float32)
    out_scores = np.zeros((B, D), dtype=np.float32)
    out_labels = np.full((B, D), -1, dtype=np.int64)
    for b in range(B):
        # same class first (fillers match nothing), in pair-index order ti * K + bi
        ti, bi = np.nonzero(t_l[b][:, None] == b_l[b][None, :])  # (P,) each
        tx, ty = t_xy[b, ti, 0], t_xy[b, ti, 1]
        bad = np.abs(t_tag[b, ti] - b_tag[b, bi]) > ae
        bad |= b_xy[b, bi, 0] < tx  # br left of tl
        bad |= b_xy[b, bi, 1] < ty  # br above tl
        ok = ~bad
        ti, bi = ti[ok], bi[ok]
        if len(ti) == 0:
            continue
        ts, bs = t_s[b, ti], b_s[b, bi]
        score = (ts + bs) / np.float32(2)  # (P,) pair score
        order = np.argsort(-score, kind="stable")[: cfg.num_dets]  # (N,) descending, ties: lower pair index
        ti, bi, ts, bs, score = ti[order], bi[order], ts[order], bs[order], score[order]
        boxes = np.concatenate([t_xy[b, ti], b_xy[b, bi]], 1)  # (N, 4) map coords
        boxes *= stride  # network-input pixels
        labels = t_l[b, ti]  # (N,)
        if triplet:
            x1y1, x2y2 = boxes[:, :2], boxes[:, 2:]
            wh = x2y2 - x1y1
            area = wh[:, 0] * wh[:, 1]  # (N,)
            n = np.where(area <= np.float32(cfg.small_area), np.float32(cfg.n_small), np.float32(cfg.n_large))
            n = n[:, None]  # (N, 1)
            n_plus, n_minus, n_twice = n + np.float32(1), n - np.float32(1), np.float32(2) * n
            ctl = (n_plus * x1y1 + n_minus * x2y2) / n_twice  # (N, 2) central region, top-left
            cbr = (n_minus * x1y1 + n_plus * x2y2) / n_twice  # bottom-right
            cx, cy = c_xy[b, None, :, 0], c_xy[b, None, :, 1]  # (1, K)
            # comparisons give the same answer as the tensor path's signs of float differences
            hit = c_l[b, None, :] == labels[:, None]  # (N, K) centre of the pair's class (fillers: none)
            hit &= cx > ctl[:, 0:1]
            hit &= cx < cbr[:, 0:1]
            hit &= cy > ctl[:, 1:2]
            hit &= cy < cbr[:, 1:2]
            # centre keypoints are sorted by score (descending): the first hit is the best one
            first = hit.argmax(1)  # (N,)
            found = hit[np.arange(len(first)), first]
            best_ct = np.where(found, c_s[b, first], np.float32(0))  # (N,) 0 if none
            score = (ts + bs + best_ct) / np.float32(3)
            boxes, score, labels = boxes[found], score[found], labels[found]
        if cfg.nms == "none":
            sel = np.flatnonzero(score > np.float32(cfg.score_threshold))
            sel = sel[np.argsort(-score[sel], kind="stable")][:D]
            kept = score[sel]
        else:
            sel, kept = soft_nms_numpy(
                boxes, score, labels, max_out=D, method=_NMS_METHOD[cfg.nms], sigma=cfg.nms_sigma,
                iou_threshold=cfg.nms_iou, score_threshold=cfg.score_threshold,
            )
        m = len(sel)
        out_boxes[b, :m] = boxes[sel]
        out_scores[b, :m] = kept
        out_labels[b, :m] = labels[sel]
    return out_boxes, out_scores, out_labels


def _keypoints_to_host(
    kps: list[_Keypoints], outputs: Mapping[str, Tensor], scale: Tensor | None, offset: Tensor | None,
    orig_size: Tensor | None,
) -> tuple[list[_Keypoints], np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """Plan "copy": device keypoints ``[B, K]`` of each map, their corner tags and the letterbox
    parameters -> numpy, in one device -> host copy (one float32 ``Tensor[B, F]``; labels and the
    parameters are exact in float32).  Returns the keypoints (``pix`` dropped: the tags are gathered
    already), tl / br tags ``ndarray[B, K]`` and [scale, offset, orig_size] (None where not given)."""
    B, K = kps[0].scores.shape
    H, W = outputs["tl_tag"].shape[-2:]
    tags = [outputs[f"{t}_tag"].reshape(B, H * W).gather(1, kp.pix).float() for t, kp in zip(("tl", "br"), kps)]
    cols = [t for kp in kps for t in (kp.scores, kp.labels.float(), kp.xy[..., 0], kp.xy[..., 1])] + tags  # (B, K) each
    specs = ((scale, 1), (offset, 2), (orig_size, 2))  # (tensor or None, columns)
    cols += [t.reshape(B, w).float() for t, w in specs if t is not None]
    packed = torch.cat(cols, 1).cpu().numpy()  # (B, F): the one copy (and sync)
    host = []
    for i in range(len(kps)):
        s, l, x, y = (packed[:, (4 * i + j) * K : (4 * i + j + 1) * K] for j in range(4))
        host.append(_Keypoints(s, l.astype(np.int64), np.stack([x, y], -1), None))
    at = 4 * len(kps) * K
    tl_tag, br_tag = packed[:, at : at + K], packed[:, at + K : at + 2 * K]
    at += 2 * K
    out: list[np.ndarray | None] = []
    for t, w in specs:
        if t is None:
            out.append(None)
            continue
        out.append(packed[:, at : at + w].reshape(t.shape))
        at += w
    return host, tl_tag, br_tag, out


def _finish_numpy(
    dets: tuple[np.ndarray, np.ndarray, np.ndarray], scale: np.ndarray | None, offset: np.ndarray | None,
    orig_size: np.ndarray | None,
) -> Detections:
    """Boxes ``ndarray[B, D, 4]``, scores, labels of ``_pairs_to_detections_numpy`` -> CPU
    :class:`Detections`, the letterbox undone as ``preprocess.boxes_to_original`` does it."""
    boxes, scores, labels = dets
    valid = labels >= 0  # (B, D)
    if offset is not None or scale is not None or orig_size is not None:
        if offset is not None:
            boxes = boxes - np.tile(offset, 2)[:, None, :]
        if scale is not None:
            boxes = boxes / scale[:, None, None]
        if orig_size is not None:
            upper = np.stack([orig_size[:, 1], orig_size[:, 0], orig_size[:, 1], orig_size[:, 0]], 1)[:, None, :]
            boxes = np.minimum(np.maximum(boxes, np.float32(0)), upper)  # (B, D, 4) clipped to (w, h)
        boxes[~valid] = 0.0
    return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                      torch.from_numpy(valid.sum(1)))


def _as_batch(t: Tensor | None, B: int, shape: tuple[int, ...], name: str, device: torch.device) -> Tensor | None:
    if t is None:
        return None
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if tuple(t.shape) != (B, *shape):
        raise ValueError(f"{name} must have shape {(B, *shape)}, got {tuple(t.shape)}")
    return t


@torch.no_grad()
def decode(
    outputs: Mapping[str, Tensor],
    cfg: DecodeConfig | None = None,
    *,
    scale: Tensor | None = None,
    offset: Tensor | None = None,
    orig_size: Tensor | None = None,
    host_ok: bool = False,
) -> Detections:
    """Decode CenterNet-triplet head outputs into per-image detections.

    Args:
        outputs: ``tl_heat``, ``br_heat`` ``Tensor[B, C, H, W]`` logits, ``tl_tag``, ``br_tag``
            ``Tensor[B, 1, H, W]``, ``tl_regr``, ``br_regr`` ``Tensor[B, 2, H, W]`` (x, y); for
            mode "triplet" also ``ct_heat`` and ``ct_regr``.  Any float dtype (cast to float32).
        cfg: :class:`DecodeConfig` (default: paper settings).
        scale: ``Tensor[B]`` letterbox scale; offset: ``Tensor[B, 2]`` (x, y) letterbox padding;
            orig_size: ``Tensor[B, 2]`` (h, w) to clip to.  Without them boxes stay in
            network-input pixels.
        host_ok: the caller takes CPU tensors: a decode that finishes on the host (``host_sync`` on a
            GPU, see ``_HOST_SYNC_PLAN``) returns them there instead of copying them back.

    Returns:
        :class:`Detections` with ``D = cfg.max_per_image`` rows per image, on the outputs' device
        (or on the CPU, with ``host_ok``).
    """
    cfg = DecodeConfig() if cfg is None else cfg
    keys = ["tl_heat", "br_heat", "tl_tag", "br_tag", "tl_regr", "br_regr"]
    if cfg.mode == "triplet":
        keys += ["ct_heat", "ct_regr"]
    for key in keys:
        if key not in outputs:
            raise ValueError(f"outputs lack {key!r} (have {sorted(outputs)})")
    tl_heat = outputs["tl_heat"]
    if tl_heat.dim() != 4:
        raise ValueError(f"tl_heat must be (B, C, H, W), got {tuple(tl_heat.shape)}")
    B, C, H, W = tl_heat.shape
    dev = tl_heat.device
    D = cfg.max_per_image
    want = {"heat": (B, C, H, W), "tag": (B, 1, H, W), "regr": (B, 2, H, W)}
    for key in keys:
        if tuple(outputs[key].shape) != want[key.split("_")[1]]:
            raise ValueError(f"{key} must have shape {want[key.split('_')[1]]}, got {tuple(outputs[key].shape)}")
    scale = _as_batch(scale, B, (), "scale", dev)
    offset = _as_batch(offset, B, (2,), "offset", dev)
    orig_size = _as_batch(orig_size, B, (2,), "orig_size", dev)
    if B == 0 or C * H * W == 0:
        return _empty(B, D, dev)

    K = min(cfg.topk, C * H * W)
    triplet = cfg.mode == "triplet"
    kinds = ("tl", "br", "ct") if triplet else ("tl", "br")
    plan = _HOST_SYNC_PLAN.get(dev.type, "copy") if cfg.host_sync else "device"
    if plan == "host" and dev.type != "cpu":
        raise ValueError(f"decode plan 'host' needs CPU outputs, got {dev}")
    heats, regrs = [outputs[f"{t}_heat"] for t in kinds], [outputs[f"{t}_regr"] for t in kinds]
    kps = _topk_keypoints(heats, regrs, K, cfg.kernel, host=plan == "host")
    tl, br = kps[0], kps[1]
    if plan == "host":
        rows = np.arange(B)[:, None]  # (B, 1)
        tl_tag = outputs["tl_tag"].float().numpy().reshape(B, H * W)[rows, tl.pix]  # (B, K)
        br_tag = outputs["br_tag"].float().numpy().reshape(B, H * W)[rows, br.pix]
        host_params = [None if t is None else t.numpy() for t in (scale, offset, orig_size)]
    elif plan == "copy":
        kps, tl_tag, br_tag, host_params = _keypoints_to_host(kps, outputs, scale, offset, orig_size)
    if plan != "device":
        det = _finish_numpy(_pairs_to_detections_numpy(kps, tl_tag, br_tag, cfg), *host_params)
        return det if host_ok or dev.type == "cpu" else Detections(*(t.to(dev) for t in det))
    else:
        tl_tag = outputs["tl_tag"].reshape(B, H * W).gather(1, tl.pix)  # (B, K)
        br_tag = outputs["br_tag"].reshape(B, H * W).gather(1, br.pix)
        if tl_tag.dtype != torch.float32:
            tl_tag, br_tag = tl_tag.float(), br_tag.float()
        res = _pairs_to_detections_torch(kps, tl_tag, br_tag, cfg, C)
        if res is None:
            return _empty(B, D, dev)
        out_boxes, out_scores, out_labels = res
    valid = out_labels >= 0  # (B, D)
    out_boxes = boxes_to_original(out_boxes, scale, offset, orig_size)
    out_boxes = torch.where(valid.unsqueeze(-1), out_boxes, 0.0)
    return Detections(out_boxes, out_scores, out_labels, valid.sum(1))
