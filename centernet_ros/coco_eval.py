"""A COCO JSON dataset scored against the file's own annotations, as pycocotools scores it.

:class:`CocoJsonEvaluator` takes the ground truth from the annotation file itself (``COCO(json)``): iscrowd
(category-specific crowd regions), ``area`` (the area ranges of APs/m/l), zero-size and out-of-image boxes,
images without annotations, ids that do not start at 1 -- everything pycocotools reads, as given. Detections
(``Tensor[D, 4]`` x1, y1, x2, y2 in pixels of the decoded image, scores ``Tensor[D]``, labels ``Tensor[D]``)
are mapped back to the file's image ids, category ids (label ``k`` = ``k``-th category by ascending id)
and declared image size. ``compute()`` equals pycocotools run by hand::

    gt = COCO(json); ev = COCOeval(gt, gt.loadRes(evaluator.results()), "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()   # stats[0:6] = AP, AP50, AP75, APs, APm, APl

(FD: the same with ``ev.params.iouThrs = evaluation.FD_IOU_THRESHOLDS``, FD = 1 - stats[0]).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .evaluation import EvalResult, checked_detections, coco_metrics, quiet, result_rows, results_coco

__all__ = ["CocoJsonEvaluator", "load_coco_ground_truth"]


def load_coco_ground_truth(annotation_json: str | Path):
    """pycocotools ``COCO`` of a COCO JSON file, as ``COCO(annotation_json)`` builds it.

    Annotation fields that pycocotools needs but the file lacks (where ``COCO``/``COCOeval`` would raise
    ``KeyError``) are filled: ``id`` (numbered on after the largest), ``iscrowd`` = 0, ``area`` = bbox w * h.
    Everything present is used as given. Warns when an annotation id is 0 (pycocotools counts a detection
    matched to it as a false positive). Raises ``ValueError`` naming the file when it cannot be read.
    """
    from pycocotools.coco import COCO

    path = Path(annotation_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        anns = data.setdefault("annotations", [])
        next_id = max((a["id"] for a in anns if isinstance(a.get("id"), int)), default=0) + 1
        for a in anns:
            if "id" not in a:
                a["id"], next_id = next_id, next_id + 1
            a.setdefault("iscrowd", 0)
            if "area" not in a:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ValueError(f"cannot read the COCO ground truth '{path}': {exc!r}") from None
    if any(a["id"] == 0 for a in anns):
        warnings.warn(f"'{path}' has an annotation with id 0: pycocotools (and so this evaluation) counts a "
                      "detection matched to it as a false positive", stacklevel=2)
    gt = COCO()
    gt.dataset = data
    with quiet():
        gt.createIndex()
    gt.source_path = path  # read by CocoJsonEvaluator.gt_path
    return gt


class CocoJsonEvaluator:
    """Score detections against a COCO JSON file's own annotations (see the module docstring).

    Args:
        ground_truth: the annotation file, or its ``COCO`` from :func:`load_coco_ground_truth` (shared by
            several evaluators: COCOeval only sets each annotation's ``ignore`` flag, from ``iscrowd``).
        class_names: C model classes; label ``k`` is the ``k``-th category by ascending id (the order of
            ``coco_dataset.CocoDataset.category_ids``). Must be as many as the file's categories.
        max_dets: detections per image that count (COCO: 100).
    """

    def __init__(self, ground_truth, class_names: Sequence[str], *, max_dets: int = 100) -> None:
        self.gt = ground_truth if hasattr(ground_truth, "imgToAnns") else load_coco_ground_truth(ground_truth)
        self.category_ids = sorted(self.gt.cats, key=int)  # (C,) as in the file
        if len(class_names) != len(self.category_ids):
            raise ValueError(f"{len(class_names)} class names {list(class_names)} for "
                             f"{len(self.category_ids)} categories {self.category_ids} of the annotation file")
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets!r}")
        self.class_names = [str(c) for c in class_names]
        self.max_dets = int(max_dets)
        self.gt_path: Path | None = getattr(self.gt, "source_path", None)  # the annotation file
        self._image_key = {int(i): i for i in self.gt.imgs}  # int id (coco_dataset.CocoDataset) -> the file's id
        self._added: list = []  # the file's image ids, in the order added
        self._seen: set = set()
        self._results: list[dict] = []

    def __len__(self) -> int:
        return len(self._added)

    def add(self, image_id, det_boxes, det_scores, det_labels, *, image_size: tuple[int, int] | None = None) -> None:
        """Detections ``Tensor[D, 4]`` (x1, y1, x2, y2), ``Tensor[D]`` scores and labels of image ``image_id``.

        ``image_size``: ``(H, W)`` of the decoded image the boxes are in; where the file declares another
        ``width``/``height`` (``coco_dataset.CocoDataset(rescale_mismatched=True)``) the boxes are scaled to it.
        Raises ``ValueError`` for an image id not in the file or added twice.
        """
        key = self._image_key.get(int(image_id))
        if key is None:
            raise ValueError(f"image id {image_id!r} is not in the annotation file")
        if key in self._seen:
            raise ValueError(f"image id {image_id!r} was added twice")
        boxes, scores, labels = checked_detections(det_boxes, det_scores, det_labels, len(self.class_names))
        img = self.gt.imgs[key]
        if image_size is not None:
            h, w = image_size
            jh, jw = img.get("height"), img.get("width")
            declared = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (jh, jw))
            if declared and (jh, jw) != (h, w):
                boxes = boxes * np.array([jw / w, jh / h] * 2)  # (D, 4) in the file's pixels
        self._added.append(key)
        self._seen.add(key)
        self._results += result_rows(key, boxes, scores, [self.category_ids[k] for k in labels])

    def add_sample(self, sample, det_boxes, det_scores, det_labels) -> None:
        """Detections of a ``datasets.Sample`` (its ``image_id`` and decoded size)."""
        self.add(sample.image_id, det_boxes, det_scores, det_labels, image_size=sample.image.shape[:2])

    def results(self) -> list[dict]:
        """The detections in COCO results format, image and category ids as in the file."""
        return list(self._results)

    def compute(self) -> EvalResult:
        """pycocotools on the file's annotations of the images added so far."""
        names = {cid: n for cid, n in zip(self.category_ids, self.class_names)}
        return coco_metrics(self.gt, results_coco(self.gt, self._results), img_ids=self._added, names=names,
                            max_dets=self.max_dets)
