"""decode on hand-made heatmaps with known answers, and against the per-image numpy reference."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import centernet_ros.decode as decode_module
import centernet_ros.keypoints as keypoints_module
from centernet_ros.decode import DecodeConfig, decode
from centernet_ros.preprocess import letterbox_params
from centernet_ros.reference_decode import reference_decode

from decode_scenes import (  # noqa: E402
    assert_matches_reference,
    blank,
    check_layout,
    put_object,
    put_point,
    random_outputs,
    to,
    valid_rows,
)
from devices import DEVICES  # noqa: E402

NMS = ["soft", "soft_linear", "hard", "none"]


# ----------------------------------------------------------------------------- known boxes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nms", NMS)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_recovers_hand_made_boxes(device, nms, mode):
    out = blank(C=3)
    put_object(out, 0, 0, (10.5, 12.25, 70.0, 60.75), tag=1.0, scores=(0.9, 0.8, 0.4))
    put_object(out, 0, 2, (40.0, 50.0, 120.0, 126.0), tag=-1.0, scores=(0.6, 0.7, 0.95))
    det = decode(to(out, device), DecodeConfig(nms=nms, mode=mode))
    check_layout(det, 1, 100)
    assert det.boxes.device.type == torch.device(device).type
    boxes, scores, labels = valid_rows(det)
    if mode == "triplet":
        expect_scores = [(0.6 + 0.7 + 0.95) / 3, (0.9 + 0.8 + 0.4) / 3]
        order = [1, 0]
    else:
        expect_scores = [(0.9 + 0.8) / 2, (0.6 + 0.7) / 2]
        order = [0, 1]
    gt = torch.tensor([[10.5, 12.25, 70.0, 60.75], [40.0, 50.0, 120.0, 126.0]])[order]
    assert torch.allclose(boxes, gt, atol=1e-4)
    assert scores.tolist() == pytest.approx(expect_scores, abs=1e-5)
    assert labels.tolist() == [[0, 2][i] for i in order]


@pytest.mark.parametrize("device", DEVICES)
def test_central_region_check(device):
    box = (20.0, 20.0, 100.0, 100.0)  # 80 x 80 <= 150^2 -> n = 3: central region (46.7, 73.3)^2

    def run(center, cls=1, mode="triplet", **cfg):
        out = blank(C=2)
        put_object(out, 0, 1, box, center=None)
        if center is not None:
            put_point(out, "ct", 0, cls, center[0], center[1], 0.7)
        return decode(to(out, device), DecodeConfig(mode=mode, **cfg))

    assert int(run(None).num[0]) == 0  # no centre at all
    kept = run(None, mode="pairs")  # CornerNet-style decoding keeps the pair
    assert int(kept.num[0]) == 1 and kept.scores[0, 0].item() == pytest.approx(0.85, abs=1e-6)
    assert int(run((60.0, 60.0), cls=0).num[0]) == 0  # centre of another class
    assert int(run((40.0, 60.0)).num[0]) == 0  # inside the box, outside the central region
    assert int(run((60.0, 40.0)).num[0]) == 0
    det = run((60.0, 60.0))
    assert int(det.num[0]) == 1
    assert det.scores[0, 0].item() == pytest.approx((0.9 + 0.8 + 0.7) / 3, abs=1e-6)
    assert det.boxes[0, 0].cpu().tolist() == pytest.approx(list(box), abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_central_region_boundaries_and_large_boxes(device):
    def run(box, center, **cfg):
        out = blank(C=1, H=64, W=64)
        put_object(out, 0, 0, box, center=center)
        return int(decode(to(out, device), DecodeConfig(**cfg)).num[0])

    # small box 96 x 96, n = 3: central region is (32, 64) exactly; strict inequalities
    assert run((0.0, 0.0, 96.0, 96.0), (32.0, 48.0)) == 0
    assert run((0.0, 0.0, 96.0, 96.0), (32.25, 48.0)) == 1
    assert run((0.0, 0.0, 96.0, 96.0), (48.0, 64.0)) == 0
    assert run((0.0, 0.0, 96.0, 96.0), (48.0, 63.75)) == 1
    # large box 200 x 200 > 150^2, n = 5: central region (80, 120); x = 76 is inside for n = 3 only
    assert run((0.0, 0.0, 200.0, 200.0), (76.0, 100.0)) == 0
    assert run((0.0, 0.0, 200.0, 200.0), (84.0, 100.0)) == 1
    assert run((0.0, 0.0, 200.0, 200.0), (76.0, 100.0), small_area=200.0**2) == 1
    assert run((0.0, 0.0, 200.0, 200.0), (84.0, 100.0), n_large=9) == 0  # (88.9, 111.1)


@pytest.mark.parametrize("device", DEVICES)
def test_best_matching_centre_score_is_used(device):
    out = blank(C=2, H=32, W=32)
    put_object(out, 0, 0, (0.0, 0.0, 120.0, 120.0), center=None, scores=(0.9, 0.8, 0.5))
    put_point(out, "ct", 0, 0, 50.0, 50.0, 0.5)
    put_point(out, "ct", 0, 0, 70.0, 66.0, 0.75)
    put_point(out, "ct", 0, 1, 60.0, 60.0, 0.99)  # other class: ignored
    put_point(out, "ct", 0, 0, 10.0, 10.0, 0.95)  # outside the central region: ignored
    det = decode(to(out, device), DecodeConfig(nms="none"))
    assert int(det.num[0]) == 1
    assert det.scores[0, 0].item() == pytest.approx((0.9 + 0.8 + 0.75) / 3, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_pair_rejections(device, mode):
    def run(tl, br, *, tl_cls=0, br_cls=0, tl_tag=0.0, br_tag=0.0, **cfg):
        out = blank(C=2, H=32, W=32)
        put_point(out, "tl", 0, tl_cls, *tl, 0.9, tl_tag)
        put_point(out, "br", 0, br_cls, *br, 0.8, br_tag)
        for c in (0, 1):  # centres of both classes at both possible box centres
            put_point(out, "ct", 0, c, (tl[0] + br[0]) / 2, (tl[1] + br[1]) / 2, 0.7)
        return int(decode(to(out, device), DecodeConfig(mode=mode, **cfg)).num[0])

    assert run((10.0, 10.0), (90.0, 90.0)) == 1
    assert run((10.0, 10.0), (90.0, 90.0), br_cls=1) == 0  # class mismatch
    assert run((10.0, 10.0), (90.0, 90.0), tl_tag=0.1, br_tag=0.7) == 0  # |0.6| > 0.5
    assert run((10.0, 10.0), (90.0, 90.0), tl_tag=0.1, br_tag=0.5) == 1  # |0.4| <= 0.5
    assert run((10.0, 10.0), (90.0, 90.0), tl_tag=0.1, br_tag=0.7, ae_threshold=0.7) == 1
    assert run((90.0, 90.0), (10.0, 10.0)) == 0  # br above-left of tl
    assert run((90.0, 10.0), (10.0, 90.0)) == 0  # br left of tl
    assert run((10.0, 90.0), (90.0, 10.0)) == 0  # br above tl


@pytest.mark.parametrize("device", DEVICES)
def test_nms_variants_on_duplicate_boxes(device):
    out = blank(C=1, H=32, W=32)
    put_point(out, "tl", 0, 0, 10.0, 10.0, 0.9)
    put_point(out, "tl", 0, 0, 22.0, 10.0, 0.7)  # second top-left corner 3 cells to the right
    put_point(out, "br", 0, 0, 100.0, 90.0, 0.8)
    put_point(out, "ct", 0, 0, 58.0, 50.0, 0.6)
    first, second = (0.9 + 0.8) / 2, (0.7 + 0.8) / 2
    iou = 78.0 * 80.0 / (90.0 * 80.0)
    expect = {
        "none": [first, second],
        "hard": [first],
        "soft": [first, second * math.exp(-iou * iou / 0.5)],
        "soft_linear": [first, second * (1 - iou)],
    }
    for nms, scores in expect.items():
        det = decode(to(out, device), DecodeConfig(mode="pairs", nms=nms))
        assert det.scores[0, : int(det.num[0])].cpu().tolist() == pytest.approx(scores, abs=1e-6), nms
    det = decode(to(out, device), DecodeConfig(mode="pairs", nms="hard", nms_iou=0.9))
    assert int(det.num[0]) == 2
    det = decode(to(out, device), DecodeConfig(mode="pairs", nms="none", score_threshold=0.8))
    assert det.scores[0].tolist()[:2] == pytest.approx([first, 0.0])


# ----------------------------------------------------------------------------- letterbox mapping


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_in_original_image_coordinates(device):
    # image 0: 640x360 landscape, image 1: 360x640 portrait, both letterboxed into 512x512
    p = letterbox_params([(360, 640), (640, 360)], (512, 512))
    assert p.scale.tolist() == pytest.approx([0.8, 0.8]) and p.offset.tolist() == [[0, 112], [112, 0]]
    out = blank(B=2, C=1, H=128, W=128)
    orig0 = torch.tensor([100.0, 50.0, 300.0, 250.0])
    put_object(out, 0, 0, (orig0 * 0.8 + torch.tensor([0.0, 112.0, 0.0, 112.0])).tolist())
    put_object(out, 0, 0, (300.0, 100.0, 460.0, 140.0), tag=3.0)  # reaches into the top padding
    orig1 = torch.tensor([10.0, 500.0, 350.0, 630.0])
    put_object(out, 1, 0, (orig1 * 0.8 + torch.tensor([112.0, 0.0, 112.0, 0.0])).tolist())
    det = decode(to(out, device), DecodeConfig(), scale=p.scale.to(device), offset=p.offset.to(device),
                 orig_size=p.orig_size.to(device))
    check_layout(det, 2, 100)
    assert det.num.tolist() == [2, 1]
    got0 = sorted(det.boxes[0, :2].cpu().tolist())
    assert got0[0] == pytest.approx(orig0.tolist(), abs=1e-3)
    assert got0[1] == pytest.approx([375.0, 0.0, 575.0, 35.0], abs=1e-3)  # y1 = -15 clipped to 0
    assert det.boxes[1, 0].cpu().tolist() == pytest.approx(orig1.tolist(), abs=1e-3)
    # without the parameters the boxes stay in network-input pixels
    plain = decode(to(out, device), DecodeConfig())
    assert plain.boxes[1, 0].cpu().tolist() == pytest.approx([120.0, 400.0, 392.0, 504.0], abs=1e-3)


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("nms", NMS)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_random_heatmaps_match_reference(nms, mode):
    out = random_outputs(B=2, seed=3)
    cfg = DecodeConfig(nms=nms, mode=mode)
    p = letterbox_params([(72, 128), (96, 80)], (96, 96))
    kw = dict(scale=p.scale, offset=p.offset, orig_size=p.orig_size)
    det = decode(out, cfg, **kw)
    check_layout(det, 2, 100)
    assert det.num.min() > 0
    assert_matches_reference(det, reference_decode(out, cfg, **kw))


@pytest.mark.parametrize("nms", ["soft", "hard"])
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_sparse_heatmaps_and_other_settings_match_reference(nms, mode):
    out = random_outputs(B=2, C=2, H=20, W=28, seed=4, sparse=True)
    cfg = DecodeConfig(nms=nms, mode=mode, topk=40, num_dets=300, max_per_image=30, small_area=30.0**2,
                       score_threshold=0.2, ae_threshold=0.3, kernel=5)
    det = decode(out, cfg)
    check_layout(det, 2, 30)
    assert det.num.min() > 0
    assert_matches_reference(det, reference_decode(out, cfg))


@pytest.mark.parametrize("nms", NMS)
def test_batch_equals_per_image(nms):
    out = random_outputs(B=3, C=2, H=20, W=20, seed=5)
    cfg = DecodeConfig(nms=nms)
    det = decode(out, cfg)
    for b in range(3):
        one = decode({k: v[b : b + 1] for k, v in out.items()}, cfg)
        for full, single in zip(det, one):
            assert torch.allclose(full[b : b + 1].float(), single.float(), atol=1e-5)


def test_host_sync_and_max_per_image_do_not_change_results():
    out = random_outputs(B=2, seed=6)
    ref = decode(out, DecodeConfig())
    assert all(torch.equal(a, b) for a, b in zip(ref, decode(out, DecodeConfig(host_sync=False))))
    top5 = decode(out, DecodeConfig(max_per_image=5))
    check_layout(top5, 2, 5)
    assert top5.num.tolist() == [5, 5]
    assert torch.equal(top5.boxes, ref.boxes[:, :5]) and torch.equal(top5.scores, ref.scores[:, :5])


@pytest.mark.parametrize("nms", NMS)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_cpu_numpy_path_is_bit_identical_to_the_tensor_paths(monkeypatch, nms, mode):
    """On the CPU with host_sync the decoder runs numpy after the heatmap passes; the batched tensor
    code (host_sync=False, and its host_sync branch) and the GPU's plan (tensor keypoints, copied to the
    host, then numpy) must give exactly the same Detections."""
    cases = [
        (random_outputs(B=3, C=4, H=24, W=20, seed=21), DecodeConfig(nms=nms, mode=mode)),
        (random_outputs(B=2, C=2, H=20, W=28, seed=22, sparse=True),
         DecodeConfig(nms=nms, mode=mode, topk=40, num_dets=300, max_per_image=30, small_area=30.0**2,
                      score_threshold=0.2, ae_threshold=0.3, kernel=5, nms_sigma=0.3, nms_iou=0.35)),
        (random_outputs(B=2, C=3, H=16, W=16, seed=23), DecodeConfig(nms=nms, mode=mode, num_dets=7, max_per_image=4)),
    ]
    quantised = random_outputs(B=2, C=3, H=16, W=16, seed=24)  # ties everywhere: equal scores and boxes
    for k in ("tl_heat", "br_heat", "ct_heat"):
        quantised[k] = quantised[k].round()
    for k in ("tl_regr", "br_regr", "ct_regr"):
        quantised[k] = (quantised[k] * 2).round() / 2
    cases.append((quantised, DecodeConfig(nms=nms, mode=mode)))
    p = letterbox_params([(72, 128), (96, 80), (50, 50)], (96, 80))
    for i, (out, cfg) in enumerate(cases):
        B = out["tl_heat"].shape[0]
        kw = dict(scale=p.scale[:B], offset=p.offset[:B], orig_size=p.orig_size[:B]) if i % 2 == 0 else {}
        host = decode(out, cfg, **kw)
        no_sync = decode(out, dataclasses.replace(cfg, host_sync=False), **kw)
        others = [no_sync]
        for plan in ("copy", "device"):  # the GPU's plan (keypoints copied to the host), the tensor path's sync branch
            with monkeypatch.context() as m:
                m.setitem(decode_module._HOST_SYNC_PLAN, "cpu", plan)
                others.append(decode(out, cfg, **kw))
        for other in others:
            assert all(torch.equal(a, b) for a, b in zip(host, other)), (i, nms, mode)
        assert host.num.sum() > 0, i
        check_layout(host, B, cfg.max_per_image)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_numpy_path_with_half_precision_outputs(monkeypatch, dtype):
    """fp16 / bf16 head outputs (CPU autocast, fp16 models) take the numpy paths too: same results as the
    tensor path, and numpy never sees a dtype it cannot hold (bf16)."""
    out = {k: v.to(dtype) for k, v in random_outputs(B=2, seed=25).items()}
    host = decode(out, DecodeConfig())
    tensor = decode(out, DecodeConfig(host_sync=False))
    monkeypatch.setitem(decode_module._HOST_SYNC_PLAN, "cpu", "copy")  # the GPU plan (fp16 models run there)
    copied = decode(out, DecodeConfig())
    for other in (tensor, copied):
        assert all(torch.equal(a, b) for a, b in zip(host, other))
    assert host.boxes.dtype == torch.float32 and host.num.min() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_decode_plans_and_where_the_detections_end_up(monkeypatch, device):
    """host_sync on a GPU: keypoints on the device, one copy, the rest on the host; the detections go back
    to the outputs' device unless the caller takes CPU tensors (host_ok).  Every plan, same detections."""
    out = to(random_outputs(B=2, seed=26), device)
    p = letterbox_params([(72, 128), (96, 80)], (96, 80))
    kw = dict(scale=p.scale.to(device), offset=p.offset.to(device), orig_size=p.orig_size.to(device))
    base = decode(out, DecodeConfig(), **kw)
    assert all(t.device.type == device for t in base)
    plans = ["copy", "device"] + (["host"] if device == "cpu" else [])
    for plan in plans:
        monkeypatch.setitem(decode_module._HOST_SYNC_PLAN, device, plan)
        on_dev = decode(out, DecodeConfig(), **kw)
        on_host = decode(out, DecodeConfig(), host_ok=True, **kw)
        assert all(t.device.type == device for t in on_dev), plan
        assert all(t.device.type == ("cpu" if plan != "device" else device) for t in on_host), plan
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(on_dev, on_host)), plan
        if device == "cpu":  # bit-identical; on a GPU the host's float32 ops and exp may differ in the last bit
            assert all(torch.equal(a, b) for a, b in zip(base, on_dev)), plan
        else:
            assert torch.equal(base.num, on_dev.num) and torch.equal(base.labels, on_dev.labels), plan
            assert torch.allclose(base.boxes, on_dev.boxes, atol=1e-3), plan
            assert torch.allclose(base.scores, on_dev.scores, atol=1e-5), plan
    assert base.num.min() > 0
    if device != "cpu":
        monkeypatch.setitem(decode_module._HOST_SYNC_PLAN, device, "host")
        with pytest.raises(ValueError, match="'host' needs CPU outputs"):
            decode(out, DecodeConfig())


# ----------------------------------------------------------------------------- dtypes, devices, empty


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_inputs(device):
    out = blank(C=3)
    put_object(out, 0, 0, (10.5, 12.25, 70.0, 60.75), tag=1.0)
    put_object(out, 0, 2, (40.0, 50.0, 120.0, 126.0), tag=-1.0, scores=(0.6, 0.7, 0.95))
    ref = decode(to(out, device), DecodeConfig())
    half = decode(to(out, device, torch.float16), DecodeConfig())
    assert half.boxes.dtype == torch.float32 and torch.equal(half.num, ref.num)
    assert torch.allclose(half.boxes, ref.boxes, atol=1e-3)
    assert torch.allclose(half.scores, ref.scores, atol=2e-3)
    assert torch.equal(half.labels, ref.labels)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_inputs(device):
    out = random_outputs(B=2, seed=9)
    ref = decode(to(out, device), DecodeConfig())
    cl = {k: v.to(device).contiguous(memory_format=torch.channels_last) for k, v in out.items()}
    got = decode(cl, DecodeConfig())
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


@pytest.mark.parametrize("pass_elems,group_elems", [(1 << 30, 1 << 30), (2000, 900), (1, 1)])
def test_cpu_chunking_does_not_change_results(monkeypatch, pass_elems, group_elems):
    """One pass over all maps, several images per pass, class groups of one image merged."""
    out = random_outputs(B=3, C=4, H=12, W=16, seed=13)
    out["ct_heat"][1, :, 3:6, 4:8] = 25.0  # saturated plateau: many peaks with score exactly 1
    expect = decode(out, DecodeConfig(topk=30))
    monkeypatch.setattr(keypoints_module, "_CPU_PASS_ELEMS", pass_elems)
    monkeypatch.setattr(keypoints_module, "_CPU_GROUP_ELEMS", group_elems)
    got = decode(out, DecodeConfig(topk=30))
    assert all(torch.equal(a, b) for a, b in zip(expect, got))
    tensor_path = decode(out, DecodeConfig(topk=30, host_sync=False))  # torch selection and merging
    assert all(torch.equal(a, b) for a, b in zip(expect, tensor_path))
    assert_matches_reference(got, reference_decode(out, DecodeConfig(topk=30)))


def test_saturated_neighbours_are_all_peaks_like_the_reference():
    """Peaks are found on the float32 probabilities: neighbouring logits 20 and 30 both give 1.0,
    so both are local maxima (a logit-space peak test would keep only one)."""
    out = blank(C=1)
    put_object(out, 0, 0, (20.0, 20.0, 100.0, 100.0), scores=(0.9, 0.8, 0.7))
    out["tl_heat"][0, 0, 5, 5] = 30.0  # the tl corner cell (20 / 4 = 5)
    out["tl_heat"][0, 0, 5, 6] = 20.0  # its right neighbour, same probability 1.0 in float32
    cfg = DecodeConfig(nms="none")
    det = decode(out, cfg)
    assert int(det.num[0]) == 2
    assert det.scores[0, :2].tolist() == pytest.approx([(1 + 0.8 + 0.7) / 3] * 2, abs=1e-6)
    assert_matches_reference(det, reference_decode(out, cfg))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("nms", NMS)
def test_cuda_matches_cpu(nms):
    out = random_outputs(B=2, seed=7)
    cpu = decode(out, DecodeConfig(nms=nms))
    gpu = decode(to(out, "cuda"), DecodeConfig(nms=nms))
    assert torch.equal(cpu.num, gpu.num.cpu()) and torch.equal(cpu.labels, gpu.labels.cpu())
    assert torch.allclose(cpu.boxes, gpu.boxes.cpu(), atol=1e-3)
    assert torch.allclose(cpu.scores, gpu.scores.cpu(), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["triplet", "pairs"])
def test_empty_inputs(device, mode):
    for nms in NMS:
        cfg = DecodeConfig(mode=mode, nms=nms)
        det = decode(to(blank(B=2), device), cfg)  # no peaks at all
        check_layout(det, 2, 100)
        assert det.num.tolist() == [0, 0]
        assert det.num.device.type == torch.device(device).type
        for shape in [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 0)]:
            B, C, H, W = shape
            empty = to(blank(B, C, H, W), device)
            det = decode(empty, cfg, scale=torch.ones(B), offset=torch.zeros(B, 2), orig_size=torch.ones(B, 2))
            check_layout(det, B, 100)
            assert det.num.tolist() == [0] * B
    # corners without any valid pair: only an inverted pair and a class mismatch
    out = blank(C=2)
    put_point(out, "tl", 0, 0, 80.0, 80.0, 0.9)
    put_point(out, "br", 0, 0, 20.0, 20.0, 0.9)
    put_point(out, "br", 0, 1, 100.0, 100.0, 0.9)
    assert int(decode(to(out, device), DecodeConfig(mode=mode)).num[0]) == 0


def test_tiny_map_with_topk_larger_than_map():
    out = blank(C=1, H=2, W=2)
    put_object(out, 0, 0, (0.0, 0.0, 5.0, 6.0), scores=(0.9, 0.8, 0.7))
    det = decode(out, DecodeConfig())
    assert int(det.num[0]) == 1
    assert det.boxes[0, 0].tolist() == pytest.approx([0.0, 0.0, 5.0, 6.0])


def test_no_grad_and_validation():
    out = random_outputs(B=1, seed=8)
    out = {k: v.requires_grad_() for k, v in out.items()}
    det = decode(out)
    assert not det.boxes.requires_grad and not det.scores.requires_grad
    bad = dict(out)
    del bad["ct_heat"]
    with pytest.raises(ValueError, match="ct_heat"):
        decode(bad)
    assert decode(bad, DecodeConfig(mode="pairs")).num.shape == (1,)  # pairs mode needs no centres
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 5\)"):
        decode({**out, "tl_regr": torch.zeros(1, 2, 5, 5)})
    with pytest.raises(ValueError, match="tl_heat"):
        decode({k: v for k, v in out.items() if k != "tl_heat"})
    with pytest.raises(ValueError, match="offset"):
        decode(out, offset=torch.zeros(2, 2))


@pytest.mark.parametrize(
    "field,value",
    [
        ("topk", 0), ("num_dets", -1), ("kernel", 2), ("kernel", 0), ("stride", 0), ("n_small", 0),
        ("max_per_image", 0), ("ae_threshold", 0.0), ("small_area", -1.0), ("score_threshold", 1.0),
        ("mode", "quad"), ("nms", "soft_gaussianish"), ("nms_sigma", 0.0), ("nms_iou", 1.5), ("topk", 2.5),
        ("exclusive_centres", 1), ("size_ratio", 0.5), ("size_ratio", -1.0), ("size_ratio", True),
        ("group_score_ratio", -0.1), ("group_score_ratio", float("inf")), ("group_score_ratio", True),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field) as err:
        DecodeConfig(**{field: value})
    assert repr(value) in str(err.value)


def test_config_defaults_follow_the_paper():
    cfg = DecodeConfig()
    assert dataclasses.asdict(cfg) == {
        "topk": 70, "ae_threshold": 0.5, "num_dets": 1000, "kernel": 3, "stride": 4, "mode": "triplet",
        "small_area": 22500.0, "n_small": 3, "n_large": 5, "score_threshold": 0.0, "nms": "soft",
        "nms_sigma": 0.5, "nms_iou": 0.5, "max_per_image": 100, "host_sync": True,
        "exclusive_centres": True,  # ours, not the paper's (test_exclusive_centres.py)
        "size_ratio": 2.0,  # ours; only for models with a ct_size output (test_size_check.py)
        "group_score_ratio": 0.5,  # ours (test_group_boxes.py)
        "flip_test": False,  # the paper's test adds the flipped image; its caller must run both (test_flip_test.py)
    }
    # the defaults are used by the decoder: a 150 x 150 box is "small" (n = 3), 151 x 150 is not
    out = blank(C=1, H=64, W=64)
    put_object(out, 0, 0, (0.0, 0.0, 150.0, 150.0), center=(58.0, 75.0))  # in (50, 100), not in (60, 90)
    assert int(decode(out).num[0]) == 1
    out = blank(C=1, H=64, W=64)
    put_object(out, 0, 0, (0.0, 0.0, 151.0, 150.0), center=(58.0, 75.0))
    assert int(decode(out).num[0]) == 0
