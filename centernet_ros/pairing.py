"""Keypoints -> detections in network-input pixels (steps 2-4 of the test procedure in
:mod:`centernet_ros.decode`).

Legend: B batch, C classes, K top-k keypoints, P valid pairs, N candidate pairs
(``min(num_dets, K*K)``), D detections per image (``max_per_image``).

Corner pairs (class, embedding distance, geometry), pair score, the central-region (triplet) check,
score threshold and NMS: batched tensor ops (``_pairs_to_detections_torch``) and their bit-identical
per-image numpy twin (``_pairs_to_detections_numpy``).  Private to :mod:`centernet_ros.decode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .box_ops import soft_nms, soft_nms_numpy
from .group_boxes import group_box_mask
from .keypoints import _Keypoints

if TYPE_CHECKING:  # annotations only: decode.py imports this module
    from .decode import DecodeConfig

__all__: list[str] = []  # private helpers of decode.py

_NMS_METHOD = {"soft": "gaussian", "soft_linear": "linear", "hard": "hard"}


def _groups_on(cfg: DecodeConfig) -> bool:
    """``DecodeConfig.group_score_ratio`` applies (triplet mode, like the other additions to the paper)."""
    return cfg.mode == "triplet" and cfg.group_score_ratio > 0


def _nms_threshold(cfg: DecodeConfig) -> float:
    """Score threshold of the NMS step.  With group suppression it is lowered to ``score_threshold x
    min(group_score_ratio, 1)``: every detection that can count as enclosed in a box above the threshold
    stays until :func:`_drop_group_boxes`, so whether a box is a group box does not depend on the
    threshold (the ROS node's 0.22 and the evaluation's 0 drop the same boxes)."""
    if _groups_on(cfg):
        return cfg.score_threshold * min(cfg.group_score_ratio, 1.0)
    return cfg.score_threshold


def _drop_group_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: DecodeConfig) -> tuple[Tensor, Tensor, Tensor]:
    """NMS output ``Tensor[B, D, 4]``, ``Tensor[B, D]`` x 2 (invalid rows: label -1) -> the same without
    the group boxes (:func:`~centernet_ros.group_boxes.group_box_mask`) and the rows at or below
    ``cfg.score_threshold``; kept rows first, in their order (by score).  Sync-free."""
    drop = group_box_mask(boxes, scores, labels, score_ratio=cfg.group_score_ratio)  # (B, D)
    drop |= (scores <= cfg.score_threshold) | (labels < 0)
    order = drop.int().argsort(dim=1, stable=True)  # (B, D) kept rows first
    keep = ~drop.gather(1, order)
    boxes = torch.where(keep.unsqueeze(-1), boxes.gather(1, order.unsqueeze(-1).expand_as(boxes)), 0.0)
    return boxes, torch.where(keep, scores.gather(1, order), 0.0), torch.where(keep, labels.gather(1, order), -1)


def _pairs_to_detections_torch(
    kps: list[_Keypoints], tl_tag: Tensor, br_tag: Tensor, cfg: DecodeConfig, C: int,
    ct_range: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Pairs, centre check and NMS as batched tensor ops (CUDA, or ``host_sync=False``): keypoints
    of ``Tensor[B, K]`` -> boxes ``Tensor[B, D, 4]`` (network-input px), scores and labels ``Tensor[B, D]``
    (invalid rows: label -1); None when no image has a valid pair.  ``ct_range`` ``Tensor[B, K, 4]``
    (``decode._size_ranges``) or None: the box sizes each centre keypoint may confirm."""
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
        if ct_range is not None:  # DecodeConfig.size_ratio: the box's size is the centre's (inclusive)
            bw, bh = wh[..., 0].unsqueeze(2), wh[..., 1].unsqueeze(2)  # (B, N, 1)
            lo_w, hi_w, lo_h, hi_h = (ct_range[..., i].unsqueeze(1) for i in range(4))  # (B, 1, K)
            fits = (bw >= lo_w) & (bw <= hi_w) & (bh >= lo_h) & (bh <= hi_h)  # (B, N, K)
            inside.mul_(fits.float())
        # score of each centre keypoint in its class row (fillers: score 0): (B, C, K)
        by_class = torch.zeros(B, C, K, device=dev).scatter_(
            1, ct.labels.clamp_min(0).unsqueeze(1), ct.scores.unsqueeze(1)
        )
        rows = labels.clamp_min(0) if B == 1 else labels.clamp_min(0) + torch.arange(B, device=dev).unsqueeze(1) * C
        same = by_class.view(B * C, K).index_select(0, rows.view(-1)).view(B, N, K)  # centre scores of the pair's class
        hit_score = inside.mul_(same)  # (B, N, K) centre score where it confirms the box, else 0
        best_ct = hit_score.amax(2)  # (B, N) best centre score inside, 0 if none
        found = best_ct > 0
        ok = found if ok is None else ok & found
        score = (ts + bs + best_ct) / 3
        if cfg.exclusive_centres:
            # centres that also confirm a better box nested in this one are not this box's
            x1, y1, x2, y2 = boxes.unbind(2)  # (B, N) each
            nested = x1.unsqueeze(1) >= x1.unsqueeze(2)  # (B, N, N): row n holds column m
            nested &= y1.unsqueeze(1) >= y1.unsqueeze(2)
            nested &= x2.unsqueeze(1) <= x2.unsqueeze(2)
            nested &= y2.unsqueeze(1) <= y2.unsqueeze(2)
            nested &= score.unsqueeze(1) > score.unsqueeze(2)
            nested &= ok.unsqueeze(1)
            claimed = torch.bmm(nested.float(), (hit_score > 0).float()) > 0  # (B, N, K)
            best_ct = hit_score.masked_fill_(claimed, 0.0).amax(2)  # (B, N)
            found = best_ct > 0
            ok = ok & found
            score = (ts + bs + best_ct) / 3

    if ok is not None:
        score = torch.where(ok, score, -1.0)  # (B, N); -1 = rejected
        labels = torch.where(ok, labels, -1)
    if cfg.nms == "none":
        M = min(D, N)
        top, order = score.sort(dim=1, descending=True, stable=True)
        top, order = top[:, :M], order[:, :M]  # (B, M)
        keep = top > _nms_threshold(cfg)
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
            score_threshold=_nms_threshold(cfg),
            host_sync=cfg.host_sync,
        )
        out_boxes, out_scores, out_labels = res.boxes, res.scores, res.labels
    if _groups_on(cfg):
        return _drop_group_boxes(out_boxes, out_scores, out_labels, cfg)
    return out_boxes, out_scores, out_labels


def _exclusive_centres_numpy(boxes: np.ndarray, score: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """``DecodeConfig.exclusive_centres`` on confirmed boxes ``ndarray[N, 4]``, their triplet scores
    ``ndarray[N]`` and centre hits ``ndarray[N, K]`` (bool, cleared in place where a better nested
    box claims the centre).  Returns ``ndarray[N]`` bool: boxes with a centre left."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    nested = x1[None, :] >= x1[:, None]  # (N, N): row n holds column m
    nested &= y1[None, :] >= y1[:, None]
    nested &= x2[None, :] <= x2[:, None]
    nested &= y2[None, :] <= y2[:, None]
    nested &= score[None, :] > score[:, None]
    claimed = (nested.astype(np.float32) @ hit.astype(np.float32)) > 0  # (N, K)
    hit &= ~claimed
    return hit.any(1)


def _pairs_to_detections_numpy(
    kps: list[_Keypoints], tl_tag: np.ndarray, br_tag: np.ndarray, cfg: DecodeConfig,
    ct_range: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_pairs_to_detections_torch` for CPU with ``host_sync``: per image in numpy, on keypoints
    of numpy arrays ``ndarray[B, K]`` (``keypoints._topk_keypoints(..., host=True)``) and tags
    ``ndarray[B, K]``.

    After the keypoints everything is small (K = 70: a 4900-entry pair matrix, tens of valid pairs,
    a few hundred NMS candidates at most), where a torch op costs 2-5 us of dispatch against ~1 us
    for numpy.  The same float32 operations in the same order as the tensor path, so the results are
    bit-identical (``test_decode.py`` checks it); invalid pairs are dropped instead of masked.
    ``ct_range`` ``ndarray[B, K, 4]`` or None: the box sizes each centre keypoint may confirm.
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
            if ct_range is not None:  # DecodeConfig.size_ratio (inclusive)
                bw, bh = wh[:, 0:1], wh[:, 1:2]  # (N, 1)
                lo_w, hi_w, lo_h, hi_h = (ct_range[b, None, :, i] for i in range(4))  # (1, K)
                hit &= (bw >= lo_w) & (bw <= hi_w) & (bh >= lo_h) & (bh <= hi_h)
            # centre keypoints are sorted by score (descending): the first hit is the best one
            first = hit.argmax(1)  # (N,)
            found = hit[np.arange(len(first)), first]
            best_ct = np.where(found, c_s[b, first], np.float32(0))  # (N,) 0 if none
            score = (ts + bs + best_ct) / np.float32(3)
            if cfg.exclusive_centres:
                boxes, ts, bs, score, labels, hit = (a[found] for a in (boxes, ts, bs, score, labels, hit))
                found = _exclusive_centres_numpy(boxes, score, hit)  # (N',) kept, hit updated in place
                first = hit.argmax(1)
                score = (ts + bs + c_s[b, first]) / np.float32(3)
            boxes, score, labels = boxes[found], score[found], labels[found]
        if cfg.nms == "none":
            sel = np.flatnonzero(score > np.float32(_nms_threshold(cfg)))
            sel = sel[np.argsort(-score[sel], kind="stable")][:D]
            kept = score[sel]
        else:
            sel, kept = soft_nms_numpy(
                boxes, score, labels, max_out=D, method=_NMS_METHOD[cfg.nms], sigma=cfg.nms_sigma,
                iou_threshold=cfg.nms_iou, score_threshold=_nms_threshold(cfg),
            )
        if _groups_on(cfg) and len(sel):  # the tensor path's _drop_group_boxes, on this image's rows
            group = group_box_mask(torch.from_numpy(boxes[sel])[None], torch.from_numpy(kept)[None],
                                   torch.from_numpy(labels[sel])[None], score_ratio=cfg.group_score_ratio)[0].numpy()
            keep = ~group & (kept > np.float32(cfg.score_threshold))
            sel, kept = sel[keep], kept[keep]
        m = len(sel)
        out_boxes[b, :m] = boxes[sel]
        out_scores[b, :m] = kept
        out_labels[b, :m] = labels[sel]
    return out_boxes, out_scores, out_labels
