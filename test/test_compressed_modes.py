"""CompressedImage decoding (Pillow) gives what ``cv2.imdecode(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)``
gives, for every Pillow mode a JPEG or PNG opens in; Pillow's own bomb limit and warnings stay out of the
way; a damaged payload is an ``ImageConversionError``, never a Pillow exception.

Issue 13 item 5. PNGs are written here from the specification (numpy + zlib, every colour type, bit depth,
tRNS, Adam7), independently of both decoders; JPEGs with OpenCV and Pillow.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from centernet_ros.ros import image_decode
from centernet_ros.ros.conversions import ImageConversionError, decode_compressed

FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
RNG = np.random.default_rng(7)
ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(samples: np.ndarray, color_type: int, depth: int, *, plte: bytes | None = None,
         trns: bytes | None = None, interlace: bool = False) -> bytes:
    """A PNG of ``samples`` (``uint[H, W, C]``, C per colour type; palette indices for type 3), filter 0."""
    h, w = samples.shape[:2]
    s = samples.reshape(h, w, CHANNELS[color_type]).astype(np.uint32)

    def scanlines(sub: np.ndarray) -> bytes:
        if depth == 16:
            rows = sub.astype(">u2").reshape(sub.shape[0], -1).view(np.uint8)
        elif depth == 8:
            rows = sub.astype(np.uint8).reshape(sub.shape[0], -1)
        else:  # 1, 2, 4 bits: one sample per pixel, packed from the most significant bit
            per = 8 // depth
            v = np.pad(sub[..., 0], ((0, 0), (0, -sub.shape[1] % per)))
            v = v.reshape(sub.shape[0], -1, per) << (np.arange(per - 1, -1, -1) * depth).astype(np.uint32)
            rows = v.sum(-1).astype(np.uint8)
        return b"".join(b"\x00" + r.tobytes() for r in rows)

    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b"".join(scanlines(s[r0::dr, c0::dc]) for r0, c0, dr, dc in passes if s[r0::dr, c0::dc].size)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + (_chunk(b"PLTE", plte) if plte else b"")
            + (_chunk(b"tRNS", trns) if trns else b"") + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _recrc(png: bytes) -> bytes:
    """``png`` with the CRC of every chunk recomputed (as far as the chunk lengths lead)."""
    out, pos = bytearray(png), 8
    while pos + 12 <= len(out):
        end = pos + 12 + int.from_bytes(out[pos:pos + 4], "big")
        if end > len(out):
            break
        out[end - 4:end] = struct.pack(">I", zlib.crc32(out[pos + 4:end - 4]))
        pos = end
    return bytes(out)


def _noise(h: int, w: int, c: int, depth: int) -> np.ndarray:
    return RNG.integers(0, 1 << depth, (h, w, c), dtype=np.uint32)


def _frame(h: int = 45, w: int = 61) -> np.ndarray:
    """A smooth BGR picture (JPEG inputs)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([(x * 255 // w), (y * 255 // h), ((x + 2 * y) % 256)]).astype(np.uint8)


def _pillow_jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **kw)
    return out.getvalue()


_PAL = RNG.integers(0, 256, 256 * 3, dtype=np.uint8).tobytes()
_CMYK = np.dstack([_frame(), RNG.integers(0, 256, (45, 61, 1), dtype=np.uint8)])
CASES = [  # name, payload, the mode Pillow opens it in (each branch of the conversion is exercised)
    ("jpeg 4:2:0", cv2.imencode(".jpg", _frame())[1].tobytes(), "RGB"),
    ("jpeg 4:4:4 progressive", cv2.imencode(".jpg", _frame(), [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111,
                                                               cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), "RGB"),
    ("jpeg grey", cv2.imencode(".jpg", _frame()[..., 1])[1].tobytes(), "L"),
    ("jpeg cmyk (adobe)", _pillow_jpeg(Image.fromarray(_CMYK, "CMYK"), quality=95), "CMYK"),
    ("png grey 1-bit", _png(_noise(13, 19, 1, 1), 0, 1), "1"),
    ("png grey 2-bit", _png(_noise(13, 19, 1, 2), 0, 2), "L"),
    ("png grey 4-bit", _png(_noise(13, 19, 1, 4), 0, 4), "L"),
    ("png grey 8-bit + tRNS", _png(_noise(13, 19, 1, 8), 0, 8, trns=b"\x00\x07"), "L"),
    ("png grey 16-bit", _png(_noise(13, 19, 1, 16), 0, 16), "I;16"),
    ("png grey 16-bit + tRNS, Adam7", _png(_noise(13, 19, 1, 16), 0, 16, trns=b"\x01\x02", interlace=True), "I;16"),
    ("png grey+alpha 8-bit", _png(_noise(13, 19, 2, 8), 4, 8), "LA"),
    ("png grey+alpha 16-bit", _png(_noise(13, 19, 2, 16), 4, 16), "RGBA"),
    ("png rgb 8-bit + tRNS", _png(_noise(13, 19, 3, 8), 2, 8, trns=b"\x00\x01\x00\x02\x00\x03"), "RGB"),
    ("png rgb 8-bit, Adam7", _png(_noise(13, 19, 3, 8), 2, 8, interlace=True), "RGB"),
    ("png rgb 16-bit", _png(_noise(13, 19, 3, 16), 2, 16), "RGB"),
    ("png rgba 8-bit", _png(_noise(13, 19, 4, 8), 6, 8), "RGBA"),
    ("png rgba 16-bit", _png(_noise(13, 19, 4, 16), 6, 16), "RGBA"),
    ("png palette 1-bit", _png(_noise(13, 19, 1, 1), 3, 1, plte=_PAL[:6]), "P"),
    ("png palette 2-bit, Adam7", _png(_noise(13, 19, 1, 2), 3, 2, plte=_PAL[:12], interlace=True), "P"),
    ("png palette 4-bit", _png(_noise(13, 19, 1, 4), 3, 4, plte=_PAL[:48]), "P"),
    ("png palette 8-bit + tRNS", _png(_noise(13, 19, 1, 8), 3, 8, plte=_PAL, trns=bytes(range(0, 256, 2))), "P"),
]


@pytest.mark.parametrize("name, data, mode", CASES, ids=[c[0] for c in CASES])
def test_decode_equals_opencv_for_every_mode(name, data, mode):
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), FLAGS)
    raw = decode_compressed(data)
    assert raw.order == "bgr" and raw.array.dtype == np.uint8 and raw.array.shape == expected.shape
    assert raw.array.flags.c_contiguous and raw.array.flags.writeable
    np.testing.assert_array_equal(raw.array, expected)


def test_16_bit_grey_keeps_the_high_byte_not_pillows_clipped_value():
    grey = np.array([[0, 255, 256, 0x1234, 0xFF00, 0xFFFF]], np.uint32)[..., None]
    out = decode_compressed(_png(grey, 0, 16)).array
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 0x12, 0xFF, 0xFF])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_palette_indices_past_the_palette_are_black():
    idx = np.arange(16, dtype=np.uint32).reshape(2, 8, 1)
    data = _png(idx, 3, 4, plte=_PAL[:12])  # 4 entries, indices 4-15 refer to none
    out = decode_compressed(data).array
    np.testing.assert_array_equal(out.reshape(-1, 3)[:4], np.frombuffer(_PAL[:12], np.uint8).reshape(4, 3)[:, ::-1])
    assert not out.reshape(-1, 3)[4:].any()


@pytest.mark.parametrize("mode", ["I", "I;16B", "PA"])
def test_modes_other_pillow_versions_may_give(mode):
    """This Pillow opens 16-bit grey PNGs as I;16 and never gives PA; older and newer ones may."""
    grey = np.array([[0, 256, 0x1234, 0xFFFF]], np.uint16)
    if mode == "PA":
        im = Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8), "L").convert("P")
        im.putpalette(_PAL[:12])
        im = im.convert("PA")
        expected = np.frombuffer(_PAL[:12], np.uint8).reshape(1, 4, 3)[..., ::-1]
    else:
        im = Image.frombytes(mode, (4, 1), grey.astype(">u2").tobytes()) if mode == "I;16B" else \
            Image.fromarray(grey.astype(np.int32))
        expected = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert im.mode == mode
    np.testing.assert_array_equal(image_decode._to_bgr(im), expected)


def test_pillows_own_bomb_limit_is_not_in_the_way(monkeypatch):
    jpeg, png = cv2.imencode(".jpg", _frame())[1].tobytes(), _png(_noise(45, 61, 3, 8), 2, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 45x61 = 2745 pixels: above twice the limit
    with pytest.raises(Image.DecompressionBombError):  # control: PIL.Image.open applies it
        Image.open(io.BytesIO(jpeg))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert decode_compressed(jpeg).array.shape == decode_compressed(png).array.shape == (45, 61, 3)
    assert not seen, [str(w.message) for w in seen]


def test_a_jpeg_whose_frame_headers_disagree_is_refused():
    """The size check reads the first frame header; a second, larger one must not be decoded past it."""
    jpeg = cv2.imencode(".jpg", _frame())[1].tobytes()
    sof = jpeg.index(b"\xff\xc0")
    length = int.from_bytes(jpeg[sof + 2:sof + 4], "big")
    small = bytearray(jpeg[sof:sof + 2 + length])
    small[5:9] = (8).to_bytes(2, "big") + (8).to_bytes(2, "big")  # an 8x8 frame header in front
    with pytest.raises(ImageConversionError, match=r"corrupt jpeg: frame headers disagree \(8x8 and 61x45\)"):
        decode_compressed(jpeg[:sof] + bytes(small) + jpeg[sof:])


def test_a_truncated_jpeg_is_refused():
    jpeg = cv2.imencode(".jpg", _frame(120, 160))[1].tobytes()
    cut = jpeg[: len(jpeg) * 2 // 3]
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), FLAGS) is None  # OpenCV 5 refuses it too
    with pytest.raises(ImageConversionError, match=r"^truncated jpeg: "):
        decode_compressed(cut)


def test_damaged_payloads_never_raise_anything_else():
    """Bytes flipped all over headers and data: a BGR image or ImageConversionError, with a bounded reason."""
    rng = np.random.default_rng(11)
    seeds = [cv2.imencode(".jpg", _frame())[1].tobytes(), cv2.imencode(".png", _frame())[1].tobytes(),
             _png(_noise(9, 11, 1, 4), 3, 4, plte=_PAL[:48]), _png(_noise(9, 11, 2, 16), 4, 16, interlace=True)]
    outcomes = {"decoded": 0, "refused": 0}
    for k in range(400):
        data = bytearray(seeds[k % len(seeds)])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(2, min(len(data), 200)))  # mostly the headers: Pillow's parsers
            data[pos] = int(rng.integers(0, 256))
        if data[:4] == b"\x89PNG":  # past the CRC check: reaches Pillow's PNG parser and inflater
            data = bytearray(_recrc(bytes(data)))
        try:
            out = decode_compressed(bytes(data)).array
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
            outcomes["decoded"] += 1
        except ImageConversionError as exc:
            assert len(str(exc)) <= 260, str(exc)
            outcomes["refused"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes
