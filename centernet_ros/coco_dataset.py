"""COCO json detection dataset: :class:`CocoDataset`, a ``datasets.DetectionDataset``.

Letters: H/W image height/width, C classes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import DatasetError, DetectionDataset, Sample, parse_number, read_image

__all__ = ["CocoDataset"]


class CocoDataset(DetectionDataset):
    """COCO json annotations (``images``, ``annotations``, ``categories``) with images in ``images_dir``.

    Categories are sorted by id and mapped to contiguous labels ``0 .. C-1`` (``category_ids[label]`` gives
    the original id). Crowd annotations (``iscrowd=1``) become ignore regions (``Sample.ignore``: no heatmap
    loss inside them in training; ignored by the evaluation, as pycocotools does) unless ``include_crowd``
    makes them ordinary objects; boxes of zero
    width or height are skipped (counted in ``num_skipped``). Everything else that is malformed raises
    :class:`DatasetError` naming the json file and the annotation.

    Image sizes: where the json gives an image's ``width`` and ``height``, the file's size is read from its
    header at construction (``image_header.read_image_size``: no decoding; a format without a header parser
    is decoded) and a file of another size is refused with a :class:`DatasetError` naming the file and both
    sizes (the boxes would not fit its pixels), as is a missing file. ``rescale_mismatched=True`` instead
    scales that image's boxes (and crowd regions) by file size / json size; ``num_rescaled`` counts those
    images. ``json_sizes[i]`` holds the declared ``(H, W)`` (None where the json gives none); evaluation
    maps detections back to it (``coco_eval.CocoJsonEvaluator``). Annotation ids must be unique.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_json: str | Path,
        *,
        include_crowd: bool = False,  # keep iscrowd=1 boxes as ordinary objects
        tolerance: float = 0.01,  # fraction of the image size a box may reach outside it
        # an image file whose size differs from the json's width/height: False refuses the dataset, True
        # scales that image's boxes to the file (file size / json size per axis)
        rescale_mismatched: bool = False,
    ) -> None:
        images_dir, annotation_json = Path(images_dir), Path(annotation_json)
        if not images_dir.is_dir():
            raise DatasetError(f"images directory '{images_dir}' not found")
        try:
            data = json.loads(annotation_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"annotation file '{annotation_json}' not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot parse annotation file '{annotation_json}': {exc}") from None
        src = str(annotation_json)
        if not isinstance(data, dict):
            raise DatasetError(f"'{src}': top level must be a JSON object")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"'{src}': missing list {key!r}")
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            raise DatasetError(f"'{src}': 'annotations' must be a list")
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.category_ids = [int(c["id"]) for c in cats]
            self.class_names = [str(c.get("name", c["id"])) for c in cats]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"'{src}': malformed categories ({exc!r})") from None
        if not cats:
            raise DatasetError(f"'{src}': no categories")
        cat_to_label = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images_dir = images_dir
        self.image_paths, self.image_ids, sizes = [], [], {}
        for k, im in enumerate(data["images"]):
            try:
                iid, fname = int(im["id"]), str(im["file_name"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"'{src}': images[{k}] malformed ({exc!r})") from None
            if iid in sizes:
                raise DatasetError(f"'{src}': duplicate image id {iid} (images[{k}])")
            sizes[iid] = (im.get("height"), im.get("width"))
            self.image_paths.append(images_dir / fname)
            self.image_ids.append(iid)
        self.annotation_json = annotation_json
        self.rescale_mismatched = bool(rescale_mismatched)
        self.json_sizes = [_declared_size(*sizes[iid]) for iid in self.image_ids]  # (H, W) or None
        self.num_rescaled = self._check_image_sizes(src)
        index_of = {iid: i for i, iid in enumerate(self.image_ids)}
        boxes: list[list] = [[] for _ in self.image_ids]
        labels: list[list] = [[] for _ in self.image_ids]
        crowds: list[list] = [[] for _ in self.image_ids]
        self.num_skipped = 0
        ann_ids: set = set()
        for k, ann in enumerate(anns):
            where = f"'{src}': annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'} (annotations[{k}])"
            if not isinstance(ann, dict):
                raise DatasetError(f"{where} is not an object")
            if "id" in ann:  # pycocotools indexes annotations by id: a duplicate would replace the other
                key = repr(ann["id"])
                if key in ann_ids:
                    raise DatasetError(f"{where}: duplicate annotation id {ann['id']!r}")
                ann_ids.add(key)
            crowd = bool(ann.get("iscrowd", 0)) and not include_crowd
            try:
                iid, cid = int(ann["image_id"]), int(ann["category_id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{where}: missing/invalid image_id or category_id ({exc!r})") from None
            if iid not in index_of:
                raise DatasetError(f"{where}: unknown image_id {iid}")
            if cid not in cat_to_label:
                raise DatasetError(f"{where}: unknown category_id {cid}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            x, y, w, h = (parse_number(str(v), where, "bbox value") for v in bbox)
            if w < 0 or h < 0:
                raise DatasetError(f"{where}: negative bbox size {bbox!r}")
            if w == 0 or h == 0:
                self.num_skipped += 1
                continue
            ih, iw = sizes[iid]
            if isinstance(iw, (int, float)) and isinstance(ih, (int, float)) and iw > 0 and ih > 0:
                if x < -tolerance * iw or y < -tolerance * ih or x + w > iw * (1 + tolerance) or y + h > ih * (
                    1 + tolerance
                ):
                    raise DatasetError(f"{where}: bbox {bbox!r} reaches outside the {iw}x{ih} image")
            if crowd:
                crowds[index_of[iid]].append((x, y, x + w, y + h))
                continue
            boxes[index_of[iid]].append((x, y, x + w, y + h))
            labels[index_of[iid]].append(cat_to_label[cid])
        self._boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
        self._labels = [np.asarray(lab, dtype=np.int64) for lab in labels]
        self._crowd = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in crowds]

    def _check_image_sizes(self, src: str) -> int:
        """Compare each declared size with the file's header; returns the number of mismatched images
        (refused unless ``rescale_mismatched``)."""
        from .image_header import ImageHeaderError, read_image_size

        mismatched = 0
        for path, declared in zip(self.image_paths, self.json_sizes):
            if declared is None:
                continue
            try:
                wh = read_image_size(path)
                if wh is None:  # a format without a header parser: decode it
                    wh = read_image(path).shape[1::-1]
            except FileNotFoundError:
                raise DatasetError(f"'{src}': image file '{path}' listed in the annotations not found") from None
            except (OSError, ImageHeaderError) as exc:
                raise DatasetError(f"'{src}': cannot read the size of image '{path}': {exc}") from None
            if (wh[1], wh[0]) != declared:
                if not self.rescale_mismatched:
                    raise DatasetError(_size_mismatch(src, path, (wh[1], wh[0]), declared))
                mismatched += 1
        return mismatched

    def _fit(self, b: np.ndarray, index: int, height: int, width: int) -> np.ndarray:
        """Boxes of image ``index`` (json pixels) in the pixels of its ``height x width`` file, clipped."""
        declared = self.json_sizes[index]
        b = b.copy()
        if declared is not None and declared != (height, width):
            if not self.rescale_mismatched:
                raise DatasetError(_size_mismatch(str(self.annotation_json), self.image_paths[index],
                                                  (height, width), declared))
            b *= np.array([width / declared[1], height / declared[0]] * 2, dtype=np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, width)
        b[:, 1::2] = b[:, 1::2].clip(0, height)
        return b

    def boxes_for(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        return self._fit(self._boxes[index], index, height, width), self._labels[index].copy()

    def ignore_for(self, index: int, height: int, width: int) -> np.ndarray | None:
        return self._fit(self._crowd[index], index, height, width) if len(self._crowd[index]) else None

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        path = self.image_paths[index % len(self)]
        if not path.is_file():
            raise DatasetError(f"image file '{path}' listed in the annotations not found")
        return super().__getitem__(index)


def _declared_size(height, width) -> tuple[float, float] | None:
    """A json image's ``(height, width)`` when both are positive numbers, else None."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (height, width))
    return (height, width) if ok else None


def _size_mismatch(src: str, path: Path, file_hw: tuple, json_hw: tuple) -> str:
    return (
        f"'{src}': image file '{path}' is {file_hw[1]}x{file_hw[0]} pixels (width x height) but the annotations "
        f"say {json_hw[1]}x{json_hw[0]}: its boxes would not fit the pixels. Correct width/height in the "
        "annotation file, or scale the boxes to the file with rescale_mismatched=True "
        "(centernet-eval --rescale-mismatched)"
    )
