"""``CompressedImage`` payloads (JPEG, PNG) -> BGR arrays: checked before decoding, decoded silently.

Legend: H/W image height/width.

Before a decoder sees a payload (``check_compressed``):

1. **Format by magic bytes.** Only what ``sensor_msgs/CompressedImage`` carries: JPEG (``FF D8 FF``) and
   PNG (``89 'PNG' 0D 0A 1A 0A``). A BMP, TIFF, WebP, GIF, ... is refused, and so is a
   ``compressedDepth`` payload (its PNG follows a 12-byte header).
2. **Declared size from the header**, refused beyond ``max_pixels`` (default ``MAX_PIXELS``): a
   decompression bomb (an 875 KB PNG or a 1 KB BMP declaring 30000x30000) would otherwise cost gigabytes
   and seconds. PNG: the IHDR chunk, which must come first. JPEG: the frame header (SOF0-SOF15), found by
   walking the marker segments from the start of the file.
3. **PNG chunk structure**: every chunk lies inside the payload, the critical chunks (IHDR, PLTE, IDAT,
   IEND) match their CRC-32, an IDAT comes before IEND. A truncated or damaged PNG gets a precise reason.

Decoding (``decode_compressed``) uses Pillow, whose codecs never write to the process's stderr: its
libjpeg error manager has a silent ``output_message``, and its PNG plugin is its own code over zlib, not
libpng. (Behind ``cv2.imdecode``, libpng's and libjpeg's default handlers print "libpng error: ..." and
"Corrupt JPEG data: ..." from C, beyond reach of any log level; redirecting file descriptor 2 around
the call lost other threads' lines.) Pillow's Python-level warnings (a malformed EXIF block or APNG
chunk) are ignored by a process-wide ``warnings`` filter for the ``PIL`` modules, installed on import.
The result equals ``cv2.imdecode(buf, IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)`` (tested per Pillow
mode): the stored pixels, never rotated by an EXIF Orientation tag (as rviz and the raw topic show
them); alpha and PNG transparency (tRNS) ignored; 16-bit samples reduced to their high byte; Adobe
CMYK/YCCK JPEGs converted with OpenCV's formula. A truncated JPEG is refused, as by OpenCV 5, and so
is one with 12-bit samples (Pillow reads 8-bit JPEGs only).

Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, a process global) is not in the
way: the format's image class is opened directly (not through ``PIL.Image.open``, which applies it), and
its size must equal the one checked against ``max_pixels`` before any pixel is allocated.
"""
from __future__ import annotations

import io
import warnings
import zlib
from typing import Any

import numpy as np

from .encodings import ImageConversionError, RawImage, bounded

__all__ = ["MAX_PIXELS", "check_compressed", "decode_compressed"]

# Default limit on the pixels a compressed image may declare: 50 Mpx (8K UHD is 33.2 Mpx, 4K UHD 8.3 Mpx);
# decoding one costs about 150 MB for the BGR result (plus the codec's working memory).
MAX_PIXELS = 50_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
# JPEG frame headers: SOF0-SOF15 less DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field

# Pillow reports a damaged EXIF block or APNG chunk with warnings.warn (printed once per line of Pillow);
# the image itself decodes. A process-wide filter: warnings.catch_warnings is not thread-safe (Python 3.11).
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


def check_compressed(data: Any, *, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """Check a compressed payload before decoding: ``(format, W, H)`` with format ``"jpeg"`` or ``"png"``.

    Reads the headers (JPEG: microseconds) and, for a PNG, walks its chunks and checks the CRC-32 of the
    critical ones (about 0.6 ms per MB); the image itself is never allocated. Raises ``ImageConversionError`` for
    an empty payload, a format other than JPEG/PNG, a header that is missing, truncated or damaged, a
    declared size of zero, or ``W * H > max_pixels``; ``ValueError`` (quoting it) for ``max_pixels < 1``.
    """
    if int(max_pixels) < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels!r}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageConversionError("empty compressed image")
    mv = memoryview(buf)
    head = bytes(mv[:8])
    if head.startswith(_PNG_MAGIC):
        fmt, (w, h) = "png", _png_size(mv)
    elif head.startswith(_JPEG_MAGIC):
        fmt, (w, h) = "jpeg", _jpeg_size(mv)
    else:
        raise ImageConversionError(
            f"not a JPEG or PNG (first bytes {head.hex(' ')}); CompressedImage carries jpeg or png")
    if w == 0 or h == 0:
        raise ImageConversionError(f"{fmt} declares a zero-size image {w}x{h}")
    if w * h > max_pixels:
        raise ImageConversionError(
            f"{fmt} declares {w}x{h} = {w * h} pixels, above the limit of {int(max_pixels)} (max_pixels)")
    return fmt, w, h


def _png_size(mv: memoryview) -> tuple[int, int]:
    """Walk the chunks of a PNG; ``(W, H)`` from IHDR. Raises ``ImageConversionError`` naming the fault."""
    n = len(mv)
    pos, width, height, seen_idat = 8, 0, 0, False
    while True:
        if pos + 8 > n:
            raise ImageConversionError(f"truncated png: {n} bytes, no IEND chunk")
        length = int.from_bytes(mv[pos:pos + 4], "big")
        kind = bytes(mv[pos + 4:pos + 8])
        name = bounded(kind.decode("latin-1").encode("unicode_escape").decode("ascii"), 24)
        if length > 0x7FFFFFFF:
            raise ImageConversionError(f"corrupt png: chunk {name} declares {length} bytes")
        end = pos + 12 + length
        if end > n:
            raise ImageConversionError(
                f"truncated png: chunk {name} at byte {pos} needs {length + 12} bytes, {n - pos} left")
        if pos == 8:
            if kind != b"IHDR" or length != 13:
                raise ImageConversionError(f"corrupt png: first chunk is {name} ({length} bytes), not IHDR")
            width = int.from_bytes(mv[pos + 8:pos + 12], "big")
            height = int.from_bytes(mv[pos + 12:pos + 16], "big")
            if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
                raise ImageConversionError(f"corrupt png: IHDR declares {width}x{height}")
        if kind in _PNG_CRITICAL:
            crc = int.from_bytes(mv[end - 4:end], "big")
            if zlib.crc32(mv[pos + 4:end - 4]) != crc:
                raise ImageConversionError(f"corrupt png: chunk {name} at byte {pos} fails its CRC")
        seen_idat = seen_idat or kind == b"IDAT"
        if kind == b"IEND":
            if not seen_idat:
                raise ImageConversionError("corrupt png: no IDAT chunk before IEND")
            return width, height
        pos = end


def _jpeg_size(mv: memoryview) -> tuple[int, int]:
    """``(W, H)`` from the first JPEG frame header, skipping the segments before it by their lengths."""
    n = len(mv)
    i = 2  # after SOI
    while True:
        if i >= n:
            raise ImageConversionError(f"truncated jpeg: {n} bytes, no frame header")
        if mv[i] != 0xFF:
            raise ImageConversionError(f"corrupt jpeg: no marker at byte {i} (0x{mv[i]:02x})")
        while i < n and mv[i] == 0xFF:  # a marker may be preceded by fill bytes
            i += 1
        if i >= n:
            raise ImageConversionError(f"truncated jpeg: {n} bytes, no frame header")
        marker = mv[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or start of scan before any frame header
            raise ImageConversionError(f"corrupt jpeg: marker 0x{marker:02x} before the frame header")
        if i + 2 > n:
            raise ImageConversionError(f"truncated jpeg: segment 0x{marker:02x} at byte {i - 2}")
        length = (mv[i] << 8) | mv[i + 1]
        if length < 2:
            raise ImageConversionError(f"corrupt jpeg: segment 0x{marker:02x} declares {length} bytes")
        if marker in _JPEG_SOF:
            if length < 8 or i + 7 > n:
                raise ImageConversionError(f"truncated jpeg: frame header 0x{marker:02x} at byte {i - 2}")
            height = (mv[i + 3] << 8) | mv[i + 4]
            width = (mv[i + 5] << 8) | mv[i + 6]
            if height == 0:  # the height would come later in a DNL segment
                raise ImageConversionError("unsupported jpeg: height defined by a DNL segment")
            return width, height
        i += length


def decode_compressed(data: Any, *, max_pixels: int = MAX_PIXELS) -> RawImage:
    """JPEG/PNG bytes -> ``RawImage`` ``uint8[H, W, 3]`` in BGR order, the stored pixels (EXIF not applied).

    ``check_compressed`` runs first (format by magic bytes, declared ``W * H <= max_pixels``, PNG
    structure); then Pillow decodes, printing nothing. The array is new, C-contiguous and writable, equal
    to ``cv2.imdecode(buf, IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)`` (see the module docstring for the
    exceptions). Raises ``ImageConversionError`` with a bounded reason for a payload that fails the checks
    or that Pillow cannot decode (truncated, corrupt, unsupported); never a Pillow exception.
    """
    fmt, w, h = check_compressed(data, max_pixels=max_pixels)
    from PIL import JpegImagePlugin, PngImagePlugin

    image_class = JpegImagePlugin.JpegImageFile if fmt == "jpeg" else PngImagePlugin.PngImageFile
    try:
        with image_class(io.BytesIO(memoryview(np.frombuffer(data, dtype=np.uint8)))) as im:
            if im.size != (w, h):  # Pillow read another frame header than check_compressed: refuse
                raise ImageConversionError(f"corrupt {fmt}: frame headers disagree ({w}x{h} and "
                                           f"{im.size[0]}x{im.size[1]})")
            im.load()
            img = _to_bgr(im)
    except ImageConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any Pillow failure on untrusted bytes is a rejected frame
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        kind = "truncated" if "truncated" in reason else "corrupt or unsupported"
        raise ImageConversionError(f"{kind} {fmt}: {bounded(reason)}") from None
    return RawImage(img, "bgr")


def _to_bgr(im: Any) -> np.ndarray:
    """A loaded Pillow image -> new ``uint8[H, W, 3]`` BGR, as OpenCV's ``IMREAD_COLOR`` gives it.

    Modes from JPEG: L, RGB, CMYK (Pillow un-inverts Adobe CMYK; YCCK arrives as CMYK). From PNG: 1, L
    (1/2/4/8-bit grey, scaled to 0-255 by bit replication as libpng does), LA, P (1/2/4/8-bit), RGB,
    RGBA (16-bit RGB/RGBA/LA arrive as their high bytes), I;16 (16-bit grey). I, I;16B and PA are
    handled too, should another Pillow version produce them. Raises ``ImageConversionError`` otherwise.
    """
    import cv2

    mode = im.mode
    arr = np.asarray(im)
    if mode == "RGB":
        return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if mode == "RGBA":  # alpha dropped, as libpng's png_set_strip_alpha in OpenCV (no compositing)
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGR)
    if mode in ("L", "LA"):
        return cv2.cvtColor(np.ascontiguousarray(arr[..., 0] if mode == "LA" else arr), cv2.COLOR_GRAY2BGR)
    if mode == "1":  # bool (stored as 0/255 bytes: not to be viewed as uint8)
        return cv2.cvtColor(arr.astype(np.uint8) * np.uint8(255), cv2.COLOR_GRAY2BGR)
    if mode in ("P", "PA"):  # palette to BGR; tRNS ignored; indices past the palette are black (libpng)
        lut = np.zeros((256, 3), np.uint8)
        pal = np.frombuffer(bytes(im.getpalette("RGB") or b""), np.uint8).reshape(-1, 3)[:256, ::-1]
        lut[:len(pal)] = pal
        return lut[arr[..., 0] if mode == "PA" else arr]
    if mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey: the high byte, as OpenCV (not Pillow's clip)
        grey = np.clip(arr.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode == "CMYK":  # OpenCV's icvCvt_CMYK2BGR on inverted (Adobe) samples: k' - ((255 - c') * k' >> 8)
        cmyk = arr.astype(np.int32)
        k = 255 - cmyk[..., 3:]
        return np.ascontiguousarray((k - ((cmyk[..., 2::-1] * k) >> 8)).astype(np.uint8))
    raise ImageConversionError(f"unsupported image mode {bounded(mode, 24)}")
