"""``CompressedImage`` payloads (JPEG, PNG) -> BGR arrays: checked before decoding, decoded quietly.

Legend: H/W image height/width.

Before ``cv2.imdecode`` sees a payload (``check_compressed``):

1. **Format by magic bytes.** Only what ``sensor_msgs/CompressedImage`` carries: JPEG (``FF D8 FF``) and
   PNG (``89 'PNG' 0D 0A 1A 0A``). A BMP, TIFF, WebP, GIF, ... is refused, and so is a
   ``compressedDepth`` payload (its PNG follows a 12-byte header).
2. **Declared size from the header**, refused beyond ``max_pixels`` (default ``MAX_PIXELS``): a
   decompression bomb (an 875 KB PNG or a 1 KB BMP declaring 30000x30000) would otherwise cost gigabytes
   and seconds. PNG: the IHDR chunk, which must come first. JPEG: the frame header (SOF0-SOF15), found by
   walking the marker segments from the start of the file.
3. **PNG chunk structure**: every chunk lies inside the payload, the critical chunks (IHDR, PLTE, IDAT,
   IEND) match their CRC-32, an IDAT comes before IEND. A truncated or damaged PNG gets a precise reason
   and never reaches libpng.

Decoding uses ``cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION``: the stored pixels, never rotated by
an EXIF Orientation tag, as ROS image tools (rviz, the raw topic) show them.

libpng and libjpeg report damaged data by printing to the process's stderr themselves ("libpng error:
...", "Corrupt JPEG data: ..."), and OpenCV logs its own warnings there, one line per bad image, beyond
reach of any log level. ``cv2.imdecode`` therefore runs with file descriptor 2 pointed at a scratch file
(``_decoder_output_dropped``, one decode at a time); afterwards the lines the decoders wrote are dropped
and whatever else was written meanwhile (another thread's log lines) is passed on, late by the decode
time but not lost.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import zlib
from typing import Any, Iterator

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

# Lines the decoders print themselves: libpng's default error/warning handlers, libjpeg's warnings
# (jerror.h JWRN_*), OpenCV's log lines ("[ WARN:0@0.029] global ..."; not ROS's "[WARN] [time] [node]").
_DECODER_LINE = re.compile(
    rb"(?:libpng (?:error|warning)\b"
    rb"|\[ ?(?:FATAL|ERROR|WARN|INFO|DEBUG|VERBOSE):\d+(?:@[\d.]+)?\] "
    rb"|Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression sequence"
    rb"|Warning: unknown JFIF|Unknown Adobe color transform|Application transferred too)")
_STDERR_LOCK = threading.Lock()


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
    structure); then ``cv2.imdecode`` with ``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION``, whatever the
    decoders print to stderr dropped. Raises ``ImageConversionError`` with the reason.
    """
    import cv2

    check_compressed(data, max_pixels=max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        with _decoder_output_dropped():
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # some codecs raise instead of returning None
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageConversionError(f"corrupt compressed image: {bounded(last)}") from None
    if img is None or img.size == 0:
        raise ImageConversionError(f"corrupt or unsupported compressed image ({buf.size} bytes)")
    return RawImage(img, "bgr")


@contextlib.contextmanager
def _decoder_output_dropped() -> Iterator[None]:
    """Point fd 2 at a scratch file for the block; then pass on every line but the decoders' own.

    One block at a time (a lock): the scratch file must belong to one decode. Where fd 2 cannot be
    duplicated (closed), the block runs as is.
    """
    with _STDERR_LOCK:
        saved = _dup_stderr()
        if saved is None:
            yield
            return
        try:
            with _scratch_file() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    _pass_on(sink.read())
        finally:
            os.close(saved)


def _dup_stderr() -> int | None:
    try:
        return os.dup(2)
    except OSError:  # fd 2 closed
        return None


def _scratch_file() -> Any:
    """An anonymous file in memory where the OS offers one (Linux), else a temporary file."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("decoder-stderr", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


def _pass_on(written: bytes) -> None:
    """Write to stderr the lines of ``written`` that the decoders did not print."""
    if not written:
        return
    kept = b"".join(line for line in written.splitlines(keepends=True) if not _DECODER_LINE.match(line))
    while kept:
        try:
            kept = kept[os.write(2, kept):]
        except OSError:
            return
