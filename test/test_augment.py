"""Augmentation geometry and colour, and the evaluation letterbox of a sample."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from centernet_ros.augment import (
    EIGVAL,
    EIGVEC,
    GRAY_WEIGHTS,
    AugmentConfig,
    _warp,
    augment,
    color_matrix,
    letterbox_sample,
    mosaic,
)
from centernet_ros.data import normalize_images

NO_COLOR = dict(brightness=0.0, contrast=0.0, saturation=0.0, lighting_std=0.0)


def _scene(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """Dark image with each box filled in its own bright colour."""
    img = np.full((h, w, 3), 10, np.uint8)
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250)]
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        img[y1:y2, x1:x2] = colours[k % 3]
    return img


@pytest.mark.parametrize("reference", ["letterbox", "pixels"])
@pytest.mark.parametrize("in_hw, out_hw", [((120, 200), (96, 160)), ((300, 180), (128, 128))])
def test_augment_boxes_follow_the_warped_pixels(reference, in_hw, out_hw):
    h, w = in_hw
    boxes = np.array([[10, 12, 70, 60], [w - 60, h - 50, w - 8, h - 6]], np.float32)
    labels = np.array([0, 1], np.int64)
    img = _scene(h, w, boxes)
    cfg = AugmentConfig(output_size=out_hw, scale_reference=reference, min_box_size=3.0, flip_prob=0.5,
                        crop_border=32, **NO_COLOR)
    rng = np.random.default_rng(0)
    seen_kept = seen_dropped = 0
    for _ in range(40):
        out, ob, ol, _ = augment(img, boxes, labels, cfg=cfg, rng=rng)
        assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
        assert ob.dtype == np.float32 and ol.dtype == np.int64 and len(ob) == len(ol)
        assert (ob[:, 0] >= 0).all() and (ob[:, 2] <= out_hw[1]).all() and (ob[:, 3] <= out_hw[0]).all()
        for k, colour_channel in enumerate((0, 1)):
            # pixels of object k: its channel bright, the others dark
            mask = (out[..., colour_channel] > 128) & (out[..., 1 - colour_channel] < 128) & (out[..., 2] < 128)
            kept = np.flatnonzero(ol == k)
            if mask.sum() == 0:
                assert len(kept) == 0
                seen_dropped += 1
                continue
            ys, xs = np.nonzero(mask)
            px_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            if len(kept) == 0:  # dropped: must be (nearly) smaller than min_box_size
                assert min(px_box[2] - px_box[0], px_box[3] - px_box[1]) <= cfg.min_box_size + 1.5
                seen_dropped += 1
                continue
            seen_kept += 1
            np.testing.assert_allclose(ob[kept[0]], px_box, atol=1.5)
    assert seen_kept > 10


def test_augment_flip_and_scale_exact():
    """scale_range (1, 1), 'pixels', no border: the crop centre is uniform; check the map analytically."""
    img = _scene(64, 64, np.array([[8, 16, 24, 48]], np.float32))
    boxes = np.array([[8, 16, 24, 48]], np.float32)
    cfg = AugmentConfig(output_size=(64, 64), scale_range=(1.0, 1.0), scale_reference="pixels", crop_border=0,
                        flip_prob=1.0, min_box_size=0, **NO_COLOR)
    seen_cut = set()
    for seed in range(40):
        out, ob, _, cut = augment(img, boxes, np.zeros(1, np.int64), cfg=cfg, rng=np.random.default_rng(seed))
        # rebuild the same random draws: scale, cx, cy, flip
        r = np.random.default_rng(seed)
        r.uniform(1.0, 1.0)
        cx, cy = r.uniform(0, 64), r.uniform(0, 64)
        dx, dy = cx - 32, cy - 32  # crop origin
        x1, x2 = 64 - (24 - dx), 64 - (8 - dx)
        y1, y2 = 16 - dy, 48 - dy
        ref = np.clip([x1, y1, x2, y2], 0, 64)
        if len(ob):
            np.testing.assert_allclose(ob[0], ref, atol=1e-4)
            # the crop edge cut the box (flipped: x1 came from the right side) by more than the tolerance
            expect = (x1 < -1 or y1 < -1, x2 > 65 or y2 > 65)
            assert tuple(cut[0]) == expect and cut.dtype == bool
            seen_cut.add(expect)
    assert {(False, False), (True, False), (False, True)} <= seen_cut


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_image_edge_cuts(flip):
    """Boxes on the photo's own edge count as cut there (in the output's orientation), only when asked;
    a box 2 px in from the edge does not.  The crop keeps the whole 64x64 image (scale 2 -> 128 px crop)."""
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[0, 20, 20, 40], [44, 20, 64, 40], [20, 0.5, 40, 20], [20, 44, 40, 63.5], [2, 2, 62, 62]],
                     np.float32)  # left edge, right edge, top edge, bottom edge, inside
    labels = np.zeros(len(boxes), np.int64)
    base = dict(output_size=(128, 128), scale_range=(1.0, 1.0), scale_reference="pixels", crop_border=0,
                flip_prob=flip, min_box_size=0, **NO_COLOR)
    for edge_cuts in (False, True):
        cfg = AugmentConfig(**base, image_edge_cuts=edge_cuts)
        # a 128 px crop around the 64 px image: no crop cuts; the same draws for both settings
        out, ob, _, cut = augment(img, boxes, labels, cfg=cfg, rng=np.random.default_rng(3))
        assert len(ob) == 5
        if not edge_cuts:
            assert not cut.any()
            continue
        left, right = ((True, False), (False, True)) if flip == 0.0 else ((False, True), (True, False))
        assert [tuple(c) for c in cut] == [left, right, (True, False), (False, True), (False, False)]
    with pytest.raises(ValueError, match="image_edge_cuts"):
        AugmentConfig(image_edge_cuts="yes")


def test_mosaic_cells_hold_the_four_images_and_their_boxes():
    """Each image fills one cell (its colour appears only there), each output box lies in its image's
    cell and on that colour's pixels, boxes a cell edge cuts are flagged cut on that side, and the same
    seed gives the same mosaic."""
    out_hw = (96, 128)
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250), (250, 250, 40)]
    images, boxes, labels = [], [], []
    for k, c in enumerate(colours):
        img = np.full((60, 80, 3), 10, np.uint8)
        b = np.array([[20, 15, 60, 45]], np.float32)  # the middle of each image, in its colour
        img[15:45, 20:60] = c
        images.append(img), boxes.append(b), labels.append(np.array([k], np.int64))
    cfg = AugmentConfig(output_size=out_hw, scale_range=(0.8, 1.2), scale_reference="pixels", crop_border=8,
                        min_box_size=0, flip_prob=0.5, **NO_COLOR)
    seen_cut = seen_whole = 0
    for seed in range(30):
        out, ob, ol, cut = mosaic(images, boxes, labels, cfg=cfg, rng=np.random.default_rng(seed))
        assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
        assert ob.dtype == np.float32 and ol.dtype == np.int64 and cut.dtype == bool and len(ob) == len(ol) == len(cut)
        r = np.random.default_rng(seed)
        yc, xc = int(round(r.uniform(0.25, 0.75) * 96)), int(round(r.uniform(0.25, 0.75) * 128))
        assert 24 <= yc <= 72 and 32 <= xc <= 96
        cells = [(0, 0, yc, xc), (0, xc, yc, 128), (yc, 0, 96, xc), (yc, xc, 96, 128)]
        for k, (y0, x0, y1, x1) in enumerate(cells):
            mask = np.all(out == colours[k], axis=-1)
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()  # colour k only in cell k
            kept = np.flatnonzero(ol == k)
            if not mask.any():
                assert len(kept) == 0
                continue
            assert len(kept) == 1
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(ob[kept[0]], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
            bx1, by1, bx2, by2 = ob[kept[0]]
            # cut on the top-left side when the box starts on the cell's inner edge, and so on
            if (k in (1, 3) and bx1 <= x0 + 0.5) or (k in (2, 3) and by1 <= y0 + 0.5):
                assert cut[kept[0], 0]
                seen_cut += 1
            if (k in (0, 2) and bx2 >= x1 - 0.5) or (k in (0, 1) and by2 >= y1 - 0.5):
                assert cut[kept[0], 1]
                seen_cut += 1
            if bx1 > x0 + 1.5 and by1 > y0 + 1.5 and bx2 < x1 - 1.5 and by2 < y1 - 1.5:
                assert not cut[kept[0]].any()  # well inside its cell: not cut
                seen_whole += 1
    assert seen_cut > 5 and seen_whole > 5
    a = mosaic(images, boxes, labels, cfg=cfg, rng=np.random.default_rng(7))
    b = mosaic(images, boxes, labels, cfg=cfg, rng=np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    empty = [np.zeros((0, 4), np.float32)] * 4, [np.zeros(0, np.int64)] * 4
    out, ob, ol, cut = mosaic(images, *empty, cfg=cfg, rng=np.random.default_rng(1))
    assert out.shape == (*out_hw, 3) and ob.shape == (0, 4) and ol.shape == (0,) and cut.shape == (0, 2)
    with pytest.raises(ValueError, match="4 images"):
        mosaic(images[:3], boxes[:3], labels[:3], cfg=cfg, rng=np.random.default_rng(0))


def test_augment_empty_boxes_and_config_validation():
    img = np.zeros((50, 70, 3), np.uint8)
    out, ob, ol, cut = augment(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), cfg=AugmentConfig(
        output_size=(64, 96)), rng=np.random.default_rng(1))
    assert out.shape == (64, 96, 3) and ob.shape == (0, 4) and ol.shape == (0,) and cut.shape == (0, 2)
    for kwargs, needle in [
        (dict(output_size=(0, 64)), "output_size"),
        (dict(scale_range=(1.2, 0.5)), "(1.2, 0.5)"),
        (dict(scale_reference="foo"), "'foo'"),
        (dict(flip_prob=1.5), "1.5"),
        (dict(brightness=-0.1), "-0.1"),
        (dict(lighting_std=-1.0), "-1.0"),
        (dict(pad_value=(0, 0, 300)), "300"),
        (dict(mosaic_prob=1.5), "1.5"),
        (dict(mosaic_prob=True), "True"),
        (dict(mosaic_prob="half"), "'half'"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            AugmentConfig(**kwargs)


def test_warp_rgba_detour_equals_plain_warp():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for m in (np.array([[1.3, 0, -4.2], [0, 1.3, 3.1]]), np.array([[-0.7, 0, 40.0], [0, 0.7, -2.0]])):
        mc = m.copy()
        mc[:, 2] += 0.5 * (m[:, 0] + m[:, 1] - 1.0)
        ref = cv2.warpAffine(img, mc, (48, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(5, 6, 7))
        np.testing.assert_array_equal(_warp(img, m, (40, 48), (5, 6, 7)), ref)


def test_warp_uses_continuous_pixel_coordinates():
    """Pixel i covers [i, i+1): a flip about the width is an exact mirror, a 2x zoom equals cv2.resize."""
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    flipped = _warp(img, np.array([[-1.0, 0, 30], [0, 1, 0]]), (20, 30), (0, 0, 0))
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    zoomed = _warp(img, np.array([[2.0, 0, 0], [0, 2, 0]]), (40, 60), (0, 0, 0))
    ref = cv2.resize(img, (60, 40), interpolation=cv2.INTER_LINEAR)
    assert np.abs(zoomed[1:-1, 1:-1].astype(int) - ref[1:-1, 1:-1].astype(int)).max() <= 1


def _sequential_colour(img: np.ndarray, factors: dict, order, lighting) -> np.ndarray:
    """Reference: CornerNet's steps one after another in float."""
    x = img.astype(np.float64)
    for step in order:
        a = factors[step]
        if step == "brightness":
            x = x * a
        elif step == "contrast":
            x = a * x + (1 - a) * (x @ GRAY_WEIGHTS).mean()
        else:
            x = a * x + (1 - a) * (x @ GRAY_WEIGHTS)[..., None]
    x = x + lighting
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation"), ("saturation", "contrast", "brightness"),
                                   ("contrast", "saturation", "brightness")])
def test_color_matrix_equals_sequential_jitter(order):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (24, 31, 3), dtype=np.uint8)
    factors = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.25}
    lighting = 255 * (EIGVEC @ (np.array([0.1, -0.2, 0.05]) * EIGVAL))
    m = color_matrix(img.reshape(-1, 3).mean(0), order=order, lighting=lighting, **factors)
    got = cv2.transform(img, m)
    ref = _sequential_colour(img, factors, order, lighting)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    # identity
    np.testing.assert_allclose(color_matrix(np.zeros(3)), np.eye(3, 4))


def test_augment_colour_changes_pixels_but_not_geometry():
    img = _scene(64, 64, np.array([[8, 8, 40, 40]], np.float32))
    boxes = np.array([[8, 8, 40, 40]], np.float32)
    geo = dict(output_size=(64, 64), scale_range=(1.0, 1.0), scale_reference="pixels", crop_border=0)
    plain = augment(img, boxes, np.zeros(1, np.int64), cfg=AugmentConfig(**geo, **NO_COLOR),
                    rng=np.random.default_rng(9))
    coloured = augment(img, boxes, np.zeros(1, np.int64), cfg=AugmentConfig(**geo), rng=np.random.default_rng(9))
    np.testing.assert_allclose(plain[1], coloured[1])  # same random geometry draws come first
    assert np.abs(plain[0].astype(int) - coloured[0].astype(int)).mean() > 1.0


def test_letterbox_sample_matches_preprocess():
    from centernet_ros.preprocess import boxes_to_input, letterbox

    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8), (5, 5), 2)
    boxes = np.array([[10, 20, 60, 80], [0, 0, 150, 90]], np.float32)
    out, b, (scale, ox, oy) = letterbox_sample(img, boxes, size=(128, 160))
    ref, params = letterbox([torch.from_numpy(img)], size=(128, 160), bgr=False)
    assert scale == pytest.approx(float(params.scale[0])) and (ox, oy) == tuple(params.offset[0].tolist())
    ref_boxes = boxes_to_input(torch.from_numpy(boxes)[None], params.scale, params.offset)[0]
    np.testing.assert_allclose(b, ref_boxes.numpy(), atol=1e-4)
    mine = normalize_images(torch.from_numpy(out).permute(2, 0, 1)[None])
    assert (mine - ref).abs().max() < 0.05  # cv2 vs torch bilinear rounding only
