"""centernet-fit-size: the ridge read-out against a reference, the centre features at the right cells, the
refitted head inside the model, the CLI on a tiny dataset.

Letters: N rows (boxes), F features, T targets.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from centernet_ros.datasets import DetectionDataset, Sample
from centernet_ros.model import centernet_resnet18
from centernet_ros.size_fit import SizeFitConfig, centre_features, fit_readout, main, refit_size_head
from centernet_ros.weights import load_model, save_model

from dataset_files import yolo_root


def _tiny(center_size: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return centernet_resnet18(num_classes=2, head_width=16, pool_width=8, center_size=center_size).eval()


def test_fit_readout_recovers_a_planted_map_and_matches_weighted_least_squares():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g)  # (N, F)
    w_true, b_true = torch.randn(2, 6, generator=g), torch.tensor([1.5, -0.5])
    t = f @ w_true.T + b_true  # (N, T)
    w, b = fit_readout(f, t, ridge=0.0)
    torch.testing.assert_close(w, w_true, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, b_true, atol=1e-5, rtol=0)
    # noisy targets, row weights and a ridge: the reference is lstsq on rows scaled by sqrt(weight), with
    # sqrt(ridge) * I rows appended for the weights only (not the bias)
    t = t + 0.3 * torch.randn(t.shape, generator=g)
    rw = torch.rand(200, generator=g) + 0.1
    ridge = 5.0
    x = np.hstack([f.double().numpy(), np.ones((200, 1))]) * np.sqrt(rw.double().numpy())[:, None]
    y = t.double().numpy() * np.sqrt(rw.double().numpy())[:, None]
    x = np.vstack([x, np.hstack([math.sqrt(ridge) * np.eye(6), np.zeros((6, 1))])])
    y = np.vstack([y, np.zeros((6, 2))])
    ref = np.linalg.lstsq(x, y, rcond=None)[0]  # (F+1, T)
    w, b = fit_readout(f, t, rw, ridge=ridge)
    np.testing.assert_allclose(w.numpy(), ref[:6].T, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref[6], atol=1e-5)


@pytest.mark.parametrize(
    "args, kwargs, needle",
    [
        ((torch.zeros(0, 3), torch.zeros(0, 2)), {}, "no rows"),
        ((torch.zeros(4, 3), torch.zeros(5, 2)), {}, "features \\(N, F\\) and targets"),
        ((torch.zeros(4, 3), torch.zeros(4, 2), torch.tensor([1.0, 1.0, 0.0, 1.0])), {},
         "weights must be > 0, got a minimum of 0.0"),
        ((torch.zeros(4, 3), torch.zeros(4, 2), torch.ones(3)), {}, "weights must hold 4 numbers, got shape \\(3,\\)"),
        ((torch.zeros(4, 3), torch.zeros(4, 2)), {"ridge": -1.0}, "ridge must be >= 0, got -1.0"),
    ],
)
def test_fit_readout_errors(args, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        fit_readout(*args, **kwargs)


def test_centre_features_are_the_size_conv_input_at_each_box_centre_cell():
    model = _tiny()
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    big = np.random.default_rng(1).integers(0, 255, (128, 192, 3), dtype=np.uint8)  # letterboxed at scale 0.5
    boxes = [np.array([[8, 12, 40, 28], [60, 0, 61, 30]], np.float32),  # the second is 1 px wide: left out
             np.array([[16, 24, 80, 56]], np.float32)]  # (8, 12, 40, 28) at input scale
    f, t = centre_features(model, [img, big], boxes, input_size=(64, 96))
    grabbed = []
    hook = model.ct_head.conv.register_forward_hook(lambda _m, _i, o: grabbed.append(o))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 96))  # only to learn the feature width
    hook.remove()
    assert f.shape == (2, grabbed[0].shape[1]) and t.shape == (2, 2)
    # box (8, 12, 40, 28): centre (24, 20) input px -> cell (6, 5); size 32 x 16 px = 8 x 4 cells
    torch.testing.assert_close(t, torch.tensor([[math.log(8), math.log(4)]] * 2))
    from centernet_ros.preprocess import letterbox

    x, _ = letterbox([img, big], size=(64, 96), bgr=False)
    grabbed.clear()
    hook = model.ct_head.conv.register_forward_hook(lambda _m, _i, o: grabbed.append(o))
    with torch.no_grad():
        out = model(x)
    hook.remove()
    torch.testing.assert_close(f, grabbed[0][:, :, 5, 6])
    # the model's own size output there is the read-out of exactly these features
    conv = model.ct_head.size
    torch.testing.assert_close(out["ct_size"][:, :, 5, 6], f @ conv.weight.reshape(2, -1).T + conv.bias)


def test_centre_features_empty_inputs_and_errors():
    model = _tiny()
    f, t = centre_features(model, [], [], input_size=(64, 64))
    assert f.shape == (0, 16) and t.shape == (0, 2)
    img = np.zeros((64, 64, 3), np.uint8)
    f, t = centre_features(model, [img], [np.zeros((0, 4), np.float32)], input_size=(64, 64))
    assert f.shape == (0, 16) and t.shape == (0, 2)
    with pytest.raises(ValueError, match="1 images but 2 box arrays"):
        centre_features(model, [img], [np.zeros((0, 4))] * 2, input_size=(64, 64))
    with pytest.raises(ValueError, match="no centre size head"):
        centre_features(_tiny(center_size=False), [img], [np.zeros((0, 4))], input_size=(64, 64))


class _Boxes(DetectionDataset):
    """Random images with given boxes (image pixels)."""

    def __init__(self, boxes: list[np.ndarray], hw=(64, 96)) -> None:
        self.boxes, self.hw = boxes, hw
        self.class_names = ["a", "b"]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> Sample:
        img = np.random.default_rng(i).integers(0, 255, (*self.hw, 3), dtype=np.uint8)
        b = np.asarray(self.boxes[i], np.float32).reshape(-1, 4)
        return Sample(img, b, np.zeros(len(b), np.int64), i, f"img{i}")


def test_refit_changes_only_the_size_conv_and_puts_the_fit_in_the_model():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(12):
        xy = rng.uniform(0, 40, (5, 2))
        wh = rng.uniform(4, 50, (5, 2))
        boxes.append(np.hstack([xy, np.minimum(xy + wh, [95, 63])]))
    ds_a, ds_b = _Boxes(boxes[:8]), _Boxes(boxes[8:])
    cfg = SizeFitConfig(weights="-", config="-", out="-", max_images=None, progress=False, ridge=0.1)
    logged = []
    summary = refit_size_head(model, [("a", ds_a, 1.0), ("b", ds_b, 3.0)], cfg, [(64, 96), (32, 64)], log=logged.append)
    after = model.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["ct_head.size.bias", "ct_head.size.weight"]
    assert summary["datasets"] == {"a": {"images": 8, "rows": 2 * 40}, "b": {"images": 4, "rows": 2 * 20}}
    assert len(logged) == 2 and "before" in logged[0] and "after" in logged[0]
    assert summary["a"]["before"] != summary["a"]["after"]  # "before" is the old head's, not the new one's
    # the head now holds the weighted ridge solution on the same rows (dataset b weighs 3x dataset a in all)
    feats, targets, weights = [], [], []
    for ds, share in ((ds_a, 1.0), (ds_b, 3.0)):
        fs, ts = [], []
        for size in ((64, 96), (32, 64)):
            s = [ds[i] for i in range(len(ds))]
            f, t = centre_features(model, [x.image for x in s], [x.boxes for x in s], input_size=size)
            fs.append(f)
            ts.append(t)
        f, t = torch.cat(fs), torch.cat(ts)
        feats.append(f)
        targets.append(t)
        weights.append(torch.full((len(f),), share / len(f)))
    w_all = torch.cat(weights)
    w, b = fit_readout(torch.cat(feats), torch.cat(targets), w_all * (len(w_all) / w_all.sum()), ridge=0.1)
    torch.testing.assert_close(model.ct_head.size.weight.reshape(2, -1), w)
    torch.testing.assert_close(model.ct_head.size.bias, b)


def test_refit_without_boxes_or_size_head_is_refused():
    cfg = SizeFitConfig(weights="-", config="-", out="-", progress=False)
    with pytest.raises(ValueError, match="no boxes in the training datasets"):
        refit_size_head(_tiny(), [("a", _Boxes([np.zeros((0, 4))]), 1.0), ("b", _Boxes([]), 1.0)], cfg, [(64, 96)])
    with pytest.raises(ValueError, match="no input size"):
        refit_size_head(_tiny(), [("a", _Boxes([np.zeros((0, 4))]), 1.0)], cfg, [])
    with pytest.raises(ValueError, match="dataset names must be distinct, got \\['a', 'a'\\]"):
        refit_size_head(_tiny(), [("a", _Boxes([np.zeros((0, 4))]), 1.0)] * 2, cfg, [(64, 96)])
    with pytest.raises(ValueError, match="no centre size head"):
        refit_size_head(_tiny(center_size=False), [("a", _Boxes([np.zeros((0, 4))]), 1.0)], cfg, [(64, 96)])


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"input_sizes": ((60, 64),)}, "positive multiples of 32, got \\(\\(60, 64\\),\\)"),
        ({"max_images": 0}, "max_images must be >= 1 or None, got 0"),
        ({"ridge": -0.5}, "ridge must be a finite number >= 0, got -0.5"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ],
)
def test_config_errors_quote_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SizeFitConfig(weights="w", config="c", out="o", **kwargs)


def test_cli_refits_a_model_file_on_a_training_config(tmp_path, capsys):
    labels = {"img0": "0 0.5 0.5 0.5 0.5\n1 0.3 0.4 0.2 0.3\n", "img1": "1 0.6 0.5 0.4 0.6\n"}
    root = yolo_root(tmp_path, labels)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(f"data:\n  train:\n    - path: {root}\n      split: train\n")
    src, out = tmp_path / "m.safetensors", tmp_path / "refit.safetensors"
    model = _tiny()
    save_model(src, model, class_names=["a", "b"], input_size=(64, 96), extra={"step": 7, "val": {"ap": 0.1}})
    assert main(["--weights", str(src), "--config", str(cfg_path), "--out", str(out), "--no-progress",
                 "--input-size", "64", "96", "--input-size", "32", "64"]) == 0
    refit, meta = load_model(out)
    assert meta.extra["step"] == 7 and meta.extra["size_fit"]["input_sizes"] == [[64, 96], [32, 64]]
    assert "val" not in meta.extra  # the source's validation figures are not this file's
    assert meta.extra["size_fit"]["datasets"]["ds"] == {"images": 2, "rows": 6}  # 3 boxes at 2 sizes
    old = {k: v.half().float() for k, v in model.state_dict().items()}  # the file is fp16
    for k, v in refit.state_dict().items():
        assert torch.equal(v, old[k]) != k.startswith("ct_head.size."), k
    assert "wrote" in capsys.readouterr().out
    # a model without the size head: a clear error, exit 2, no file
    save_model(src, _tiny(center_size=False), class_names=["a", "b"], input_size=(64, 96))
    assert main(["--weights", str(src), "--config", str(cfg_path), "--out", str(tmp_path / "x.safetensors"),
                 "--no-progress"]) == 2
    assert "no centre size head" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    # user errors: exit 2 and one line naming the problem, before any fitting
    base = ["--config", str(cfg_path), "--no-progress"]
    for args, needle in (
        (["--weights", str(tmp_path / "missing.safetensors"), "--out", str(out)], "missing.safetensors"),
        (["--weights", str(out), "--out", str(tmp_path)], "--out must name a .safetensors file"),
        (["--weights", str(out), "--out", str(out), "--device", "toaster"], "bad --device 'toaster'"),
    ):
        assert main(args + base) == 2, args
        assert needle in capsys.readouterr().err, args
