"""Image decoding (every encoding vs an OpenCV reference, step padding, bad input) and message building."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from centernet_ros.ros.conversions import (
    ENCODINGS,
    ImageConversionError,
    decode_compressed,
    decode_raw,
    draw_detections,
    to_bgr,
)

RNG = np.random.default_rng(0)


def _bgr(h: int = 7, w: int = 11) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# encoding -> (how to make its pixels from a BGR image, the BGR image a reader should get back)
def _encode(bgr: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    alpha = RNG.integers(0, 256, bgr.shape[:2], dtype=np.uint8)
    table = {
        "rgb8": (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), bgr),
        "bgr8": (bgr, bgr),
        "8UC3": (bgr, bgr),
        "rgba8": (np.dstack([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), alpha]), bgr),
        "bgra8": (np.dstack([bgr, alpha]), bgr),
        "8UC4": (np.dstack([bgr, alpha]), bgr),
        "mono8": (gray[..., None], cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)),
        "8UC1": (gray[..., None], cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)),
    }
    return table[encoding]


def _with_padding(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Serialise ``uint8[H, W, Ch]`` rows with ``pad`` junk bytes after each row; returns (data, step)."""
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c)
    junk = np.full((h, pad), 0xAB, np.uint8)
    return np.hstack([rows, junk]).tobytes(), w * c + pad


ALL_ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4"]


def test_every_8bit_view_encoding_is_tested():
    """The 8-bit encodings read as views; the others (16-bit, yuv, bayer) are in test_encodings.py."""
    views = {k for k, e in ENCODINGS.items() if e.kind == "view" and e.depth == 1}
    assert {e.lower() for e in ALL_ENCODINGS} == views


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("container", [bytes, bytearray, lambda b: array.array("B", b)])
def test_decode_raw_matches_opencv(encoding, pad, container):
    bgr = _bgr()
    pixels, expected_bgr = _encode(bgr, encoding)
    data, step = _with_padding(pixels, pad)
    buf = container(data)
    raw = decode_raw(buf, height=bgr.shape[0], width=bgr.shape[1], encoding=encoding, step=step)
    assert raw.array.shape == pixels.shape and raw.array.dtype == np.uint8
    np.testing.assert_array_equal(raw.array, pixels)
    assert np.shares_memory(raw.array, np.frombuffer(buf, np.uint8))  # a view, not a copy
    np.testing.assert_array_equal(to_bgr(raw), expected_bgr)


def test_decode_raw_ignores_bytes_past_the_image():
    bgr = _bgr(3, 4)
    data = bgr.tobytes() + b"\x00" * 9
    raw = decode_raw(data, height=3, width=4, encoding="bgr8", step=12)
    np.testing.assert_array_equal(raw.array, bgr)


@pytest.mark.parametrize(
    "kwargs, data, reason",
    [
        (dict(height=2, width=2, encoding="jpeg", step=4), b"\x00" * 8, "unsupported encoding"),
        (dict(height=2, width=2, encoding="16UC1", step=4), b"\x00" * 8, "unsupported encoding"),
        (dict(height=0, width=2, encoding="rgb8", step=6), b"", "zero-size"),
        (dict(height=2, width=0, encoding="rgb8", step=0), b"", "zero-size"),
        (dict(height=2, width=2, encoding="rgb8", step=5), b"\x00" * 12, "step 5 is shorter"),
        (dict(height=2, width=2, encoding="rgb8", step=6), b"\x00" * 11, "truncated"),
        (dict(height=2, width=2, encoding="rgb8", step=8), b"\x00" * 14, "truncated"),
        (dict(height=2, width=2, encoding="mono8", step=2), b"", "truncated"),
    ],
)
def test_decode_raw_rejects_bad_input(kwargs, data, reason):
    with pytest.raises(ImageConversionError, match=reason):
        decode_raw(data, **kwargs)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_decode_compressed_matches_imdecode(ext):
    bgr = _bgr(20, 30)
    ok, enc = cv2.imencode(ext, bgr)
    assert ok
    raw = decode_compressed(array.array("B", enc.tobytes()))
    assert raw.order == "bgr"
    np.testing.assert_array_equal(raw.array, cv2.imdecode(enc, cv2.IMREAD_COLOR))
    if ext == ".png":  # lossless
        np.testing.assert_array_equal(raw.array, bgr)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"not an image at all", "not a JPEG or PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt"),  # JPEG magic, garbage body
    ],
)
def test_decode_compressed_rejects_bad_input(data, reason):
    with pytest.raises(ImageConversionError, match=reason):
        decode_compressed(data)


def test_decode_compressed_rejects_truncated_png():
    ok, enc = cv2.imencode(".png", _bgr(40, 40))
    with pytest.raises(ImageConversionError, match="truncated png"):
        decode_compressed(enc.tobytes()[:30])


def test_draw_detections_draws_boxes_and_handles_empty():
    canvas = np.zeros((60, 80, 3), np.uint8)
    out = draw_detections(canvas.copy(), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), ["car"])
    np.testing.assert_array_equal(out, canvas)
    out = draw_detections(canvas.copy(), np.array([[10.0, 20.0, 50.0, 40.0]]), np.array([0.9]), np.array([0]), ["car"])
    assert out[30, 10].any() and out[30, 50].any()  # left and right edges drawn
    assert not out[30, 30].any()  # inside stays untouched (outline only)
    assert not out[55, 75].any()  # far corner untouched


# ------------------------------------------------------------------ ROS messages (need the ROS env)


def test_image_msg_round_trip_with_step_padding():
    pytest.importorskip("sensor_msgs.msg")
    from sensor_msgs.msg import Image

    from centernet_ros.ros.conversions import bgr_to_image_msg, image_msg_to_array

    bgr = _bgr(5, 6)
    msg = bgr_to_image_msg(bgr)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 6, 18, "bgr8")
    np.testing.assert_array_equal(image_msg_to_array(msg).array, bgr)

    padded = Image()
    padded.height, padded.width, padded.encoding = 5, 6, "rgb8"
    data, padded.step = _with_padding(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 14)
    padded.data = array.array("B", data)
    raw = image_msg_to_array(padded)
    assert np.shares_memory(raw.array, np.frombuffer(padded.data, np.uint8))
    np.testing.assert_array_equal(to_bgr(raw), bgr)


def test_image_msg_16bit_big_endian_and_bayer():
    """``is_bigendian`` of the message picks the high byte; a Bayer message comes back as BGR."""
    pytest.importorskip("sensor_msgs.msg")
    from sensor_msgs.msg import Image

    from centernet_ros.ros.conversions import image_msg_to_array

    mono = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    msg = Image(height=4, width=6, encoding="mono16", is_bigendian=1, step=12)
    msg.data = array.array("B", ((mono.astype(np.uint16) << 8) | 0x77).astype(">u2").tobytes())
    np.testing.assert_array_equal(image_msg_to_array(msg).array[..., 0], mono)
    msg.is_bigendian = 0  # same bytes read little-endian: the low bytes
    assert (image_msg_to_array(msg).array == 0x77).all()

    bayer = Image(height=4, width=6, encoding="bayer_rggb8", step=6)
    tile = np.tile(np.array([[255, 0], [0, 0]], np.uint8), (2, 3))  # red sites only: a red frame
    bayer.data = array.array("B", tile.tobytes())
    raw = image_msg_to_array(bayer)
    assert raw.order == "bgr" and (raw.array[1:3, 1:5] == (0, 0, 255)).all()


def test_detections_to_msg_fields_and_empty():
    pytest.importorskip("vision_msgs.msg")
    from std_msgs.msg import Header

    from centernet_ros.ros.conversions import detections_to_msg

    header = Header(frame_id="cam0")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    empty = detections_to_msg(header, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    assert empty.header.frame_id == "cam0" and empty.header.stamp.sec == 12 and len(empty.detections) == 0

    boxes = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 4.0]])
    msg = detections_to_msg(header, boxes, np.array([0.9, 0.4]), np.array([3, 0]))
    assert len(msg.detections) == 2
    d0, d1 = msg.detections
    assert d0.header.stamp.nanosec == 345 and d0.header.frame_id == "cam0"
    assert (d0.bbox.center.position.x, d0.bbox.center.position.y) == (30.0, 50.0)
    assert (d0.bbox.size_x, d0.bbox.size_y, d0.bbox.center.theta) == (40.0, 60.0, 0.0)
    assert d0.results[0].hypothesis.class_id == "3" and d0.results[0].hypothesis.score == pytest.approx(0.9)
    assert (d1.bbox.center.position.x, d1.bbox.size_y, d1.results[0].hypothesis.class_id) == (2.5, 4.0, "0")


def test_label_info_msg():
    pytest.importorskip("vision_msgs.msg")
    from centernet_ros.ros.conversions import label_info_msg

    msg = label_info_msg(["car", "truck"], threshold=0.25)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "car"), (1, "truck")]
    assert msg.threshold == pytest.approx(0.25)
    assert len(label_info_msg([], threshold=0.0).class_map) == 0
