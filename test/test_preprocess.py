"""letterbox against a per-image numpy/OpenCV reference; parameters and box mappings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from centernet_ros.preprocess import (
    MEAN,
    STD,
    boxes_to_input,
    boxes_to_original,
    letterbox,
    letterbox_params,
)

from devices import DEVICES  # noqa: E402
VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "slow_traffic_small.mp4"


def rand_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def reference_letterbox(img: np.ndarray, size, bgr: bool, pad=0.0) -> tuple[np.ndarray, float, int, int]:
    """One image: per-image torch bilinear resize, numpy placement and normalisation."""
    H, W = size
    h, w = img.shape[:2]
    s = min(H / h, W / w)
    nh, nw = int(round(h * s)), int(round(w * s))
    ox, oy = (W - nw) // 2, (H - nh) // 2
    rgb = img[..., ::-1] if bgr else img
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0].numpy()
    canvas = np.full((3, H, W), pad, dtype=np.float32)
    canvas[:, oy : oy + nh, ox : ox + nw] = x
    mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]
    return (canvas / 255.0 - mean) / std, s, ox, oy


def grey_levels(x) -> np.ndarray:
    """Normalised ``(3, H, W)`` RGB (tensor or array) back to 0-255 grey levels."""
    x = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
    return (x * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]) * 255.0


def assert_within_levels(got, ref, levels: float):
    """``got`` and ``ref`` normalised images differ by at most ``levels`` grey levels (+ float rounding)."""
    assert np.abs(grey_levels(got) - grey_levels(ref)).max() <= levels + 1e-3


def test_letterbox_params_640x360_to_512():
    p = letterbox_params([(360, 640), (512, 512), (600, 300)], (512, 512))
    assert p.scale.tolist() == pytest.approx([0.8, 1.0, 512 / 600])
    assert p.offset.tolist() == [[0.0, 112.0], [0.0, 0.0], [128.0, 0.0]]
    assert p.orig_size.tolist() == [[360.0, 640.0], [512.0, 512.0], [600.0, 300.0]]
    q = letterbox_params(torch.tensor([[360, 640]]), (512, 512))
    assert torch.equal(q.offset, p.offset[:1]) and torch.equal(q.scale, p.scale[:1])
    empty = letterbox_params([], (512, 512))
    assert empty.scale.shape == (0,) and empty.offset.shape == (0, 2) and empty.orig_size.shape == (0, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bgr", [False, True])
def test_letterbox_mixed_sizes_matches_reference(device, bgr):
    rng = np.random.default_rng(0)
    imgs = [rand_image(rng, 45, 80), rand_image(rng, 64, 64), rand_image(rng, 45, 80), rand_image(rng, 100, 30)]
    size = (64, 96)
    x, p = letterbox([torch.from_numpy(i).to(device) for i in imgs], size=size, bgr=bgr, pad_value=114)
    assert x.shape == (4, 3, 64, 96) and x.dtype == torch.float32 and x.device.type == torch.device(device).type
    for b, img in enumerate(imgs):
        ref, s, ox, oy = reference_letterbox(img, size, bgr, pad=114.0)
        if device == "cpu":  # the CPU resizes the uint8 pixels: whole grey levels, <= 1 level off
            assert_within_levels(x[b], ref, 1.0)
        else:
            np.testing.assert_allclose(x[b].cpu().numpy(), ref, atol=1e-4)
        assert p.scale[b].item() == pytest.approx(s)
        assert p.offset[b].tolist() == [ox, oy]
        assert p.orig_size[b].tolist() == list(img.shape[:2])


def test_letterbox_colour_order_padding_and_identity():
    rng = np.random.default_rng(1)
    img = rand_image(rng, 32, 48)
    rgb, _ = letterbox([torch.from_numpy(img)], size=(32, 48), bgr=False)
    bgr, _ = letterbox([torch.from_numpy(np.ascontiguousarray(img[..., ::-1]))], size=(32, 48), bgr=True)
    assert torch.equal(rgb, bgr)
    # same size: no resize, plain normalisation of the pixels
    expect = (img.transpose(2, 0, 1) / 255.0 - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    np.testing.assert_allclose(rgb[0].numpy(), expect, atol=1e-5)
    # wide image in a square canvas: top/bottom rows are padding with the normalised pad colour
    x, p = letterbox([torch.from_numpy(img)], size=(64, 64), bgr=False, pad_value=(0, 128, 255))
    assert p.offset[0].tolist() == [0.0, 10.0]  # 32 * 4/3 -> 43 rows, (64 - 43) // 2 = 10
    pad = (np.array([0, 128, 255]) / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[0, :, :10].numpy(), np.broadcast_to(pad[:, None, None], (3, 10, 64)), atol=1e-5)
    np.testing.assert_allclose(x[0, :, 10 + 43 :].numpy(), np.broadcast_to(pad[:, None, None], (3, 11, 64)), atol=1e-5)
    for row in (10, 52):  # first and last image rows are not padding
        assert not np.allclose(x[0, :, row].numpy(), pad[:, None])


def test_letterbox_stacked_equals_list_and_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    # smooth image so bilinear implementations agree closely
    yy, xx = np.mgrid[0:90, 0:160]
    base = np.stack([xx * 1.5, yy * 2.5, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    imgs = np.stack([base, base[::-1].copy()])
    a, pa = letterbox(torch.from_numpy(imgs), size=(128, 128), bgr=False)
    b, pb = letterbox([torch.from_numpy(i) for i in imgs], size=(128, 128), bgr=False)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(pa, pb))
    c, _ = letterbox(imgs, size=(128, 128), bgr=False)  # numpy batch
    assert torch.equal(a, c)
    # OpenCV resize of the same image, normalised: same picture up to bilinear rounding
    nh, nw = 72, 128
    ref = cv2.resize(base, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    ref = ((ref / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    oy = int(pa.offset[0, 1])
    assert oy == 28
    assert np.abs(a[0, :, oy : oy + nh].numpy() - ref).mean() < 0.02


@pytest.mark.parametrize("bgr", [False, True])
@pytest.mark.parametrize("hw,size", [((720, 1280), (320, 320)), ((360, 640), (512, 512)), ((37, 53), (96, 128))])
def test_letterbox_within_one_grey_level_of_opencv_and_float_resize(bgr, hw, size):
    """Down- and up-scaling of random (worst-case) pixels: at most 1 grey level from
    cv2.resize(INTER_LINEAR) and from torch's float bilinear resize."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(4)
    img = rand_image(rng, *hw)
    x, p = letterbox([torch.from_numpy(img)], size=size, bgr=bgr)
    ref, s, ox, oy = reference_letterbox(img, size, bgr)
    assert_within_levels(x[0], ref, 1.0)
    nh, nw = round(hw[0] * s), round(hw[1] * s)
    cv = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    cv = (cv[..., ::-1] if bgr else cv).transpose(2, 0, 1).astype(np.float64)
    got = grey_levels(x[0, :, oy : oy + nh, ox : ox + nw])
    assert np.abs(got - cv).max() <= 1.0 + 1e-3
    assert np.abs(got - np.round(got)).max() < 1e-3  # whole grey levels


def test_letterbox_dtype_channels_last_and_device_argument():
    rng = np.random.default_rng(3)
    imgs = [torch.from_numpy(rand_image(rng, 20, 30)) for _ in range(2)]
    ref, _ = letterbox(imgs, size=(32, 32), bgr=True)
    half, _ = letterbox(imgs, size=(32, 32), bgr=True, dtype=torch.float16, channels_last=True, device="cpu")
    assert half.dtype == torch.float16
    assert half.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(half.float(), ref, atol=1e-2)


def test_letterbox_empty_and_validation():
    x, p = letterbox([], size=(32, 64), bgr=False)
    assert x.shape == (0, 3, 32, 64) and p.scale.shape == (0,)
    x, p = letterbox(torch.zeros(0, 10, 10, 3, dtype=torch.uint8), size=(32, 64), bgr=False)
    assert x.shape == (0, 3, 32, 64) and p.offset.shape == (0, 2)
    with pytest.raises(ValueError, match="float32"):
        letterbox([torch.zeros(4, 4, 3)], size=(8, 8), bgr=False)
    with pytest.raises(ValueError, match=r"\(0, 8\)"):
        letterbox([torch.zeros(4, 4, 3, dtype=torch.uint8)], size=(0, 8), bgr=False)
    with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
        letterbox([torch.zeros(4, 4, 4, dtype=torch.uint8)], size=(8, 8), bgr=False)
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        letterbox([torch.zeros(4, 4, 3, dtype=torch.uint8)], size=(8, 8), bgr=False, pad_value=(1, 2))


def test_box_mappings_round_trip_and_clip():
    p = letterbox_params([(360, 640), (600, 300)], (512, 512))
    boxes = torch.tensor([[[10.0, 20.0, 300.0, 350.0]], [[0.0, 0.0, 300.0, 600.0]]])  # (B, N, 4)
    inp = boxes_to_input(boxes, p.scale, p.offset)
    assert inp[0, 0].tolist() == pytest.approx([8.0, 128.0, 240.0, 392.0])
    assert torch.allclose(boxes_to_original(inp, p.scale, p.offset, p.orig_size), boxes, atol=1e-4)
    # a box reaching into the padding is clipped to the original image
    outside = torch.tensor([[[-20.0, 100.0, 600.0, 500.0]], [[0.0, 0.0, 512.0, 512.0]]])
    back = boxes_to_original(outside, p.scale, p.offset, p.orig_size)
    assert back[0, 0].tolist() == pytest.approx([0.0, 0.0, 640.0, 360.0])
    assert back[1, 0].tolist() == pytest.approx([0.0, 0.0, 300.0, 600.0])
    assert torch.equal(boxes_to_original(outside), outside)  # no params: unchanged


@pytest.mark.skipif(not VIDEO.exists(), reason="shared video not available")
def test_letterbox_real_video_frame():
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(VIDEO))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        pytest.skip("cannot decode the shared video")
    assert frame.shape == (360, 640, 3)
    x, p = letterbox([torch.from_numpy(frame)], size=(512, 512), bgr=True)
    ref, s, ox, oy = reference_letterbox(frame, (512, 512), bgr=True)
    assert (s, ox, oy) == (0.8, 0, 112)
    assert_within_levels(x[0], ref, 1.0)  # uint8 resize on the CPU
    # OpenCV's INTER_LINEAR (also whole grey levels) of the same frame: within 1 level as well
    rgb = cv2.resize(frame, (512, 288), interpolation=cv2.INTER_LINEAR)[..., ::-1].transpose(2, 0, 1)
    assert np.abs(grey_levels(x[0, :, 112 : 112 + 288]) - rgb).max() <= 1.0 + 1e-3
