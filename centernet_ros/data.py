"""Detection datasets (YOLO txt, COCO json) and CornerNet/CenterNet-style training augmentation.

Letters: N objects, H/W image height/width, B batch, C classes, M max objects (target slots).

Datasets yield :class:`Sample` ``(image, boxes, labels, image_id, path)``:

* ``image``: ``uint8 (H, W, 3)`` RGB numpy array,
* ``boxes``: ``float32 (N, 4)`` x1, y1, x2, y2 in pixels of ``image``,
* ``labels``: ``int64 (N,)`` contiguous class indices ``0 .. C-1``.

Training augmentation (:func:`augment`, Law & Deng, CornerNet, ECCV 2018, used unchanged by Duan et al.,
CenterNet: Keypoint Triplets, ICCV 2019): a random crop of ``output_size * s`` (``s`` uniform in
``scale_range``) centred on a random point that keeps ``crop_border`` pixels from the image border, resized
to ``output_size``, a horizontal flip, colour jitter (brightness / contrast / saturation in random order)
and PCA lighting noise. The whole geometry is one ``cv2.warpAffine`` and the whole colour change one
``cv2.transform`` (the jitter steps are affine maps of RGB, so they compose into one 3x4 matrix).

Evaluation preprocessing (:func:`letterbox_sample`) resizes with the same scale and offset as
``preprocess.letterbox_params`` so that detections map back to the original image with the shared formula
``orig = (input_px - offset) / scale``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import yaml
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "Sample",
    "DetectionDataset",
    "YoloDataset",
    "CocoDataset",
    "read_image",
    "AugmentConfig",
    "augment",
    "letterbox_sample",
    "color_matrix",
    "CenterNetDataset",
    "collate",
    "collate_samples",
    "normalize_images",
    "worker_init_fn",
    "parse_yolo_label_file",
    "EIGVAL",
    "EIGVEC",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# PCA of ImageNet RGB pixel values in [0, 1] (Krizhevsky et al., AlexNet, 2012): eigenvalues and the
# matching eigenvectors (columns), RGB order.
EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float64)
EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float64,
)
# ITU-R BT.601 luma weights (what cv2's RGB2GRAY uses), RGB order.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


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


def _parse_number(token: str, where: str, what: str) -> float:
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
        cls = _parse_number(fields[0], where, "class")
        if not cls.is_integer():
            raise DatasetError(f"{where}: class must be an integer, got {fields[0]!r}")
        cls = int(cls)
        if not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {cls} out of range 0..{num_classes - 1}")
        cx, cy, w, h = (_parse_number(t, where, n) for t, n in zip(fields[1:], ("cx", "cy", "w", "h")))
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
            x, y, w, h = (_parse_number(str(v), where, "bbox value") for v in bbox)
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


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training augmentation (CornerNet ``random_crop`` + flip + colour jitter + PCA lighting)."""

    output_size: tuple[int, int] = (512, 512)  # (H, W) of the network input
    scale_range: tuple[float, float] = (0.6, 1.3)  # crop = output_size * s / ref_scale, s ~ U(scale_range)
    # "letterbox": s = 1 shows the image at the scale evaluation letterboxes it to (any image resolution);
    # "pixels": s = 1 keeps the original pixel size (CornerNet exactly; ref_scale = 1).
    scale_reference: str = "letterbox"
    # (H, W) whose letterbox scale is s = 1 under "letterbox" (None: output_size). Training on crops smaller
    # than the evaluation input (e.g. 256x256 crops for a 384x640 model) sets it to the evaluation size so
    # that objects keep the size they have at test time.
    reference_size: tuple[int, int] | None = None
    crop_border: float = 128.0  # crop centres keep this many output pixels from the image border (halved
    #                             until it fits, as in CornerNet)
    flip_prob: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.4  # brightness factor 1 + U(-v, v)
    contrast: float = 0.4  # contrast factor 1 + U(-v, v) (blend with the mean grey level)
    saturation: float = 0.4  # saturation factor 1 + U(-v, v) (blend with the grey image)
    lighting_std: float = 0.1  # std of the AlexNet PCA lighting coefficients (0 disables)
    min_box_size: float = 2.0  # objects narrower or shorter than this (output pixels, after clipping) are dropped
    pad_value: tuple[int, int, int] = (0, 0, 0)  # RGB of the area outside the image

    def __post_init__(self) -> None:
        size = tuple(self.output_size) if isinstance(self.output_size, (list, tuple)) else (self.output_size,) * 2
        if len(size) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in size):
            raise ValueError(f"output_size must be (H, W) positive ints, got {self.output_size!r}")
        self.output_size = size
        lo_hi = tuple(self.scale_range)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range!r}")
        self.scale_range = (float(lo_hi[0]), float(lo_hi[1]))
        if self.reference_size is not None:
            r = tuple(self.reference_size)
            if len(r) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in r):
                raise ValueError(f"reference_size must be (H, W) positive ints or null, got {self.reference_size!r}")
            self.reference_size = (int(r[0]), int(r[1]))
        if self.scale_reference not in ("letterbox", "pixels"):
            raise ValueError(f"scale_reference must be 'letterbox' or 'pixels', got {self.scale_reference!r}")
        if not self.crop_border >= 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob!r}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not self.lighting_std >= 0:
            raise ValueError(f"lighting_std must be >= 0, got {self.lighting_std!r}")
        if not self.min_box_size >= 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size!r}")
        pad = tuple(self.pad_value)
        if len(pad) != 3 or any(not 0 <= int(v) <= 255 for v in pad):
            raise ValueError(f"pad_value must be 3 values in 0..255, got {self.pad_value!r}")
        self.pad_value = tuple(int(v) for v in pad)


def _crop_border(border: float, size: float) -> float:
    """Halve ``border`` until a centre range ``[border, size - border]`` is non-empty."""
    while border > 0 and size <= 2 * border:
        border /= 2
        if border < 1:
            return 0.0
    return border


def _warp(image: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], pad: tuple[int, int, int]) -> np.ndarray:
    """``cv2.warpAffine`` for a map ``m`` (2x3) in continuous coordinates (pixel ``i`` covers ``[i, i+1)``)."""
    mc = m.copy()
    # cv2 addresses pixel centres by integer index: u_i + 0.5 = A (x_i + 0.5) + t, so
    # t_cv = t + A @ (0.5, 0.5) - 0.5 (rows of A: m[:, :2])
    mc[:, 2] += 0.5 * (m[:, 0] + m[:, 1] - 1.0)
    # OpenCV's vectorised bilinear warp is about twice as fast on 4-channel images as on 3-channel ones,
    # so the RGB image takes a detour through RGBA (same pixels, verified in the tests).
    out = cv2.warpAffine(
        cv2.cvtColor(image, cv2.COLOR_RGB2RGBA),
        mc,
        (out_hw[1], out_hw[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(*pad, 255),
    )
    return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB)


def _warp_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply an axis-aligned (scale / translate / flip) 2x3 map to ``(N, 4)`` boxes."""
    xs = boxes[:, 0::2] * m[0, 0] + m[0, 2]  # (N, 2)
    ys = boxes[:, 1::2] * m[1, 1] + m[1, 2]  # (N, 2)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1).astype(np.float32)  # (N, 4)


CUT_TOLERANCE = 1.0  # output pixels a box must reach past the crop edge to count as cut there


def _clip_and_filter(
    boxes: np.ndarray, labels: np.ndarray, out_hw: tuple[int, int], min_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` boxes to the output, drop those under ``min_size``; also say which were cut.

    Returns ``(boxes, labels, cut)`` of the kept boxes, ``cut`` bool ``(N', 2)``: the crop edge cut the box
    on its left or top side (its top-left corner is the crop's, not the object's) / right or bottom side.
    """
    h, w = out_hw
    b = boxes.copy()
    t = CUT_TOLERANCE
    cut = np.stack([(b[:, 0] < -t) | (b[:, 1] < -t), (b[:, 2] > w + t) | (b[:, 3] > h + t)], axis=1)  # (N, 2)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] - b[:, 0] >= max(min_size, 1e-6)) & (b[:, 3] - b[:, 1] >= max(min_size, 1e-6))
    return b[keep], labels[keep], cut[keep]


def color_matrix(
    mean_rgb: np.ndarray,
    *,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    order: Sequence[str] = ("brightness", "contrast", "saturation"),
    lighting: np.ndarray | None = None,
) -> np.ndarray:
    """Affine 3x4 map of RGB values (0..255) equal to applying the jitter steps one after another.

    Steps (CornerNet ``color_jittering_``, then ``lighting_``), each a blend ``a x + (1 - a) ref``:
    brightness ``ref = 0``; contrast ``ref`` = mean grey level of the current image; saturation ``ref`` =
    grey value of the pixel. ``lighting``: RGB shift (0..255 scale) added last. ``mean_rgb``: mean RGB
    of the input image (the contrast reference follows from it because every step is affine).
    """
    a = np.eye(3)
    t = np.zeros(3)
    mean = np.asarray(mean_rgb, dtype=np.float64).reshape(3)
    for step in order:
        if step == "brightness":
            a, t = brightness * a, brightness * t
        elif step == "contrast":
            grey_mean = GRAY_WEIGHTS @ (a @ mean + t)
            a, t = contrast * a, contrast * t + (1 - contrast) * grey_mean
        elif step == "saturation":
            s = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), GRAY_WEIGHTS)
            a, t = s @ a, s @ t
        else:
            raise ValueError(f"unknown colour step {step!r}")
    if lighting is not None:
        t = t + np.asarray(lighting, dtype=np.float64).reshape(3)
    return np.concatenate([a, t[:, None]], axis=1)  # (3, 4)


def _random_color(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    factors = {k: 1.0 + rng.uniform(-v, v) if v > 0 else 1.0 for k, v in (
        ("brightness", cfg.brightness), ("contrast", cfg.contrast), ("saturation", cfg.saturation))}
    order = [("brightness", "contrast", "saturation")[i] for i in rng.permutation(3)]
    lighting = None
    if cfg.lighting_std > 0:
        alpha = rng.normal(0.0, cfg.lighting_std, size=3)
        lighting = 255.0 * (EIGVEC @ (alpha * EIGVAL))
    if lighting is None and all(f == 1.0 for f in factors.values()):
        return image
    mean = np.asarray(cv2.mean(image)[:3])  # over the whole warped image, padding included (as CornerNet)
    m = color_matrix(mean, order=order, lighting=lighting, **factors)
    return cv2.transform(image, m)  # uint8 in, uint8 out (rounded and saturated)


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random scale + crop + flip + colour of one training image.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        boxes: ``float32 (N, 4)`` x1, y1, x2, y2 pixels of ``image``.
        labels: ``int64 (N,)``.
    Returns:
        ``(image uint8 (Ho, Wo, 3), boxes float32 (N', 4) in output pixels, labels int64 (N',),
        cut bool (N', 2))`` with ``(Ho, Wo) = cfg.output_size``; boxes are clipped to the output and objects
        smaller than ``cfg.min_box_size`` are dropped; ``cut`` says whether the crop edge cut a box on its
        left/top (top-left corner) and right/bottom (bottom-right corner) side, more than ``CUT_TOLERANCE``
        output pixels (``targets.TargetConfig.cut_corners``).
    """
    ih, iw = image.shape[:2]
    oh, ow = cfg.output_size
    rh, rw = cfg.reference_size or cfg.output_size
    ref = min(rh / ih, rw / iw) if cfg.scale_reference == "letterbox" else 1.0
    s = rng.uniform(*cfg.scale_range)
    zoom = ref / s  # output pixels per image pixel
    crop_w, crop_h = ow / zoom, oh / zoom  # crop size in image pixels
    bx = _crop_border(cfg.crop_border / ref, iw)
    by = _crop_border(cfg.crop_border / ref, ih)
    cx = rng.uniform(bx, iw - bx)
    cy = rng.uniform(by, ih - by)
    m = np.array([[zoom, 0.0, -(cx - crop_w / 2) * zoom], [0.0, zoom, -(cy - crop_h / 2) * zoom]])
    if rng.random() < cfg.flip_prob:
        m[0] = [-zoom, 0.0, ow - m[0, 2]]
    out = _warp(image, m, (oh, ow), cfg.pad_value)
    out = _random_color(out, cfg, rng)
    b, lab, cut = _clip_and_filter(_warp_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), m), labels, (oh, ow),
                                   cfg.min_box_size)
    return out, b, np.asarray(lab, dtype=np.int64), cut


def letterbox_sample(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    size: tuple[int, int],
    pad_value: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Letterbox one image and its boxes to ``size`` = (H, W), with the numbers of ``preprocess.letterbox``.

    Returns ``(image uint8 (H, W, 3), boxes float32 (N, 4) in input pixels, (scale, offset_x, offset_y))``;
    ``input_px = orig_px * scale + offset`` (so ``decode`` maps detections back with the same parameters).
    """
    from .preprocess import letterbox_params

    ih, iw = image.shape[:2]
    p = letterbox_params([(ih, iw)], size)
    scale = float(p.scale[0])
    ox, oy = (float(v) for v in p.offset[0])
    h, w = size
    nh, nw = min(h, max(1, int(ih * scale + 0.5))), min(w, max(1, int(iw * scale + 0.5)))
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.asarray(pad_value, dtype=np.uint8)
    resized = image if (nh, nw) == (ih, iw) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out[int(oy) : int(oy) + nh, int(ox) : int(ox) + nw] = resized
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale  # (N, 4)
    b[:, 0::2] += ox
    b[:, 1::2] += oy
    return out, b.astype(np.float32), (scale, ox, oy)


# --------------------------------------------------------------------------------------------------
# torch Dataset wrapper
# --------------------------------------------------------------------------------------------------


def _to_chw(image: np.ndarray) -> Tensor:
    """``uint8 (H, W, 3)`` -> contiguous ``Tensor[3, H, W]`` uint8 (``cv2.split`` into planes: ~10x faster
    than a strided permute copy)."""
    h, w = image.shape[:2]
    out = np.empty((3, h, w), dtype=np.uint8)
    cv2.split(np.ascontiguousarray(image), [out[0], out[1], out[2]])
    return torch.from_numpy(out)


def _normalise(image: np.ndarray) -> Tensor:
    """``uint8 (H, W, 3)`` RGB -> ``Tensor[3, H, W]`` float32 ``(x / 255 - MEAN) / STD``."""
    from .preprocess import MEAN, STD

    x = _to_chw(image).float()  # (3, H, W)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


class CenterNetDataset(torch.utils.data.Dataset):
    """Network inputs and training targets from a :class:`DetectionDataset`.

    ``train=True``: :func:`augment` with ``augment`` (default :class:`AugmentConfig`, its ``output_size`` set
    to ``input_size``); ``train=False``: :func:`letterbox_sample`. Each item is a dict:

    * ``image``: ``Tensor[3, H, W]`` float32, normalised RGB (``preprocess.MEAN`` / ``STD``); with
      ``normalize=False`` the uint8 RGB pixels instead (4x less to pass between processes and to copy to
      the GPU; normalise there with :func:`normalize_images`),
    * ``boxes``: ``Tensor[N, 4]`` input pixels, ``labels``: ``Tensor[N]`` long, ``ignore``: ``Tensor[K, 4]``
      ignore regions in input pixels (:class:`Sample`), ``cut``: ``Tensor[N, 2]`` bool, boxes the training
      crop cut at their top-left / bottom-right corner (:func:`augment`; all False for ``train=False``),
    * ``targets``: :func:`targets.build_image_targets` of the image (when ``target_cfg`` is given),
    * ``scale``: ``Tensor[]``, ``offset``: ``Tensor[2]`` (x, y), ``orig_size``: ``Tensor[2]`` (h, w) — the
      letterbox mapping (scale 1, offset 0 for augmented images: their boxes are not mapped back),
    * ``image_id``, ``path``.

    Batch with :func:`collate`. Random numbers come from a per-worker ``numpy`` generator seeded from
    the DataLoader worker seed (so ``torch.manual_seed`` makes runs repeatable).
    """

    def __init__(
        self,
        base: DetectionDataset,
        *,
        input_size: tuple[int, int] = (512, 512),
        train: bool,
        augment: AugmentConfig | None = None,
        target_cfg=None,
        indices: Sequence[int] | None = None,
        normalize: bool = True,
        cache_images: bool = False,
    ) -> None:
        from dataclasses import replace

        size = tuple(input_size) if isinstance(input_size, (list, tuple)) else (input_size, input_size)
        if len(size) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in size):
            raise ValueError(f"input_size must be (H, W), positive multiples of 32, got {input_size!r}")
        self.base = base
        self.input_size = (int(size[0]), int(size[1]))
        self.train = bool(train)
        self.augment = replace(augment or AugmentConfig(), output_size=self.input_size) if train else None
        self.target_cfg = target_cfg
        if target_cfg is not None and target_cfg.num_classes != base.num_classes:
            raise ValueError(
                f"target_cfg.num_classes={target_cfg.num_classes!r} but the dataset has {base.num_classes} classes"
            )
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]
        self.normalize = bool(normalize)
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None
        self._cache: dict[int, Sample] | None = {} if cache_images else None

    @property
    def caches_images(self) -> bool:
        """Whether decoded images are kept in memory (``cache_images``)."""
        return self._cache is not None

    def fill_cache(self, progress: bool = False) -> None:
        """Decode every image once now (before DataLoader workers fork, so they share the pixels).

        Holds all decoded images in memory (e.g. 2,634 frames of 640x360: 1.8 GB); JPEG decoding then
        leaves the training loop.
        """
        if self._cache is None:
            raise ValueError("fill_cache needs cache_images=True")
        from tqdm import tqdm

        for i in tqdm(sorted(set(self.indices)), desc="decode images", unit="img", disable=not progress,
                      leave=False):
            if i not in self._cache:
                self._cache[i] = self.base[i]

    def _sample(self, index: int) -> Sample:
        if self._cache is None:
            return self.base[index]
        s = self._cache.get(index)
        if s is None:
            s = self._cache[index] = self.base[index]
        return s

    def __len__(self) -> int:
        return len(self.indices)

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a position in ``indices``, or ``(position, seed)`` (``mixing.EpochSampler``): the
        augmentation then draws from ``numpy.random.default_rng(seed)`` alone."""
        if isinstance(key, (tuple, list)):
            index, rng = int(key[0]), np.random.default_rng(int(key[1]))
        else:
            index, rng = int(key), None
        sample = self._sample(self.indices[index])
        ih, iw = sample.image.shape[:2]
        # ignore regions ride along as boxes of label -1 (same geometry, same clipping)
        ign = np.zeros((0, 4), np.float32) if sample.ignore is None else np.asarray(sample.ignore, np.float32)
        all_boxes = np.concatenate([np.asarray(sample.boxes, np.float32).reshape(-1, 4), ign.reshape(-1, 4)])
        all_labels = np.concatenate([np.asarray(sample.labels, np.int64).reshape(-1),
                                     np.full(len(ign), -1, np.int64)])
        if self.train:
            img, all_boxes, all_labels, all_cut = augment(sample.image, all_boxes, all_labels, cfg=self.augment,
                                                          rng=rng if rng is not None else self._generator())
            scale, ox, oy = 1.0, 0.0, 0.0
        else:
            img, all_boxes, scale_off = letterbox_sample(sample.image, all_boxes, size=self.input_size)
            all_cut = np.zeros((len(all_boxes), 2), dtype=bool)
            scale, ox, oy = scale_off
        obj = all_labels >= 0
        boxes, labels, ignore, cut = all_boxes[obj], all_labels[obj], all_boxes[~obj], all_cut[obj]
        item = {
            "image": _normalise(img) if self.normalize else _to_chw(img),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
            "ignore": torch.from_numpy(np.ascontiguousarray(ignore, dtype=np.float32)).reshape(-1, 4),
            "cut": torch.from_numpy(np.ascontiguousarray(cut, dtype=bool)).reshape(-1, 2),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "offset": torch.tensor([ox, oy], dtype=torch.float32),
            "orig_size": torch.tensor([ih, iw], dtype=torch.float32),
            "image_id": sample.image_id,
            "path": sample.path,
        }
        if self.target_cfg is not None:
            from .targets import build_image_targets

            s = self.target_cfg.stride
            item["targets"] = build_image_targets(
                item["boxes"], item["labels"], output_size=(self.input_size[0] // s, self.input_size[1] // s),
                cfg=self.target_cfg, ignore_boxes=item["ignore"], cut=item["cut"],
            )
        return item


def normalize_images(images: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[B, 3, H, W]`` uint8 RGB -> normalised ``dtype`` on the same device (``preprocess.MEAN`` / ``STD``)."""
    from .preprocess import MEAN, STD

    std = torch.tensor(STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() * (1.0 / (255.0 * std)) - mean / std).to(dtype)


def collate(items: Sequence[dict]) -> dict:
    """Batch :class:`CenterNetDataset` items: ``image`` Tensor[B, 3, H, W], ``targets`` batched
    (``targets.collate_targets``), ``scale`` Tensor[B], ``offset`` Tensor[B, 2], ``orig_size`` Tensor[B, 2];
    ``boxes`` / ``labels`` / ``ignore`` / ``cut`` / ``image_id`` / ``path`` as lists."""
    if not items:
        raise ValueError("collate needs at least one item, got 0")
    out = {
        "image": torch.stack([it["image"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "labels": [it["labels"] for it in items],
        "ignore": [it["ignore"] for it in items],
        "cut": [it["cut"] for it in items],
        "scale": torch.stack([it["scale"] for it in items]),
        "offset": torch.stack([it["offset"] for it in items]),
        "orig_size": torch.stack([it["orig_size"] for it in items]),
        "image_id": [it["image_id"] for it in items],
        "path": [it["path"] for it in items],
    }
    if "targets" in items[0]:
        from .targets import collate_targets

        out["targets"] = collate_targets([it["targets"] for it in items])
    return out


def collate_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Keep raw :class:`Sample` s as a list (evaluation letterboxes whole batches on the device)."""
    return list(samples)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV thread per worker (the workers already run in parallel)."""
    cv2.setNumThreads(1)
