"""Conversions between ROS messages and arrays: images in, detections out.

Legend: H/W image height/width, Ch channels of the raw encoding, D detections.

Raw images are decoded as zero-copy numpy *views* of ``msg.data`` (row padding from ``step`` is skipped
with strides, nothing is copied); the colour order stays that of the encoding and is reported next to
the view, so the colour conversion happens later, on the inference device. ``CompressedImage`` payloads
(JPEG/PNG) go through ``cv2.imdecode``. Every malformed input raises ``ImageConversionError`` with a
short reason; nothing here logs.

ROS message types are imported inside the functions that build them, so the array helpers work (and are
tested) without a ROS installation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "ENCODINGS",
    "ImageConversionError",
    "RawImage",
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


@dataclass(frozen=True)
class _Encoding:
    channels: int  # Ch: interleaved channels per pixel
    order: str  # colour order of the channels: "rgb", "bgr", "rgba", "bgra" or "mono"


# Supported sensor_msgs/Image encodings (8 bit per channel). OpenCV-style type names are read the
# way cv_bridge reads them (3 channels = BGR).
ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, "rgb"),
    "bgr8": _Encoding(3, "bgr"),
    "rgba8": _Encoding(4, "rgba"),
    "bgra8": _Encoding(4, "bgra"),
    "mono8": _Encoding(1, "mono"),
    "8uc1": _Encoding(1, "mono"),
    "8uc3": _Encoding(3, "bgr"),
    "8uc4": _Encoding(4, "bgra"),
}


class ImageConversionError(ValueError):
    """An image message that cannot be decoded; ``str(exc)`` is the reason (one line)."""


@dataclass(frozen=True)
class RawImage:
    """A decoded image: ``array`` is ``uint8[H, W, Ch]`` (often a strided view), ``order`` its colour order."""

    array: np.ndarray  # uint8[H, W, Ch]
    order: str  # one of "rgb", "bgr", "rgba", "bgra", "mono"

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])


def decode_raw(data: Any, *, height: int, width: int, encoding: str, step: int) -> RawImage:
    """View raw image bytes as ``uint8[H, W, Ch]`` without copying.

    ``data`` is anything exposing the buffer protocol (``array.array('B')`` as rclpy delivers it,
    ``bytes``, ``bytearray``, ``memoryview``, numpy array). Rows are ``step`` bytes apart; bytes past
    ``width * Ch`` in a row (padding) and past ``height * step`` in the buffer are ignored.
    Raises ``ImageConversionError`` on an unsupported encoding, a zero-size image, a ``step`` shorter
    than a row, or a buffer shorter than ``height * step``.
    """
    enc = ENCODINGS.get(str(encoding).lower())
    if enc is None:
        supported = ", ".join(k for k in ENCODINGS if not k[0].isdigit())
        raise ImageConversionError(f"unsupported encoding {encoding!r} (supported: {supported})")
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-size image {width}x{height}")
    row = width * enc.channels
    if step < row:
        raise ImageConversionError(f"step {step} is shorter than a row of {width} x {encoding} ({row} bytes)")
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"image data is not a byte buffer: {exc}") from None
    need = height * step
    if buf.size < need:
        raise ImageConversionError(f"truncated data: {buf.size} bytes for {width}x{height} {encoding} with step {step} (need {need})")
    # (H, W, Ch) strided view: row stride `step`, pixel stride Ch, channel stride 1; no copy.
    arr = np.lib.stride_tricks.as_strided(buf, shape=(height, width, enc.channels), strides=(step, enc.channels, 1))
    return RawImage(arr, enc.order)


def image_msg_to_array(msg: Any) -> RawImage:
    """``sensor_msgs/Image`` -> ``RawImage`` (zero-copy view of ``msg.data``; keep ``msg`` alive while using it)."""
    return decode_raw(msg.data, height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step)


def decode_compressed(data: Any) -> RawImage:
    """JPEG/PNG/... bytes -> ``RawImage`` in BGR order (``cv2.imdecode``). Raises ``ImageConversionError``."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageConversionError("empty compressed image")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # some codecs raise instead of returning None
        raise ImageConversionError(f"corrupt compressed image: {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise ImageConversionError(f"corrupt or unsupported compressed image ({buf.size} bytes)")
    return RawImage(img, "bgr")


def compressed_msg_to_array(msg: Any) -> RawImage:
    """``sensor_msgs/CompressedImage`` -> ``RawImage`` (BGR). The ``format`` field is informational only."""
    return decode_compressed(msg.data)


def to_bgr(img: RawImage) -> np.ndarray:
    """Contiguous ``uint8[H, W, 3]`` BGR copy of ``img`` (for drawing / video writing on the CPU)."""
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
