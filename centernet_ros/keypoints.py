"""Heatmap peaks -> top-k keypoints (step 1 of the test procedure in :mod:`centernet_ros.decode`).

Legend: B batch, C classes, H/W map height/width, K top-k keypoints (``k`` in the helpers), n maps of
one pass (images x kinds of map), F columns of the packed keypoints copied to the host (plan "copy").

Sigmoid, local maxima (max filter), top-K over all classes and positions, sub-pixel offsets, for the
tl, br and ct heatmaps alike: tensor ops on the outputs' device (``_topk_keypoints``); with the
selection in numpy on the CPU (plan "host": ``_peak_topk_numpy``, ``_assemble_keypoints_numpy``);
and the one device -> host copy of the keypoints of plan "copy" (``_keypoints_to_host``).
Private to :mod:`centernet_ros.decode`, which calls ``_topk_keypoints`` and ``_keypoints_to_host``.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__: list[str] = []  # private helpers of decode.py


class _Keypoints(NamedTuple):
    scores: Tensor  # (B, K), 0 for a non-peak filler
    labels: Tensor  # (B, K) long; a filler gets a negative label that differs between kinds of map
    xy: Tensor  # (B, K, 2) map coords (x, y) incl. offset
    pix: Tensor  # (B, K) flat index y * W + x


# CPU: float32 values handled per pass of the keypoint extraction.  Small heatmaps go together (all
# maps of the batch, or one map of several images, up to 4 MiB) to save per-op overhead; a larger
# image is cut into groups of class maps of up to 1 MiB, so every element-wise pass stays
# cache-resident and its scratch allocations stay small (no fresh pages from the OS per call).
_CPU_PASS_ELEMS = 1 << 20
_CPU_GROUP_ELEMS = 1 << 18
# GPU: all maps of a batch in one pass up to this many values (256 MiB of float32 scratch), else one per map.
_DEVICE_PASS_ELEMS = 1 << 26


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


def _keypoints_to_host(
    kps: list[_Keypoints], outputs: Mapping[str, Tensor], ct_range: Tensor | None, scale: Tensor | None,
    offset: Tensor | None, orig_size: Tensor | None,
) -> tuple[list[_Keypoints], np.ndarray, np.ndarray, np.ndarray | None, list[np.ndarray | None]]:
    """Plan "copy": device keypoints ``[B, K]`` of each map, their corner tags, the centres' size ranges
    ``Tensor[B, K, 4]`` (or None) and the letterbox parameters -> numpy, in one device -> host copy (one
    float32 ``Tensor[B, F]``; labels and the parameters are exact in float32).  Returns the keypoints
    (``pix`` dropped: the tags are gathered already), tl / br tags ``ndarray[B, K]``, the size ranges
    ``ndarray[B, K, 4]`` (or None) and [scale, offset, orig_size] (None where not given)."""
    B, K = kps[0].scores.shape
    H, W = outputs["tl_tag"].shape[-2:]
    tags = [outputs[f"{t}_tag"].reshape(B, H * W).gather(1, kp.pix).float() for t, kp in zip(("tl", "br"), kps)]
    cols = [t for kp in kps for t in (kp.scores, kp.labels.float(), kp.xy[..., 0], kp.xy[..., 1])] + tags  # (B, K) each
    if ct_range is not None:
        cols.append(ct_range.reshape(B, 4 * K))
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
    host_range = None
    if ct_range is not None:
        host_range = packed[:, at : at + 4 * K].reshape(B, K, 4)
        at += 4 * K
    out: list[np.ndarray | None] = []
    for t, w in specs:
        if t is None:
            out.append(None)
            continue
        out.append(packed[:, at : at + w].reshape(t.shape))
        at += w
    return host, tl_tag, br_tag, host_range, out
