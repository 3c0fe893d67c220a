"""COCO AP / FD through pycocotools against hand-computed values and a brute-force reference."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from centernet_ros.evaluation import (
    COCO_IOU_THRESHOLDS,
    FD_IOU_THRESHOLDS,
    DetectionEvaluator,
    evaluate_detections,
)

NAMES = ["car", "bus"]
HALF = 51 / 101  # 101-point interpolation: precision 1 up to recall 0.5 -> 51 of 101 recall points


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force IoU matrix (D, N) of x1y1x2y2 boxes."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union
    return out


def _reference_ap(gts, dets, thr: float) -> float:
    """Single-class AP at one IoU threshold: greedy matching by score, 101-point interpolated precision."""
    n_gt = sum(len(g) for g in gts)
    records = []  # (score, is_tp)
    for g, (boxes, scores) in zip(gts, dets):
        order = np.argsort(-scores, kind="stable")
        ious = _iou(boxes[order], g) if len(g) else np.zeros((len(boxes), 0))
        used = np.zeros(len(g), bool)
        for r, d in enumerate(order):
            best, best_j = thr, -1
            for j in range(len(g)):
                if not used[j] and ious[r, j] >= best:
                    best, best_j = ious[r, j], j
            if best_j >= 0:
                used[best_j] = True
            records.append((scores[d], best_j >= 0))
    records.sort(key=lambda t: -t[0])
    tp = np.cumsum([t for _, t in records])
    fp = np.cumsum([not t for _, t in records])
    rec = tp / n_gt
    prec = tp / np.maximum(tp + fp, 1e-12)
    total = 0.0
    for r in np.linspace(0, 1, 101):
        ok = prec[rec >= r - 1e-12]
        total += ok.max() if ok.size else 0.0
    return total / 101


def _one(boxes, labels=None, scores=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels)
    return boxes, labels, scores


def test_detections_equal_to_ground_truth_give_ap_1_and_fd_0():
    gt = [np.array([[10, 10, 20, 20], [50, 50, 120, 110]], float), np.array([[0, 0, 200, 150]], float)]
    lab = [np.array([0, 1]), np.array([1])]
    r = evaluate_detections(gt, lab, gt, [np.array([0.9, 0.8]), np.array([0.7])], lab, class_names=NAMES)
    for v in (r.ap, r.ap50, r.ap75, r.ap_small, r.ap_medium, r.ap_large):
        assert v == pytest.approx(1.0)
    for v in (r.fd, r.fd_small, r.fd_medium, r.fd_large):
        assert v == pytest.approx(0.0, abs=1e-12)
    assert r.per_class_ap == pytest.approx({"car": 1.0, "bus": 1.0})
    assert (r.num_images, r.num_gt, r.num_dets) == (2, 3, 3)


def test_half_correct_by_hand():
    gt = np.array([[10, 10, 60, 60], [100, 100, 200, 220]], float)
    tp, fp = [10, 10, 60, 60], [300, 300, 350, 350]
    # true positive ranked first: precision 1 until recall 0.5, then nothing -> AP = 51/101
    r = evaluate_detections([gt], [np.zeros(2)], [np.array([tp, fp], float)], [np.array([0.9, 0.8])],
                            [np.zeros(2)], class_names=NAMES)
    assert r.ap == pytest.approx(HALF) and r.ap50 == pytest.approx(HALF) and r.ap75 == pytest.approx(HALF)
    assert r.fd == pytest.approx(1 - HALF)
    assert r.ap_medium == pytest.approx(1.0) and r.ap_large == pytest.approx(0.0)  # 50x50 vs 100x120 GT
    assert math.isnan(r.ap_small) and math.isnan(r.per_class_ap["bus"])
    # false positive ranked first: interpolated precision 0.5 up to recall 0.5 -> AP = 0.5 * 51/101
    r = evaluate_detections([gt], [np.zeros(2)], [np.array([fp, tp], float)], [np.array([0.9, 0.8])],
                            [np.zeros(2)], class_names=NAMES)
    assert r.ap == pytest.approx(0.5 * HALF)
    # the wrong class never matches
    r = evaluate_detections([gt], [np.zeros(2)], [np.array([tp], float)], [np.array([0.9])], [np.ones(1)],
                            class_names=NAMES)
    assert r.ap == pytest.approx(0.0) and r.fd == pytest.approx(1.0)


def test_fd_counts_iou_thresholds_from_005_to_05():
    # One GT per size class; each detection overlaps its GT with a chosen IoU.
    # IoU 0.32 -> matched at 0.05..0.30 (6 of 10 thresholds); IoU 0.55 -> all 10; IoU 0.12 -> 2.
    def shifted(x1, y1, side, iou):
        # same-size square shifted along x: iou = (s - d) / (s + d)  =>  d = s (1 - iou) / (1 + iou)
        d = side * (1 - iou) / (1 + iou)
        return [x1 + d, y1, x1 + d + side, y1 + side]

    gts = [np.array([[10, 10, 30, 30]], float), np.array([[10, 10, 60, 60]], float),
           np.array([[10, 10, 210, 210]], float)]
    dets = [np.array([shifted(10, 10, 20, 0.32)]), np.array([shifted(10, 10, 50, 0.55)]),
            np.array([shifted(10, 10, 200, 0.12)])]
    ious = [float(_iou(d, g)[0, 0]) for d, g in zip(dets, gts)]
    assert ious == pytest.approx([0.32, 0.55, 0.12])
    scores = [np.array([0.9]), np.array([0.6]), np.array([0.3])]
    labels = [np.zeros(1, np.int64)] * 3
    r = evaluate_detections(gts, labels, dets, scores, labels, class_names=NAMES)
    assert r.fd_small == pytest.approx(1 - 6 / 10)
    assert r.fd_medium == pytest.approx(0.0, abs=1e-12)
    assert r.fd_large == pytest.approx(1 - 2 / 10)
    # "all": brute-force AP at each FD threshold, averaged
    ref_fd = 1 - np.mean([_reference_ap(gts, list(zip(dets, scores)), t) for t in FD_IOU_THRESHOLDS])
    assert r.fd == pytest.approx(ref_fd)
    assert r.ap50 == pytest.approx(_reference_ap(gts, list(zip(dets, scores)), 0.5))
    assert r.ap_small == pytest.approx(0.0) and r.ap_large == pytest.approx(0.0)


def test_random_scenes_match_brute_force_reference():
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(6):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 300, (n, 2))
        g = np.concatenate([xy, xy + rng.uniform(20, 150, (n, 2))], 1)
        # detections: jittered copies of some GTs plus random boxes
        keep = g[rng.random(n) < 0.7]
        jit = keep + rng.normal(0, 8, keep.shape)
        m = int(rng.integers(0, 4))
        rxy = rng.uniform(0, 300, (m, 2))
        rnd = np.concatenate([rxy, rxy + rng.uniform(20, 150, (m, 2))], 1)
        d = np.concatenate([jit, rnd], 0)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gts.append(g)
        dets.append((d, rng.random(len(d))))
    r = evaluate_detections(gts, [np.zeros(len(g), np.int64) for g in gts], [d for d, _ in dets],
                            [s for _, s in dets], [np.zeros(len(d), np.int64) for d, _ in dets], class_names=["x"])
    ref_ap = np.mean([_reference_ap(gts, dets, t) for t in COCO_IOU_THRESHOLDS])
    ref_fd = 1 - np.mean([_reference_ap(gts, dets, t) for t in FD_IOU_THRESHOLDS])
    assert r.ap == pytest.approx(ref_ap, abs=1e-9)
    assert r.fd == pytest.approx(ref_fd, abs=1e-9)
    assert 0 < r.ap < 1


def test_empty_inputs_padding_rows_and_tensors():
    gt = [torch.tensor([[0.0, 0, 40, 40]])]
    lab = [torch.tensor([1])]
    # no detections at all -> AP 0, FD 1
    r = evaluate_detections(gt, lab, [torch.zeros(0, 4)], [torch.zeros(0)], [torch.zeros(0, dtype=torch.long)],
                            class_names=NAMES)
    assert r.ap == 0.0 and r.fd == 1.0 and r.num_dets == 0
    # decode-style padding rows (label -1, score 0) are ignored
    boxes = torch.tensor([[0.0, 0, 40, 40], [0, 0, 0, 0], [0, 0, 0, 0]])
    r = evaluate_detections(gt, lab, [boxes], [torch.tensor([0.8, 0.0, 0.0])], [torch.tensor([1, -1, -1])],
                            class_names=NAMES)
    assert r.ap == pytest.approx(1.0) and r.num_dets == 1
    # no images -> undefined everywhere; JSON has nulls
    r = evaluate_detections([], [], [], [], [], class_names=NAMES)
    assert math.isnan(r.ap) and math.isnan(r.fd)
    d = r.to_dict()
    assert d["ap"] is None and d["per_class_ap"] == {"car": None, "bus": None}
    json.dumps(d, allow_nan=False)
    # images without ground truth but with detections: AP undefined (no positives), not an error
    r = evaluate_detections([np.zeros((0, 4))], [np.zeros(0)], [np.array([[0, 0, 5, 5.0]])], [np.array([0.5])],
                            [np.zeros(1)], class_names=NAMES)
    assert math.isnan(r.ap)


def test_max_dets_keeps_the_best_scores():
    gt = [np.array([[0, 0, 50, 50]], float)]
    fps = [[100 + 10 * i, 100, 140 + 10 * i, 140] for i in range(3)]
    boxes = np.array(fps + [[0, 0, 50, 50]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    lab = [np.zeros(4, np.int64)]
    full = evaluate_detections(gt, [np.zeros(1)], [boxes], [scores], lab, class_names=NAMES)
    assert full.ap == pytest.approx(0.25)  # TP at rank 4: precision 1/4 up to recall 1
    cut = evaluate_detections(gt, [np.zeros(1)], [boxes], [scores], lab, class_names=NAMES, max_dets=3)
    assert cut.ap == pytest.approx(0.0)


def test_argument_validation():
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_detections([np.zeros((0, 4))], [], [], [], [], class_names=NAMES)
    ev = DetectionEvaluator(NAMES)
    with pytest.raises(ValueError, match="gt labels must be in"):
        ev.add(np.zeros((1, 4)), np.array([2]), np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="2 det boxes, 1 scores"):
        ev.add(np.zeros((0, 4)), np.zeros(0), np.zeros((2, 4)), np.zeros(1), np.zeros(2))
    with pytest.raises(ValueError, match=r"\[\]"):
        DetectionEvaluator([])
    with pytest.raises(ValueError, match="0"):
        DetectionEvaluator(NAMES, max_dets=0)
    assert len(ev) == 0
