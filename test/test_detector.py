"""Detector (ROS-free engine): batched detect on images of different sizes / colour orders vs per-image references."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from centernet_ros.decode import DecodeConfig, decode
from centernet_ros.detector import Detector, DetectorConfig, onnxruntime_available, resolve_device
from centernet_ros.model import centernet_resnet18
from centernet_ros.preprocess import letterbox
from centernet_ros.weights import WeightsError, save_model

from devices import DEVICES  # noqa: E402
INPUT = (96, 128)
# Corner pairs only, no NMS, threshold 0, every pair kept: the output is a pure function of the
# heatmaps, so the batched result can be compared with per-image references without cut-off effects.
ALL_PAIRS = DecodeConfig(mode="pairs", nms="none", topk=30, num_dets=900, score_threshold=0.0, max_per_image=900)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(3)
    model = centernet_resnet18(num_classes=3, head_width=16, pool_width=8)
    with torch.no_grad():  # livelier random heatmaps (distinct peak scores); equal tags so corners can pair
        for head in (model.tl_head, model.br_head, model.ct_head):
            head.heat.bias.fill_(0.0)
            head.heat.weight.mul_(20.0)
        for head in (model.tl_head, model.br_head):
            head.tag.weight.zero_()
            head.tag.bias.zero_()
    path = tmp_path_factory.mktemp("det") / "rand.safetensors"
    save_model(path, model, class_names=["a", "b", "c"], input_size=INPUT)
    return path


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(180, 320), (96, 128), (50, 200), (300, 90), (7, 13)]
    return [cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0) for h, w in sizes]


def _reference(det: Detector, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image alone: forward, decode in network-input pixels, then undo the letterbox in numpy."""
    h, w = bgr.shape[:2]
    Hin, Win = det.input_size
    x, _ = letterbox([torch.from_numpy(bgr)], size=(Hin, Win), bgr=True, device=det.device)
    with torch.no_grad():
        out = det.model(x)
    d = decode(out, det.decode_config)  # no mapping: network-input pixels
    keep = (d.labels[0] >= 0).cpu().numpy()
    boxes = d.boxes[0].cpu().numpy()[keep].astype(np.float64)
    s = min(Hin / h, Win / w)
    nh, nw = min(Hin, max(1, int(h * s + 0.5))), min(Win, max(1, int(w * s + 0.5)))
    off = np.array([(Win - nw) // 2, (Hin - nh) // 2] * 2, dtype=np.float64)
    boxes = np.clip((boxes - off) / s, 0, [w, h, w, h])
    return boxes, d.scores[0].cpu().numpy()[keep], d.labels[0].cpu().numpy()[keep]


def _assert_same_detections(got, ref, atol=0.05, score_atol=1e-4):
    boxes, scores, labels = ref
    assert len(got.boxes) == len(boxes)
    # every reference row has a partner with the same label, score and box (order may differ at ties)
    dist = np.abs(got.boxes[:, None, :] - boxes[None, :, :]).max(-1)  # (D, D)
    same = (dist < atol) & (np.abs(got.scores[:, None] - scores[None, :]) < score_atol) & (got.labels[:, None] == labels[None, :])
    assert same.any(0).all() and same.any(1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_different_sizes_maps_to_each_original(weights, device):
    det = Detector(DetectorConfig(weights=weights, device=device), decode=ALL_PAIRS)
    images = _images()
    results = det.detect(images, orders="bgr")
    assert len(results) == len(images)
    total = 0
    for img, res in zip(images, results):
        h, w = img.shape[:2]
        assert res.boxes.shape[1:] == (4,) and res.boxes.dtype == np.float32 and res.labels.dtype == np.int64
        assert (res.boxes[:, [0, 2]] >= 0).all() and (res.boxes[:, [0, 2]] <= w).all()
        assert (res.boxes[:, [1, 3]] >= 0).all() and (res.boxes[:, [1, 3]] <= h).all()
        assert (np.diff(res.scores) <= 1e-6).all()  # sorted by score
        # CUDA may pick other (TF32) kernels for another batch size: looser score tolerance there
        _assert_same_detections(res, _reference(det, img), score_atol=1e-4 if device == "cpu" else 2e-3)
        total += len(res.boxes)
    assert total > 20  # the comparison is not vacuous


def test_colour_orders_and_strided_views_give_identical_results(weights):
    det = Detector(DetectorConfig(weights=weights, device="cpu"), decode=ALL_PAIRS)
    bgr = _images(1)[0]
    alpha = np.full(bgr.shape[:2] + (1,), 7, np.uint8)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    padded = np.zeros((bgr.shape[0], bgr.shape[1] + 3, 3), np.uint8)
    padded[:, : bgr.shape[1]] = bgr
    view = padded[:, : bgr.shape[1]]  # non-contiguous rows, like a ROS image with step padding
    readonly = np.frombuffer(bgr.tobytes(), np.uint8).reshape(bgr.shape)  # bytes-backed, not writable
    inputs = [(bgr, "bgr"), (rgb, "rgb"), (np.dstack([rgb, alpha]), "rgba"), (np.dstack([bgr, alpha]), "bgra"),
              (view, "bgr"), (readonly, "bgr")]
    results = det.detect([a for a, _ in inputs], orders=[o for _, o in inputs])
    assert len(results[0].boxes) > 0
    for res in results[1:]:
        np.testing.assert_allclose(res.boxes, results[0].boxes, atol=1e-4)
        np.testing.assert_allclose(res.scores, results[0].scores, atol=1e-6)
        np.testing.assert_array_equal(res.labels, results[0].labels)

    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    mono, as_bgr = det.detect([gray[..., None], cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)], orders=["mono", "bgr"])
    np.testing.assert_allclose(mono.boxes, as_bgr.boxes, atol=1e-4)
    np.testing.assert_array_equal(mono.labels, as_bgr.labels)


def test_thresholds_and_runtime_decode_config(weights):
    det = Detector(DetectorConfig(weights=weights, device="cpu"), decode=ALL_PAIRS)
    img = _images(2)[:1]
    everything = det.detect(img)[0]
    assert len(everything.scores) > 2
    cut = float(np.median(everything.scores))
    det.decode_config = DecodeConfig(mode="pairs", nms="none", topk=30, num_dets=900, score_threshold=cut, max_per_image=900)
    above = det.detect(img)[0]
    assert len(above.scores) == int((everything.scores > cut).sum()) and (above.scores > cut).all()
    det.decode_config = DecodeConfig(mode="pairs", nms="none", topk=30, score_threshold=0.0, max_per_image=2)
    assert len(det.detect(img)[0].scores) == 2
    det.decode_config = DecodeConfig(score_threshold=0.999999)
    empty = det.detect(img)[0]
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,) and empty.labels.shape == (0,)


def test_empty_batch_input_size_override_and_close(weights):
    det = Detector(DetectorConfig(weights=weights, device="cpu", input_size=(64, 64)))
    assert det.input_size == (64, 64) and det.class_names == ["a", "b", "c"] and det.num_classes == 3
    assert det.detect([]) == []
    x, params = det.preprocess(_images()[:2], "bgr")
    assert tuple(x.shape) == (2, 3, 64, 64)
    assert params.orig_size.tolist() == [[180.0, 320.0], [96.0, 128.0]]
    det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(_images()[:1])


def test_bad_inputs_and_configs(weights, tmp_path):
    det = Detector(DetectorConfig(weights=weights, device="cpu"))
    with pytest.raises(ValueError, match="colour order 'yuv'"):
        det.detect([np.zeros((4, 4, 3), np.uint8)], orders="yuv")
    with pytest.raises(ValueError, match="expected uint8"):
        det.detect([np.zeros((4, 4, 4), np.uint8)], orders="bgr")
    with pytest.raises(ValueError, match="zero-size"):
        det.detect([np.zeros((0, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="2 colour orders for 1 images"):
        det.detect([np.zeros((4, 4, 3), np.uint8)], orders=["bgr", "rgb"])
    with pytest.raises(ValueError, match=r"\(100, 64\)"):
        DetectorConfig(weights=weights, input_size=(100, 64))
    with pytest.raises(ValueError, match="'tpu'"):
        DetectorConfig(weights=weights, device="tpu")
    with pytest.raises(WeightsError, match="not found"):
        Detector(DetectorConfig(weights=tmp_path / "missing.safetensors", device="cpu"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="corrupt"):
        Detector(DetectorConfig(weights=corrupt, device="cpu"))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-4)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_compile_is_ignored_on_cpu_and_padded_batches_match_eager(weights):
    """``compile=True`` is a CUDA-only option; the power-of-two padding it relies on keeps results exact."""
    images = _images(1)[:3]
    eager = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS)
    expected = eager.detect(images)
    det = Detector(DetectorConfig(weights=weights, device="cpu", compile=True, backend="torch"), decode=ALL_PAIRS)
    assert det._compiled is None  # CPU: eager
    _same(det.detect(images), expected)
    seen = []

    def fake_compiled(x):  # stands in for the compiled graph: records the padded batch size
        seen.append(x.shape[0])
        return det.model(x)

    det._compiled = fake_compiled
    _same(det.detect(images), expected)  # 3 images -> padded to 4, padding sliced off
    assert seen == [4]


def test_compile_failure_falls_back_to_eager(weights):
    images = _images(2)[:2]
    det = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS)
    expected = det.detect(images)

    def broken(x):
        raise RuntimeError("triton not available\nlong traceback")

    det._compiled = broken
    with pytest.warns(RuntimeWarning, match="triton not available"):
        got = det.detect(images)
    _same(got, expected)
    assert det._compiled is None and det.compile_error == "RuntimeError: triton not available"


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_onnxruntime_backend_matches_torch(weights):
    """The CPU default (backend auto) runs the forward pass in ONNX Runtime: same detections as torch."""
    images = _images(3)
    ref = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS)
    for backend in ("onnxruntime", "auto"):
        det = Detector(DetectorConfig(weights=weights, device="cpu", backend=backend), decode=ALL_PAIRS)
        assert det.backend == "onnxruntime" and det.backend_error is None
        x, _ = det.preprocess(images[:2])
        heads_ort, heads_torch = det._forward(x), ref.model(x)
        assert set(heads_ort) == set(heads_torch)
        for k, v in heads_torch.items():
            assert heads_ort[k].shape == v.shape and heads_ort[k].dtype == torch.float32
            torch.testing.assert_close(heads_ort[k], v, atol=1e-4, rtol=1e-4)
        for a, b in zip(det.detect(images), ref.detect(images)):
            assert len(a.scores) == len(b.scores) > 0
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)  # both sorted by score
            # rows with (nearly) tied scores may come in another order: match them one to one
            free = np.ones(len(b.scores), dtype=bool)
            for box, score, label in zip(a.boxes, a.scores, a.labels):
                cand = np.flatnonzero(free & (b.labels == label) & (np.abs(b.scores - score) <= 1e-4)
                                      & (np.abs(b.boxes - box).max(1) <= 1e-2))
                assert len(cand), (box, score, label)
                free[cand[0]] = False
    assert ref.backend == "torch" and ref._ort is None


def test_onnxruntime_backend_falls_back_to_torch(weights, monkeypatch):
    import centernet_ros.detector as detector_module

    def broken(*args, **kwargs):
        raise RuntimeError("no such provider\ndetails")

    monkeypatch.setattr(detector_module._OrtForward, "__init__", broken)
    with pytest.warns(RuntimeWarning, match="no such provider"):
        det = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime"), decode=ALL_PAIRS)
    assert det.backend == "torch" and det.backend_error == "RuntimeError: no such provider"
    assert len(det.detect(_images(4)[:1])) == 1
    monkeypatch.setattr(detector_module, "onnxruntime_available", lambda: False)  # auto without onnxruntime: quietly torch
    det = Detector(DetectorConfig(weights=weights, device="cpu"), decode=ALL_PAIRS)
    assert det.backend == "torch" and det.backend_error is None
    with pytest.raises(ValueError, match="'tensorrt'"):
        DetectorConfig(weights=weights, backend="tensorrt")


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_onnxruntime_failure_at_run_time_falls_back_to_torch(weights):
    """A session that fails at run time: that batch and the next ones run in torch, with one warning."""
    images = _images(5)[:2]
    expected = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS).detect(images)
    det = Detector(DetectorConfig(weights=weights, device="cpu", backend="onnxruntime"), decode=ALL_PAIRS)
    assert det.backend == "onnxruntime"

    def failing(x):
        raise RuntimeError("out of memory\nmore")

    det._ort = failing
    with pytest.warns(RuntimeWarning, match="out of memory"):
        _same(det.detect(images), expected)
    assert det.backend == "torch" and det._ort is None and det.backend_error == "RuntimeError: out of memory"
    _same(det.detect(images), expected)
