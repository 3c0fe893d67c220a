"""Test images built in the test: colour patches, camera encodings, EXIF blocks, decompression bombs.

Legend: H/W image height/width. Everything here is written from the format specifications with numpy,
struct and zlib, independently of the package's decoders, so tests compare the package against them.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

# BGR colours of the patches: saturated primaries first (they reveal a swapped Bayer tile or chroma order).
PATCH_COLOURS = [
    (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255),
    (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 0, 0),
    (40, 128, 220), (128, 0, 128), (128, 128, 0), (128, 128, 128),
]
PATCH = 16  # patch side in pixels (even: chroma pairs and Bayer tiles never straddle two patches)


def patches_bgr(rows: int = 3, cols: int = 4) -> np.ndarray:
    """``uint8[rows * 16, cols * 16, 3]`` BGR frame of flat 16x16 patches in ``PATCH_COLOURS`` order."""
    img = np.zeros((rows * PATCH, cols * PATCH, 3), np.uint8)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        img[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = PATCH_COLOURS[k % len(PATCH_COLOURS)]
    return img


def patch_interiors(shape: tuple[int, ...], margin: int = 2) -> np.ndarray:
    """``bool[H, W]``: pixels at least ``margin`` away from every patch edge."""
    h, w = shape[:2]
    ys, xs = np.arange(h) % PATCH, np.arange(w) % PATCH
    in_y = (ys >= margin) & (ys < PATCH - margin)
    in_x = (xs >= margin) & (xs < PATCH - margin)
    return in_y[:, None] & in_x[None, :]


# --------------------------------------------------------------------------- camera encodings


def bgr_to_yuv601(bgr: np.ndarray) -> np.ndarray:
    """``float[H, W, 3]`` Y, U, V (BT.601, limited range: Y 16-235, U/V 16-240), unrounded."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return np.stack([y, u, v], axis=-1)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_yuv422(bgr: np.ndarray, order: str) -> np.ndarray:
    """``uint8[H, W, 2]`` packed 4:2:2: ``order`` "uyvy" (U Y0 V Y1) or "yuyv" (Y0 U Y1 V), pair chroma averaged."""
    yuv = bgr_to_yuv601(bgr)
    h, w = bgr.shape[:2]
    y = _u8(yuv[..., 0])
    uv = _u8(yuv[..., 1:].reshape(h, w // 2, 2, 2).mean(axis=2))  # (H, W/2, [U, V])
    quad = {"uyvy": [uv[..., 0], y[:, 0::2], uv[..., 1], y[:, 1::2]],
            "yuyv": [y[:, 0::2], uv[..., 0], y[:, 1::2], uv[..., 1]]}[order]
    return np.stack(quad, axis=-1).reshape(h, w, 2)


def to_nv(bgr: np.ndarray, order: str) -> np.ndarray:
    """``uint8[3H/2, W]`` semi-planar 4:2:0: Y rows, then rows of interleaved U V ("nv12") or V U ("nv21")."""
    yuv = bgr_to_yuv601(bgr)
    h, w = bgr.shape[:2]
    y = _u8(yuv[..., 0])
    uv = _u8(yuv[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3)))  # (H/2, W/2, [U, V])
    if order == "nv21":
        uv = uv[..., ::-1]
    return np.vstack([y, uv.reshape(h // 2, w)])


def to_bayer(bgr: np.ndarray, tile: str) -> np.ndarray:
    """``uint8[H, W]`` mosaic; ``tile`` names the colours of pixels (0,0), (0,1), (1,0), (1,1), e.g. "rggb"."""
    channel = {"b": 0, "g": 1, "r": 2}
    out = np.empty(bgr.shape[:2], np.uint8)
    for k, letter in enumerate(tile):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = bgr[dy::2, dx::2, channel[letter]]
    return out


def to_16bit(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """``uint16`` samples whose high byte is ``pixels`` and whose low byte is noise."""
    noise = np.random.default_rng(seed).integers(0, 256, pixels.shape, dtype=np.uint16)
    return (pixels.astype(np.uint16) << 8) | noise


def rows_with_padding(pixels: np.ndarray, pad: int, *, bigendian: bool = False) -> tuple[bytes, int]:
    """Serialise ``[H, W(, Ch)]`` uint8/uint16 rows with ``pad`` junk bytes after each; ``(data, step)``."""
    h = pixels.shape[0]
    dtype = np.dtype(pixels.dtype).newbyteorder(">" if bigendian else "<")
    rows = pixels.astype(dtype).reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, np.uint8)
    return np.hstack([rows, junk]).tobytes(), rows.shape[1] + pad


# --------------------------------------------------------------------------- JPEG EXIF


def exif_orientation_app1(orientation: int) -> bytes:
    """A JPEG APP1 segment: 'Exif\\0\\0', a little-endian TIFF header and one IFD entry 0x0112 SHORT."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF APP1 segment carrying ``orientation`` inserted right after SOI."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    return jpeg[:2] + exif_orientation_app1(orientation) + jpeg[2:]


# --------------------------------------------------------------------------- decompression bombs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_zero_bomb(width: int = 30000, height: int = 30000, rows_per_piece: int = 1000) -> bytes:
    """A valid 8-bit grey PNG of ``width x height`` zeros; IDAT = zlib of the filtered zero rows.

    30000x30000 gives about 875 KB that decode to 900 MB. Built in a fraction of a second: one piece of
    ``rows_per_piece`` rows is deflated once, ending in a full flush (byte aligned, no back references), so
    the same compressed bytes stand for every piece; the Adler-32 of N zeros is ``(N % 65521) << 16 | 1``.
    """
    assert height % rows_per_piece == 0
    raw_piece = bytes((width + 1) * rows_per_piece)  # filter byte 0 + row of zeros
    comp = zlib.compressobj(9)
    piece = comp.compress(raw_piece) + comp.flush(zlib.Z_FULL_FLUSH)
    header, piece = piece[:2], piece[2:]
    total = (width + 1) * height
    stream = header + piece * (height // rows_per_piece) + b"\x03\x00" + struct.pack(">I", (total % 65521) << 16 | 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def bmp_rle8_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 1,080-byte BMP: 8 bpp, RLE8, 1024-byte palette, then ``00 01`` (end of bitmap)."""
    pixels = b"\x00\x01"
    offset = 14 + 40 + 1024
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + bytes(1024) + pixels
