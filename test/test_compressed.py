"""CompressedImage decoding: stored pixels (EXIF ignored), JPEG/PNG only, size limit before decoding
(decompression bombs), precise reasons for damaged PNGs, and no decoder chatter on stderr.

Issue 12 §1, issue 13 items 1 and 5. Inputs are built in the test (test/imaging.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from imaging import bmp_rle8_bomb, png_zero_bomb, with_exif_orientation

from centernet_ros.ros.conversions import (
    MAX_PIXELS,
    ImageConversionError,
    bounded,
    check_compressed,
    decode_compressed,
)

ROOT = Path(__file__).resolve().parents[1]


def _frame(h: int = 360, w: int = 640) -> np.ndarray:
    """A smooth BGR test picture with an asymmetric layout (a rotation would move every feature)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.dstack([(x * 255 // w), (y * 255 // h), ((x + 2 * y) % 256)]).astype(np.uint8)
    img[20:80, 30:200] = (0, 0, 255)
    return img


def _encode(img: np.ndarray, ext: str, *params: int) -> bytes:
    ok, enc = cv2.imencode(ext, img, list(params))
    assert ok
    return enc.tobytes()


def _msg(data: bytes):
    """A CompressedImage when the ROS message package is there, else the bytes (same decoder behind it)."""
    try:
        from sensor_msgs.msg import CompressedImage
    except ImportError:
        return None
    msg = CompressedImage()
    msg.format = "jpeg"
    msg.data = data
    return msg


# ------------------------------------------------------------------------------- EXIF orientation


def test_exif_orientation_is_not_applied():
    jpeg = _encode(_frame(), ".jpg")
    rotated_by_exif = with_exif_orientation(jpeg, 6)
    # The EXIF block works: a plain OpenCV decode turns the 640x360 frame into a 360x640 one.
    assert cv2.imdecode(np.frombuffer(rotated_by_exif, np.uint8), cv2.IMREAD_COLOR).shape == (640, 360, 3)
    plain = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)

    msg = _msg(rotated_by_exif)
    if msg is not None:
        from centernet_ros.ros.conversions import compressed_msg_to_array

        raw = compressed_msg_to_array(msg)
    else:
        raw = decode_compressed(rotated_by_exif)
    assert raw.array.shape == (360, 640, 3) and raw.order == "bgr"
    np.testing.assert_array_equal(raw.array, plain)


# ------------------------------------------------------------------------------- formats and headers


@pytest.mark.parametrize(
    "name, img, ext, params",
    [
        ("baseline", _frame(), ".jpg", ()),
        ("progressive", _frame(), ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        ("restart markers", _frame(101, 67), ".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)),
        ("grey", _frame()[..., 0], ".jpg", ()),
        ("png rgb", _frame(37, 53), ".png", ()),
        ("png grey 16-bit", (_frame(30, 20)[..., 0].astype(np.uint16) * 257), ".png", ()),
    ],
)
def test_header_size_agrees_with_the_decoder(name, img, ext, params):
    data = _encode(img, ext, *params)
    fmt, w, h = check_compressed(data)
    assert fmt == ("png" if ext == ".png" else "jpeg")
    decoded = decode_compressed(data).array
    assert (w, h) == (img.shape[1], img.shape[0]) == (decoded.shape[1], decoded.shape[0])


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".webp", ".ppm"])
def test_formats_other_than_jpeg_and_png_are_refused(ext):
    data = _encode(_frame(24, 32), ext)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV would decode it
    with pytest.raises(ImageConversionError, match="not a JPEG or PNG"):
        decode_compressed(data)


def test_compressed_depth_payload_is_refused():
    """compressedDepth puts a 12-byte header before its PNG: not an image for this node."""
    png = _encode(np.zeros((8, 8), np.uint16), ".png")
    with pytest.raises(ImageConversionError, match="not a JPEG or PNG"):
        decode_compressed(b"\x00" * 12 + png)


def test_max_pixels_is_the_limit():
    jpeg = _encode(_frame(), ".jpg")
    assert decode_compressed(jpeg, max_pixels=640 * 360).array.shape == (360, 640, 3)
    with pytest.raises(ImageConversionError, match=r"declares 640x360 = 230400 pixels, above the limit of 230399"):
        decode_compressed(jpeg, max_pixels=640 * 360 - 1)
    with pytest.raises(ValueError, match="max_pixels must be a positive number of pixels, got 0"):
        decode_compressed(jpeg, max_pixels=0)
    assert MAX_PIXELS >= 7680 * 4320  # well above 4K video: 8K UHD passes


def test_a_jpeg_declaring_a_huge_frame_is_refused_before_decoding():
    data = bytearray(_encode(_frame(32, 32), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # height, width
    with pytest.raises(ImageConversionError, match="jpeg declares 60000x60000"):
        decode_compressed(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[:-20], "truncated png: chunk 'IEND'|truncated png: chunk IEND|truncated png"),
        (lambda b: b[:60], r"truncated png: chunk IDAT at byte \d+ needs"),
        (lambda b: b[:-30] + bytes([b[-30] ^ 0x10]) + b[-29:], "chunk IDAT at byte 33 fails its CRC"),
        (lambda b: b[:8] + b[33:], "first chunk is IDAT"),
    ],
)
def test_damaged_png_gets_a_precise_reason(damage, reason):
    png = _encode(_frame(40, 40), ".png")
    with pytest.raises(ImageConversionError, match=reason):
        decode_compressed(damage(png))


# ------------------------------------------------------------------------------- decompression bombs

# Peak memory of the script's own process: VmHWM (the high-water mark of the address space made at exec).
# Not getrusage's ru_maxrss: Linux carries that over from the parent through fork/vfork and exec, so it
# reads the pytest process's peak (1.5 GB late in a full run) instead of the script's (~50 MB).
_BOMB_SCRIPT = textwrap.dedent("""
    import json, re, sys, time
    sys.path.insert(0, sys.argv[1])
    from imaging import bmp_rle8_bomb, png_zero_bomb
    from centernet_ros.ros.conversions import ImageConversionError, compressed_msg_to_array, decode_compressed
    try:
        from sensor_msgs.msg import CompressedImage
    except ImportError:
        CompressedImage = None
    out = {}
    for name, data in (("png", png_zero_bomb()), ("bmp", bmp_rle8_bomb())):
        t = time.perf_counter()
        try:
            if CompressedImage is not None:
                msg = CompressedImage(format=name, data=data)
                compressed_msg_to_array(msg)
            else:
                decode_compressed(data)
            reason = None
        except ImageConversionError as exc:
            reason = str(exc)
        out[name] = {"bytes": len(data), "reason": reason, "seconds": time.perf_counter() - t}
    with open("/proc/self/status") as f:
        out["peak_rss_kib"] = int(re.search(r"^VmHWM:\\s*(\\d+) kB", f.read(), flags=re.M).group(1))
    print(json.dumps(out))
""")


def test_decompression_bombs_are_refused_quickly_in_bounded_memory():
    # The builder makes real PNGs: a small one decodes to zeros of the declared size.
    small = cv2.imdecode(np.frombuffer(png_zero_bomb(300, 200, 50), np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (200, 300) and not small.any()
    res = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert 850_000 < out["png"]["bytes"] < 900_000 and out["bmp"]["bytes"] == 1080
    assert out["png"]["reason"] == ("png declares 30000x30000 = 900000000 pixels, above the limit of "
                                    f"{MAX_PIXELS} (max_pixels)")
    assert out["bmp"]["reason"].startswith("not a JPEG or PNG (first bytes 42 4d")
    assert out["png"]["seconds"] < 1.0 and out["bmp"]["seconds"] < 1.0  # decoding took 9-14 s
    # issue 13: memory stays under 1 GB (decoding the PNG bomb alone needs 900 MB, the node reached 5.8 GB);
    # the script's peak is its imports' (~50 MB)
    assert out["peak_rss_kib"] < 1024 * 1024, out


# ------------------------------------------------------------------------------- decoder chatter on stderr

# The same damaged inputs three ways: "plain" cv2.imdecode (libpng/libjpeg print from C), "pillow"
# (PIL.Image.open: its codecs are silent, its Python warnings are not), "checked" (decode_compressed).
_NOISE_SCRIPT = textwrap.dedent("""
    import io, os, struct, sys, threading, time, zlib
    import cv2, numpy as np
    mode = sys.argv[1]
    if mode == "checked":
        from centernet_ros.ros.conversions import ImageConversionError, decode_compressed
    sys.setswitchinterval(1e-4)  # the other thread gets to run while a frame is decoded
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (5, 5), 0)
    png = cv2.imencode(".png", img)[1].tobytes()
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    bad = [png[: int(rng.integers(40, len(png) - 1))] for _ in range(50)]  # truncated PNGs
    idat = png.index(b"IDAT")
    n = int.from_bytes(png[idat - 4:idat], "big")
    for _ in range(50):  # damaged image data inside a PNG with valid CRCs: reaches the decoder
        body = bytearray(png[idat + 4:idat + 4 + n])
        for _ in range(3):
            body[int(rng.integers(2, n))] ^= 1 << int(rng.integers(0, 8))
        crc = zlib.crc32(b"IDAT" + bytes(body)).to_bytes(4, "big")
        bad.append(png[:idat + 4] + bytes(body) + crc + png[idat + 8 + n:])
    for _ in range(50):  # damaged entropy-coded data inside a JPEG: reaches the decoder
        body = bytearray(jpeg)
        for _ in range(3):
            body[int(rng.integers(len(jpeg) // 2, len(jpeg) - 2))] ^= 1 << int(rng.integers(0, 8))
        bad.append(bytes(body))
    bad += [jpeg[: int(rng.integers(len(jpeg) // 2, len(jpeg) - 2))] for _ in range(10)]  # truncated JPEGs
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 100, 4096) + struct.pack("<I", 0)
    exif = b"Exif\\x00\\x00II*\\x00" + struct.pack("<I", 8) + ifd  # a Make tag pointing past the block
    odd = [jpeg[:2] + b"\\xff\\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:],  # Pillow warns
           png[:33] + chunk(b"acTL", bytes(8)) + png[33:]]  # an APNG control chunk of 0 frames: Pillow warns
    stop = threading.Event()
    ticks = []
    def chatter():  # another thread logging while images are decoded: its lines must all arrive
        while not stop.is_set():
            ticks.append(1)
            os.write(2, b"[INFO] [0.0] [other_thread]: tick %d\\n" % len(ticks))
            time.sleep(0.0001)
    t = threading.Thread(target=chatter)
    t.start()
    rejected = odd_rejected = during = 0
    for i, data in enumerate(bad + odd):
        before = len(ticks)
        if mode == "plain":
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        elif mode == "pillow":
            from PIL import Image
            try:
                Image.open(io.BytesIO(data)).convert("RGB")
            except Exception:
                pass
        else:
            try:
                decode_compressed(data)
            except ImageConversionError as exc:
                sys.stderr.write(f"[ERROR] [0.0] [node]: after tick {len(ticks)} rejected a frame: {exc}\\n")
                sys.stderr.flush()
                rejected += 1
                odd_rejected += i >= len(bad)
        during += len(ticks) - before
    stop.set()
    t.join()
    print(len(bad), len(odd), rejected, odd_rejected, len(ticks), during)
""")


def _run_noise(mode: str) -> tuple[list[int], list[str]]:
    res = subprocess.run([sys.executable, "-c", _NOISE_SCRIPT, mode], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    return [int(v) for v in res.stdout.split()], res.stderr.splitlines()


def _tick(line: str) -> int | None:
    prefix = "[INFO] [0.0] [other_thread]: tick "
    return int(line[len(prefix):]) if line.startswith(prefix) and line[len(prefix):].isdigit() else None


def test_decoders_print_nothing_and_other_lines_survive():
    # Controls: OpenCV's decoders print from C on these inputs; Pillow's codecs do not, but two odd
    # inputs make Pillow warn (through the warnings module).
    (n_bad, n_odd, *_), lines = _run_noise("plain")
    decoder_lines = [ln for ln in lines if _tick(ln) is None]
    assert n_bad == 160 and n_odd == 2 and len(decoder_lines) >= 50, decoder_lines[:5]
    assert any(ln.startswith("libpng error") for ln in decoder_lines)
    assert any(ln.startswith("Corrupt JPEG data") for ln in decoder_lines)
    _, lines = _run_noise("pillow")
    warned = [ln for ln in lines if "UserWarning" in ln]
    assert any("EXIF" in ln or "Tag data" in ln for ln in warned) and any("APNG" in ln for ln in warned), lines[-8:]

    (n_bad, n_odd, rejected, odd_rejected, ticks, during), lines = _run_noise("checked")
    node = [ln for ln in lines if ln.startswith("[ERROR] [0.0] [node]: after tick ")]
    other = [_tick(ln) for ln in lines if _tick(ln) is not None]
    # nothing but the two threads' own lines, each whole: no decoder line, no warning
    assert len(lines) == len(node) + len(other), [ln for ln in lines if _tick(ln) is None and ln not in node][:5]
    assert 100 <= rejected <= n_bad and len(node) == rejected  # the damaged PNGs and truncated JPEGs at least
    assert odd_rejected == 0  # the two that make Pillow warn are images: decoded, silently
    assert any("truncated jpeg" in ln for ln in node) and any("corrupt or unsupported png" in ln for ln in node)
    # the other thread wrote while frames were decoded, and every line of it arrived, in order, on time
    assert during > 0 and other == list(range(1, ticks + 1))
    pos = {tick: i for i, tick in enumerate(_tick(ln) for ln in lines) if tick is not None}
    for i, ln in enumerate(lines):
        if ln.startswith("[ERROR] [0.0] [node]: "):  # tick k-1 was written before the line quoting k
            k = int(ln.split("after tick ", 1)[1].split(" ", 1)[0])
            assert k <= 1 or pos[k - 1] < i, ln


# ------------------------------------------------------------------------------- bounded strings


def test_bounded():
    assert bounded("rgb8") == "rgb8"
    assert bounded("x" * 200) == "x" * 200
    long = bounded("y" * 1_000_000)
    assert len(long) == 200 and long.endswith("...[1000000 chars]") and long.startswith("y" * 150)
    assert len(bounded("z" * 50, limit=10)) == 10
    assert bounded(12345, limit=3) == "123"
    with pytest.raises(ValueError, match="limit must be positive, got 0"):
        bounded("a", limit=0)
