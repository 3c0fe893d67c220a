"""DecodeConfig.exclusive_centres: a centre keypoint that confirms a better-scoring nested box does not
confirm the box around it (hand-made scenes, the reference decoder, and every decode path)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import decode_scenes as td
from centernet_ros.decode import DecodeConfig, decode

from devices import DEVICES  # noqa: E402

A, X, B = (10.0, 40.0, 50.0, 80.0), (90.0, 40.0, 130.0, 80.0), (170.0, 40.0, 210.0, 80.0)
GROUP = (10.0, 40.0, 210.0, 80.0)  # A's top-left with B's bottom-right: X's centre (110, 60) in its central region


def queue(x_scores=(0.95, 0.9, 0.7), x_class=1, extra_centre=None):
    """Three cars in a row, class 1: A and B with close embeddings (so A's top-left pairs with B's
    bottom-right: the "group box"), X in between with its own tag."""
    out = td.blank(C=2, H=48, W=64)
    td.put_object(out, 0, 1, A, tag=0.0)
    td.put_object(out, 0, x_class, X, tag=5.0, scores=x_scores)
    td.put_object(out, 0, 1, B, tag=0.2)
    if extra_centre is not None:
        td.put_point(out, "ct", 0, 1, *extra_centre)
    return out


# group-box suppression (after NMS, test_group_boxes.py) would also drop GROUP, which holds A and B: off here,
# so that these tests see the centre rule alone
ONLY_CENTRES = DecodeConfig(group_score_ratio=0.0)


def boxes_of(det):
    boxes, scores, _ = td.valid_rows(det)
    return {tuple(round(v, 2) for v in b.tolist()): s for b, s in zip(boxes, scores.tolist())}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("host_sync", [True, False])
def test_group_box_loses_the_centre_of_the_car_inside_it(device, host_sync):
    out = td.to(queue(), device)
    paper = boxes_of(decode(out, dataclasses.replace(ONLY_CENTRES, exclusive_centres=False, host_sync=host_sync)))
    assert set(paper) == {A, X, B, GROUP}  # the paper's rule passes the group box on X's centre
    ours = boxes_of(decode(out, dataclasses.replace(ONLY_CENTRES, host_sync=host_sync)))
    assert set(ours) == {A, X, B}
    for box in (A, X, B):
        assert ours[box] == pytest.approx(paper[box], abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_a_centre_left_over_still_confirms_the_box(device):
    # a second centre in the group box's central region (76.7..143.3 x 53.3..66.7), outside X's (103.3..116.7)
    det = decode(td.to(queue(extra_centre=(85.0, 58.0, 0.6)), device), dataclasses.replace(ONLY_CENTRES, nms="none"))
    got = boxes_of(det)
    assert set(got) == {A, X, B, GROUP}
    assert got[GROUP] == pytest.approx((0.9 + 0.8 + 0.6) / 3, abs=1e-6)  # X's centre (0.7) no longer counts


@pytest.mark.parametrize("device", DEVICES)
def test_only_better_nested_boxes_of_the_same_class_claim(device):
    weak = decode(td.to(queue(x_scores=(0.5, 0.5, 0.7)), device), dataclasses.replace(ONLY_CENTRES, nms="none"))
    assert set(boxes_of(weak)) == {A, X, B, GROUP}  # X scores 0.57 < the group's 0.8
    other = queue(x_class=0)  # X is class 0; a class-1 centre sits on X's centre too
    td.put_point(other, "ct", 0, 1, 110.0, 60.0, 0.7)
    assert set(boxes_of(decode(td.to(other, device), dataclasses.replace(ONLY_CENTRES, nms="none")))) == {A, X, B, GROUP}


@pytest.mark.parametrize("exclusive", [True, False])
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_random_heatmaps_match_the_reference_and_every_path(monkeypatch, exclusive, mode):
    changed = False
    for seed, kw in ((31, {}), (32, dict(topk=40, num_dets=300, small_area=30.0**2, ae_threshold=0.3))):
        out = td.random_outputs(B=2, C=3, H=24, W=20, seed=seed)
        cfg = DecodeConfig(mode=mode, exclusive_centres=exclusive, nms="none", **kw)
        host = td.decode_on_every_plan(monkeypatch, out, cfg, (seed, exclusive, mode))
        flipped = decode(out, dataclasses.replace(cfg, exclusive_centres=not exclusive))
        changed |= not torch.equal(host.num, flipped.num) or not torch.equal(host.scores, flipped.scores)
    assert changed == (mode == "triplet")  # the rule acts on these maps, and only with the centre check
