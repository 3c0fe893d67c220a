"""Image size from file headers (``image_header.read_image_size``) against OpenCV's decoded size."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from centernet_ros.datasets import read_image
from centernet_ros.image_header import ImageHeaderError, read_image_size
from imaging import with_exif_orientation

H, W = 37, 53  # odd sizes: a swapped or off-by-one field shows


def _img() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "name, params",
    [
        ("a.jpg", []),
        ("a_progressive.jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        ("a.png", []),
        ("a.bmp", []),
        ("lossy.webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        ("lossless.webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        ("a.tif", []),
        ("raw.tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    ],
)
def test_header_size_equals_decoded_size(tmp_path, name, params):
    path = tmp_path / name
    assert cv2.imwrite(str(path), _img(), params)
    assert read_image_size(path) == (W, H)
    assert read_image(path).shape[:2] == (H, W)


def test_jpeg_large_segments_before_the_frame_header_and_exif_orientation(tmp_path):
    ok, enc = cv2.imencode(".jpg", _img())
    jpeg = with_exif_orientation(enc.tobytes(), 6)  # rotated on display, stored as W x H
    app2 = b"\xff\xe2" + struct.pack(">H", 65000) + bytes(64998)  # e.g. an ICC profile chunk
    big = jpeg[:2] + app2 + app2 + jpeg[2:]
    path = tmp_path / "exif.jpg"
    path.write_bytes(big)
    assert read_image_size(path) == (W, H)
    assert read_image(path).shape[:2] == (H, W)  # the stored pixels, not rotated


def test_hand_built_headers(tmp_path):
    # WebP extended (VP8X): canvas width-1 and height-1 in 24 bits
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(4)
    vp8x += (1999).to_bytes(3, "little") + (999).to_bytes(3, "little")
    (tmp_path / "x.webp").write_bytes(vp8x)
    assert read_image_size(tmp_path / "x.webp") == (2000, 1000)
    # big-endian TIFF, width as SHORT and height as LONG
    ifd = struct.pack(">H", 2) + struct.pack(">HHIHH", 256, 3, 1, 700, 0) + struct.pack(">HHII", 257, 4, 1, 70000)
    (tmp_path / "be.tif").write_bytes(b"MM\x00*" + struct.pack(">I", 8) + ifd + bytes(4))
    assert read_image_size(tmp_path / "be.tif") == (700, 70000)
    # BMP with a negative height (top-down rows)
    bmp = b"BM" + bytes(12) + struct.pack("<Iii", 40, 320, -240) + bytes(30)
    (tmp_path / "td.bmp").write_bytes(bmp)
    assert read_image_size(tmp_path / "td.bmp") == (320, 240)


def test_unknown_format_truncated_and_missing(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello, not an image")
    assert read_image_size(tmp_path / "a.txt") is None
    ok, enc = cv2.imencode(".jpg", _img())
    (tmp_path / "cut.jpg").write_bytes(enc.tobytes()[:40])  # cut inside the APP0/quantisation segments
    with pytest.raises(ImageHeaderError, match=r"cut\.jpg.*truncated jpeg"):
        read_image_size(tmp_path / "cut.jpg")
    ok, enc = cv2.imencode(".png", _img())
    (tmp_path / "cut.png").write_bytes(enc.tobytes()[:20])
    with pytest.raises(ImageHeaderError, match=r"cut\.png.*png"):
        read_image_size(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError):
        read_image_size(tmp_path / "missing.jpg")
