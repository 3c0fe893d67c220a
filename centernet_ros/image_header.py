"""Image size from the file header, without decoding: JPEG, PNG, BMP, WebP, TIFF.

Used to check a dataset's annotation sizes against its image files (``coco_dataset.CocoDataset``): a header is a
few dozen bytes (JPEG: the marker segments before the frame header are skipped by their lengths, not read),
so checking 5,000 files costs milliseconds per hundred, where decoding them costs seconds.

The size is the *stored* one (the frame header's), which is what ``datasets.read_image`` returns: an EXIF
Orientation tag is not applied there either. Formats not listed give ``None`` (the caller decodes).

``centernet_ros.ros.image_decode`` has stricter parsers for in-memory ``CompressedImage`` payloads (PNG
CRCs, decompression-bomb limits); this module is the file-based, ROS-free one.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["ImageHeaderError", "read_image_size"]

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 less DHT, JPG, DAC
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class ImageHeaderError(ValueError):
    """An image file's header is truncated or damaged; the message names the file."""


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` in pixels from the header of the image file ``path``.

    Returns ``None`` when the file is none of JPEG, PNG, BMP, WebP (VP8, VP8L, VP8X) or TIFF (by magic bytes,
    not by extension). Raises ``OSError`` when the file cannot be opened and :class:`ImageHeaderError`
    (naming the file) when its header is truncated, damaged or declares a zero size.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        try:
            size = _size(f, head)
        except (ImageHeaderError, struct.error) as exc:
            raise ImageHeaderError(f"image '{path}': {exc}") from None
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        raise ImageHeaderError(f"image '{path}': header declares a zero size {size[0]}x{size[1]}")
    return size


def _size(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg(f)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageHeaderError("truncated or corrupt png: no IHDR chunk first")
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM"):
        (dib,) = struct.unpack("<I", head[14:18])
        if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        w, h = struct.unpack("<ii", head[18:26])
        return w, abs(h)  # a negative height: rows stored top-down
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(head)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(f, "<" if head[:2] == b"II" else ">")
    return None


def _jpeg(f: BinaryIO) -> tuple[int, int]:
    """Walk the marker segments from SOI to the first frame header (SOF0-SOF15)."""
    f.seek(2)
    while True:
        b = f.read(1)
        if not b:
            raise ImageHeaderError("truncated jpeg: no frame header")
        if b != b"\xff":
            raise ImageHeaderError(f"corrupt jpeg: no marker at byte {f.tell() - 1} (0x{b[0]:02x})")
        while b == b"\xff":  # fill bytes may precede a marker
            b = f.read(1)
        if not b:
            raise ImageHeaderError("truncated jpeg: no frame header")
        marker = b[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise ImageHeaderError(f"corrupt jpeg: marker 0x{marker:02x} before the frame header")
        seg = f.read(2)
        if len(seg) < 2:
            raise ImageHeaderError(f"truncated jpeg: segment 0x{marker:02x}")
        (length,) = struct.unpack(">H", seg)
        if length < 2:
            raise ImageHeaderError(f"corrupt jpeg: segment 0x{marker:02x} declares {length} bytes")
        if marker in _JPEG_SOF:
            sof = f.read(5)  # precision, height, width
            if len(sof) < 5:
                raise ImageHeaderError(f"truncated jpeg: frame header 0x{marker:02x}")
            _, h, w = struct.unpack(">BHH", sof)
            if h == 0:
                raise ImageHeaderError("unsupported jpeg: height defined by a DNL segment")
            return w, h
        f.seek(length - 2, 1)


def _webp(head: bytes) -> tuple[int, int]:
    if len(head) < 30:
        raise ImageHeaderError(f"truncated webp: {len(head)} bytes")
    kind = head[12:16]
    if kind == b"VP8 ":  # lossy: frame tag (3 bytes), start code 9d 01 2a, then 14-bit sizes
        if head[23:26] != b"\x9d\x01\x2a":
            raise ImageHeaderError("corrupt webp: no VP8 start code")
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":  # lossless: signature 0x2f, then width-1 and height-1 in 14 bits each
        if head[20] != 0x2F:
            raise ImageHeaderError("corrupt webp: no VP8L signature")
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # extended: canvas width-1 and height-1 in 24 bits each
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    raise ImageHeaderError(f"unsupported webp chunk {kind!r}")


def _tiff(f: BinaryIO, bo: str) -> tuple[int, int]:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    f.seek(4)
    (ifd,) = struct.unpack(bo + "I", f.read(4))
    f.seek(ifd)
    (n,) = struct.unpack(bo + "H", f.read(2))
    found: dict[int, int] = {}
    for _ in range(n):
        entry = f.read(12)
        tag, typ, _count = struct.unpack(bo + "HHI", entry[:8])
        if tag in (256, 257):
            if typ == 3:  # SHORT, left-justified in the value field
                (found[tag],) = struct.unpack(bo + "H", entry[8:10])
            elif typ == 4:  # LONG
                (found[tag],) = struct.unpack(bo + "I", entry[8:12])
            else:
                raise ImageHeaderError(f"corrupt tiff: size tag {tag} of type {typ}")
    if 256 not in found or 257 not in found:
        raise ImageHeaderError("corrupt tiff: no ImageWidth/ImageLength in the first directory")
    return found[256], found[257]
