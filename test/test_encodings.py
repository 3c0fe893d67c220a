"""Camera encodings (issue 12 §4): each one built from a bgr8 frame of colour patches, read back, compared.

The encoders in test/imaging.py follow the format definitions (numpy, no OpenCV), so a swapped Bayer tile,
a swapped chroma order or the wrong byte of a 16-bit sample fails here: the saturated red, green and blue
patches turn into another colour.
"""
from __future__ import annotations

import array

import numpy as np
import pytest
from imaging import (
    patch_interiors,
    patches_bgr,
    rows_with_padding,
    to_16bit,
    to_bayer,
    to_nv,
    to_yuv422,
)

from centernet_ros.ros.conversions import ENCODINGS, ImageConversionError, decode_raw, to_bgr

BGR = patches_bgr()  # uint8[48, 64, 3]
H, W = BGR.shape[:2]
TILES = ["rggb", "bggr", "gbrg", "grbg"]


def _channels(bgr: np.ndarray, order: str) -> np.ndarray:
    """The 8-bit pixels of ``order`` ("rgb", "bgra", "mono", ...) for the BGR frame (alpha = a ramp)."""
    import cv2

    rgb_like = {"rgb": bgr[..., ::-1], "bgr": bgr}
    alpha = (np.arange(bgr.shape[0] * bgr.shape[1]) % 256).astype(np.uint8).reshape(bgr.shape[:2])
    if order == "mono":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None]
    if order in ("rgba", "bgra"):
        return np.dstack([rgb_like[order[:3]], alpha])
    return np.ascontiguousarray(rgb_like[order])


def _expected_bgr(order: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(_channels(BGR, "mono")[..., 0], cv2.COLOR_GRAY2BGR) if order == "mono" else BGR


# ---------------------------------------------------------------------------------------- 16-bit: views


@pytest.mark.parametrize("order", ["mono", "rgb", "bgr", "rgba", "bgra"])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_16bit_encodings_keep_the_high_byte_without_copying(order, bigendian, pad):
    pixels8 = _channels(BGR, order)
    data, step = rows_with_padding(to_16bit(pixels8), pad, bigendian=bigendian)
    buf = array.array("B", data)
    raw = decode_raw(buf, height=H, width=W, encoding=f"{order}16", step=step, is_bigendian=bigendian)
    assert raw.order == order and raw.array.dtype == np.uint8 and raw.array.shape == pixels8.shape
    np.testing.assert_array_equal(raw.array, pixels8)  # the high byte of every sample, exactly
    assert np.shares_memory(raw.array, np.frombuffer(buf, np.uint8))  # a view of the message, not a copy
    np.testing.assert_array_equal(to_bgr(raw), _expected_bgr(order))


def test_16bit_byte_order_matters():
    """Read with the wrong ``is_bigendian`` the frame comes out as the noise of the low bytes."""
    data, step = rows_with_padding(to_16bit(BGR), 0, bigendian=True)
    wrong = decode_raw(data, height=H, width=W, encoding="bgr16", step=step, is_bigendian=False)
    assert np.abs(wrong.array.astype(int) - BGR).mean() > 40


# ---------------------------------------------------------------------------------------- yuv


@pytest.mark.parametrize("encoding, order", [("yuv422", "uyvy"), ("uyvy", "uyvy"),
                                             ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
@pytest.mark.parametrize("pad", [0, 8])
def test_yuv422_matches_the_bgr_frame(encoding, order, pad):
    data, step = rows_with_padding(to_yuv422(BGR, order), pad)
    raw = decode_raw(data, height=H, width=W, encoding=encoding, step=step)
    assert raw.order == "bgr" and raw.array.shape == (H, W, 3)
    # Patches are 16 px wide, so no chroma pair straddles two of them: every pixel within rounding.
    assert np.abs(raw.array.astype(int) - BGR).max() <= 2


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
@pytest.mark.parametrize("pad", [0, 4])
def test_nv12_nv21_match_the_bgr_frame(encoding, pad):
    data, step = rows_with_padding(to_nv(BGR, encoding), pad)
    raw = decode_raw(data, height=H, width=W, encoding=encoding, step=step)
    assert raw.order == "bgr" and raw.array.shape == (H, W, 3)
    assert np.abs(raw.array.astype(int) - BGR).max() <= 2


def test_swapped_chroma_order_is_visible():
    """UYVY read as YUYV (or NV12 as NV21) turns the saturated patches into other colours."""
    uyvy, step = rows_with_padding(to_yuv422(BGR, "uyvy"), 0)
    assert np.abs(decode_raw(uyvy, height=H, width=W, encoding="yuyv", step=step).array.astype(int) - BGR).max() > 100
    nv12, step = rows_with_padding(to_nv(BGR, "nv12"), 0)
    assert np.abs(decode_raw(nv12, height=H, width=W, encoding="nv21", step=step).array.astype(int) - BGR).max() > 100


# ---------------------------------------------------------------------------------------- bayer


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pad", [0, 6])
def test_bayer_matches_the_bgr_frame(tile, bits, pad):
    mosaic = to_bayer(BGR, tile)
    samples = mosaic if bits == 8 else to_16bit(mosaic)
    data, step = rows_with_padding(samples, pad)
    raw = decode_raw(data, height=H, width=W, encoding=f"bayer_{tile}{bits}", step=step)
    assert raw.order == "bgr" and raw.array.shape == (H, W, 3)
    inner = patch_interiors(BGR.shape)  # demosaicing blends colours across patch edges: compare inside
    assert np.abs(raw.array.astype(int) - BGR)[inner].max() <= 1
    for k, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):  # the saturated patches: R, G, B
        centre = raw.array[8, 16 * k + 8]
        assert tuple(int(c) for c in centre) == colour, (tile, k, centre)


@pytest.mark.parametrize("tile", TILES)
def test_bayer_tile_orientation_is_checked(tile):
    """Each mosaic read with any of the three other tiles gets a primary patch wrong by a full 255."""
    data = to_bayer(BGR, tile).tobytes()
    for other in TILES:
        if other != tile:
            raw = decode_raw(data, height=H, width=W, encoding=f"bayer_{other}8", step=W)
            assert np.abs(raw.array.astype(int) - BGR)[patch_interiors(BGR.shape)].max() == 255


def test_bayer16_big_endian():
    data, step = rows_with_padding(to_16bit(to_bayer(BGR, "grbg")), 0, bigendian=True)
    raw = decode_raw(data, height=H, width=W, encoding="bayer_grbg16", step=step, is_bigendian=True)
    assert np.abs(raw.array.astype(int) - BGR)[patch_interiors(BGR.shape)].max() <= 1


# ---------------------------------------------------------------------------------------- coverage, refusals


CAMERA_ENCODINGS = (
    [f"{o}{b}" for o in ("rgb", "bgr", "rgba", "bgra", "mono") for b in (8, 16)]
    + ["8UC1", "8UC3", "8UC4", "yuv422", "uyvy", "yuv422_yuy2", "yuyv", "nv12", "nv21"]
    + [f"bayer_{t}{b}" for t in TILES for b in (8, 16)]
)


def test_every_accepted_encoding_is_listed_and_tested():
    assert {e.lower() for e in CAMERA_ENCODINGS} == set(ENCODINGS)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "64FC1", "16SC1", "8UC2", "32FC3"])
def test_depth_and_float_encodings_are_refused_with_a_reason(encoding):
    with pytest.raises(ImageConversionError, match=f"unsupported encoding '{encoding}': a depth, float"):
        decode_raw(b"\x00" * 64, height=2, width=2, encoding=encoding, step=16)


@pytest.mark.parametrize(
    "kwargs, size, reason",
    [
        (dict(height=2, width=3, encoding="yuv422", step=6), 12, "even width"),
        (dict(height=3, width=4, encoding="nv12", step=4), 18, "even height"),
        (dict(height=2, width=4, encoding="nv21", step=4), 11, r"truncated.*need 12"),
        (dict(height=2, width=4, encoding="yuyv", step=7), 16, "step 7 is shorter"),
        (dict(height=2, width=2, encoding="mono16", step=3), 8, "step 3 is shorter"),
        (dict(height=2, width=2, encoding="bayer_rggb16", step=4), 7, "truncated"),
        (dict(height=2, width=2, encoding="nv24", step=2), 12, "unsupported encoding 'nv24'"),
    ],
)
def test_bad_geometry_is_refused(kwargs, size, reason):
    with pytest.raises(ImageConversionError, match=reason):
        decode_raw(bytes(size), **kwargs)


def test_a_huge_encoding_string_is_bounded_in_the_reason():
    with pytest.raises(ImageConversionError) as info:
        decode_raw(b"\x00" * 12, height=2, width=2, encoding="x" * 1_000_000, step=6)
    reason = str(info.value)
    assert len(reason) < 400 and "1000000 chars" in reason and "\n" not in reason
    with pytest.raises(ImageConversionError) as info:  # control characters are escaped: one line
        decode_raw(b"\x00" * 12, height=2, width=2, encoding="rgb8\n[ERROR] forged", step=6)
    assert "\n" not in str(info.value) and "\\n" in str(info.value)
