"""box_ops against brute-force python loops and scalar formulas."""

from __future__ import annotations

import math

import pytest
import torch

from centernet_ros.box_ops import batched_nms, box_area, box_iou, gaussian_radius, nms_decay_matrix, soft_nms

from devices import DEVICES  # noqa: E402


def random_boxes(g: torch.Generator, *shape: int, size: float = 50.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=g) * size
    wh = torch.rand(*shape, 2, generator=g) * size * 0.6
    return torch.cat([xy, xy + wh], -1)


# ----------------------------------------------------------------------------- references


def iou_scalar(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / union if union > 0 else 0.0


def soft_nms_python(boxes, scores, labels, method, sigma=0.5, thr=0.5, score_threshold=0.0, max_out=100):
    """Classic per-class soft-NMS loop on python lists, merged over classes by score."""
    out = []
    for c in sorted(set(labels)):
        if c < 0:
            continue
        idx = [i for i, lab in enumerate(labels) if lab == c and scores[i] > score_threshold]
        s = {i: float(scores[i]) for i in idx}
        while s:
            best = max(s, key=lambda i: (s[i], -i))
            out.append((s.pop(best), best))
            for j in list(s):
                o = iou_scalar(boxes[best], boxes[j])
                if method == "gaussian":
                    s[j] *= math.exp(-o * o / sigma)
                elif method == "linear":
                    s[j] *= (1 - o) if o > thr else 1.0
                elif o > thr:
                    s[j] = 0.0
                if s[j] <= score_threshold:
                    del s[j]
    out.sort(key=lambda p: -p[0])
    return out[:max_out]


def radius_exact_scalar(h: float, w: float, o: float) -> float:
    """The three quadratics written out directly: return the smallest valid root."""
    roots = []
    # both corners inwards by r: 4r^2 - 2(h+w)r + (1-o)hw = 0
    a, b, c = 4.0, -2.0 * (h + w), (1 - o) * h * w
    roots.append((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))
    # both corners outwards by r: 4o r^2 + 2o(h+w) r - (1-o)hw = 0
    a, b, c = 4.0 * o, 2.0 * o * (h + w), -(1 - o) * h * w
    roots.append((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    # shift by (r, r): r^2 - (h+w) r + hw(1-o)/(1+o) = 0
    a, b, c = 1.0, -(h + w), h * w * (1 - o) / (1 + o)
    roots.append((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))
    return max(0.0, min(roots))


def radius_cornernet_scalar(h: float, w: float, o: float) -> float:
    """Numbers of the CornerNet reference code (larger root, divided by 2)."""
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


# ----------------------------------------------------------------------------- area / IoU


@pytest.mark.parametrize("device", DEVICES)
def test_box_area_and_iou_match_brute_force(device):
    g = torch.Generator().manual_seed(0)
    a = random_boxes(g, 2, 7)
    b = random_boxes(g, 2, 5)
    a[0, 0] = torch.tensor([3.0, 3.0, 3.0, 9.0])  # zero width
    b[1, 1] = torch.tensor([4.0, 4.0, 2.0, 2.0])  # inverted -> area 0
    b[0, 2] = a[0, 1]  # identical box -> IoU 1
    area = box_area(a.to(device)).cpu()
    iou = box_iou(a.to(device), b.to(device)).cpu()
    assert iou.shape == (2, 7, 5)
    for n in range(2):
        for i in range(7):
            x1, y1, x2, y2 = a[n, i].tolist()
            assert area[n, i].item() == pytest.approx(max(x2 - x1, 0) * max(y2 - y1, 0), rel=1e-6, abs=1e-6)
            for j in range(5):
                assert iou[n, i, j].item() == pytest.approx(iou_scalar(a[n, i].tolist(), b[n, j].tolist()), abs=1e-6)
    assert iou[0, 1, 2].item() == pytest.approx(1.0)


def test_box_iou_broadcast_and_empty():
    g = torch.Generator().manual_seed(1)
    a = random_boxes(g, 4)
    b = random_boxes(g, 3, 6)
    assert torch.allclose(box_iou(a, b), torch.stack([box_iou(a, b[k]) for k in range(3)]))
    assert box_iou(a, torch.zeros(0, 4)).shape == (4, 0)
    assert box_iou(torch.zeros(2, 0, 4), torch.zeros(2, 3, 4)).shape == (2, 0, 3)
    # two degenerate boxes: union 0 -> IoU 0, not NaN
    p = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(p, p).item() == 0.0


# ----------------------------------------------------------------------------- gaussian radius


@pytest.mark.parametrize("o", [0.3, 0.5, 0.7, 0.9])
def test_gaussian_radius_matches_scalar_formulas(o):
    hs = torch.tensor([1.0, 3.0, 10.0, 25.0, 100.0, 7.5, 40.0])
    ws = torch.tensor([1.0, 8.0, 10.0, 25.0, 30.0, 200.0, 2.0])
    exact = gaussian_radius(hs, ws, o)
    legacy = gaussian_radius(hs, ws, o, variant="cornernet")
    for k, (h, w) in enumerate(zip(hs.tolist(), ws.tolist())):
        assert exact[k].item() == pytest.approx(radius_exact_scalar(h, w, o), rel=1e-5, abs=1e-5)
        assert legacy[k].item() == pytest.approx(radius_cornernet_scalar(h, w, o), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("h,w", [(10.0, 10.0), (25.0, 60.0), (100.0, 7.0)])
def test_gaussian_radius_guarantees_min_overlap(h, w):
    o = 0.7
    r = gaussian_radius(h, w, o).item()
    box = torch.tensor([[0.0, 0.0, w, h]], dtype=torch.float64)
    moved = torch.tensor(
        [[r, r, w - r, h - r], [-r, -r, w + r, h + r], [r, r, w + r, h + r]], dtype=torch.float64
    )  # inwards, outwards, shifted
    ious = box_iou(box, moved)[0]
    assert (ious >= o - 1e-6).all()
    assert ious.min().item() == pytest.approx(o, abs=1e-6)  # the binding case is exactly at o


def test_gaussian_radius_tensor_io_and_validation():
    r = gaussian_radius(torch.tensor([[10.0, 20.0]], dtype=torch.float64), torch.tensor([30.0]))
    assert r.shape == (1, 2) and r.dtype == torch.float64
    assert gaussian_radius(torch.tensor([5], dtype=torch.long), 5).dtype == torch.float32
    assert gaussian_radius(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert gaussian_radius(0.0, 0.0).item() == 0.0
    with pytest.raises(ValueError, match="1.5"):
        gaussian_radius(10.0, 10.0, 1.5)
    with pytest.raises(ValueError, match="'bogus'"):
        gaussian_radius(10.0, 10.0, variant="bogus")


# ----------------------------------------------------------------------------- NMS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
@pytest.mark.parametrize("host_sync", [True, False])
def test_soft_nms_matches_python_reference(device, method, host_sync):
    g = torch.Generator().manual_seed(2)
    B, N, M = 3, 40, 25
    boxes = random_boxes(g, B, N, size=40.0)
    scores = torch.rand(B, N, generator=g)
    labels = torch.randint(-1, 3, (B, N), generator=g)
    scores[2] = 0.0  # image without candidates
    thr = 0.05
    res = soft_nms(
        boxes.to(device), scores.to(device), labels.to(device),
        max_out=M, method=method, sigma=0.5, iou_threshold=0.4, score_threshold=thr, host_sync=host_sync,
    )
    assert res.boxes.shape == (B, M, 4) and res.scores.shape == (B, M)
    assert res.labels.dtype == torch.long and res.indices.dtype == torch.long
    for b in range(B):
        ref = soft_nms_python(boxes[b].tolist(), scores[b].tolist(), labels[b].tolist(), method,
                              sigma=0.5, thr=0.4, score_threshold=thr, max_out=M)
        n = len(ref)
        got_idx = res.indices[b].cpu()
        assert (got_idx[:n] >= 0).all() and (got_idx[n:] == -1).all()
        assert got_idx[:n].tolist() == [i for _, i in ref]
        assert torch.allclose(res.scores[b, :n].cpu(), torch.tensor([s for s, _ in ref]), atol=1e-5)
        assert (res.scores[b, n:] == 0).all() and (res.labels[b, n:] == -1).all()
        assert torch.equal(res.boxes[b, :n].cpu(), boxes[b, got_idx[:n]])
        assert torch.equal(res.labels[b, :n].cpu(), labels[b, got_idx[:n]])
        assert (res.boxes[b, n:] == 0).all()
    assert (res.scores[2] == 0).all()


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_soft_nms_host_loop_equals_sync_free_loop_with_ties(method):
    """host_sync=True runs the picks on numpy views (CPU) and stops early; host_sync=False is the
    plain torch loop: bit-identical outputs, also with tied scores and duplicate boxes."""
    g = torch.Generator().manual_seed(5)
    B, N = 4, 60
    boxes = (random_boxes(g, B, N, size=30.0) * 2).round() / 2  # many duplicates / identical IoUs
    scores = (torch.rand(B, N, generator=g) * 8).round() / 8  # many ties, some exactly 0
    labels = torch.randint(-1, 2, (B, N), generator=g)
    for thr in (0.0, 0.3):
        for M in (0, 5, 100):
            kw = dict(max_out=M, method=method, sigma=0.5, iou_threshold=0.4, score_threshold=thr)
            a = soft_nms(boxes, scores, labels, host_sync=True, **kw)
            b = soft_nms(boxes, scores, labels, host_sync=False, **kw)
            assert all(torch.equal(x, y) for x, y in zip(a, b)), (thr, M)
            if M == 100:  # every candidate that is ever kept: matches the python loop
                for i in range(B):
                    ref = soft_nms_python(boxes[i].tolist(), scores[i].tolist(), labels[i].tolist(), method,
                                          sigma=0.5, thr=0.4, score_threshold=thr, max_out=M)
                    assert sorted(a.indices[i, : len(ref)].tolist()) == sorted(j for _, j in ref)


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_soft_nms_numpy_path_is_bit_identical_on_continuous_values(method):
    """The CPU host_sync path (soft_nms_numpy per image) against the torch loop, many random cases
    with continuous boxes / scores and non-round sigma / thresholds."""
    g = torch.Generator().manual_seed(6)
    for case in range(40):
        B, N = 2, int(torch.randint(1, 90, (1,), generator=g))
        boxes = random_boxes(g, B, N, size=float(torch.randint(5, 60, (1,), generator=g)))
        scores = torch.rand(B, N, generator=g)
        labels = torch.randint(-1, 4, (B, N), generator=g) if case % 3 else None
        kw = dict(max_out=int(torch.randint(0, 60, (1,), generator=g)), method=method, sigma=0.3 + case / 50,
                  iou_threshold=0.33 + case / 200, score_threshold=0.01 * (case % 4))
        a = soft_nms(boxes, scores, labels, host_sync=True, **kw)
        b = soft_nms(boxes, scores, labels, host_sync=False, **kw)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), (case, kw)


def test_soft_nms_class_agnostic_unbatched_and_keeps_other_classes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # class-agnostic hard NMS: duplicates gone
    res = batched_nms(boxes, scores, max_out=3)
    assert res.indices.tolist() == [0, -1, -1]
    assert res.labels.tolist() == [0, -1, -1]
    # the duplicate of another class survives untouched
    res = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), max_out=3)
    assert res.indices.tolist() == [0, 1, -1]
    assert res.scores.tolist() == pytest.approx([0.9, 0.8, 0.0])
    # gaussian decay of an identical box: exp(-1 / sigma)
    res = soft_nms(boxes[:2], scores[:2], max_out=2, method="gaussian", sigma=0.5)
    assert res.scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-2.0)], rel=1e-6)


def test_nms_decay_matrix_values():
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10.0]]])
    labels = torch.tensor([[0, 0, 1]])
    iou01 = 50.0 / 150.0
    g = nms_decay_matrix(boxes, labels, method="gaussian", sigma=0.5)
    assert g[0, 0, 1].item() == pytest.approx(math.exp(-iou01**2 / 0.5))
    assert g[0, 0, 2].item() == 1.0  # other class
    lin = nms_decay_matrix(boxes, None, method="linear", iou_threshold=0.3)
    assert lin[0, 0, 1].item() == pytest.approx(1 - iou01) and lin[0, 0, 2].item() == pytest.approx(0.0)
    hard = nms_decay_matrix(boxes, None, method="hard", iou_threshold=0.4)
    assert hard[0, 0, 1].item() == 1.0 and hard[0, 0, 2].item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_nms_empty_inputs(device):
    for B, N, M in [(0, 5, 4), (2, 0, 4), (2, 5, 0)]:
        res = soft_nms(torch.zeros(B, N, 4, device=device), torch.ones(B, N, device=device),
                       torch.zeros(B, N, dtype=torch.long, device=device), max_out=M)
        assert res.boxes.shape == (B, M, 4) and res.scores.shape == (B, M)
        assert res.labels.shape == (B, M) and res.indices.shape == (B, M)
        assert (res.labels == -1).all()
        assert res.boxes.device.type == torch.device(device).type


def test_nms_validation():
    b, s = torch.zeros(1, 2, 4), torch.ones(1, 2)
    with pytest.raises(ValueError, match="'box'"):
        soft_nms(b, s, max_out=2, method="box")
    with pytest.raises(ValueError, match="-1"):
        soft_nms(b, s, max_out=-1)
    with pytest.raises(ValueError, match="0.0"):
        soft_nms(b, s, max_out=2, sigma=0.0)
    with pytest.raises(ValueError, match="1.5"):
        batched_nms(b, s, max_out=2, iou_threshold=1.5)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        soft_nms(b, torch.ones(1, 3), max_out=2)
