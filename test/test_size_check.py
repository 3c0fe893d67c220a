"""The centre size head (``ModelConfig.center_size``, output ``ct_size``) and ``DecodeConfig.size_ratio``:
a centre keypoint confirms only a box of about the size it predicts (hand-made scenes, the reference
decoder, every decode path, flip test, the model, its files and its ONNX export).

Letters: B batch, C classes, H/W map height/width."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import decode_scenes as td
from centernet_ros.decode import DecodeConfig, decode
from centernet_ros.model import OUTPUT_NAMES, SIZE_NAME, centernet_resnet18
from centernet_ros.weights import WeightsError, load_model, load_state_into, save_model

from devices import DEVICES  # noqa: E402

A, X, B = (10.0, 40.0, 50.0, 80.0), (90.0, 40.0, 130.0, 80.0), (170.0, 40.0, 210.0, 80.0)
GROUP = (10.0, 40.0, 210.0, 80.0)  # A's top-left with B's bottom-right: X's centre (110, 60) in its central region
PAPER = DecodeConfig(exclusive_centres=False, nms="none", group_score_ratio=0.0)  # the paper's centre rule: only the size check acts


def put_size(out, b: int, x: float, y: float, w: float, h: float) -> None:
    """The centre head predicts a ``w`` x ``h`` (input px) object at the centre keypoint at input (x, y)."""
    if "ct_size" not in out:
        B, _, H, W = out["ct_heat"].shape
        out["ct_size"] = torch.zeros(B, 2, H, W)
    ix, iy = math.floor(x / td.STRIDE), math.floor(y / td.STRIDE)
    out["ct_size"][b, :, iy, ix] = torch.tensor([math.log(w / td.STRIDE), math.log(h / td.STRIDE)])


def queue(sizes: bool = True):
    """Three 40 x 40 cars in a row, class 1; A's top-left pairs with B's bottom-right (close tags): the group
    box, which the paper's rule passes on X's centre.  ``sizes``: each centre predicts its car's size."""
    out = td.blank(C=2, H=48, W=64)
    for box, tag in ((A, 0.0), (X, 5.0), (B, 0.2)):
        td.put_object(out, 0, 1, box, tag=tag)
        if sizes:
            put_size(out, 0, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 40.0, 40.0)
    return out


def boxes_of(det, b: int = 0):
    boxes, scores, _ = td.valid_rows(det, b)
    return {tuple(round(v, 2) for v in bx.tolist()): s for bx, s in zip(boxes, scores.tolist())}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("host_sync", [True, False])
def test_group_box_fails_the_size_of_the_centre_inside_it(device, host_sync):
    cfg = dataclasses.replace(PAPER, host_sync=host_sync)
    assert set(boxes_of(decode(td.to(queue(sizes=False), device), cfg))) == {A, X, B, GROUP}  # no ct_size
    out = td.to(queue(), device)
    assert set(boxes_of(decode(out, dataclasses.replace(cfg, size_ratio=0.0)))) == {A, X, B, GROUP}  # off
    got = boxes_of(decode(out, cfg))
    assert set(got) == {A, X, B}  # X's centre predicts a 40 x 40 car, the group box is 200 x 40
    assert got[X] == pytest.approx((0.9 + 0.8 + 0.7) / 3, abs=1e-6)  # scores as the paper gives them
    # a centre that predicts the group's size confirms it
    put_size(out, 0, 110.0, 60.0, 200.0, 40.0)
    assert set(boxes_of(decode(out, cfg))) == {A, B, GROUP}  # ... and no longer X (40 wide)


@pytest.mark.parametrize("device", DEVICES)
def test_ratio_applies_to_width_and_height_both_ways(device):
    for (w, h), ok_at in [((20.0, 40.0), 2.0), ((80.0, 40.0), 2.0), ((40.0, 25.0), 1.6), ((40.0, 64.0), 1.6)]:
        out = td.blank(C=1, H=32, W=32)
        td.put_object(out, 0, 0, (20.0, 20.0, 60.0, 60.0))
        put_size(out, 0, 40.0, 40.0, w, h)
        out = td.to(out, device)
        assert int(decode(out, DecodeConfig(size_ratio=ok_at * 1.001)).num[0]) == 1, (w, h)
        assert int(decode(out, DecodeConfig(size_ratio=ok_at * 0.999)).num[0]) == 0, (w, h)


def test_pairs_mode_ignores_the_size_head():
    out = queue()
    put_size(out, 0, 110.0, 60.0, 4.0, 4.0)  # X's centre now predicts a tiny object
    pairs = boxes_of(decode(out, dataclasses.replace(PAPER, mode="pairs")))
    assert {A, X, B, GROUP} <= set(pairs)


@pytest.mark.parametrize("exclusive", [True, False])
def test_random_heatmaps_match_the_reference_and_every_path(monkeypatch, exclusive):
    changed = False
    for seed, kw in ((41, {}), (42, dict(topk=40, num_dets=300, small_area=30.0**2, size_ratio=1.5))):
        out = td.random_outputs(B=2, C=3, H=24, W=20, seed=seed)
        g = torch.Generator().manual_seed(seed)
        out["ct_size"] = 2.0 + 0.8 * torch.randn(2, 2, 24, 20, generator=g)  # ~30 px objects, widely spread
        cfg = DecodeConfig(exclusive_centres=exclusive, nms="none", **kw)
        host = td.decode_on_every_plan(monkeypatch, out, cfg, (seed, exclusive))
        off = decode(out, dataclasses.replace(cfg, size_ratio=0.0))
        assert (host.num <= off.num).all()  # the check only removes boxes
        changed |= not torch.equal(host.num, off.num)
    assert changed  # the check acts on these maps


@pytest.mark.parametrize("device", DEVICES)
def test_flip_test_checks_each_view_with_its_own_sizes(device):
    one = queue()
    mirrored = td.blank(C=2, H=48, W=64)  # the same scene mirrored, as the flipped view of the image sees it
    w_in = 64 * td.STRIDE
    for box, tag in ((A, 0.0), (X, 5.0), (B, 0.2)):
        mb = (w_in - box[2], box[1], w_in - box[0], box[3])
        td.put_object(mirrored, 0, 1, mb, tag=-tag)
        put_size(mirrored, 0, (mb[0] + mb[2]) / 2, (mb[1] + mb[3]) / 2, 40.0, 40.0)
    both = td.to({k: torch.cat([one[k], mirrored[k]]) for k in one}, device)
    got = boxes_of(decode(both, dataclasses.replace(PAPER, flip_test=True)))
    assert set(got) == {A, X, B}
    no_size = {k: v for k, v in both.items() if k != "ct_size"}
    assert GROUP in boxes_of(decode(no_size, dataclasses.replace(PAPER, flip_test=True)))


def test_empty_batch_and_bad_shapes():
    out = queue()
    empty = {k: v[:0] for k, v in out.items()}
    assert decode(empty, DecodeConfig()).num.shape == (0,)
    with pytest.raises(ValueError, match="ct_size"):
        decode({**out, "ct_size": torch.zeros(1, 1, 48, 64)}, DecodeConfig())
    # a wrong shape is not an error when the check is off: the output is not read
    assert int(decode({**out, "ct_size": torch.zeros(1, 1, 48, 64)}, DecodeConfig(size_ratio=0.0)).num[0]) >= 3


def small_model(**kw):
    return centernet_resnet18(num_classes=3, head_width=16, pool_width=8, **kw)


def test_model_outputs_the_size_head_only_when_asked():
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain, sized = small_model().eval()(x), small_model(center_size=True).eval()(x)
    assert list(plain) == list(OUTPUT_NAMES)
    assert list(sized) == [*OUTPUT_NAMES, SIZE_NAME] and sized[SIZE_NAME].shape == (2, 2, 16, 24)
    # a fresh head predicts about 8 map cells (32 px): boxes of 16-64 px pass at size_ratio 2
    assert sized[SIZE_NAME].mean().item() == pytest.approx(math.log(8), abs=0.5)


def test_files_keep_the_size_head_and_old_files_initialise_the_rest(tmp_path):
    old = small_model()
    save_model(tmp_path / "old.safetensors", old, class_names=["a", "b", "c"], input_size=(64, 64))
    sized = small_model(center_size=True, weights=tmp_path / "old.safetensors")  # fine-tuning an older model
    for k, v in old.state_dict().items():
        assert torch.equal(sized.state_dict()[k], v), k
    with pytest.raises(WeightsError, match="missing"):  # a file without the head does not load as a whole model
        load_state_into(small_model(center_size=True), tmp_path / "old.safetensors")
    save_model(tmp_path / "new.safetensors", sized, class_names=["a", "b", "c"], input_size=(64, 64))
    loaded, meta = load_model(tmp_path / "new.safetensors")
    assert meta.model_config.center_size and loaded.output_names[-1] == SIZE_NAME
    assert torch.equal(loaded.ct_head.size.weight, sized.ct_head.size.weight)
    with pytest.raises(WeightsError, match="unexpected"):  # nor the other way round
        load_state_into(small_model(), tmp_path / "new.safetensors")


def test_onnx_export_carries_the_size_head(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from centernet_ros.export import export_onnx

    model = small_model(center_size=True).eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 96), class_names=["a", "b", "c"], batch_size=1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [*OUTPUT_NAMES, SIZE_NAME]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))
    torch.testing.assert_close(torch.from_numpy(got[SIZE_NAME]), ref[SIZE_NAME], rtol=1e-3, atol=1e-3)
