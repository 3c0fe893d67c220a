"""Group-box suppression (``group_boxes.group_box_mask``, ``DecodeConfig.group_score_ratio``): a detection
that encloses two distinct detections of its class is dropped after NMS.  The op against a loop reference
(``reference_decode._is_group_box``), hand-made cases, empty inputs, and the decoder on every path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import decode_scenes as td
from centernet_ros.decode import DecodeConfig, decode
from centernet_ros.group_boxes import group_box_mask
from centernet_ros.reference_decode import _is_group_box

from devices import DEVICES  # noqa: E402

# three cars in a row and the box from A's top-left to B's bottom-right (encloses all three)
A, X, B = (10.0, 40.0, 50.0, 80.0), (90.0, 40.0, 130.0, 80.0), (170.0, 40.0, 210.0, 80.0)
GROUP = (10.0, 40.0, 210.0, 80.0)


def mask(rows, device="cpu", ratio=0.5):
    """rows: (box, score, label) -> the op's mask for one image, as a list of bools."""
    boxes = torch.tensor([[list(r[0]) for r in rows]], dtype=torch.float32, device=device).reshape(1, -1, 4)
    scores = torch.tensor([[r[1] for r in rows]], dtype=torch.float32, device=device).reshape(1, -1)
    labels = torch.tensor([[r[2] for r in rows]], dtype=torch.long, device=device).reshape(1, -1)
    return group_box_mask(boxes, scores, labels, score_ratio=ratio)[0].cpu().tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_a_box_around_two_cars_is_a_group_box(device):
    assert mask([(GROUP, 0.8, 1), (A, 0.8, 1), (B, 0.7, 1)], device) == [True, False, False]
    assert mask([(GROUP, 0.8, 1), (A, 0.8, 1), (X, 0.6, 1), (B, 0.7, 1)], device) == [True, False, False, False]
    # one car inside is a car behind (or in front of) another: not a group
    assert mask([(GROUP, 0.8, 1), (A, 0.8, 1)], device) == [False, False]


@pytest.mark.parametrize("device", DEVICES)
def test_what_does_not_count_as_enclosed(device):
    weak_parts = [(GROUP, 0.8, 1), (A, 0.39, 1), (B, 0.39, 1)]  # a car's own parts at < 0.5 x its score
    assert mask(weak_parts, device) == [False] * 3
    assert mask(weak_parts, device, ratio=0.45) == [True, False, False]  # 0.39 >= 0.45 x 0.8
    other_class = [(GROUP, 0.8, 1), (A, 0.8, 0), (B, 0.8, 1)]
    assert mask(other_class, device) == [False] * 3
    empty_slots = [(GROUP, 0.8, 1), (A, 0.8, -1), (B, 0.8, 1)]  # label -1: no detection
    assert mask(empty_slots, device) == [False] * 3
    sticking_out = [(GROUP, 0.8, 1), ((0.0, 40.0, 50.0, 80.0), 0.8, 1), (B, 0.8, 1)]  # 80 % inside: < 0.9
    assert mask(sticking_out, device) == [False] * 3
    copies = [(GROUP, 0.8, 1), (A, 0.8, 1), ((12.0, 40.0, 50.0, 80.0), 0.7, 1)]  # IoU 0.95: one car twice
    assert mask(copies, device) == [False] * 3
    itself = [(GROUP, 0.8, 1), ((12.0, 40.0, 210.0, 80.0), 0.8, 1), (A, 0.8, 1)]  # ~GROUP's own copy + one car
    assert mask(itself, device) == [False] * 3
    flat = [(GROUP, 0.8, 1), ((20.0, 50.0, 20.0, 70.0), 0.8, 1), ((60.0, 50.0, 60.0, 70.0), 0.8, 1)]  # zero area
    assert mask(flat, device) == [False] * 3


def test_the_ratio_guard_is_inclusive():
    rows = [(GROUP, 0.8, 1), (A, 0.4, 1), (B, 0.4, 1)]
    assert mask(rows, ratio=0.5) == [True, False, False]  # 0.4 >= 0.5 x 0.8
    assert mask(rows, ratio=0.51) == [False] * 3
    assert mask(rows, ratio=0.0) == [True, False, False]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_random_boxes_match_the_loop_reference(device, ratio):
    g = torch.Generator().manual_seed(7)
    B, D = 6, 40
    xy = torch.rand(B, D, 2, generator=g) * 200
    wh = torch.rand(B, D, 2, generator=g) ** 2 * 150  # many small boxes, some large ones
    wh[:, :3] = 0.0  # degenerate boxes too
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.rand(B, D, generator=g)
    labels = torch.randint(-1, 2, (B, D), generator=g)
    got = group_box_mask(boxes.to(device), scores.to(device), labels.to(device), score_ratio=ratio).cpu()
    bn, sn, ln = boxes.numpy(), scores.numpy(), labels.numpy()
    want = torch.tensor([[ln[b, a] >= 0 and _is_group_box(a, bn[b], sn[b], ln[b], ratio) for a in range(D)]
                         for b in range(B)])
    assert torch.equal(got, want)
    assert 0 < int(want.sum()) < B * D  # the rule acts on these boxes, and not on all of them


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs_and_bad_arguments(device):
    for nb, nd in ((0, 5), (2, 0), (0, 0)):  # no rows at all
        got = group_box_mask(torch.zeros(nb, nd, 4, device=device), torch.zeros(nb, nd, device=device),
                             torch.zeros(nb, nd, dtype=torch.long, device=device), score_ratio=0.5)
        assert got.shape == (nb, nd) and got.dtype == torch.bool and got.device.type == device
    one = [(GROUP, 0.8, 1)]
    assert mask(one, device) == [False]
    assert mask([(GROUP, 0.8, -1), (A, 0.8, -1), (B, 0.8, -1)], device) == [False] * 3  # all empty slots
    boxes, scores, labels = torch.zeros(1, 3, 4), torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(1, 3, 5\)"):
        group_box_mask(torch.zeros(1, 3, 5), scores, labels, score_ratio=0.5)
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        group_box_mask(boxes, torch.zeros(1, 2), labels, score_ratio=0.5)
    for kw, text in ((dict(score_ratio=-1.0), "-1.0"), (dict(score_ratio=True), "True"),
                     (dict(score_ratio=0.5, contain=0.0), "0.0"), (dict(score_ratio=0.5, distinct_iou=1.5), "1.5")):
        with pytest.raises(ValueError, match=next(iter(kw)) if len(kw) == 1 else list(kw)[1]) as err:
            group_box_mask(boxes, scores, labels, **kw)
        assert text in str(err.value)


def queue(ab_scores=(0.9, 0.8, 0.7)):
    """A, X, B in a row, class 1; A's and B's corners have close embeddings, so A's top-left pairs with
    B's bottom-right and X's centre confirms that pair under the paper's rule."""
    out = td.blank(C=2, H=48, W=64)
    td.put_object(out, 0, 1, A, tag=0.0, scores=ab_scores)
    td.put_object(out, 0, 1, X, tag=5.0, scores=(0.95, 0.9, 0.7))
    td.put_object(out, 0, 1, B, tag=0.2, scores=ab_scores)
    return out


def boxes_of(det):
    boxes, scores, _ = td.valid_rows(det)
    return {tuple(round(v, 2) for v in b.tolist()): s for b, s in zip(boxes, scores.tolist())}


PAPER = DecodeConfig(exclusive_centres=False)  # the paper's centre rule passes GROUP on X's centre


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("host_sync", [True, False])
@pytest.mark.parametrize("nms", ["soft", "none"])
def test_decode_drops_the_group_box(device, host_sync, nms):
    out = td.to(queue(), device)
    cfg = dataclasses.replace(PAPER, host_sync=host_sync, nms=nms)
    off = boxes_of(decode(out, dataclasses.replace(cfg, group_score_ratio=0.0)))
    assert set(off) == {A, X, B, GROUP}
    det = decode(out, cfg)
    td.check_layout(det, 1, cfg.max_per_image)  # kept rows first, empty slots zeroed
    on = boxes_of(det)
    assert set(on) == {A, X, B}
    for box in on:
        assert on[box] == pytest.approx(off[box], abs=1e-6)
    pairs = boxes_of(decode(out, dataclasses.replace(cfg, mode="pairs")))
    assert GROUP in pairs  # CornerNet's pairs decoding stays as it is


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("host_sync", [True, False])
@pytest.mark.parametrize("nms", ["none", "hard"])  # soft-NMS would decay GROUP itself below 0.62 (IoU 0.2 with X)
def test_the_threshold_does_not_decide_which_boxes_are_groups(device, host_sync, nms):
    # A and B score 0.6, GROUP (A's 0.6, B's 0.6, X's centre 0.7) 0.633, X 0.85; GROUP overlaps each by IoU 0.2,
    # under hard NMS's 0.5
    out = td.to(queue(ab_scores=(0.6, 0.6, 0.6)), device)
    cfg = dataclasses.replace(PAPER, nms=nms, host_sync=host_sync)
    assert set(boxes_of(decode(out, cfg))) == {A, X, B}
    # at 0.62 A and B are not reported, yet they are cars inside GROUP: it is dropped all the same
    got = boxes_of(decode(out, dataclasses.replace(cfg, score_threshold=0.62)))
    assert set(got) == {X}
    assert GROUP in boxes_of(decode(out, dataclasses.replace(cfg, score_threshold=0.62, group_score_ratio=0.0)))


@pytest.mark.parametrize("device", DEVICES)
def test_flip_test_drops_group_boxes_of_the_merged_views(device):
    one = queue()
    mirrored = td.blank(C=2, H=48, W=64)  # the same scene as the flipped view of the image sees it
    w_in = 64 * td.STRIDE
    for box, tag, sc in ((A, 0.0, (0.9, 0.8, 0.7)), (X, 5.0, (0.95, 0.9, 0.7)), (B, 0.2, (0.9, 0.8, 0.7))):
        td.put_object(mirrored, 0, 1, (w_in - box[2], box[1], w_in - box[0], box[3]), tag=-tag, scores=sc)
    both = td.to({k: torch.cat([one[k], mirrored[k]]) for k in one}, device)
    cfg = dataclasses.replace(PAPER, flip_test=True)
    assert GROUP in boxes_of(decode(both, dataclasses.replace(cfg, group_score_ratio=0.0)))
    assert set(boxes_of(decode(both, cfg))) == {A, X, B}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.5])  # 1.5: NMS must keep the threshold itself (min(ratio, 1))
def test_random_heatmaps_match_the_reference_and_every_path(monkeypatch, ratio):
    changed = False
    for seed, kw in ((51, {}), (52, dict(topk=40, num_dets=300, score_threshold=0.3)), (53, dict(nms="hard"))):
        out = td.random_outputs(B=2, C=2, H=24, W=20, seed=seed)
        cfg = DecodeConfig(group_score_ratio=ratio, exclusive_centres=False, **kw)
        host = td.decode_on_every_plan(monkeypatch, out, cfg, (seed, ratio))
        td.check_layout(host, 2, cfg.max_per_image)
        off = decode(out, dataclasses.replace(cfg, group_score_ratio=0.0))
        assert (host.num <= off.num).all()  # the rule only removes boxes
        changed |= not torch.equal(host.num, off.num)
    assert changed  # and it acts on these maps
    assert np.isfinite(host.scores.numpy()).all()
