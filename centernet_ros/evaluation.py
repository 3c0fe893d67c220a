"""COCO-style detection metrics through pycocotools, plus the false discovery rate of the paper.

Letters: N ground-truth objects of one image, D detections of one image, C classes,
T IoU thresholds, R recall points (101), A area ranges (all, small, medium, large), M max-detection limits.

* AP, AP50, AP75, APs, APm, APl: COCO box AP (IoU 0.5:0.05:0.95, 101-point interpolated precision,
  at most ``max_dets`` detections per image, areas small < 32^2 <= medium < 96^2 <= large).
* FD = 1 - AP averaged over IoU thresholds 0.05:0.05:0.5 (Duan et al., CenterNet: Keypoint Triplets,
  ICCV 2019, Table 4), and FD_S / FD_M / FD_L for the small / medium / large objects. The matching is
  pycocotools' own, only ``iouThrs`` changes.

Metrics that are undefined (no ground truth in that class or area range) are ``nan`` (``null`` in JSON).
Boxes are x1, y1, x2, y2 in pixels of the original images.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["EvalResult", "DetectionEvaluator", "evaluate_detections", "COCO_IOU_THRESHOLDS", "FD_IOU_THRESHOLDS"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,) 0.5:0.05:0.95
FD_IOU_THRESHOLDS = np.linspace(0.05, 0.5, 10)  # (T,) 0.05:0.05:0.5
_AREAS = ("all", "small", "medium", "large")  # order of pycocotools' default areaRng


def _np(x, dtype, shape_tail: tuple[int, ...]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x, dtype=dtype).reshape((-1, *shape_tail))


@dataclass
class EvalResult:
    """Detection metrics (fractions in [0, 1]; ``nan`` where undefined)."""

    ap: float  # AP @ IoU 0.5:0.95
    ap50: float  # AP @ IoU 0.5
    ap75: float  # AP @ IoU 0.75
    ap_small: float  # AP of objects with area < 32^2
    ap_medium: float  # AP of objects with 32^2 <= area < 96^2
    ap_large: float  # AP of objects with area >= 96^2
    fd: float  # 1 - AP @ IoU 0.05:0.5
    fd_small: float
    fd_medium: float
    fd_large: float
    per_class_ap: dict[str, float] = field(default_factory=dict)  # class name -> AP @ IoU 0.5:0.95
    num_images: int = 0
    num_gt: int = 0
    num_dets: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict (``nan`` -> ``None``)."""

        def clean(v):
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {k: clean(v) for k, v in asdict(self).items()}


def _mean_valid(p: np.ndarray) -> float:
    """Mean over entries > -1 (pycocotools' marker for 'no ground truth'), nan if none."""
    v = p[p > -1]
    return float(v.mean()) if v.size else float("nan")


class DetectionEvaluator:
    """Accumulate ground truth and detections image by image, then :meth:`compute` the metrics.

    ``add(gt_boxes Tensor[N, 4], gt_labels Tensor[N], det_boxes Tensor[D, 4], det_scores Tensor[D],
    det_labels Tensor[D])`` (tensors or arrays, original-image pixels). Detections with label < 0
    (the padding rows of ``decode.Detections``) are ignored.
    """

    def __init__(self, class_names: Sequence[str], *, max_dets: int = 100) -> None:
        if len(class_names) == 0:
            raise ValueError(f"class_names must not be empty, got {class_names!r}")
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets!r}")
        self.class_names = [str(c) for c in class_names]
        self.max_dets = int(max_dets)
        self._gt: list[tuple[np.ndarray, np.ndarray]] = []
        self._dt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._ignore: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._gt)

    def add(self, gt_boxes, gt_labels, det_boxes, det_scores, det_labels, gt_ignore=None) -> None:
        """Add one image. ``gt_ignore``: ``Tensor[K, 4]`` ignore regions (crowd boxes, classes a class map
        drops), entered as ``iscrowd`` annotations of every class: detections inside them are neither true
        nor false positives, as pycocotools treats crowd regions."""
        gb, gl = _np(gt_boxes, np.float64, (4,)), _np(gt_labels, np.int64, ())  # (N, 4), (N,)
        db, ds, dl = _np(det_boxes, np.float64, (4,)), _np(det_scores, np.float64, ()), _np(det_labels, np.int64, ())
        if gb.shape[0] != gl.shape[0]:
            raise ValueError(f"got {gb.shape[0]} gt boxes but {gl.shape[0]} gt labels")
        if not db.shape[0] == ds.shape[0] == dl.shape[0]:
            raise ValueError(f"got {db.shape[0]} det boxes, {ds.shape[0]} scores, {dl.shape[0]} labels")
        c = len(self.class_names)
        if gl.size and (gl.min() < 0 or gl.max() >= c):
            raise ValueError(f"gt labels must be in [0, {c}), got {gl[(gl < 0) | (gl >= c)][0]!r}")
        if dl.size and dl.max() >= c:
            raise ValueError(f"det labels must be < {c}, got {dl.max()!r}")
        keep = dl >= 0
        ig = np.zeros((0, 4)) if gt_ignore is None else _np(gt_ignore, np.float64, (4,))  # (K, 4)
        self._ignore.append(ig)
        self._gt.append((gb, gl))
        self._dt.append((db[keep], ds[keep], dl[keep]))

    def _coco(self) -> tuple[object, object, int, int]:
        from pycocotools.coco import COCO

        images = [{"id": i + 1} for i in range(len(self._gt))]
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(self.class_names)]

        def anns(per_image, with_score: bool) -> list[dict]:
            out = []
            for i, item in enumerate(per_image):
                boxes, labels = item[0], item[-1]
                wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
                for j in range(boxes.shape[0]):
                    w, h = float(wh[j, 0]), float(wh[j, 1])
                    a = {
                        "id": len(out) + 1,  # ids start at 1: pycocotools treats 0 as 'unmatched'
                        "image_id": i + 1,
                        "category_id": int(labels[j]) + 1,
                        "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                    if with_score:
                        a["score"] = float(item[1][j])
                    out.append(a)
            return out

        gt_anns = anns(self._gt, False)
        for i, regions in enumerate(self._ignore):
            for x1, y1, x2, y2 in regions.tolist():
                for k in range(len(self.class_names)):  # a region of no class ignores detections of every class
                    w, h = x2 - x1, y2 - y1
                    gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": k + 1,
                                    "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 1})
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
        dt.dataset = {"images": images, "categories": cats, "annotations": anns(self._dt, True)}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt.createIndex()
        n_gt = sum(1 for a in gt_anns if not a["iscrowd"])
        return gt, dt, n_gt, len(dt.dataset["annotations"])

    def _run(self, gt, dt, iou_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval with ``iou_thrs`` -> (precision (T, R, K, A, M), iouThrs (T,))."""
        from pycocotools.cocoeval import COCOeval

        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.params.maxDets = [1, 10, self.max_dets] if self.max_dets > 10 else [self.max_dets]
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
        return ev.eval["precision"], ev.params.iouThrs

    def compute(self) -> EvalResult:
        """Run pycocotools on everything added so far."""
        nan = float("nan")
        gt, dt, n_gt, n_dt = self._coco()
        if not self._gt:
            return EvalResult(*(nan,) * 10, per_class_ap={c: nan for c in self.class_names})
        prec, thrs = self._run(gt, dt, COCO_IOU_THRESHOLDS)  # (T, R, K, A, M)
        t50 = np.flatnonzero(np.isclose(thrs, 0.5))
        t75 = np.flatnonzero(np.isclose(thrs, 0.75))
        ap = {a: _mean_valid(prec[:, :, :, i, -1]) for i, a in enumerate(_AREAS)}
        per_class = {c: _mean_valid(prec[:, :, k, 0, -1]) for k, c in enumerate(self.class_names)}
        fd_prec, _ = self._run(gt, dt, FD_IOU_THRESHOLDS)  # (T, R, K, A, M)
        fd = {a: 1.0 - _mean_valid(fd_prec[:, :, :, i, -1]) for i, a in enumerate(_AREAS)}
        return EvalResult(
            ap=ap["all"],
            ap50=_mean_valid(prec[t50, :, :, 0, -1]),
            ap75=_mean_valid(prec[t75, :, :, 0, -1]),
            ap_small=ap["small"],
            ap_medium=ap["medium"],
            ap_large=ap["large"],
            fd=fd["all"],
            fd_small=fd["small"],
            fd_medium=fd["medium"],
            fd_large=fd["large"],
            per_class_ap=per_class,
            num_images=len(self._gt),
            num_gt=n_gt,
            num_dets=n_dt,
        )


def evaluate_detections(
    gt_boxes: Sequence,
    gt_labels: Sequence,
    det_boxes: Sequence,
    det_scores: Sequence,
    det_labels: Sequence,
    *,
    class_names: Sequence[str],
    max_dets: int = 100,
) -> EvalResult:
    """Metrics of a whole dataset at once; each argument holds one entry per image.

    Args:
        gt_boxes: per image ``Tensor[N, 4]`` (x1, y1, x2, y2, original pixels); gt_labels: ``Tensor[N]``.
        det_boxes: per image ``Tensor[D, 4]``; det_scores: ``Tensor[D]``; det_labels: ``Tensor[D]``
            (label -1 rows are ignored).
        class_names: C names (labels index them).
        max_dets: detections per image that count (highest scores first, COCO: 100).
    """
    n = len(gt_boxes)
    if not n == len(gt_labels) == len(det_boxes) == len(det_scores) == len(det_labels):
        raise ValueError(
            f"need one entry per image in every argument, got {n}, {len(gt_labels)}, {len(det_boxes)}, "
            f"{len(det_scores)}, {len(det_labels)}"
        )
    ev = DetectionEvaluator(class_names, max_dets=max_dets)
    for item in zip(gt_boxes, gt_labels, det_boxes, det_scores, det_labels):
        ev.add(*item)
    return ev.compute()
