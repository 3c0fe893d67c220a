"""ROS-free inference engine: model file -> model on a device -> batched detect on raw images.

Legend: B images in a batch, H/W image height/width, Ch channels of an input image (1, 3 or 4),
D detections of one image (<= ``DecodeConfig.max_per_image``).

``Detector.detect`` takes a list of ``uint8[H, W, Ch]`` arrays of any sizes and colour orders
(zero-copy views are fine, strided rows included), uploads them, converts the colour order, letterboxes
and normalises on the device (``preprocess.letterbox``), runs one forward pass for the whole batch,
decodes (``decode.decode``) and returns boxes in each image's original pixels. On a GPU the heatmap
passes and the top-k keypoints run on the device, then one device -> host copy per batch (the keypoints,
a few KB) and the small rest (pairs, centre check, soft-NMS, letterbox undo) on the host in numpy.

On a CPU the forward pass can run in ONNX Runtime: ``backend: onnxruntime`` (the fp32 graph, exported in
memory) or ``backend: onnxruntime-int8`` (the INT8 file of ``centernet-export --int8``, see ``int8.py``:
2.9x faster than fp32 on one core here, AP within 0.2, docs/benchmarks.md).
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from .decode import DecodeConfig, decode, flip_test_batch
from .preprocess import LetterboxParams, letterbox
from .weights import load_model

__all__ = ["BACKENDS", "ORDERS", "DetectorConfig", "ImageDetections", "Detector", "onnxruntime_available", "resolve_device"]

# Colour orders an input image may have, with its channel count.
ORDERS = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "mono": 1}
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")


def onnxruntime_available() -> bool:
    """Whether ``import onnxruntime`` works (the optional CPU fast path)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _OrtForward:
    """The model as an ONNX Runtime session: ``Tensor[B, 3, H, W]`` -> the eight heads, as the torch model.

    The graph is exported in memory from the loaded model (``export.onnx_bytes``: fixed input size,
    dynamic batch), or read from ``onnx_path`` (the INT8 model of ``int8.quantize_int8``); intra-op threads
    follow ``torch.get_num_threads()`` at creation, without spinning.  On CUDA it needs onnxruntime's CUDA
    provider and copies through the host (the torch path is the fast one there).
    """

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int], device: torch.device, *,
                 onnx_path: str | Path | None = None) -> None:
        import onnxruntime as ort

        from .export import onnx_bytes

        if device.type == "cuda":
            have = ort.get_available_providers()
            if "CUDAExecutionProvider" not in have:
                raise RuntimeError(f"this onnxruntime has no CUDAExecutionProvider (has {have})")
            providers: list = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        # no busy-waiting between runs: a node shares the CPU with the ROS executor and other nodes (measured
        # here with 2 threads: 124 % instead of 166 % of a core at 20 frames/s, for 5 % more latency)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(onnx_path) if onnx_path is not None else onnx_bytes(model, input_size=input_size)
        self.session = ort.InferenceSession(source, opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = device

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        xn = x.detach().to("cpu", torch.float32).contiguous().numpy()  # (B, 3, H, W)
        outs = self.session.run(self.output_names, {"images": xn})
        return {k: torch.from_numpy(v).to(self.device) for k, v in zip(self.output_names, outs)}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; anything else as ``torch.device`` (validated)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {str(device)!r}")
    return dev


@dataclass
class DetectorConfig:
    """How to load and run the model."""

    weights: str | Path  # model file written by weights.save_model (.safetensors)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    input_size: tuple[int, int] | None = None  # (H, W) network input, multiples of 32; None = the file's size
    fp16: bool = False  # half-precision forward pass; only on CUDA (ignored on CPU, see Detector.fp16)
    channels_last: bool = False  # NHWC memory format for the forward pass (often faster on CUDA)
    compile: bool = False  # CUDA only: torch.compile(mode="reduce-overhead") = CUDA graphs; batches padded to 1, 2, 4, 8...
    backend: str = "auto"  # forward pass: "torch", "onnxruntime" (model exported in memory at start-up; falls back
    #                        to torch with a warning when onnxruntime is missing or fails), "auto" = onnxruntime
    #                        on the CPU when installed (1.4-1.8x faster there, same outputs to ~1e-5), else torch;
    #                        "onnxruntime-int8" = the INT8 model int8_model on the CPU (centernet-export --int8; falls
    #                        back to "onnxruntime" with a warning when it is missing, stale or for another input size)
    int8_model: str | Path | None = None  # backend onnxruntime-int8: the INT8 .onnx; None = int8.default_int8_path(
    #                                       weights, input size), i.e. <weights stem>.int8-<H>x<W>.onnx beside the weights

    def __post_init__(self) -> None:
        if not str(self.weights):
            raise ValueError(f"weights must be a model file path, got {self.weights!r}")
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or any(isinstance(v, bool) or int(v) != v or v <= 0 or v % 32 for v in size):
                raise ValueError(f"input_size must be (H, W), positive multiples of 32, got {self.input_size!r}")
            self.input_size = (int(size[0]), int(size[1]))
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.int8_model is not None and not str(self.int8_model):
            self.int8_model = None  # "" (a ROS string parameter left empty) = the default path


class ImageDetections(NamedTuple):
    """Detections of one image in its original pixels, sorted by score (numpy, on the host)."""

    boxes: np.ndarray  # float32[D, 4] x1, y1, x2, y2
    scores: np.ndarray  # float32[D]
    labels: np.ndarray  # int64[D] class index


def _as_tensor(img: np.ndarray | Tensor) -> Tensor:
    if isinstance(img, Tensor):
        return img
    with warnings.catch_warnings():  # read-only views (bytes buffers) are only read, never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(img))


def _to_rgb(t: Tensor, order: str) -> Tensor:
    """``Tensor[H, W, Ch]`` uint8 in ``order`` -> ``Tensor[H, W, 3]`` RGB (views where possible)."""
    if order == "rgb":
        return t
    if order == "bgr":
        return t.flip(-1)
    if order == "rgba":
        return t[..., :3]
    if order == "bgra":
        return t[..., :3].flip(-1)
    return t.expand(t.shape[0], t.shape[1], 3)  # mono (H, W, 1) -> (H, W, 3)


class Detector:
    """Batched CenterNet inference.

    ``decode_config`` may be replaced at any time from another thread (one attribute assignment);
    ``detect`` reads it once per call. ``detect`` itself is meant for one thread at a time.
    """

    def __init__(self, cfg: DetectorConfig, *, decode: DecodeConfig | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        model, meta = load_model(cfg.weights, device="cpu")
        self.class_names: list[str] = list(meta.class_names)
        self.input_size: tuple[int, int] = tuple(cfg.input_size or meta.input_size)  # type: ignore[assignment]
        if len(self.input_size) != 2 or any(v <= 0 or v % 32 for v in self.input_size):
            raise ValueError(f"input size must be (H, W), positive multiples of 32, got {self.input_size!r}")
        # the ONNX Runtime session, exported from the fp32 CPU model before it moves to the device
        self.backend = "torch"  # what actually runs the forward pass
        self.backend_error: str | None = None  # why onnxruntime (-int8) was requested but not used, if it was
        self.int8_model: Path | None = None  # the INT8 file that runs (backend onnxruntime-int8)
        self._ort: _OrtForward | None = None
        want = cfg.backend
        if want == "auto":
            want = "onnxruntime" if self.device.type == "cpu" and onnxruntime_available() else "torch"
        if want == "onnxruntime-int8":
            want = self._start_int8(model, cfg)
        if want == "onnxruntime":
            try:
                self._ort = _OrtForward(model, self.input_size, self.device)
                self.backend = "onnxruntime"
            except Exception as exc:  # not installed, export or session failure: stay correct, lose the speed-up
                self.backend_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"onnxruntime backend unavailable, using torch: {self.backend_error}", RuntimeWarning)
        self.fp16 = bool(cfg.fp16 and self.device.type == "cuda" and self._ort is None)
        self.dtype = torch.float16 if self.fp16 else torch.float32
        model = model.to(self.device, dtype=self.dtype).eval()
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # CUDA fast path: graphs need fixed shapes, so batches are padded to powers of two (few graphs).
        # Compilation happens on the first batch of each size; any failure falls back to eager mode.
        self._compiled = None
        if cfg.compile and self.device.type == "cuda" and self._ort is None:
            self._compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        self.compile_error: str | None = None  # why the compiled path was abandoned, if it was
        self.decode_config = decode if decode is not None else DecodeConfig()
        self._lock = threading.Lock()

    def _start_int8(self, model: torch.nn.Module, cfg: DetectorConfig) -> str:
        """Open the INT8 session; returns the backend to try next ("done", or "onnxruntime" after a warning)."""
        from .int8 import check_int8_model, default_int8_path

        path = Path(cfg.int8_model) if cfg.int8_model is not None else default_int8_path(cfg.weights, self.input_size)
        try:
            if self.device.type != "cpu":
                raise ValueError(f"backend onnxruntime-int8 runs on the CPU, the device is {self.device}")
            check_int8_model(path, weights=cfg.weights, input_size=self.input_size, class_names=self.class_names)
            self._ort = _OrtForward(model, self.input_size, self.device, onnx_path=path)
        except Exception as exc:  # missing / stale file, no onnxruntime: stay correct, lose the speed-up
            self.backend_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            warnings.warn(f"onnxruntime-int8 backend unavailable, using onnxruntime (fp32): {self.backend_error}",
                          RuntimeWarning)
            return "onnxruntime" if self.device.type == "cpu" else "torch"
        self.backend, self.int8_model = "onnxruntime-int8", path
        return "done"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess(
        self, images: Sequence[np.ndarray | Tensor], orders: str | Sequence[str] = "bgr"
    ) -> tuple[Tensor, LetterboxParams]:
        """Upload ``B`` images ``uint8[H, W, Ch]`` and letterbox them: ``Tensor[B, 3, Hin, Win]`` + params.

        ``orders`` is one colour order for all images or one per image (keys of ``ORDERS``).
        """
        orders = [orders] * len(images) if isinstance(orders, str) else list(orders)
        if len(orders) != len(images):
            raise ValueError(f"{len(orders)} colour orders for {len(images)} images")
        tensors = []
        for img, order in zip(images, orders):
            if order not in ORDERS:
                raise ValueError(f"unknown colour order {order!r} (expected one of {sorted(ORDERS)})")
            t = _as_tensor(img)
            if t.dim() == 2 and order == "mono":
                t = t.unsqueeze(-1)  # (H, W, 1)
            if t.dim() != 3 or t.shape[2] != ORDERS[order] or t.dtype != torch.uint8:
                raise ValueError(f"expected uint8[H, W, {ORDERS[order]}] for {order!r}, got {t.dtype} {tuple(t.shape)}")
            if t.shape[0] == 0 or t.shape[1] == 0:
                raise ValueError(f"zero-size image {tuple(t.shape)}")
            tensors.append(t)
        if self.device.type == "cuda":  # page-locked staging (cached by torch) -> truly asynchronous copies
            tensors = [t.pin_memory() for t in tensors]
        uniform = len(set(orders)) == 1 and orders[0] in ("rgb", "bgr")
        if uniform:  # letterbox flips BGR itself while uploading
            on_dev = [t.to(self.device, non_blocking=True) for t in tensors]
            bgr = orders[0] == "bgr"
        else:
            on_dev = [_to_rgb(t.to(self.device, non_blocking=True), o) for t, o in zip(tensors, orders)]
            bgr = False
        x, params = letterbox(on_dev, size=self.input_size, bgr=bgr, dtype=self.dtype, device=self.device,
                              channels_last=self.cfg.channels_last)
        return x, params

    @torch.inference_mode()
    def detect(
        self, images: Sequence[np.ndarray | Tensor], orders: str | Sequence[str] = "bgr"
    ) -> list[ImageDetections]:
        """Detect objects in ``B`` images (``uint8[H, W, Ch]``, any sizes): one forward pass, one host copy.

        Returns one ``ImageDetections`` per image, boxes in that image's pixels, only detections with
        ``score > decode_config.score_threshold``. With ``decode_config.flip_test`` the forward pass also
        runs on the images flipped left-right (2B inputs) and both views' boxes are merged (``decode``).
        """
        if len(images) == 0:
            return []
        cfg = self.decode_config
        x, params = self.preprocess(images, orders)
        if cfg.flip_test:
            x = flip_test_batch(x)  # (2B, 3, Hin, Win)
        with self._lock:
            if self.model is None:
                raise RuntimeError("detector is closed")
            outputs = self._forward(x)
        det = decode(outputs, cfg, scale=params.scale, offset=params.offset, orig_size=params.orig_size, host_ok=True)
        packed = torch.cat([det.boxes.float(), det.scores.float().unsqueeze(-1), det.labels.float().unsqueeze(-1)], -1)
        packed = packed.cpu().numpy()  # (B, D, 6); already on the host unless the decode plan is "device"
        out = []
        for row in packed:  # per image (B is small); boxes are never looped over
            row = row[row[:, 5] >= 0]  # (D_i, 6) valid rows (label -1 = empty slot)
            out.append(ImageDetections(row[:, :4].copy(), row[:, 4].copy(), row[:, 5].astype(np.int64)))
        return out

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        """ONNX Runtime, eager forward pass, or the compiled one on a batch padded to the next power of two."""
        if self._ort is not None:
            try:
                return self._ort(x)
            except Exception as exc:  # a broken runtime: stay correct with the torch model, lose the speed-up
                self.backend_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"onnxruntime forward failed, using torch from now on: {self.backend_error}", RuntimeWarning)
                self._ort = None
                self.backend = "torch"
        if self._compiled is None:
            return self.model(x)
        b = x.shape[0]
        padded = 1 << (b - 1).bit_length()
        if padded != b:
            x = torch.cat([x, x.new_zeros((padded - b, *x.shape[1:]))])  # (padded, 3, Hin, Win)
        try:
            out = self._compiled(x)
        except Exception as exc:  # no Triton, unsupported GPU, ...: stay correct, lose the speed-up
            self.compile_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            warnings.warn(f"torch.compile path disabled, running eagerly: {self.compile_error}", RuntimeWarning)
            self._compiled = None
            return self.model(x[:b])
        return {k: v[:b].clone() for k, v in out.items()}  # clone: graph outputs are overwritten by the next replay

    def close(self) -> None:
        """Drop the model and return cached CUDA memory to the driver."""
        with self._lock:
            self.model = None
            self._compiled = None
            self._ort = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
