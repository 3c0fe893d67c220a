"""The detector's CUDA fast paths against the CPU reference: eager fp32, and fp16 + channels_last +
torch.compile (CUDA graphs, batches padded to powers of two).  Skipped without CUDA; names start with
``test_cuda_`` so ``benchmarks/gpu_check.sh`` (``pytest -k cuda``) runs them on a GPU machine.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from centernet_ros.decode import DecodeConfig
from centernet_ros.detector import Detector, DetectorConfig
from centernet_ros.model import centernet_resnet18
from centernet_ros.weights import save_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
INPUT = (96, 128)
# every pair kept, no NMS: the output is a pure function of the heatmaps (no cut-off effects)
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
    path = tmp_path_factory.mktemp("gpu") / "rand.safetensors"
    save_model(path, model, class_names=["a", "b", "c"], input_size=INPUT)
    return path


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(180, 320), (96, 128), (300, 90), (50, 200), (7, 13)]
    return [cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0) for h, w in sizes[:n]]


def _heads_close(det: Detector, ref: Detector, images, atol: float, rtol: float = 0.0) -> None:
    x, _ = det.preprocess(images)
    xr, _ = ref.preprocess(images)
    with torch.inference_mode():
        got, want = det._forward(x), ref._forward(xr)
    for k, v in want.items():
        assert got[k].shape == v.shape, k
        torch.testing.assert_close(got[k].float().cpu(), v.float(), atol=atol, rtol=rtol, msg=k)


@needs_cuda
def test_cuda_eager_fp32_matches_cpu(weights):
    ref = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS)
    det = Detector(DetectorConfig(weights=weights, device="cuda", backend="auto"), decode=ALL_PAIRS)
    assert det.backend == "torch" and det.device.type == "cuda"  # auto on CUDA: the torch path
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions for the comparison
    try:
        _heads_close(det, ref, _images(), atol=2e-3, rtol=1e-4)
        for a, b in zip(det.detect(_images()), ref.detect(_images())):
            assert len(a.scores) > 0
            np.testing.assert_allclose(a.scores[:10], b.scores[:10], atol=2e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@needs_cuda
def test_cuda_fp16_channels_last_compiled_matches_cpu(weights):
    """fp16 + NHWC + torch.compile(mode="reduce-overhead"): the compiled graph runs (no fallback), batches of
    3 are padded to 4 and sliced back, heads agree with the CPU's fp32 ones to fp16 accuracy, and a second
    call with another batch size still matches."""
    ref = Detector(DetectorConfig(weights=weights, device="cpu", backend="torch"), decode=ALL_PAIRS)
    det = Detector(DetectorConfig(weights=weights, device="cuda", fp16=True, channels_last=True, compile=True),
                   decode=ALL_PAIRS)
    assert det.fp16 and det._compiled is not None
    for n in (3, 1, 3):
        images = _images(n)
        out = det.detect(images)
        assert det.compile_error is None, det.compile_error
        assert len(out) == n
        _heads_close(det, ref, images, atol=0.1, rtol=0.02)  # fp16 keeps ~3 significant digits per op
        for a, b in zip(out, ref.detect(images)):
            assert abs(len(a.scores) - len(b.scores)) <= max(2, len(b.scores) // 10)
            np.testing.assert_allclose(a.scores[:5], b.scores[:5], atol=0.02)
