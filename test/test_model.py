"""Network shapes, builder validation, torchvision-compatible backbone keys, safe weight files, ONNX export."""
import json

import pytest
import torch

from centernet_ros.backbone import ResNet18, load_torchvision_checkpoint, resnet18
from centernet_ros.model import HEAT_BIAS, OUTPUT_NAMES, ModelConfig, centernet_resnet18
from centernet_ros.weights import WeightsError, load_model, read_meta, save_model

# Keys of torchvision.models.resnet18().state_dict() (written out: torchvision is not installed here).
TV_KEYS = ["conv1.weight"] + [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
for layer, downsample in ((1, False), (2, True), (3, True), (4, True)):
    for block in (0, 1):
        p = f"layer{layer}.{block}"
        TV_KEYS += [f"{p}.conv1.weight", f"{p}.conv2.weight"]
        for bn in ("bn1", "bn2"):
            TV_KEYS += [f"{p}.{bn}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        if block == 0 and downsample:
            TV_KEYS += [f"{p}.downsample.0.weight"]
            TV_KEYS += [f"{p}.downsample.1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def small_model(**kw):
    return centernet_resnet18(num_classes=kw.pop("num_classes", 3), head_width=16, pool_width=8, **kw)


def test_backbone_keys_match_torchvision():
    assert sorted(ResNet18().state_dict()) == sorted(TV_KEYS)


def test_torchvision_checkpoint_loads_and_fc_is_ignored(tmp_path):
    src = ResNet18()
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = centernet_resnet18(num_classes=2, backbone_weights=path)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    # The same file passed as `weights` (not a .safetensors model) initialises the backbone too.
    model2 = centernet_resnet18(num_classes=2, weights=path)
    assert torch.equal(model2.backbone.conv1.weight, state["conv1.weight"])


def test_bad_torchvision_checkpoint_is_reported(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="wrong.pth"):
        load_torchvision_checkpoint(ResNet18(), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        resnet18(weights=garbage)


@pytest.mark.parametrize("hw", [(64, 96), (128, 128)])
def test_output_shapes_and_heat_prior(hw):
    model = small_model().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    H, W = hw[0] // 4, hw[1] // 4
    expect = {"tl_heat": 3, "br_heat": 3, "ct_heat": 3, "tl_tag": 1, "br_tag": 1, "tl_regr": 2, "br_regr": 2, "ct_regr": 2}
    assert list(out) == list(OUTPUT_NAMES)
    for k, c in expect.items():
        assert out[k].shape == (2, c, H, W), k
    assert model.tl_head.heat.bias.detach().eq(HEAT_BIAS).all()


def test_plain_corner_pooling_variant_runs():
    model = small_model(cascade=False, center_pooling=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["ct_heat"].shape == (1, 3, 16, 16)


def test_input_validation():
    model = small_model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match="Tensor\\[B, 3, H, W\\]"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="num_classes.*0"):
        ModelConfig(num_classes=0)
    with pytest.raises(ValueError, match="'wide'"):
        ModelConfig(num_classes=2, head_width="wide")


def test_save_load_roundtrip_and_metadata(tmp_path):
    model = small_model().eval()
    path = save_model(tmp_path / "m.safetensors", model, class_names=["a", "b", "c"], input_size=(64, 96), extra={"ep": 3})
    meta = read_meta(path)
    assert meta.class_names == ["a", "b", "c"] and meta.input_size == (64, 96) and meta.extra == {"ep": 3}
    assert meta.model_config == model.cfg
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    # fp16 storage loads back into an fp32 model, close to the original
    path16 = save_model(tmp_path / "m16.safetensors", model, class_names=["a", "b", "c"], input_size=64, half=True)
    assert path16.stat().st_size < path.stat().st_size * 0.6
    loaded16, _ = load_model(path16)
    assert loaded16.tl_head.heat.weight.dtype == torch.float32
    # builder path
    again = centernet_resnet18(num_classes=3, head_width=16, pool_width=8, weights=path)
    assert torch.equal(again.br_head.regr.weight, model.br_head.regr.weight)


def test_corrupt_and_missing_weights_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found: '.*nope.safetensors'"):
        load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_model(bad)
    model = small_model()
    good = save_model(tmp_path / "good.safetensors", model, class_names=["a", "b", "c"], input_size=64)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="trunc.safetensors"):
        load_model(truncated)
    with pytest.raises(ValueError, match="class names"):
        save_model(tmp_path / "x.safetensors", model, class_names=["a"], input_size=64)
    with pytest.raises(WeightsError, match="does not fit"):
        centernet_resnet18(num_classes=4, head_width=16, pool_width=8, weights=good)


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from centernet_ros.export import export_onnx

    model = small_model().eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 96), class_names=["a", "b", "c"], batch_size=2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["a", "b", "c"] and json.loads(meta["input_size"]) == [64, 96]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    got = sess.run(None, {"images": x.numpy()})
    for name, arr in zip(OUTPUT_NAMES, got):
        torch.testing.assert_close(torch.from_numpy(arr), ref[name], rtol=1e-3, atol=1e-3)


def test_torchscript_export_roundtrip(tmp_path):
    from centernet_ros.export import export_torchscript

    model = small_model().eval()
    path = export_torchscript(model, tmp_path / "m.pt", input_size=(64, 64), class_names=["a", "b", "c"])
    extra = {"class_names": "", "input_size": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["class_names"]) == ["a", "b", "c"] and json.loads(extra["input_size"]) == [64, 64]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, ref = loaded(x), model(x)
    for name, t in zip(OUTPUT_NAMES, got):
        torch.testing.assert_close(t, ref[name])


def test_export_cli_reports_bad_weights(tmp_path, capsys):
    from centernet_ros.export import main

    assert main(["--weights", str(tmp_path / "missing.safetensors"), "--onnx", str(tmp_path / "o.onnx")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
