"""Conversions between ROS messages and arrays: images in, detections out.

Legend: H/W image height/width, Ch channels of the raw encoding, D detections.

Raw images (``encodings``): for rgb8/bgr8/rgba8/bgra8/mono8 and their 16-bit forms a zero-copy numpy
*view* of ``msg.data`` in the encoding's colour order (the colour conversion happens later, on the
inference device); yuv422/yuyv/nv12/nv21 and Bayer mosaics are converted to BGR with OpenCV.
``CompressedImage`` payloads (``image_decode``): JPEG/PNG only, size checked from the header before
decoding with Pillow (its codecs print nothing), stored pixels (EXIF orientation not applied).
Every malformed input raises ``ImageConversionError`` with a short, bounded reason; nothing here logs.
``bounded`` cuts any other message-borne string (for logs and /diagnostics).

ROS message types are imported inside the functions that build them, so the array helpers work (and are
tested) without a ROS installation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .encodings import ACCEPTED_SUMMARY, ENCODINGS, MAX_TEXT, ImageConversionError, RawImage, bounded, decode_raw
from .image_decode import MAX_PIXELS, check_compressed, decode_compressed

__all__ = [
    "ACCEPTED_SUMMARY",
    "ENCODINGS",
    "MAX_PIXELS",
    "MAX_TEXT",
    "ImageConversionError",
    "RawImage",
    "bounded",
    "check_compressed",
    "decode_raw",
    "image_msg_to_array",
    "compressed_msg_to_array",
    "decode_compressed",
    "to_bgr",
    "bgr_to_image_msg",
    "detections_to_msg",
    "label_info_msg",
    "draw_detections",
]


def image_msg_to_array(msg: Any) -> RawImage:
    """``sensor_msgs/Image`` -> ``RawImage`` (often a zero-copy view of ``msg.data``: keep ``msg`` alive)."""
    return decode_raw(msg.data, height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step,
                      is_bigendian=bool(msg.is_bigendian))


def compressed_msg_to_array(msg: Any, *, max_pixels: int = MAX_PIXELS) -> RawImage:
    """``sensor_msgs/CompressedImage`` -> ``RawImage`` (BGR) via ``decode_compressed``.

    The format is read from the payload's magic bytes; the ``format`` field is informational only.
    ``max_pixels`` bounds the size a payload may declare (``ImageConversionError`` beyond it).
    """
    return decode_compressed(msg.data, max_pixels=max_pixels)


def to_bgr(img: RawImage) -> np.ndarray:
    """``img`` as a contiguous ``uint8[H, W, 3]`` BGR array (for drawing / video writing on the CPU): the
    image's own array when it is already contiguous BGR (no copy: copy it before drawing on it if the
    message must stay unchanged), else a converted copy."""
    import cv2

    a = img.array
    if img.order == "bgr":
        return np.ascontiguousarray(a)
    codes = {
        "rgb": cv2.COLOR_RGB2BGR,
        "rgba": cv2.COLOR_RGBA2BGR,
        "bgra": cv2.COLOR_BGRA2BGR,
        "mono": cv2.COLOR_GRAY2BGR,
    }
    src = np.ascontiguousarray(a[..., 0] if img.order == "mono" else a)
    return cv2.cvtColor(src, codes[img.order])


def bgr_to_image_msg(bgr: np.ndarray, header: Any = None) -> Any:
    """``uint8[H, W, 3]`` BGR array -> ``sensor_msgs/Image`` (``bgr8``, ``step = 3 W``)."""
    import array

    from sensor_msgs.msg import Image

    bgr = np.ascontiguousarray(bgr, dtype=np.uint8)
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected uint8[H, W, 3], got shape {bgr.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(bgr.shape[0]), int(bgr.shape[1])
    msg.encoding = "bgr8"
    msg.is_bigendian = 0
    msg.step = int(bgr.shape[1] * 3)
    msg.data = array.array("B", bgr.tobytes())  # one memcpy; a list of ints would be validated per byte
    return msg


def detections_to_msg(
    header: Any, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, class_ids: Sequence[str] | None = None
) -> Any:
    """Detections of one image -> ``vision_msgs/Detection2DArray``.

    ``boxes``: ``float[D, 4]`` x1, y1, x2, y2 in image pixels; ``scores``: ``float[D]``; ``labels``: ``int[D]``.
    Each detection gets the image ``header``, the box as centre + size (theta 0) and one hypothesis
    whose ``class_id`` is the class index as a string (or ``class_ids[label]`` when given). ``D = 0``
    gives an empty array (still published: "processed, nothing found").
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray()
    out.header = header
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (D, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # (D, 2)
    sizes = boxes[:, 2:] - boxes[:, :2]  # (D, 2)
    rows = zip(centres.tolist(), sizes.tolist(), np.asarray(scores, dtype=np.float64).tolist(),
               np.asarray(labels).astype(np.int64).tolist())
    dets = []
    for (cx, cy), (w, h), score, label in rows:  # building one message object per detection is unavoidable
        det = Detection2D()
        det.header = header
        det.bbox.center.position.x = cx
        det.bbox.center.position.y = cy
        det.bbox.center.theta = 0.0
        det.bbox.size_x = w
        det.bbox.size_y = h
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_ids[label] if class_ids is not None else str(label)
        hyp.hypothesis.score = score
        det.results.append(hyp)
        dets.append(det)
    out.detections = dets
    return out


def label_info_msg(class_names: Sequence[str], *, threshold: float, header: Any = None) -> Any:
    """Class index -> name table as ``vision_msgs/LabelInfo`` (publish once, transient local)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    if header is not None:
        msg.header = header
    table = []
    for i, name in enumerate(class_names):
        vc = VisionClass()
        vc.class_id = i
        vc.class_name = str(name)
        table.append(vc)
    msg.class_map = table
    msg.threshold = float(threshold)
    return msg


def _colour(label: int) -> tuple[int, int, int]:
    """A stable, well separated BGR colour per class index (golden-ratio hue walk)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(
    bgr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    thickness: int = 2,
) -> np.ndarray:
    """Draw boxes, class names and scores on ``bgr`` (``uint8[H, W, 3]``, modified in place and returned)."""
    import cv2

    h, w = bgr.shape[:2]
    scale = max(0.35, min(h, w) / 900.0)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).round().astype(np.int64)  # (D, 4)
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), np.asarray(scores).tolist(), np.asarray(labels).tolist()):
        label = int(label)
        colour = _colour(label)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + base + 2, h - 1)
        cv2.rectangle(bgr, (x1, ty - th - base), (x1 + tw + 2, ty + 1), colour, -1)
        cv2.putText(bgr, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bgr
