"""Detection datasets: the :class:`Sample` they yield, image decoding and the YOLO txt layout.

Letters: N objects, K ignore regions, H/W image height/width, C classes.

Datasets yield :class:`Sample` ``(image, boxes, labels, image_id, path)``:

* ``image``: ``uint8 (H, W, 3)`` RGB numpy array,
* ``boxes``: ``float32 (N, 4)`` x1, y1, x2, y2 in pixels of ``image``,
* ``labels``: ``int64 (N,)`` contiguous class indices ``0 .. C-1``.

:class:`DetectionDataset` is the common interface, :class:`YoloDataset` the YOLO txt layout
(``coco_dataset.CocoDataset``: COCO json).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import yaml

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "parse_number",
    "Sample",
    "DetectionDataset",
    "YoloDataset",
    "read_image",
    "parse_yolo_label_file",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


class Sample(NamedTuple):
    image: np.ndarray  # uint8 (H, W, 3) RGB
    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2 pixels
    labels: np.ndarray  # int64 (N,)
    image_id: int  # index in the dataset (YOLO) or the COCO image id
    path: str  # image file
    # float32 (K, 4) ignore regions, x1, y1, x2, y2 pixels: COCO crowd boxes and boxes of source classes a
    # class map sends to no model class. Training computes no heatmap loss inside them (no positives,
    # no negatives); evaluation treats them as pycocotools treats iscrowd regions. None: no regions.
    ignore: np.ndarray | None = None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB. Raises :class:`DatasetError` if it cannot be decoded."""
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read image '{path}': {exc}") from None
    # IMREAD_IGNORE_ORIENTATION: the stored pixels, as the labels were drawn on them (an EXIF Orientation
    # tag is not applied; ROS image tools and rviz do not apply it either).
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if img is None:
        raise DatasetError(f"cannot decode image '{path}' (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class DetectionDataset:
    """Common interface: ``class_names``, ``image_paths``, ``len()``, ``ds[i] -> Sample``.

    Subclasses fill ``self.class_names`` (list of str), ``self.image_paths`` (list of Path),
    ``self.image_ids`` (list of int) and implement :meth:`boxes_for` (boxes of image ``i`` given its size).
    """

    class_names: list[str]
    image_paths: list[Path]
    image_ids: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_paths)

    def boxes_for(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes float32 (N, 4) pixels, labels int64 (N,))`` of image ``index`` of size ``height x width``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        path = self.image_paths[index]
        image = read_image(path)
        boxes, labels = self.boxes_for(index, image.shape[0], image.shape[1])
        ignore = self.ignore_for(index, image.shape[0], image.shape[1])
        return Sample(image, boxes, labels, self.image_ids[index], str(path), ignore)

    def ignore_for(self, index: int, height: int, width: int) -> np.ndarray | None:
        """Ignore regions ``float32 (K, 4)`` pixels of image ``index`` (None: none; see :class:`Sample`)."""
        return None


def _list_images(images_dir: Path) -> list[Path]:
    return sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def parse_number(token: str, where: str, what: str) -> float:
    """``float(token)`` for an annotation value; :class:`DatasetError` naming ``where`` (file, line) and
    ``what`` (the field) when it is not a finite number."""
    try:
        v = float(token)
    except ValueError:
        raise DatasetError(f"{where}: {what} is not a number: {token!r}") from None
    if not math.isfinite(v):
        raise DatasetError(f"{where}: {what} is not finite: {token!r}")
    return v


def parse_yolo_label_file(path: Path, num_classes: int, *, tolerance: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Parse a YOLO label file (``class cx cy w h`` per line, normalised to [0, 1]).

    Returns ``(boxes float32 (N, 4) normalised x1, y1, x2, y2 clipped to [0, 1], labels int64 (N,))``.
    Blank lines are ignored. Raises :class:`DatasetError` naming the file and line for a wrong field
    count, a non-number, a class outside ``0 .. num_classes-1``, a non-positive size, or a box reaching
    more than ``tolerance`` outside the image.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a UTF-8 byte-order mark (Windows tools) is skipped
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read label file '{path}': {exc}") from None
    boxes, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise DatasetError(
                f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}"
            )
        cls = parse_number(fields[0], where, "class")
        if not cls.is_integer():
            raise DatasetError(f"{where}: class must be an integer, got {fields[0]!r}")
        cls = int(cls)
        if not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {cls} out of range 0..{num_classes - 1}")
        cx, cy, w, h = (parse_number(t, where, n) for t, n in zip(fields[1:], ("cx", "cy", "w", "h")))
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: box width and height must be > 0, got w={w!r} h={h!r}")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x1, y1) < -tolerance or max(x2, y2) > 1 + tolerance:
            raise DatasetError(
                f"{where}: box (cx={cx!r}, cy={cy!r}, w={w!r}, h={h!r}) reaches outside the image "
                f"(normalised coordinates must lie in [0, 1], tolerance {tolerance})"
            )
        boxes.append((x1, y1, x2, y2))
        labels.append(cls)
    out = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0.0, 1.0)  # (N, 4)
    return out, np.asarray(labels, dtype=np.int64)


def _read_class_names(root: Path) -> list[str]:
    for name in ("data.yaml", "data.yml"):
        f = root / name
        if f.is_file():
            break
    else:
        raise DatasetError(f"no data.yaml in '{root}' (needed for the class names); pass class_names=")
    try:
        cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot parse '{f}': {exc}") from None
    names = cfg.get("names") if isinstance(cfg, dict) else None
    if isinstance(names, dict):  # {0: name, 1: name} form
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError(f"'{f}': names keys must be integers, got {list(names)!r}") from None
        if keys != list(range(len(keys))):
            raise DatasetError(f"'{f}': names keys must be 0..{len(keys) - 1}, got {keys!r}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"'{f}': 'names' must be a non-empty list of class names, got {names!r}")
    nc = cfg.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"'{f}': nc={nc!r} does not match {len(names)} names")
    return [str(n) for n in names]


class YoloDataset(DetectionDataset):
    """YOLO txt layout: ``root/<split>/images/*.jpg``, ``root/<split>/labels/<stem>.txt``, ``root/data.yaml``.

    ``split`` is a folder name under ``root`` (``train``, ``valid``...); if that folder does not exist, the
    ``data.yaml`` entry of that name (``val: valid/images``; ``val`` and ``valid`` are aliases) is used.
    An image without a label file has no objects. All label files are parsed at construction, so a
    malformed line fails early with its file and line number; images are decoded lazily.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        class_names: Sequence[str] | None = None,
        tolerance: float = 0.01,  # how far (normalised) a box may reach outside the image before it is an error
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset root '{root}' is not a directory")
        self.root = root
        self.split = split
        self.class_names = list(class_names) if class_names is not None else _read_class_names(root)
        self.images_dir = self._find_images_dir(root, split)
        self.labels_dir = self.images_dir.parent / "labels"
        if not self.labels_dir.is_dir():
            raise DatasetError(f"labels directory '{self.labels_dir}' not found (next to '{self.images_dir}')")
        self.image_paths = _list_images(self.images_dir)
        self.image_ids = list(range(len(self.image_paths)))
        self._norm_boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for p in self.image_paths:
            lf = self.labels_dir / (p.stem + ".txt")
            if lf.is_file():
                b, lab = parse_yolo_label_file(lf, len(self.class_names), tolerance=tolerance)
            else:
                b, lab = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
            self._norm_boxes.append(b)
            self._labels.append(lab)

    @staticmethod
    def _find_images_dir(root: Path, split: str) -> Path:
        tried = [root / split / "images"]
        if tried[0].is_dir():
            return tried[0]
        aliases = {"val": ["val", "valid"], "valid": ["valid", "val"]}.get(split, [split])
        for f in (root / "data.yaml", root / "data.yml"):
            if not f.is_file():
                continue
            try:
                cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                break
            for key in aliases:
                rel = cfg.get(key) if isinstance(cfg, dict) else None
                if isinstance(rel, str):
                    cand = (root / rel).resolve()
                    if cand.name != "images":
                        cand = cand / "images" if (cand / "images").is_dir() else cand
                    tried.append(cand)
                    if cand.is_dir():
                        return cand
            break
        raise DatasetError(f"images directory for split {split!r} not found (tried {[str(t) for t in tried]})")

    def boxes_for(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([width, height, width, height], dtype=np.float32)
        return self._norm_boxes[index] * scale, self._labels[index].copy()
