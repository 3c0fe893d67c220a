"""INT8 model (centernet_ros.int8, centernet-export --int8) and the detector's onnxruntime-int8 backend.

Legend: B batch, C classes, H/W map size.  The tiny models here quantise in a few seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime.quantization", reason="onnxruntime (with its quantization tools) not installed")
pytest.importorskip("onnx", reason="onnx not installed")

from centernet_ros.detector import Detector, DetectorConfig  # noqa: E402
from centernet_ros.int8 import (  # noqa: E402
    Int8Config,
    calibration_images,
    check_int8_model,
    default_int8_path,
    quantize_int8,
    read_onnx_metadata,
)
from centernet_ros.model import OUTPUT_NAMES, centernet_resnet18  # noqa: E402
from centernet_ros.weights import load_model, save_model  # noqa: E402

SIZE = (64, 96)  # (H, W) network input of the tests


def _images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` blurred random BGR images of assorted sizes written as PNG into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 0)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), img)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    model = centernet_resnet18(num_classes=2, head_width=16, pool_width=8)
    with torch.no_grad():  # livelier heads than the initialisation's near-constant maps
        for head in (model.tl_head, model.br_head, model.ct_head):
            for conv in (head.heat, head.tag, head.regr):
                if conv is not None:
                    conv.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("int8") / "tiny.safetensors"
    save_model(path, model, class_names=["a", "b"], input_size=SIZE)
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    return _images(tmp_path_factory.mktemp("calib") / "images", 6)


@pytest.fixture(scope="module")
def int8_pair(weights, calib, tmp_path_factory) -> tuple[Path, Path]:
    """The INT8 model at the default path, and the same calibration without the uint8 max chains."""
    model, meta = load_model(weights)
    fused = quantize_int8(model, default_int8_path(weights, SIZE), weights=weights, input_size=SIZE,
                          class_names=meta.class_names, cfg=Int8Config(calib, calib_count=4))
    plain = quantize_int8(model, tmp_path_factory.mktemp("plain") / "plain.onnx", weights=weights, input_size=SIZE,
                          class_names=meta.class_names, cfg=Int8Config(calib, calib_count=4, fuse_chains=False))
    return fused, plain


def _inputs(tmp: Path, n: int = 2) -> np.ndarray:
    """``float32[n, 3, H, W]``: held-out images like the calibration ones, letterboxed as the detector does."""
    from centernet_ros.preprocess import letterbox

    files = sorted(_images(tmp, n, seed=99).iterdir())
    x, _ = letterbox([torch.from_numpy(cv2.imread(str(f))) for f in files], size=SIZE, bgr=True)
    return x.numpy()


def _close(got: np.ndarray, ref: np.ndarray, name: str) -> None:
    """INT8 output vs fp32: same shape, relative RMS error < 15 %, correlation > 0.95."""
    assert got.shape == ref.shape, name
    rel = float(np.sqrt(np.mean((got - ref) ** 2)) / (ref.std() + 1e-6))
    assert rel < 0.15, (name, rel)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95, name


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))


def test_calibration_images_are_spread_over_the_list(tmp_path):
    folder = _images(tmp_path / "ds" / "train" / "images", 10)
    picked = calibration_images(Int8Config(tmp_path / "ds", calib_count=4))  # dataset root -> train/images
    assert [p.name for p in picked] == ["img000.png", "img002.png", "img005.png", "img007.png"]
    assert len(calibration_images(Int8Config(folder, calib_count=50))) == 10  # a plain folder; all when fewer
    with pytest.raises(FileNotFoundError, match="no such folder"):
        calibration_images(Int8Config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        calibration_images(Int8Config(tmp_path / "empty"))
    for bad, match in (({"calib_count": 0}, "calib_count must be an int >= 1, got 0"),
                       ({"method": "kl"}, "'kl'"), ({"calib_data": ""}, "calib_data")):
        with pytest.raises(ValueError, match=match):
            Int8Config(**{"calib_data": folder, **bad})


def test_int8_file_metadata_and_graph(weights, int8_pair):
    import onnx

    fused, _ = int8_pair
    assert fused == weights.with_name("tiny.int8-64x96.onnx")
    meta = read_onnx_metadata(fused)
    assert json.loads(meta["class_names"]) == ["a", "b"] and json.loads(meta["input_size"]) == list(SIZE)
    info = json.loads(meta["int8"])
    assert info["images"] == 4 and info["method"] == "minmax" and info["per_channel"] is True
    assert info["uint8_chains"] == 8  # 2 corner pools x 2 branches x (look + pool) directional chains
    graph = onnx.load(str(fused)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 10 and "Conv" in ops  # QDQ around every convolution
    init = {t.name: t for t in graph.initializer}
    conv_w = [init[graph_input] for n in graph.node if n.op_type == "DequantizeLinear"
              for graph_input in n.input[:1] if graph_input in init and len(init[graph_input].dims) == 4]
    assert conv_w and all(t.data_type == onnx.TensorProto.INT8 for t in conv_w)  # int8 weights
    scales = [init[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
              and len(init[n.input[0]].dims) == 4]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # one scale per output channel
    max_inputs = {n.input[0] for n in graph.node if n.op_type == "Max"}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert max_inputs and all(producers.get(i) != "DequantizeLinear" for i in max_inputs)  # chains on codes


def test_uint8_max_chains_are_exact_and_int8_is_close_to_fp32(weights, int8_pair, tmp_path):
    """The chains on uint8 codes give bit for bit the fp32 chains on the dequantised values; the whole
    INT8 network stays close to the fp32 one."""
    from centernet_ros.export import onnx_bytes

    fused, plain = int8_pair
    x = _inputs(tmp_path)
    a, b = _run(fused, x), _run(plain, x)
    assert list(a) == list(OUTPUT_NAMES)
    for k in OUTPUT_NAMES:
        np.testing.assert_array_equal(a[k], b[k])
    import onnxruntime as ort

    model, _ = load_model(weights)
    ref = dict(zip(OUTPUT_NAMES, ort.InferenceSession(onnx_bytes(model, input_size=SIZE)).run(None, {"images": x})))
    for k in OUTPUT_NAMES:
        _close(a[k], ref[k], k)


def test_check_int8_model_refuses_stale_or_foreign_files(weights, int8_pair, tmp_path):
    fused, _ = int8_pair
    info = check_int8_model(fused, weights=weights, input_size=SIZE, class_names=["a", "b"])
    assert len(info["weights_sha256"]) == 64
    retrained = tmp_path / "retrained.safetensors"
    save_model(retrained, centernet_resnet18(num_classes=2, head_width=16, pool_width=8), class_names=["a", "b"],
               input_size=SIZE)
    with pytest.raises(ValueError, match="quantised from another weights file.*centernet-export --weights"):
        check_int8_model(fused, weights=retrained, input_size=SIZE, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"for input \[64, 96\], the detector runs \[64, 64\]"):
        check_int8_model(fused, weights=weights, input_size=(64, 64), class_names=["a", "b"])
    with pytest.raises(ValueError, match="has classes"):
        check_int8_model(fused, weights=weights, input_size=SIZE, class_names=["a", "c"])
    with pytest.raises(FileNotFoundError, match="not found; make it with: centernet-export"):
        check_int8_model(tmp_path / "none.onnx", weights=weights, input_size=SIZE, class_names=["a", "b"])
    from centernet_ros.export import export_onnx

    model, _ = load_model(weights)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", input_size=SIZE, class_names=["a", "b"])
    with pytest.raises(ValueError, match="is not an INT8 model"):
        check_int8_model(fp32, weights=weights, input_size=SIZE, class_names=["a", "b"])


def test_detector_int8_backend_matches_fp32_onnxruntime(weights, int8_pair):
    images = [cv2.GaussianBlur(np.random.default_rng(s).integers(0, 256, (90, 160, 3), dtype=np.uint8), (5, 5), 0)
              for s in range(3)]
    ref = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime"))
    det = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime-int8", int8_model=""))
    assert det.backend == "onnxruntime-int8" and det.backend_error is None and det.int8_model == int8_pair[0]
    x, _ = det.preprocess(images)
    heads, heads_ref = det._forward(x), ref._forward(x)
    for k in OUTPUT_NAMES:
        assert heads[k].dtype == torch.float32
        _close(heads[k].numpy(), heads_ref[k].numpy(), k)
    out = det.detect(images)
    assert len(out) == 3 and all(o.boxes.shape[1] == 4 and len(o.scores) == len(o.labels) for o in out)


def test_detector_int8_backend_falls_back_with_a_reason(weights, int8_pair, tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.warns(RuntimeWarning, match="onnxruntime-int8 backend unavailable, using onnxruntime"):
        det = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime-int8", int8_model=missing))
    assert det.backend == "onnxruntime" and "not found" in det.backend_error and str(missing) in det.backend_error
    with pytest.warns(RuntimeWarning, match=r"for input \[64, 96\]"):  # the file is for another input size
        det = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime-int8", input_size=(96, 96),
                                      int8_model=int8_pair[0]))
    assert det.backend == "onnxruntime" and len(det.detect([np.zeros((50, 50, 3), np.uint8)])) == 1
    with pytest.raises(ValueError, match="'onnxruntime-int4'"):
        DetectorConfig(weights=weights, backend="onnxruntime-int4")


def test_export_cli_int8(weights, calib, tmp_path, capsys):
    from centernet_ros.export import main

    out = tmp_path / "cli.onnx"
    assert main(["--weights", str(weights), "--int8", "--calib-data", str(calib), "--calib-count", "2",
                 "--input-size", "64", "96", "--onnx", str(out)]) == 0
    assert "INT8, input 64x96" in capsys.readouterr().out
    assert json.loads(read_onnx_metadata(out)["int8"])["images"] == 2
    assert main(["--weights", str(weights), "--int8", "--input-size", "64"]) == 2
    assert "--int8 needs --calib-data" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--onnx", str(out), "--calib-data", str(calib)]) == 2
    assert "only used with --int8" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--int8", "--calib-data", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--onnx", str(out), "--input-size", "64", "100"]) == 2
    assert "got (64, 100)" in capsys.readouterr().err
