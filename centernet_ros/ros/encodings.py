"""Raw ``sensor_msgs/Image`` pixels -> arrays, for every encoding a colour or mono camera publishes.

Legend: H/W image height/width, Ch channels of the returned array.

Three ways an encoding is read (``ENCODINGS`` says which):

* **view**: rgb8, bgr8, rgba8, bgra8, mono8 and their 16-bit forms (rgb16, ..., mono16), and the OpenCV
  type names 8UC1/8UC3/8UC4 (read as cv_bridge reads them: 3 channels = BGR). The result is a zero-copy
  numpy *view* of ``msg.data`` (row padding from ``step`` skipped with strides) in the encoding's own
  colour order, so the colour conversion happens later, on the inference device. A 16-bit sample is
  scaled to 8 bits by keeping its high byte (``v >> 8``, the exact inverse of ``v8 * 257``; byte order
  from ``is_bigendian``), which is again a view: no copy, no arithmetic.
* **yuv**: ``yuv422``/``uyvy`` (U Y0 V Y1), ``yuv422_yuy2``/``yuyv`` (Y0 U Y1 V), ``nv12``/``nv21``
  (a Y plane of H rows, then H/2 rows of interleaved U/V resp. V/U) -> BGR with ``cv2.cvtColor``
  (BT.601, limited range, as V4L2 cameras deliver it).
* **bayer**: ``bayer_rggb8``/``bggr8``/``gbrg8``/``grbg8`` and the ``...16`` forms (high byte, as above)
  -> BGR with ``cv2.cvtColor`` (bilinear demosaicing). The letters name the 2x2 tile from the top-left
  pixel: rggb = R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1).

Depth and float encodings (16UC1, 32FC1, ...) are not camera images and are refused with a reason, as is
``nv24`` (4:4:4 semi-planar; OpenCV has no conversion for it). Every malformed input raises
``ImageConversionError`` with a one-line reason in which any text taken from the message is bounded
(``bounded``); nothing here logs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ENCODINGS",
    "ACCEPTED_SUMMARY",
    "MAX_TEXT",
    "ImageConversionError",
    "RawImage",
    "bounded",
    "decode_raw",
]

MAX_TEXT = 200  # default bound (characters) of a string that comes from a message, in reasons and diagnostics


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


def bounded(text: Any, limit: int = MAX_TEXT) -> str:
    """``str(text)`` cut to at most ``limit`` characters; a cut ends with ``...[N chars]`` (N = full length).

    For every string that comes from a message (an encoding, a format, a frame id) before it goes into a
    reject reason, a log line or /diagnostics: a 1,000,000-character ``encoding`` must not be copied into
    every status message. ``limit`` must be positive (``ValueError`` quoting it otherwise).
    """
    if int(limit) <= 0:
        raise ValueError(f"limit must be positive, got {limit!r}")
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    marker = f"...[{len(s)} chars]"
    return s[: max(0, limit - len(marker))] + marker if limit > len(marker) else s[:limit]


def _quoted(text: Any, limit: int = 64) -> str:
    """``repr`` of a message string (control characters escaped: one line), at most ``limit`` characters of it."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return bounded(repr(s), 4 * limit)
    return f"{repr(s[:limit])}...[{len(s)} chars]"


@dataclass(frozen=True)
class _Encoding:
    kind: str  # "view" (zero-copy), "yuv422" (2 bytes/pixel), "yuv420sp" (1.5 bytes/pixel) or "bayer"
    channels: int  # interleaved samples per pixel in the message (yuv422: 2)
    depth: int  # bytes per sample: 1 or 2
    order: str  # colour order of the result: "rgb", "bgr", "rgba", "bgra" or "mono"
    code: str = ""  # name of the cv2.cvtColor code to BGR (yuv and bayer kinds)


def _table() -> dict[str, _Encoding]:
    t: dict[str, _Encoding] = {}
    for order, ch in (("rgb", 3), ("bgr", 3), ("rgba", 4), ("bgra", 4), ("mono", 1)):
        t[f"{order}8"] = _Encoding("view", ch, 1, order)
        t[f"{order}16"] = _Encoding("view", ch, 2, order)
    t.update({"8uc1": _Encoding("view", 1, 1, "mono"), "8uc3": _Encoding("view", 3, 1, "bgr"),
              "8uc4": _Encoding("view", 4, 1, "bgra")})
    for names, code in ((("yuv422", "uyvy"), "COLOR_YUV2BGR_UYVY"), (("yuv422_yuy2", "yuyv"), "COLOR_YUV2BGR_YUY2")):
        for name in names:
            t[name] = _Encoding("yuv422", 2, 1, "bgr", code)
    t["nv12"] = _Encoding("yuv420sp", 1, 1, "bgr", "COLOR_YUV2BGR_NV12")
    t["nv21"] = _Encoding("yuv420sp", 1, 1, "bgr", "COLOR_YUV2BGR_NV21")
    for tile in ("rggb", "bggr", "gbrg", "grbg"):
        for depth in (1, 2):
            t[f"bayer_{tile}{8 * depth}"] = _Encoding("bayer", 1, depth, "bgr", f"COLOR_Bayer{tile.upper()}2BGR")
    return t


# Supported sensor_msgs/Image encodings, keys lower case (matching is case-insensitive).
ENCODINGS: dict[str, _Encoding] = _table()

ACCEPTED_SUMMARY = ("rgb8, bgr8, rgba8, bgra8, mono8 and their 16-bit forms, 8UC1/3/4, yuv422 (uyvy), "
                    "yuv422_yuy2 (yuyv), nv12, nv21, bayer_{rggb,bggr,gbrg,grbg}{8,16}")


def _unsupported(encoding: Any) -> ImageConversionError:
    e = str(encoding)
    if re.fullmatch(r"(8|16|32|64)[USF]C\d{0,3}", e[:12].upper()):  # 16UC1, 32FC1, 8UC2, ...: OpenCV type names
        why = "a depth, float or multi-channel data encoding, not a camera image"
    else:
        why = "not a camera encoding this node reads"
    return ImageConversionError(f"unsupported encoding {_quoted(e)}: {why} (accepted: {ACCEPTED_SUMMARY})")


def decode_raw(data: Any, *, height: int, width: int, encoding: str, step: int, is_bigendian: bool = False) -> RawImage:
    """Raw image bytes -> ``RawImage`` (``uint8[H, W, Ch]``): a zero-copy view, or a BGR array for yuv/bayer.

    ``data`` is anything exposing the buffer protocol (``array.array('B')`` as rclpy delivers it,
    ``bytes``, ``bytearray``, ``memoryview``, numpy array). Rows are ``step`` bytes apart (nv12/nv21: the
    Y rows and then the H/2 chroma rows); bytes past a row (padding) and past the image are ignored.
    ``is_bigendian`` is the message's byte order of 16-bit samples. Raises ``ImageConversionError`` on an
    unsupported encoding, a zero-size image, a ``step`` shorter than a row, a buffer shorter than
    ``height * step`` (nv12/nv21: ``height * 3 / 2 * step``), or an odd width (height) where the chroma
    subsampling needs an even one.
    """
    name = str(encoding)
    enc = ENCODINGS.get(name.lower()) if len(name) <= 32 else None
    if enc is None:
        raise _unsupported(name)
    name = name.lower()
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-size image {width}x{height}")
    row = width * enc.channels * enc.depth
    if step < row:
        raise ImageConversionError(f"step {step} is shorter than a row of {width} x {name} ({row} bytes)")
    if enc.kind in ("yuv422", "yuv420sp") and width % 2:
        raise ImageConversionError(f"{name} needs an even width, got {width}")
    if enc.kind == "yuv420sp" and height % 2:
        raise ImageConversionError(f"{name} needs an even height, got {height}")
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"image data is not a byte buffer: {bounded(exc)}") from None
    rows = height * 3 // 2 if enc.kind == "yuv420sp" else height
    need = rows * step
    if buf.size < need:
        raise ImageConversionError(
            f"truncated data: {buf.size} bytes for {width}x{height} {name} with step {step} (need {need})")

    if enc.kind == "yuv420sp":  # (3H/2, W): Y rows then chroma rows, one byte each
        planes = np.lib.stride_tricks.as_strided(buf, shape=(rows, width), strides=(step, 1))
        return RawImage(_cvt(planes, enc.code, name), "bgr")
    # High byte of each sample: offset 0 in big-endian order, depth - 1 in little-endian order.
    lsb_first = not bool(is_bigendian)
    first = buf[enc.depth - 1:] if (enc.depth > 1 and lsb_first) else buf
    view = np.lib.stride_tricks.as_strided(
        first, shape=(height, width, enc.channels), strides=(step, enc.channels * enc.depth, enc.depth))
    if enc.kind == "view":
        return RawImage(view, enc.order)
    if enc.kind == "yuv422":  # (H, W, 2): U/V interleaved with Y
        return RawImage(_cvt(view, enc.code, name), "bgr")
    return RawImage(_cvt(view[..., 0], enc.code, name), "bgr")  # bayer: (H, W) mosaic


def _cvt(src: np.ndarray, code_name: str, encoding: str) -> np.ndarray:
    """``cv2.cvtColor`` to a contiguous ``uint8[H, W, 3]`` BGR array; an OpenCV error becomes a reason."""
    import cv2

    try:
        return cv2.cvtColor(np.ascontiguousarray(src), getattr(cv2, code_name))
    except cv2.error as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageConversionError(f"cannot convert {encoding}: {bounded(last)}") from None
