"""DecodeConfig.flip_test: outputs of B images then the same B flipped; both views decoded, the flipped
one mirrored back, NMS over the union (hand-made scenes, single-view equivalence, every decode plan, and
the Detector / evaluation callers that run the flipped batch)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import centernet_ros.decode as decode_module
from centernet_ros.decode import DecodeConfig, decode

from decode_scenes import STRIDE, blank, check_layout, put_object, random_outputs, to, valid_rows
from devices import DEVICES  # noqa: E402

NMS = ["soft", "soft_linear", "hard", "none"]


def stack(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Originals ``a`` (B images) then flipped views ``b`` (B images): a 2B batch."""
    return {k: torch.cat([a[k], b[k]]) for k in a}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nms", NMS)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_an_empty_flipped_view_gives_the_single_view_result(device, nms, mode):
    """With nothing in the flipped views the union is the originals' boxes: exactly what decoding the
    originals alone gives, letterbox mapping included."""
    orig = random_outputs(B=2, C=3, H=24, W=20, seed=5)
    cfg = DecodeConfig(mode=mode, nms=nms, max_per_image=40)
    lb = dict(scale=torch.tensor([0.5, 2.0]), offset=torch.tensor([[3.0, 0.0], [0.0, 7.0]]),
              orig_size=torch.tensor([[200.0, 150.0], [40.0, 30.0]]))
    single = decode(to(orig, device), cfg, **lb)
    flip = decode(to(stack(orig, blank(B=2, C=3, H=24, W=20)), device), dataclasses.replace(cfg, flip_test=True), **lb)
    check_layout(flip, 2, 40)
    assert int(single.num.sum()) > 4
    for a, b in zip(single, flip):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_flipped_view_boxes_are_mirrored_back(device):
    H, W = 32, 40
    w_in = W * STRIDE
    flipped = blank(B=1, C=2, H=H, W=W)
    put_object(flipped, 0, 1, (20.0, 30.0, 60.0, 70.0))
    put_object(flipped, 0, 0, (90.0, 10.0, 150.0, 50.0), tag=3.0)
    det = decode(to(stack(blank(B=1, C=2, H=H, W=W), flipped), device), DecodeConfig(flip_test=True, nms="none"))
    boxes, scores, labels = valid_rows(det)
    got = {(int(c), tuple(round(v, 3) for v in b.tolist())) for b, c in zip(boxes, labels)}
    assert got == {(1, (w_in - 60.0, 30.0, w_in - 20.0, 70.0)), (0, (w_in - 150.0, 10.0, w_in - 90.0, 50.0))}
    np.testing.assert_allclose(sorted(scores.tolist()), [(0.9 + 0.8 + 0.7) / 3] * 2, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_both_views_of_one_object_merge_by_nms(device):
    """The same car seen in both views: soft-NMS keeps the better one and decays its twin by
    exp(-1 / sigma) (IoU 1); hard NMS keeps one; a car only the flipped view found is added."""
    H, W = 32, 40
    w_in = W * STRIDE
    car = (20.0, 30.0, 60.0, 70.0)
    orig, flipped = blank(B=1, C=1, H=H, W=W), blank(B=1, C=1, H=H, W=W)
    put_object(orig, 0, 0, car, scores=(0.9, 0.8, 0.7))
    put_object(flipped, 0, 0, (w_in - car[2], car[1], w_in - car[0], car[3]), scores=(0.6, 0.6, 0.6))
    put_object(flipped, 0, 0, (100.0, 80.0, 140.0, 120.0), tag=4.0, scores=(0.5, 0.5, 0.5))  # the flipped view's own
    out = to(stack(orig, flipped), device)
    boxes, scores, _ = valid_rows(decode(out, DecodeConfig(flip_test=True)))
    assert len(scores) == 3
    np.testing.assert_allclose(boxes[0].tolist(), car, atol=1e-4)
    np.testing.assert_allclose(boxes[1].tolist(), (w_in - 140.0, 80.0, w_in - 100.0, 120.0), atol=1e-4)
    np.testing.assert_allclose(boxes[2].tolist(), car, atol=1e-4)
    np.testing.assert_allclose(scores.tolist(), [0.8, 0.5, 0.6 * math.exp(-1 / 0.5)], atol=1e-5)
    boxes, scores, _ = valid_rows(decode(out, DecodeConfig(flip_test=True, nms="hard")))
    np.testing.assert_allclose(scores.tolist(), [0.8, 0.5], atol=1e-5)
    _, scores, _ = valid_rows(decode(out, DecodeConfig(flip_test=True, nms="none", score_threshold=0.55)))
    np.testing.assert_allclose(scores.tolist(), [0.8, 0.6], atol=1e-5)


@pytest.mark.parametrize("nms", NMS)
def test_every_decode_plan_gives_the_same_flip_test_result(monkeypatch, nms):
    out = random_outputs(B=4, C=3, H=20, W=24, seed=11)
    results = []
    for plan in decode_module.HOST_SYNC_PLANS:
        for host_sync in (True, False):
            with monkeypatch.context() as m:
                m.setitem(decode_module._HOST_SYNC_PLAN, "cpu", plan)
                results.append(decode(out, DecodeConfig(flip_test=True, nms=nms, host_sync=host_sync)))
    check_layout(results[0], 2, 100)
    assert int(results[0].num.min()) > 0
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_flip_test_empty_and_invalid_batches(device):
    cfg = DecodeConfig(flip_test=True)
    empty = decode(to(blank(B=0, C=2, H=8, W=8), device), cfg, scale=torch.ones(0))
    assert empty.boxes.shape == (0, 100, 4) and empty.num.shape == (0,)
    with pytest.raises(ValueError, match="scale must have shape"):
        decode(to(blank(B=0, C=2, H=8, W=8), device), cfg, scale=torch.ones(1))
    nothing = decode(to(blank(B=2, C=2, H=8, W=8), device), cfg)
    check_layout(nothing, 1, 100)
    assert int(nothing.num[0]) == 0
    with pytest.raises(ValueError, match="even batch.*got 3"):
        decode(to(blank(B=3, C=2, H=8, W=8), device), cfg)
    with pytest.raises(ValueError, match="scale must have shape"):  # letterbox numbers: one per original image
        decode(to(blank(B=2, C=2, H=8, W=8), device), cfg, scale=torch.ones(2))
    with pytest.raises(ValueError, match="flip_test must be a bool, got 'yes'"):
        DecodeConfig(flip_test="yes")


def test_detector_runs_the_flipped_batch(tmp_path):
    """Detector.detect with flip_test: the forward pass gets [images, images flipped left-right] and the
    flipped view's boxes come back mirrored, in the image's pixels."""
    from centernet_ros.detector import Detector, DetectorConfig
    from centernet_ros.model import centernet_resnet18
    from centernet_ros.weights import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(path, centernet_resnet18(num_classes=2, head_width=16, pool_width=8), class_names=["a", "b"],
               input_size=(64, 96))
    det = Detector(DetectorConfig(weights=path, device="cpu", backend="torch"),
                   decode=DecodeConfig(flip_test=True, nms="none"))
    seen = []

    def forward(x):  # hand-made outputs: a car in the flipped view only
        seen.append(x.clone())
        flipped = blank(B=1, C=2, H=16, W=24)
        put_object(flipped, 0, 1, (20.0, 10.0, 60.0, 50.0))
        return stack(blank(B=1, C=2, H=16, W=24), flipped)

    det._forward = forward
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # = input size: no letterbox
    got = det.detect([image])[0]
    x, _ = det.preprocess([image])
    torch.testing.assert_close(seen[0], torch.cat([x, x.flip(-1)]))
    np.testing.assert_allclose(got.boxes, [[96 - 60.0, 10.0, 96 - 20.0, 50.0]], atol=1e-4)
    assert got.labels.tolist() == [1]


def test_evaluation_needs_one_flip_setting():
    from centernet_ros.eval_loop import predict

    with pytest.raises(ValueError, match="disagree on flip_test"):
        next(predict(torch.nn.Identity(), [], input_size=(32, 32), device="cpu",
                     decode_cfgs={"triplet": DecodeConfig(flip_test=True), "pairs": DecodeConfig(mode="pairs")}))
