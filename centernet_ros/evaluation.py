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

Two evaluators, one interface (``add_sample``, ``results``, ``compute``):

* ``coco_eval.CocoJsonEvaluator``: a COCO JSON dataset is scored against **the file's own annotations**
  (``COCO(json)``: iscrowd, area and every other field pycocotools reads, category-specific crowd regions,
  images without annotations), detections mapped back to the file's image ids, category ids and image
  size. ``compute`` equals ``COCOeval(COCO(json), COCO(json).loadRes(results()), "bbox")`` run by hand.
* :class:`DetectionEvaluator`: any other dataset (YOLO, class-mapped): the ground truth is built from the
  samples (image ids 1..n in the order added, category id = label + 1, ignore regions as ``iscrowd``
  boxes of every class); ``ground_truth()`` returns that COCO dataset, so its ``results()`` can be scored
  by any tool.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "EvalResult",
    "DetectionEvaluator",
    "coco_metrics",
    "evaluate_detections",
    "COCO_IOU_THRESHOLDS",
    "FD_IOU_THRESHOLDS",
]

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


def quiet():
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress lines


def _run(gt, dt, iou_thrs: np.ndarray, img_ids: list, max_dets: int) -> tuple[np.ndarray, np.ndarray, list]:
    """COCOeval (bbox) with ``iou_thrs`` -> (precision (T, R, K, A, M), iouThrs (T,), catIds (K,))."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.imgIds = list(img_ids)
    ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [max_dets]
    with quiet():
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"], ev.params.iouThrs, list(ev.params.catIds)


def coco_metrics(gt, dt, *, img_ids: Sequence, names: Mapping[Any, str], max_dets: int = 100) -> EvalResult:
    """Metrics of pycocotools ``COCO`` objects ``gt`` (ground truth) and ``dt`` (results) over ``img_ids``.

    ``names``: category id -> class name (keys of ``per_class_ap``; all of ``gt``'s categories are scored,
    as COCOeval does by default). ``max_dets``: detections per image that count (COCO: 100). AP, AP50, AP75,
    APs/m/l are ``COCOeval.stats[0:6]`` (``nan`` where pycocotools gives -1); FD = 1 - ``stats[0]`` with
    ``iouThrs`` = :data:`FD_IOU_THRESHOLDS`.
    """
    nan = float("nan")
    img_ids = list(img_ids)
    if not img_ids:
        return EvalResult(*(nan,) * 10, per_class_ap={n: nan for n in names.values()})
    prec, thrs, cat_ids = _run(gt, dt, COCO_IOU_THRESHOLDS, img_ids, max_dets)  # (T, R, K, A, M)
    t50 = np.flatnonzero(np.isclose(thrs, 0.5))
    t75 = np.flatnonzero(np.isclose(thrs, 0.75))
    ap = {a: _mean_valid(prec[:, :, :, i, -1]) for i, a in enumerate(_AREAS)}
    per_k = {cid: _mean_valid(prec[:, :, k, 0, -1]) for k, cid in enumerate(cat_ids)}
    fd_prec, _, _ = _run(gt, dt, FD_IOU_THRESHOLDS, img_ids, max_dets)  # (T, R, K, A, M)
    fd = {a: 1.0 - _mean_valid(fd_prec[:, :, :, i, -1]) for i, a in enumerate(_AREAS)}
    wanted = set(img_ids)
    n_gt = sum(1 for i in wanted for a in gt.imgToAnns.get(i, ()) if not a.get("iscrowd", 0))
    n_dt = sum(len(dt.imgToAnns.get(i, ())) for i in wanted)
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
        per_class_ap={names[cid]: per_k.get(cid, nan) for cid in names},
        num_images=len(wanted),
        num_gt=n_gt,
        num_dets=n_dt,
    )


def results_coco(gt, results: list[dict]):
    """``gt.loadRes(results)`` (a copy: loadRes adds fields), or an empty result set when there is none
    (loadRes cannot take an empty list)."""
    from pycocotools.coco import COCO

    with quiet():
        if results:
            return gt.loadRes(copy.deepcopy(results))
        dt = COCO()
        dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                      "annotations": []}
        dt.createIndex()
    return dt


def result_rows(image_id, boxes: np.ndarray, scores: np.ndarray, cat_ids: Sequence) -> list[dict]:
    """COCO results rows: ``boxes`` (D, 4) x1, y1, x2, y2 -> ``bbox`` [x, y, w, h]."""
    wh = boxes[:, 2:] - boxes[:, :2]  # (D, 2)
    return [
        {"image_id": image_id, "category_id": cat_ids[j],
         "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
         "score": float(scores[j])}
        for j in range(boxes.shape[0])
    ]


def checked_detections(det_boxes, det_scores, det_labels, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated detections without the label < 0 padding rows: (D, 4), (D,), (D,)."""
    db, ds, dl = _np(det_boxes, np.float64, (4,)), _np(det_scores, np.float64, ()), _np(det_labels, np.int64, ())
    if not db.shape[0] == ds.shape[0] == dl.shape[0]:
        raise ValueError(f"got {db.shape[0]} det boxes, {ds.shape[0]} scores, {dl.shape[0]} labels")
    if dl.size and dl.max() >= num_classes:
        raise ValueError(f"det labels must be < {num_classes}, got {dl.max()!r}")
    keep = dl >= 0
    return db[keep], ds[keep], dl[keep]


class DetectionEvaluator:
    """Accumulate ground truth and detections image by image, then :meth:`compute` the metrics.

    ``add(gt_boxes Tensor[N, 4], gt_labels Tensor[N], det_boxes Tensor[D, 4], det_scores Tensor[D],
    det_labels Tensor[D])`` (tensors or arrays, original-image pixels). Detections with label < 0
    (the padding rows of ``decode.Detections``) are ignored. The COCO ground truth it builds
    (:meth:`ground_truth`): image ``i`` (0-based, in the order added) has id ``i + 1``, label ``k`` is
    category id ``k + 1``.
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
        self._info: list[dict] = []

    def __len__(self) -> int:
        return len(self._gt)

    def add(self, gt_boxes, gt_labels, det_boxes, det_scores, det_labels, gt_ignore=None, image_info=None) -> None:
        """Add one image. ``gt_ignore``: ``Tensor[K, 4]`` ignore regions (crowd boxes, classes a class map
        drops), entered as ``iscrowd`` annotations of every class: detections inside them are neither true
        nor false positives, as pycocotools treats crowd regions. ``image_info``: extra fields of the
        image's entry in :meth:`ground_truth` (``file_name``, ``width``, ``height``)."""
        gb, gl = _np(gt_boxes, np.float64, (4,)), _np(gt_labels, np.int64, ())  # (N, 4), (N,)
        if gb.shape[0] != gl.shape[0]:
            raise ValueError(f"got {gb.shape[0]} gt boxes but {gl.shape[0]} gt labels")
        c = len(self.class_names)
        if gl.size and (gl.min() < 0 or gl.max() >= c):
            raise ValueError(f"gt labels must be in [0, {c}), got {gl[(gl < 0) | (gl >= c)][0]!r}")
        dets = checked_detections(det_boxes, det_scores, det_labels, c)
        ig = np.zeros((0, 4)) if gt_ignore is None else _np(gt_ignore, np.float64, (4,))  # (K, 4)
        self._ignore.append(ig)
        self._gt.append((gb, gl))
        self._dt.append(dets)
        self._info.append(dict(image_info or {}))

    def add_sample(self, sample, det_boxes, det_scores, det_labels) -> None:
        """Add a ``datasets.Sample`` (its boxes, labels, ignore regions, file and size) with its detections."""
        h, w = sample.image.shape[:2]
        self.add(sample.boxes, sample.labels, det_boxes, det_scores, det_labels, gt_ignore=sample.ignore,
                 image_info={"file_name": str(sample.path), "width": int(w), "height": int(h)})

    def ground_truth(self) -> dict:
        """The COCO dataset (``images``, ``categories``, ``annotations``) this evaluator scores against."""
        images = [{"id": i + 1, **info} for i, info in enumerate(self._info)]
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(self.class_names)]
        anns: list[dict] = []

        def add(i: int, k: int, x1: float, y1: float, x2: float, y2: float, crowd: int) -> None:
            w, h = x2 - x1, y2 - y1
            # ids start at 1: pycocotools treats 0 as 'unmatched'
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": k + 1, "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": crowd})

        for i, (boxes, labels) in enumerate(self._gt):
            for b, k in zip(boxes.tolist(), labels.tolist()):
                add(i, k, *b, 0)
        for i, regions in enumerate(self._ignore):
            for b in regions.tolist():
                for k in range(len(self.class_names)):  # a region of no class ignores detections of every class
                    add(i, k, *b, 1)
        return {"images": images, "categories": cats, "annotations": anns}

    def results(self) -> list[dict]:
        """The detections in COCO results format (ids of :meth:`ground_truth`)."""
        ids = list(range(1, len(self.class_names) + 1))
        return [r for i, (b, s, lab) in enumerate(self._dt) for r in result_rows(i + 1, b, s, [ids[k] for k in lab])]

    def compute(self) -> EvalResult:
        """Run pycocotools on everything added so far."""
        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = self.ground_truth()
        with quiet():
            gt.createIndex()
        return coco_metrics(gt, results_coco(gt, self.results()), img_ids=list(range(1, len(self._gt) + 1)),
                            names={k + 1: n for k, n in enumerate(self.class_names)}, max_dets=self.max_dets)


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
