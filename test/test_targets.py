"""Tests for centernet_ros.targets against a brute-force per-pixel numpy reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from centernet_ros.box_ops import gaussian_radius
from centernet_ros.targets import (
    TARGET_KEYS,
    TargetConfig,
    build_image_targets,
    build_targets,
    collate_targets,
    keypoint_radii,
)

from devices import DEVICES  # noqa: E402


def scalar_radius(h: float, w: float, min_overlap: float = 0.7, variant: str = "cornernet") -> int:
    return max(0, int(math.floor(float(gaussian_radius(float(h), float(w), min_overlap, variant=variant)))))


def reference_ignore(ignore_boxes, out_h, out_w, stride=4):
    """Cell (x, y) covers input pixels [x s, (x+1) s) x [y s, (y+1) s); ignored if it overlaps a region."""
    out = np.zeros((out_h, out_w), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(ignore_boxes if ignore_boxes is not None else np.zeros((0, 4))).reshape(-1, 4).tolist():
        x1, x2 = (min(max(v, 0.0), out_w * stride) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), out_h * stride) for v in (y1, y2))
        if not (x2 > x1 and y2 > y1):
            continue
        for y in range(out_h):
            for x in range(out_w):
                ox = min(x2, (x + 1) * stride) - max(x1, x * stride)
                oy = min(y2, (y + 1) * stride) - max(y1, y * stride)
                if ox > 0 and oy > 0:
                    out[y, x] = True
    return out


def reference_targets(boxes, labels, out_h, out_w, num_classes, stride=4, max_objects=128, ignore_boxes=None,
                      cut=None):
    """Straightforward per-object, per-pixel construction in float64 numpy; ``cut`` (N, 2) bool: the
    top-left / bottom-right corner is left out of its heatmap and its window is ignored on that head."""
    heats = {k: np.zeros((num_classes, out_h, out_w)) for k in ("tl", "br", "ct")}
    corner_ignore = {k: np.zeros((out_h, out_w), dtype=bool) for k in ("tl", "br")}
    cut = np.zeros((len(np.asarray(labels)), 2), bool) if cut is None else np.asarray(cut, bool).reshape(-1, 2)
    inds = {k: np.zeros(max_objects, dtype=np.int64) for k in ("tl", "br", "ct")}
    regr = {k: np.zeros((max_objects, 2)) for k in ("tl", "br", "ct")}
    size = np.zeros((max_objects, 2))
    size_cut = np.zeros(max_objects, dtype=bool)
    mask = np.zeros(max_objects, dtype=bool)
    n = 0
    for (x1, y1, x2, y2), c, obj_cut in zip(np.asarray(boxes, dtype=np.float64).tolist(), np.asarray(labels).tolist(),
                                            cut.tolist()):
        x1, x2 = (min(max(v, 0.0), out_w * stride) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), out_h * stride) for v in (y1, y2))
        if not (x2 > x1 and y2 > y1) or n >= max_objects:
            continue
        bw = math.ceil((x2 - x1) / stride)
        bh = math.ceil((y2 - y1) / stride)
        r = scalar_radius(bh, bw)
        sigma = (2 * r + 1) / 6
        pts = {"tl": (x1, y1), "br": (x2, y2), "ct": ((x1 + x2) / 2, (y1 + y2) / 2)}
        for k, (px, py) in pts.items():
            px, py = px / stride, py / stride
            cx = min(math.floor(px), out_w - 1)
            cy = min(math.floor(py), out_h - 1)
            skipped = k != "ct" and obj_cut[("tl", "br").index(k)]
            for y in range(out_h):
                for x in range(out_w):
                    if abs(x - cx) <= r and abs(y - cy) <= r:
                        if skipped:
                            corner_ignore[k][y, x] = True
                            continue
                        v = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
                        heats[k][c, y, x] = max(heats[k][c, y, x], v)
            inds[k][n] = cy * out_w + cx
            regr[k][n] = (px - cx, py - cy)
        size[n] = (math.log((x2 - x1) / stride), math.log((y2 - y1) / stride))  # centre size head
        size_cut[n] = any(obj_cut)  # a box the crop cut: its size is a lower bound for the size head
        mask[n] = True
        n += 1
    out = {}
    for k in ("tl", "br", "ct"):
        out[f"{k}_heat"], out[f"{k}_inds"], out[f"{k}_regr"] = heats[k], inds[k], regr[k]
    out["ct_size"] = size
    out["size_cut"] = size_cut
    out["mask"] = mask
    out["ignore"] = reference_ignore(ignore_boxes, out_h, out_w, stride)
    out["tl_ignore"], out["br_ignore"] = corner_ignore["tl"], corner_ignore["br"]
    return out


def assert_matches_reference(got, ref):
    for k in TARGET_KEYS:
        g = got[k].cpu().numpy()
        if k.endswith(("heat", "regr", "size")):
            np.testing.assert_allclose(g, ref[k], atol=1e-5, rtol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(g, ref[k], err_msg=k)


def random_boxes(rng: np.random.Generator, n: int, size: int):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(4, size * 0.5, (n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size)], axis=1).astype(np.float32)
    return boxes


# ----------------------------------------------------------------------------- reference comparisons


@pytest.mark.parametrize("device", DEVICES)
def test_random_boxes_match_bruteforce(device):
    rng = np.random.default_rng(0)
    cfg = TargetConfig(num_classes=3, max_objects=16)
    boxes = random_boxes(rng, 9, 128)
    labels = rng.integers(0, 3, 9)
    got = build_image_targets(torch.from_numpy(boxes).to(device), torch.from_numpy(labels).to(device),
                              output_size=(32, 32), cfg=cfg)
    assert all(v.device.type == device for v in got.values())
    assert_matches_reference(got, reference_targets(boxes, labels, 32, 32, 3, max_objects=16))


def test_non_square_map_and_stride():
    rng = np.random.default_rng(1)
    cfg = TargetConfig(num_classes=2, stride=8, max_objects=8)
    boxes = random_boxes(rng, 5, 160)
    boxes[:, [1, 3]] *= 0.5  # map is 10 x 20 cells (H x W) -> input 80 x 160
    labels = rng.integers(0, 2, 5)
    got = build_image_targets(boxes, labels, output_size=(10, 20), cfg=cfg)
    assert got["tl_heat"].shape == (2, 10, 20)
    assert_matches_reference(got, reference_targets(boxes, labels, 10, 20, 2, stride=8, max_objects=8))


def test_peaks_inds_offsets_exact():
    cfg = TargetConfig(num_classes=2, max_objects=4)
    boxes = torch.tensor([[10.0, 22.0, 70.0, 61.0], [81.0, 5.0, 121.0, 99.0]])
    labels = torch.tensor([1, 0])
    t = build_image_targets(boxes, labels, output_size=(32, 32), cfg=cfg)
    expected = {  # (cell x, cell y, offset x, offset y) per object
        "tl": [(2, 5, 0.5, 0.5), (20, 1, 0.25, 0.25)],
        "br": [(17, 15, 0.5, 0.25), (30, 24, 0.25, 0.75)],
        "ct": [(10, 10, 0.0, 0.375), (25, 13, 0.25, 0.0)],
    }
    for k, rows in expected.items():
        heat = t[f"{k}_heat"]
        assert int((heat == 1).sum()) == 2, k
        for slot, ((cx, cy, ox, oy), c) in enumerate(zip(rows, labels.tolist())):
            assert heat[c, cy, cx].item() == 1.0
            assert heat[1 - c, cy, cx].item() < 1.0
            assert t[f"{k}_inds"][slot].item() == cy * 32 + cx
            torch.testing.assert_close(t[f"{k}_regr"][slot], torch.tensor([ox, oy]))
        assert t[f"{k}_inds"][2:].eq(0).all() and t[f"{k}_regr"][2:].eq(0).all()
    assert t["mask"].tolist() == [True, True, False, False]


@pytest.mark.parametrize("variant", ["cornernet", "exact"])
def test_radius_consistent_with_gaussian_radius(variant):
    cfg = TargetConfig(num_classes=1, max_objects=2, radius_variant=variant)
    radii = []
    for w, h in [(40.0, 24.0), (160.0, 96.0), (6.0, 6.0), (90.0, 200.0), (360.0, 380.0)]:
        x1, y1 = 120.0, 100.0
        t = build_image_targets(torch.tensor([[x1, y1, x1 + w, y1 + h]]), torch.tensor([0]),
                                output_size=(128, 128), cfg=cfg)
        r = scalar_radius(math.ceil(h / 4), math.ceil(w / 4), variant=variant)
        radii.append(r)
        heat = t["tl_heat"][0]
        ys, xs = torch.nonzero(heat > 0, as_tuple=True)
        assert (xs.min().item(), xs.max().item()) == (30 - r, 30 + r)
        assert (ys.min().item(), ys.max().item()) == (25 - r, 25 + r)
        if r > 0:
            sigma = (2 * r + 1) / 6
            assert heat[25, 30 + 1].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert max(radii) > 3 and min(radii) < max(radii)  # non-trivial, size-dependent radii
    torch.testing.assert_close(
        keypoint_radii(torch.tensor([24.0, 2.0]), torch.tensor([40.0, 2.0]), variant=variant),
        torch.tensor([scalar_radius(24, 40, variant=variant), scalar_radius(2, 2, variant=variant)]),
    )


def test_min_radius():
    cfg = TargetConfig(num_classes=1, max_objects=2, min_radius=3)
    t = build_image_targets(torch.tensor([[40.0, 40.0, 44.0, 44.0]]), torch.tensor([0]),
                            output_size=(32, 32), cfg=cfg)
    assert int((t["ct_heat"] > 0).sum()) == 49


def test_overlapping_objects_max_merged():
    cfg = TargetConfig(num_classes=2, max_objects=4)
    a = torch.tensor([[20.0, 20.0, 100.0, 90.0]])
    b = torch.tensor([[28.0, 24.0, 96.0, 100.0]])
    c = torch.tensor([[24.0, 22.0, 60.0, 60.0]])  # different class, must not be merged with a/b
    both = build_image_targets(torch.cat([a, b, c]), torch.tensor([0, 0, 1]), output_size=(32, 32), cfg=cfg)
    ta = build_image_targets(a, torch.tensor([0]), output_size=(32, 32), cfg=cfg)
    tb = build_image_targets(b, torch.tensor([0]), output_size=(32, 32), cfg=cfg)
    tc = build_image_targets(c, torch.tensor([1]), output_size=(32, 32), cfg=cfg)
    for k in ("tl_heat", "br_heat", "ct_heat"):
        # the splats really overlap
        assert ((ta[k][0] > 0) & (tb[k][0] > 0)).any()
        torch.testing.assert_close(both[k][0], torch.maximum(ta[k][0], tb[k][0]))
        torch.testing.assert_close(both[k][1], tc[k][1])


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("device", DEVICES)
def test_zero_objects(device):
    cfg = TargetConfig(num_classes=3, max_objects=5)
    for boxes, labels in [
        (torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device)),
        (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)),
        ([], []),
    ]:
        t = build_image_targets(boxes, labels, output_size=(8, 12), cfg=cfg)
        assert t["tl_heat"].shape == (3, 8, 12) and t["tl_heat"].dtype == torch.float32
        assert t["ct_inds"].shape == (5,) and t["ct_inds"].dtype == torch.long
        assert t["br_regr"].shape == (5, 2)
        assert t["mask"].dtype == torch.bool and not t["mask"].any()
        assert all(float(v.float().abs().sum()) == 0 for v in t.values())
    batch = build_targets([torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0), torch.zeros(0)],
                          output_size=(8, 12), cfg=cfg)
    assert batch["tl_heat"].shape == (2, 3, 8, 12) and batch["mask"].shape == (2, 5)


def test_boxes_at_and_beyond_border():
    cfg = TargetConfig(num_classes=1, max_objects=8)
    boxes = np.array(
        [
            [0.0, 0.0, 128.0, 96.0],  # the whole image (map 24 x 32)
            [-20.0, 50.0, 30.0, 140.0],  # partly outside: clipped to [0, 50, 30, 96]
            [130.0, 10.0, 150.0, 40.0],  # completely outside: dropped
        ],
        np.float32,
    )
    t = build_image_targets(boxes, np.array([0, 0, 0]), output_size=(24, 32), cfg=cfg)
    assert t["mask"].tolist() == [True, True] + [False] * 6
    assert t["tl_inds"][0].item() == 0
    assert t["br_inds"][0].item() == 23 * 32 + 31
    torch.testing.assert_close(t["br_regr"][0], torch.tensor([1.0, 1.0]))  # cell 31 + 1 = 128 / 4
    assert t["br_heat"][0, 23, 31].item() == 1.0
    assert t["tl_inds"][1].item() == 12 * 32 + 0
    torch.testing.assert_close(t["tl_regr"][1], torch.tensor([0.0, 0.5]))
    assert t["br_inds"][1].item() == 23 * 32 + 7
    torch.testing.assert_close(t["br_regr"][1], torch.tensor([0.5, 1.0]))
    assert_matches_reference(t, reference_targets(boxes, [0, 0, 0], 24, 32, 1, max_objects=8))


def test_degenerate_boxes_ignored():
    cfg = TargetConfig(num_classes=2, max_objects=4)
    boxes = torch.tensor(
        [[10.0, 10.0, 10.0, 30.0], [10.0, 10.0, 40.0, 5.0], [8.0, 8.0, 40.0, 40.0], [float("nan"), 0, 5, 5]]
    )
    t = build_image_targets(boxes, torch.tensor([0, 1, 1, 0]), output_size=(16, 16), cfg=cfg)
    assert t["mask"].tolist() == [True, False, False, False]
    assert t["tl_inds"][0].item() == 2 * 16 + 2
    assert t["tl_heat"][0].sum().item() == 0.0  # nothing drawn for the class-0 degenerate boxes
    assert t["tl_heat"][1, 2, 2].item() == 1.0


def test_more_than_max_objects_warns_and_truncates():
    rng = np.random.default_rng(3)
    cfg = TargetConfig(num_classes=2, max_objects=6)
    boxes = random_boxes(rng, 10, 64)
    labels = rng.integers(0, 2, 10)
    with pytest.warns(UserWarning, match="max_objects=6"):
        t = build_image_targets(boxes, labels, output_size=(16, 16), cfg=cfg)
    assert t["mask"].all() and t["mask"].shape == (6,)
    assert_matches_reference(t, reference_targets(boxes[:6], labels[:6], 16, 16, 2, max_objects=6))


def test_warning_only_once_per_process():
    cfg = TargetConfig(num_classes=1, max_objects=1)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for _ in range(3):
            build_image_targets(boxes, torch.tensor([0, 0]), output_size=(8, 8), cfg=cfg)
    assert len([w for w in rec if "max_objects" in str(w.message)]) == 1


def test_numpy_and_tensor_inputs_agree_and_batch():
    rng = np.random.default_rng(7)
    cfg = TargetConfig(num_classes=4, max_objects=10)
    boxes = [random_boxes(rng, n, 96) for n in (3, 0, 5)]
    labels = [rng.integers(0, 4, len(b)) for b in boxes]
    per = [build_image_targets(b, l, output_size=(24, 24), cfg=cfg) for b, l in zip(boxes, labels)]
    batch = build_targets([torch.from_numpy(b) for b in boxes], [torch.from_numpy(l) for l in labels],
                          output_size=(24, 24), cfg=cfg)
    assert set(batch) == set(TARGET_KEYS)
    assert batch["tl_heat"].shape == (3, 4, 24, 24)
    assert batch["tl_inds"].shape == (3, 10) and batch["br_regr"].shape == (3, 10, 2)
    assert batch["mask"].sum(dim=1).tolist() == [3, 0, 5]
    stacked = collate_targets(per)
    for k in TARGET_KEYS:
        assert torch.equal(stacked[k], batch[k]), k


def test_invalid_inputs():
    cfg = TargetConfig(num_classes=2)
    with pytest.raises(ValueError, match="5"):
        build_image_targets(torch.tensor([[0.0, 0, 8, 8]]), torch.tensor([5]), output_size=(8, 8), cfg=cfg)
    with pytest.raises(ValueError, match="labels"):
        build_image_targets(torch.tensor([[0.0, 0, 8, 8]]), torch.tensor([0, 1]), output_size=(8, 8), cfg=cfg)
    with pytest.raises(ValueError, match="0"):
        collate_targets([])


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "stride": 0}, "stride"),
        ({"num_classes": 2, "max_objects": -1}, "-1"),
        ({"num_classes": 2, "min_overlap": 1.5}, "1.5"),
        ({"num_classes": 2, "min_radius": -2}, "-2"),
        ({"num_classes": 2.5}, "2.5"),
        ({"num_classes": 2, "radius_variant": "wide"}, "wide"),
        ({"num_classes": 2, "cut_corners": "drop"}, "drop"),
    ],
)
def test_target_config_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TargetConfig(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_ignore_regions_match_bruteforce(device):
    """Ignore regions (crowd boxes, unmapped classes) mark every map cell they overlap; none -> all False."""
    rng = np.random.default_rng(7)
    cfg = TargetConfig(num_classes=3)
    for trial in range(20):
        ign = random_boxes(rng, int(rng.integers(0, 4)), 64)
        ign[:, :2] -= 3.0  # some reach outside the input: clipped
        boxes = random_boxes(rng, 2, 64)
        got = build_image_targets(torch.as_tensor(boxes, device=device), torch.tensor([0, 2], device=device),
                                  output_size=(16, 16), cfg=cfg, ignore_boxes=torch.as_tensor(ign, device=device))
        ref = reference_targets(boxes, [0, 2], 16, 16, 3, ignore_boxes=ign)
        assert_matches_reference(got, ref)
        assert got["ignore"].device.type == torch.device(device).type
    # a region of one pixel inside a cell marks exactly that cell; a degenerate one marks nothing
    got = build_image_targets(np.zeros((0, 4)), np.zeros(0), output_size=(4, 4), cfg=cfg,
                              ignore_boxes=np.array([[5.2, 9.5, 5.9, 9.9], [3, 3, 3, 8]], np.float32))
    expect = np.zeros((4, 4), bool)
    expect[2, 1] = True
    np.testing.assert_array_equal(got["ignore"].numpy(), expect)
    empty = build_image_targets(np.zeros((0, 4)), np.zeros(0), output_size=(4, 4), cfg=cfg)
    assert empty["ignore"].shape == (4, 4) and not empty["ignore"].any()


@pytest.mark.parametrize("device", DEVICES)
def test_cut_corners_match_bruteforce(device):
    """cut_corners="ignore": a corner the crop made gets no Gaussian and its window is ignored on that corner
    head only; its index / offset / mask, the centre and the other corner stay. "positive" ignores the flags for
    the corners; with either, a cut box's size is a lower bound for the size head (``size_cut``)."""
    rng = np.random.default_rng(11)
    for trial in range(20):
        n = int(rng.integers(0, 5))
        boxes = random_boxes(rng, n, 64)
        labels = rng.integers(0, 3, n)
        cut = rng.random((n, 2)) < 0.5
        args = dict(output_size=(16, 16), cut=torch.as_tensor(cut, device=device))
        got = build_image_targets(torch.as_tensor(boxes, device=device), torch.as_tensor(labels, device=device),
                                  cfg=TargetConfig(num_classes=3, cut_corners="ignore"), **args)
        assert_matches_reference(got, reference_targets(boxes, labels, 16, 16, 3, cut=cut))
        plain = build_image_targets(torch.as_tensor(boxes, device=device), torch.as_tensor(labels, device=device),
                                    cfg=TargetConfig(num_classes=3), **args)
        ref = reference_targets(boxes, labels, 16, 16, 3)
        ref["size_cut"][:n] = cut.any(1)
        assert_matches_reference(plain, ref)
    # one box cut on the left: no tl peak, tl window ignored, br / ct peaks as usual
    got = build_image_targets(np.array([[0, 8, 40, 40]], np.float32), np.array([1]), output_size=(16, 16),
                              cfg=TargetConfig(num_classes=2, cut_corners="ignore"), cut=np.array([[True, False]]))
    assert got["tl_heat"].max() == 0 and got["tl_ignore"][2, 0] and not got["br_ignore"].any()
    assert got["br_heat"][1, 10, 10] == 1 and got["ct_heat"][1, 6, 5] == 1 and got["mask"][0]
    with pytest.raises(ValueError, match="cut flags"):
        build_image_targets(np.zeros((2, 4)), np.zeros(2), output_size=(4, 4), cfg=TargetConfig(num_classes=1),
                            cut=np.zeros((3, 2), bool))
