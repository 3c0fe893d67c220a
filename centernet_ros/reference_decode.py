"""Straightforward per-image numpy version of :func:`centernet_ros.decode.decode` (tests, benchmark).

Legend: B batch, C classes, H/W map height/width, K top-k keypoints, N candidate pairs,
D detections per image.

Same paper test procedure and same :class:`~centernet_ros.decode.DecodeConfig`, written with
plain loops (over pairs, over NMS picks) and a numpy centre check.  Computations are float32 in
the same operation order as the tensor version, so both give the same detections up to float
rounding of the sigmoid.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .decode import DecodeConfig

__all__ = ["reference_decode"]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _keypoints(heat: np.ndarray, regr: np.ndarray, k: int, kernel: int):
    """heat (C, H, W) logits, regr (2, H, W) -> scores, labels, xs, ys, pix for the top-k peaks."""
    C, H, W = heat.shape
    with np.errstate(over="ignore"):  # exp(large) = inf -> probability 0
        prob = (1.0 / (1.0 + np.exp(-heat.astype(np.float64)))).astype(np.float32)
    r = (kernel - 1) // 2
    padded = np.pad(prob, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
    hmax = np.full_like(prob, -np.inf)
    for dy in range(kernel):
        for dx in range(kernel):
            hmax = np.maximum(hmax, padded[:, dy : dy + H, dx : dx + W])
    peaks = np.where(hmax == prob, prob, np.float32(0.0)).reshape(-1)
    order = np.argsort(-peaks, kind="stable")[:k]
    scores = peaks[order]
    labels = order // (H * W)
    pix = order % (H * W)
    ys, xs = pix // W, pix % W
    xs = xs.astype(np.float32) + regr[0].reshape(-1)[pix]
    ys = ys.astype(np.float32) + regr[1].reshape(-1)[pix]
    return scores, labels, xs, ys, pix


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box a (4,) with boxes b (N, 4)."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _nms_one_class(boxes: np.ndarray, scores: np.ndarray, cfg: DecodeConfig,
                   threshold: float) -> tuple[list[int], list[float]]:
    """Classic per-class (soft-)NMS loop: indices and scores of kept boxes (score > threshold), in pick order."""
    scores = scores.astype(np.float32).copy()
    alive = scores > threshold
    kept, kept_scores = [], []
    while alive.any():
        cand = np.flatnonzero(alive)
        i = cand[np.argmax(scores[cand])]
        kept.append(int(i))
        kept_scores.append(float(scores[i]))
        alive[i] = False
        iou = _iou(boxes[i], boxes)
        if cfg.nms == "soft":
            w = np.exp(-(iou * iou) / np.float32(cfg.nms_sigma)).astype(np.float32)
        elif cfg.nms == "soft_linear":
            w = np.where(iou > cfg.nms_iou, np.float32(1.0) - iou, np.float32(1.0)).astype(np.float32)
        else:  # hard
            w = np.where(iou > cfg.nms_iou, np.float32(0.0), np.float32(1.0)).astype(np.float32)
        scores = scores * w
        alive &= scores > threshold
    return kept, kept_scores


def _decode_one(out: dict[str, np.ndarray], cfg: DecodeConfig, b: int):
    C, H, W = out["tl_heat"].shape[1:]
    K = min(cfg.topk, C * H * W)
    stride = np.float32(cfg.stride)
    tl_s, tl_c, tl_x, tl_y, tl_p = _keypoints(out["tl_heat"][b], out["tl_regr"][b], K, cfg.kernel)
    br_s, br_c, br_x, br_y, br_p = _keypoints(out["br_heat"][b], out["br_regr"][b], K, cfg.kernel)
    tl_t = out["tl_tag"][b, 0].reshape(-1)[tl_p]
    br_t = out["br_tag"][b, 0].reshape(-1)[br_p]

    pairs = []  # (pair score, flat pair index, i, j)
    for i in range(K):
        for j in range(K):
            if tl_s[i] <= 0 or br_s[j] <= 0 or tl_c[i] != br_c[j]:
                continue
            if abs(tl_t[i] - br_t[j]) > cfg.ae_threshold:
                continue
            if br_x[j] < tl_x[i] or br_y[j] < tl_y[i]:
                continue
            pairs.append(((tl_s[i] + br_s[j]) / np.float32(2), i * K + j, i, j))
    pairs.sort(key=lambda p: (-p[0], p[1]))
    pairs = pairs[: cfg.num_dets]

    if cfg.mode == "triplet":
        ct_s, ct_c, ct_x, ct_y, ct_p = _keypoints(out["ct_heat"][b], out["ct_regr"][b], K, cfg.kernel)
        ct_x, ct_y = ct_x * stride, ct_y * stride
        sized = cfg.size_ratio > 0 and "ct_size" in out
        if sized:  # the sizes each centre predicts (input px) and the range of box sizes it confirms
            ct_w = np.exp(out["ct_size"][b, 0].reshape(-1)[ct_p]) * stride
            ct_h = np.exp(out["ct_size"][b, 1].reshape(-1)[ct_p]) * stride
            r = np.float32(cfg.size_ratio)

    cands = []  # (box, score, label, centre mask (K,) or None, corner score sum)
    for ps, _, i, j in pairs:
        box = np.array([tl_x[i], tl_y[i], br_x[j], br_y[j]], dtype=np.float32) * stride
        score, m = ps, None
        if cfg.mode == "triplet":
            x1, y1, x2, y2 = box
            n = np.float32(cfg.n_small if (x2 - x1) * (y2 - y1) <= cfg.small_area else cfg.n_large)
            ctlx = ((n + 1) * x1 + (n - 1) * x2) / (2 * n)
            ctly = ((n + 1) * y1 + (n - 1) * y2) / (2 * n)
            cbrx = ((n - 1) * x1 + (n + 1) * x2) / (2 * n)
            cbry = ((n - 1) * y1 + (n + 1) * y2) / (2 * n)
            m = (ct_c == tl_c[i]) & (ct_s > 0) & (ct_x > ctlx) & (ct_x < cbrx) & (ct_y > ctly) & (ct_y < cbry)
            if sized:
                w, h = x2 - x1, y2 - y1
                m &= (w >= ct_w / r) & (w <= ct_w * r) & (h >= ct_h / r) & (h <= ct_h * r)
            if not m.any():
                continue
            score = (tl_s[i] + br_s[j] + ct_s[m].max()) / np.float32(3)
        cands.append((box, score, int(tl_c[i]), m, tl_s[i] + br_s[j]))

    groups = cfg.mode == "triplet" and cfg.group_score_ratio > 0
    # with group suppression, keep what may count as enclosed until the group check, then threshold
    nms_threshold = cfg.score_threshold * min(cfg.group_score_ratio, 1.0) if groups else cfg.score_threshold
    boxes, scores, labels = [], [], []
    for box, score, label, m, corners in cands:
        if cfg.mode == "triplet" and cfg.exclusive_centres:
            # drop the centres that confirm a better-scoring box nested in this one
            own = m.copy()
            for box2, score2, _, m2, _ in cands:
                inner = box2[0] >= box[0] and box2[1] >= box[1] and box2[2] <= box[2] and box2[3] <= box[3]
                if inner and score2 > score:
                    own &= ~m2
            if not own.any():
                continue
            score = (corners + ct_s[own].max()) / np.float32(3)
        if score <= nms_threshold:
            continue
        boxes.append(box)
        scores.append(np.float32(score))
        labels.append(int(label))
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)

    if cfg.nms == "none":
        order = np.argsort(-scores, kind="stable")[: cfg.max_per_image]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
    else:
        picked = []  # (score, candidate index)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            kept, kept_scores = _nms_one_class(boxes[idx], scores[idx], cfg, nms_threshold)
            picked += [(s, int(idx[k])) for k, s in zip(kept, kept_scores)]
        picked.sort(key=lambda p: -p[0])
        picked = picked[: cfg.max_per_image]
        sel = np.asarray([p[1] for p in picked], dtype=np.int64)
        boxes, scores, labels = boxes[sel], np.asarray([p[0] for p in picked], dtype=np.float32), labels[sel]
    if groups:
        keep = [not _is_group_box(a, boxes, scores, labels, cfg.group_score_ratio) and scores[a] > cfg.score_threshold
                for a in range(len(scores))]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels


def _is_group_box(a: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, ratio: float) -> bool:
    """``group_boxes.group_box_mask``'s rule for detection ``a``, by loops: two other detections of its
    class, each scoring >= ratio x its score, each with >= 0.9 of its (non-zero) area inside box ``a``,
    with IoU < 0.5 between any two of the three."""
    def area(b):
        return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)

    def inter(p, q):
        return max(min(p[2], q[2]) - max(p[0], q[0]), 0.0) * max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)

    def distinct(p, q):
        return inter(p, q) < 0.5 * (area(p) + area(q) - inter(p, q))

    box = boxes[a]
    enclosed = [j for j in range(len(scores)) if j != a and labels[j] == labels[a]
                and scores[j] >= ratio * scores[a] and area(boxes[j]) > 0
                and inter(box, boxes[j]) >= 0.9 * area(boxes[j]) and distinct(box, boxes[j])]
    return any(distinct(boxes[j], boxes[k]) for j in enclosed for k in enclosed if j != k)


def reference_decode(
    outputs: Mapping[str, object],
    cfg: DecodeConfig | None = None,
    *,
    scale=None,
    offset=None,
    orig_size=None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-image numpy decode.  Same arguments as :func:`centernet_ros.decode.decode` (tensors or
    arrays); returns one ``(boxes (D_i, 4), scores (D_i,), labels (D_i,))`` tuple per image with
    only the valid detections, sorted by score.  One view per image: ``cfg.flip_test`` raises
    ``ValueError`` (the flip test's merge is tested against single-view decodes, ``test_flip_test.py``)."""
    cfg = DecodeConfig() if cfg is None else cfg
    if cfg.flip_test:
        raise ValueError("reference_decode decodes one view per image; got flip_test=True")
    out = {k: _to_numpy(v) for k, v in outputs.items()}
    B = out["tl_heat"].shape[0]
    scale = None if scale is None else _to_numpy(scale)
    offset = None if offset is None else _to_numpy(offset)
    orig_size = None if orig_size is None else _to_numpy(orig_size)
    results = []
    for b in range(B):
        boxes, scores, labels = _decode_one(out, cfg, b)
        if offset is not None:
            boxes = boxes - np.tile(offset[b], 2)
        if scale is not None:
            boxes = boxes / scale[b]
        if orig_size is not None:
            h, w = orig_size[b]
            boxes = np.minimum(np.maximum(boxes, 0), np.array([w, h, w, h], dtype=np.float32))
        results.append((boxes.astype(np.float32), scores, labels))
    return results
