"""``centernet-detector``: a lifecycle node that batches camera frames through the CenterNet detector.

Legend: B frames in one forward pass (one per camera with a pending frame), D detections of one frame.

Data flow::

    camera_topics[i] --(callback: keep newest frame, count overwritten ones as dropped)--> slot[i]
    worker thread: wait for a pending slot, up to max_batch_latency_ms for more (max_batch_size)
                   -> decode (zero-copy views) -> Detector.detect (upload, letterbox, forward, decode)
                   -> Detection2DArray on detections_topics[i] (every processed frame, empty included)
                   -> annotated bgr8 image on <ns>/detections_image (only while someone subscribes)
    timer: DiagnosticArray on /diagnostics (fps, latency p50/p99, mean ms per batch of each stage,
           per-camera counters)

Lifecycle: configure (read parameters, check the model file, create publishers, publish LabelInfo),
activate (load the model onto the device, subscribe, start the worker), deactivate (unsubscribe,
stop the worker, free the model and the GPU memory), cleanup (destroy publishers). Started from its
console script with ``autostart: true`` (default) it configures and activates itself; a failing step
logs one line and leaves the node alive in its previous state (fix the parameter, then
``ros2 lifecycle set``), so a launch file never crash-loops on a missing model file.
"""
from __future__ import annotations

import collections
import functools
import gc
import math
import os
import posixpath
import sys
import threading
import time
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ..decode import DecodeConfig
from ..detector import BACKENDS, Detector, DetectorConfig, resolve_device
from .conversions import (
    ImageConversionError,
    RawImage,
    bgr_to_image_msg,
    compressed_msg_to_array,
    detections_to_msg,
    draw_detections,
    image_msg_to_array,
    label_info_msg,
    to_bgr,
)

__all__ = ["DetectorNode", "NodeSettings", "default_weights_path", "detections_topic_for", "main"]

PACKAGE = "centernet_ros"
DEFAULT_MODEL = "centernet_vehicles.safetensors"
NODE_NAME = "centernet_detector"
LOG_THROTTLE_S = 5.0  # at most one bad-input error line per camera topic in this many seconds
LATENCY_WINDOW = 2048  # latencies kept for the p50 / p99 in the diagnostics
# Per-batch stages timed by the worker (wall clock; ``detect`` ends with the one device -> host copy, so
# it holds the whole GPU time): message -> array, Detector.detect (preprocess, forward, decode), building
# and publishing the Detection2DArrays, drawing + publishing annotated frames (only when subscribed).
STAGES = ("convert", "detect", "publish", "annotate")


def default_weights_path() -> Path:
    """The bundled model: ``<share>/centernet_ros/models/...`` when installed, else the source tree's ``models/``."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / "models" / DEFAULT_MODEL
        if installed.is_file():
            return installed
    except Exception:  # not installed through ament (plain pip / source checkout)
        pass
    return Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL


def _strip_transport(topic: str) -> str:
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def detections_topic_for(camera_topic: str, name: str = "detections") -> str:
    """Sibling topic of a camera topic: ``/cam0/image_raw`` (or ``.../image_raw/compressed``) -> ``/cam0/<name>``."""
    ns = posixpath.dirname(_strip_transport(camera_topic).rstrip("/") or "/")
    if ns in ("", "/"):
        return ("/" if camera_topic.startswith("/") else "") + name
    return f"{ns}/{name}"


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
_TRANSPORTS = ("auto", "raw", "compressed")


@dataclass
class NodeSettings:
    """Parameters of the node that need a re-configure to change (validated in ``__post_init__``)."""

    weights: str = ""  # model file; "" = the bundled models/centernet_vehicles.safetensors
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    input_size: list[int] = field(default_factory=lambda: [0, 0])  # [H, W] network input; [0, 0] = the model file's
    fp16: bool = False  # half-precision forward pass (CUDA only; ignored on CPU)
    channels_last: bool = False  # NHWC memory format for the forward pass (CUDA)
    compile: bool = False  # CUDA graphs via torch.compile for the padded batch sizes (CUDA only; eager on failure)
    backend: str = "auto"  # forward pass: auto (onnxruntime on CPU when installed, else torch) | torch | onnxruntime
    camera_topics: list[str] = field(default_factory=lambda: ["/camera/image_raw"])  # sensor_msgs/Image topics
    transports: list[str] = field(default_factory=lambda: ["auto"])  # one for all or one per topic: auto|raw|compressed
    detections_topics: list[str] = field(default_factory=lambda: ["auto"])  # ["auto"] = <camera ns>/detections
    publish_annotated: bool = True  # <camera ns>/detections_image, drawn only while someone subscribes
    label_info_topic: str = "label_info"  # vision_msgs/LabelInfo, transient local
    qos_reliability: str = "best_effort"  # camera subscriptions: best_effort (also hears reliable) | reliable
    qos_depth: int = 1  # camera subscription queue depth (newest frame wins anyway)
    diagnostics_period: float = 1.0  # seconds between /diagnostics messages
    autostart: bool = True  # configure + activate right after start (console script)
    cpu_threads: int = -1  # torch / onnxruntime intra-op threads for CPU inference: -1 = all cores but one (min 1), which
    #                        leaves a core to the ROS executor threads that otherwise fight torch's pool
    #                        (2 cores: 1.4 -> 3.9 frames/s); 0 = torch's default (all cores); N = N threads

    def __post_init__(self) -> None:
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        size = list(self.input_size)
        if len(size) != 2 or not (size == [0, 0] or all(v > 0 and v % 32 == 0 for v in size)):
            raise ValueError(f"input_size must be [H, W] (positive multiples of 32) or [0, 0], got {size!r}")
        if not self.camera_topics or any(not str(t).strip() for t in self.camera_topics):
            raise ValueError(f"camera_topics must be a non-empty list of topic names, got {list(self.camera_topics)!r}")
        if len(set(self.camera_topics)) != len(self.camera_topics):
            raise ValueError(f"camera_topics has duplicates: {list(self.camera_topics)!r}")
        n = len(self.camera_topics)
        if len(self.transports) not in (1, n) or any(t not in _TRANSPORTS for t in self.transports):
            raise ValueError(
                f"transports must be one value or one per camera topic, each of {_TRANSPORTS}, got {list(self.transports)!r}"
            )
        if list(self.detections_topics) != ["auto"] and len(self.detections_topics) != n:
            raise ValueError(f"detections_topics must be ['auto'] or one per camera topic, got {list(self.detections_topics)!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.qos_reliability not in _RELIABILITY:
            raise ValueError(f"qos_reliability must be one of {sorted(_RELIABILITY)}, got {self.qos_reliability!r}")
        if int(self.qos_depth) < 1:
            raise ValueError(f"qos_depth must be >= 1, got {self.qos_depth!r}")
        if not self.diagnostics_period > 0:
            raise ValueError(f"diagnostics_period must be > 0, got {self.diagnostics_period!r}")
        if isinstance(self.cpu_threads, bool) or not isinstance(self.cpu_threads, int) or self.cpu_threads < -1:
            raise ValueError(f"cpu_threads must be an int >= -1, got {self.cpu_threads!r}")

    def transport_of(self, i: int) -> str:
        t = self.transports[0] if len(self.transports) == 1 else self.transports[i]
        if t == "auto":
            return "compressed" if self.camera_topics[i].endswith("/compressed") else "raw"
        return t

    def detections_topic_of(self, i: int) -> str:
        if list(self.detections_topics) == ["auto"]:
            return detections_topic_for(self.camera_topics[i])
        return self.detections_topics[i]

    def annotated_topic_of(self, i: int) -> str:
        return detections_topic_for(self.detections_topic_of(i), "detections_image")


@dataclass
class BatchSettings:
    """Run-time batching parameters (changeable while active)."""

    max_batch_size: int = 8  # most frames (cameras) in one forward pass
    max_batch_latency_ms: float = 5.0  # longest wait for more cameras after the first pending frame

    def __post_init__(self) -> None:
        if int(self.max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size!r}")
        if not (self.max_batch_latency_ms >= 0 and math.isfinite(self.max_batch_latency_ms)):
            raise ValueError(f"max_batch_latency_ms must be a finite value >= 0, got {self.max_batch_latency_ms!r}")


_STATIC = {f.name for f in fields(NodeSettings)}
_BATCH = {f.name for f in fields(BatchSettings)}
# ROS parameter name -> DecodeConfig field. ``stride`` follows the model and ``host_sync`` is an
# implementation detail, so neither is a parameter; three fields get clearer names on the ROS side.
_DECODE_RENAMED = {"decode_mode": "mode", "nms_method": "nms", "max_detections": "max_per_image"}
_DECODE_HIDDEN = {"stride", "host_sync"}
_DECODE = {
    {v: k for k, v in _DECODE_RENAMED.items()}.get(f.name, f.name): f.name
    for f in fields(DecodeConfig)
    if f.name not in _DECODE_HIDDEN
}
# Node defaults that differ from DecodeConfig's (which are the paper's evaluation settings).
_DECODE_DEFAULTS = {"score_threshold": 0.15}  # = config/detect.yaml (tuned for the bundled model)

_DESCRIPTIONS = {
    "weights": "model file (.safetensors); empty = bundled models/" + DEFAULT_MODEL,
    "device": "auto | cpu | cuda | cuda:N",
    "input_size": "[H, W] network input (multiples of 32); [0, 0] = the size stored in the model file",
    "fp16": "half-precision forward pass on CUDA",
    "channels_last": "NHWC memory format for the forward pass (CUDA)",
    "compile": "torch.compile with CUDA graphs for the padded batch sizes (CUDA only; falls back to eager)",
    "backend": "forward pass: auto (onnxruntime on CPU when installed, else torch) | torch | onnxruntime",
    "camera_topics": "sensor_msgs/Image (or CompressedImage) topics, one per camera",
    "transports": "auto | raw | compressed, one for all topics or one per topic (auto: '/compressed' suffix)",
    "detections_topics": "['auto'] (= <camera ns>/detections) or one vision_msgs/Detection2DArray topic per camera",
    "publish_annotated": "publish <ns>/detections_image (drawn only while subscribed)",
    "label_info_topic": "vision_msgs/LabelInfo topic (transient local)",
    "qos_reliability": "camera subscriptions: best_effort | reliable",
    "qos_depth": "camera subscription queue depth",
    "diagnostics_period": "seconds between diagnostic_msgs/DiagnosticArray on /diagnostics",
    "cpu_threads": "torch / onnxruntime intra-op threads for CPU inference (-1 = all cores but one, 0 = torch default)",
    "autostart": "configure and activate on start",
    "max_batch_size": "most camera frames in one forward pass",
    "max_batch_latency_ms": "longest wait for more cameras after the first pending frame",
    "score_threshold": "publish detections with score > this, in [0, 1)",
    "ae_threshold": "max |tl_tag - br_tag| embedding distance of a corner pair (> 0)",
    "topk": "keypoints kept per heatmap",
    "num_dets": "best corner pairs kept before the centre check",
    "kernel": "max-pool window of the peak test (odd)",
    "decode_mode": "triplet (corner pair + centre keypoint) | pairs (corners only, CornerNet)",
    "small_area": "box area (input px^2) up to which n_small applies",
    "n_small": "central-region scale n for small boxes",
    "n_large": "central-region scale n for large boxes",
    "nms_method": "soft | soft_linear | hard | none",
    "nms_sigma": "Gaussian soft-NMS sigma (> 0)",
    "nms_iou": "IoU threshold of hard / linear soft NMS, in [0, 1]",
    "max_detections": "most detections published per image",
}


def _ros_value(v: Any) -> Any:
    """A dataclass default as a ROS parameter value (tuples -> lists)."""
    if isinstance(v, tuple):
        return list(v)
    return v


def _from_ros(template: Any, v: Any) -> Any:
    """A ROS parameter value converted to the type of the dataclass default ``template``."""
    if isinstance(template, tuple):
        return tuple(v)
    if isinstance(template, list):
        return list(v)
    if isinstance(template, float) and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


# --------------------------------------------------------------------------------------------------
# Per-camera state
# --------------------------------------------------------------------------------------------------


@dataclass
class _Camera:
    index: int
    topic: str
    transport: str  # "raw" | "compressed"
    detections_topic: str
    annotated_topic: str
    det_pub: Any = None
    ann_pub: Any = None
    sub: Any = None
    pending: tuple[Any, int] | None = None  # (message, receive time in monotonic ns)
    received: int = 0
    processed: int = 0
    dropped: int = 0  # overwritten by a newer frame before the worker took it
    rejected: int = 0  # undecodable input
    last_reject: str = ""
    last_log_ns: int = 0
    suppressed: int = 0


def cpu_threads_for(cpu_threads: int, device: str) -> int:
    """torch threads to set for the ``cpu_threads`` parameter (0: leave torch's default).  -1 (auto):
    the usable cores but one, at least 1, when inference runs on the CPU; 0 on CUDA."""
    if cpu_threads != -1:
        return int(cpu_threads)
    try:
        if resolve_device(device).type != "cpu":
            return 0
    except (RuntimeError, ValueError):  # e.g. CUDA requested but absent: the detector reports it
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class DetectorNode(LifecycleNode):
    """Lifecycle node running the batched CenterNet detector over several camera topics."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._lock = threading.Condition()
        self._state = "unconfigured"
        self._error = ""  # last configure / activate failure (shown in the diagnostics)
        self._cams: list[_Camera] = []
        self._detector: Detector | None = None
        self._fallbacks_logged: set[str | None] = set()  # fast-path failures already in the log
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._label_pub = None
        self._class_names: list[str] = []
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._batches = 0
        self._batched_frames = 0
        # seconds per stage summed over the batches since the last diagnostics message (see STAGES)
        self._stage_sums = dict.fromkeys(STAGES, 0.0)
        self._stage_batches = 0
        self._diag_last = (time.monotonic(), 0)  # (time, processed frames) at the last diagnostics message

        for f in fields(NodeSettings):
            default = f.default if f.default_factory is MISSING else f.default_factory()  # type: ignore[misc]
            self._declare(f.name, _ros_value(default))
        for f in fields(BatchSettings):
            self._declare(f.name, f.default)
        decode_defaults = DecodeConfig()
        for ros_name, field_name in _DECODE.items():
            self._declare(ros_name, _ros_value(_DECODE_DEFAULTS.get(ros_name, getattr(decode_defaults, field_name))))
        try:  # a bad value from a params file fails the configure step with its reason, not the constructor
            self._decode_cfg, self._batch = self._read_decode(), self._read_batch()
        except (ValueError, TypeError):
            self._decode_cfg, self._batch = DecodeConfig(score_threshold=_DECODE_DEFAULTS["score_threshold"]), BatchSettings()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diag_timer = self.create_timer(period if period > 0 else 1.0, self._publish_diagnostics)

    # ---------------------------------------------------------------- parameters

    def _declare(self, name: str, default: Any) -> None:
        desc = ParameterDescriptor(description=_DESCRIPTIONS.get(name, f"decode setting (DecodeConfig.{name})"))
        self.declare_parameter(name, default, desc)

    def _values(self, names: set[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        out = {n: self.get_parameter(n).value for n in names}
        out.update({k: v for k, v in (overrides or {}).items() if k in names})
        return out

    def _read_settings(self, overrides: dict[str, Any] | None = None) -> NodeSettings:
        template = NodeSettings()
        vals = self._values(_STATIC, overrides)
        return NodeSettings(**{k: _from_ros(getattr(template, k), v) for k, v in vals.items()})

    def _read_batch(self, overrides: dict[str, Any] | None = None) -> BatchSettings:
        vals = self._values(_BATCH, overrides)
        return BatchSettings(max_batch_size=int(vals["max_batch_size"]), max_batch_latency_ms=float(vals["max_batch_latency_ms"]))

    def _read_decode(self, overrides: dict[str, Any] | None = None) -> DecodeConfig:
        template = DecodeConfig()
        vals = self._values(set(_DECODE), overrides)
        kwargs = {_DECODE[k]: _from_ros(getattr(template, _DECODE[k]), v) for k, v in vals.items()}
        return DecodeConfig(**kwargs)

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        static = sorted(n for n in new if n in _STATIC)
        if static and self._state != "unconfigured":
            return SetParametersResult(
                successful=False,
                reason=f"{', '.join(static)} can only change while the node is unconfigured (it is {self._state}); "
                "deactivate and clean it up first",
            )
        try:
            if static:
                self._read_settings(new)
            batch = self._read_batch(new) if _BATCH & set(new) else None
            decode = self._read_decode(new) if set(_DECODE) & set(new) else None
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=f"rejected {', '.join(sorted(new))}: {exc}")
        with self._lock:
            if batch is not None:
                self._batch = batch
            if decode is not None:
                self._decode_cfg = decode
                if self._detector is not None:
                    self._detector.decode_config = decode
            self._lock.notify_all()
        if decode is not None and self._label_pub is not None:
            self._publish_label_info()  # its threshold field follows score_threshold
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- lifecycle

    def _fail(self, what: str, exc: BaseException | str) -> TransitionCallbackReturn:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self._error = f"{what}: {text}"
        self.get_logger().error(self._error)
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..weights import WeightsError, read_meta

        try:
            settings = self._read_settings()
            decode, batch = self._read_decode(), self._read_batch()
        except (ValueError, TypeError) as exc:
            return self._fail("invalid parameters", exc)
        with self._lock:
            self._decode_cfg, self._batch = decode, batch
        path = Path(settings.weights) if settings.weights else default_weights_path()
        try:
            meta = read_meta(path)
        except WeightsError as exc:
            return self._fail("cannot load the model", exc)
        self._settings = settings
        self._weights_path = path
        if self._diag_timer.timer_period_ns != int(settings.diagnostics_period * 1e9):
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(settings.diagnostics_period, self._publish_diagnostics)
        self._class_names = list(meta.class_names)
        try:
            self._create_publishers(settings)
        except Exception as exc:  # e.g. an invalid topic name
            self._destroy_publishers()
            return self._fail("cannot create publishers", exc)
        self._publish_label_info()
        self._error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured: model '{path}' ({len(self._class_names)} classes), cameras "
            + ", ".join(f"{c.topic} ({c.transport}) -> {c.detections_topic}" for c in self._cams)
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self._settings
        threads = cpu_threads_for(s.cpu_threads, s.device)
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        cfg_size = None if list(s.input_size) == [0, 0] else (int(s.input_size[0]), int(s.input_size[1]))
        try:
            with warnings.catch_warnings(record=True) as caught:  # the Detector's fallback warnings -> ROS log
                detector = Detector(
                    DetectorConfig(
                        weights=str(self._weights_path), device=s.device, input_size=cfg_size, fp16=s.fp16,
                        channels_last=s.channels_last, compile=s.compile, backend=s.backend,
                    ),
                    decode=self._decode_cfg,
                )
        except Exception as exc:
            return self._fail("cannot load the model", exc)
        for w in caught:
            if issubclass(w.category, RuntimeWarning):  # ours, e.g. "onnxruntime backend unavailable, using torch: ..."
                self.get_logger().warning(str(w.message))
            else:  # library warnings (export, tracing) go where they went before
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if s.fp16 and not detector.fp16:
            self.get_logger().warning(
                f"fp16 requested but the forward pass runs on {detector.device} ({detector.backend}): running in fp32"
            )
        self._fallbacks_logged = {detector.backend_error, detector.compile_error}  # logged above, if any
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=int(s.qos_depth),
            reliability=_RELIABILITY[s.qos_reliability],
            durability=DurabilityPolicy.VOLATILE,
        )
        with self._lock:
            self._detector = detector
            self._state = "active"
        try:
            for cam in self._cams:
                msg_type = CompressedImage if cam.transport == "compressed" else Image
                cam.sub = self.create_subscription(msg_type, cam.topic, functools.partial(self._on_image, cam), qos)
        except Exception as exc:
            self._deactivate()
            return self._fail("cannot subscribe", exc)
        # Everything alive now (torch, the model, rclpy: ~10^5-10^6 objects) leaves the cyclic GC's sight:
        # otherwise each full collection walks it all and stalls the worker mid-frame (measured in the demo
        # on 2 vCPUs: receive->publish p99 267 -> 108 ms with the GC off, p50 unchanged).  Per-frame garbage
        # is freed by reference counting; unfrozen again on deactivation, so a dropped model can be collected.
        gc.collect()
        gc.freeze()
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name="centernet-inference", daemon=True)
        self._worker.start()
        self._error = ""
        h, w = detector.input_size
        self.get_logger().info(f"active on {detector.device} with {detector.backend} (input {h}x{w}, fp16={detector.fp16})")
        return TransitionCallbackReturn.SUCCESS

    def _deactivate(self) -> None:
        with self._lock:
            if self._state == "active":
                self._state = "inactive"
            self._stop.set()
            self._lock.notify_all()
        for cam in self._cams:
            if cam.sub is not None:
                self.destroy_subscription(cam.sub)
                cam.sub = None
        with self._lock:
            for cam in self._cams:
                cam.pending = None
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30.0)
        self._worker = None
        with self._lock:
            detector, self._detector = self._detector, None
        if detector is not None:
            detector.close()  # drops the weights and empties the CUDA cache
            gc.unfreeze()  # frozen at activation (see on_activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info("deactivated: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_publishers()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._destroy_publishers()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._destroy_publishers()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> bool:
        """Configure and activate (what ``autostart: true`` does). True when the node ended up active."""
        if self._state == "unconfigured" and self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        if self._state == "inactive" and self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            return False
        return self._state == "active"

    def close(self) -> None:
        """Stop the worker, free the model and destroy the publishers (before ``destroy_node``)."""
        self._deactivate()
        self._destroy_publishers()

    @property
    def state(self) -> str:
        """``unconfigured``, ``inactive``, ``active`` or ``finalized``."""
        return self._state

    @property
    def last_error(self) -> str:
        """The last configure / activate failure (one line), empty after a successful transition."""
        return self._error

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) network input of the loaded model (None while not active)."""
        detector = self._detector
        return tuple(detector.input_size) if detector is not None else None  # type: ignore[return-value]

    def output_subscriber_counts(self) -> dict[str, tuple[int, int]]:
        """Camera topic -> (subscribers of its detections, subscribers of its annotated image)."""
        return {
            c.topic: (c.det_pub.get_subscription_count() if c.det_pub is not None else 0,
                      c.ann_pub.get_subscription_count() if c.ann_pub is not None else 0)
            for c in self._cams
        }

    def latencies_ms(self) -> list[float]:
        """Receive -> publish latencies of the most recent frames (up to 2048), in milliseconds."""
        with self._lock:
            return list(self._latencies)

    @property
    def class_names(self) -> list[str]:
        """Class index -> name of the configured model (empty while unconfigured)."""
        return list(self._class_names)

    def _create_publishers(self, s: NodeSettings) -> None:
        self._cams = [
            _Camera(
                index=i,
                topic=topic,
                transport=s.transport_of(i),
                detections_topic=s.detections_topic_of(i),
                annotated_topic=s.annotated_topic_of(i),
            )
            for i, topic in enumerate(s.camera_topics)
        ]
        seen: dict[str, str] = {}
        for cam in self._cams:
            if cam.detections_topic in seen:
                raise ValueError(
                    f"camera topics {seen[cam.detections_topic]!r} and {cam.topic!r} both map to "
                    f"{cam.detections_topic!r}; set detections_topics"
                )
            seen[cam.detections_topic] = cam.topic
        for cam in self._cams:
            cam.det_pub = self.create_publisher(Detection2DArray, cam.detections_topic, 10)
            if s.publish_annotated:
                cam.ann_pub = self.create_publisher(Image, cam.annotated_topic, 5)
        latched = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._label_pub = self.create_publisher(LabelInfo, s.label_info_topic, latched)

    def _destroy_publishers(self) -> None:
        for cam in self._cams:
            for pub in (cam.det_pub, cam.ann_pub):
                if pub is not None:
                    self.destroy_publisher(pub)
            cam.det_pub = cam.ann_pub = None
        self._cams = []
        if self._label_pub is not None:
            self.destroy_publisher(self._label_pub)
            self._label_pub = None

    def _publish_label_info(self) -> None:
        pub = self._label_pub
        if pub is None:
            return
        msg = label_info_msg(self._class_names, threshold=float(self._decode_cfg.score_threshold))
        msg.header.stamp = self.get_clock().now().to_msg()
        pub.publish(msg)

    # ---------------------------------------------------------------- frames

    def _on_image(self, cam: _Camera, msg: Any) -> None:
        now = time.monotonic_ns()
        with self._lock:
            if self._state != "active":
                return
            cam.received += 1
            if cam.pending is not None:
                cam.dropped += 1
            cam.pending = (msg, now)
            self._lock.notify_all()

    def _take_batch(self) -> list[tuple[_Camera, Any, int]]:
        """Block until frames are pending; return up to max_batch_size of them, oldest first."""
        with self._lock:
            while not self._stop.is_set() and not any(c.pending is not None for c in self._cams):
                self._lock.wait(0.2)
            if self._stop.is_set():
                return []
            while not self._stop.is_set():
                pending = [c for c in self._cams if c.pending is not None]
                limit = min(self._batch.max_batch_size, len(self._cams))
                oldest = min(c.pending[1] for c in pending)  # type: ignore[index]
                wait_s = (oldest + self._batch.max_batch_latency_ms * 1e6 - time.monotonic_ns()) / 1e9
                if len(pending) >= limit or wait_s <= 0:
                    break
                self._lock.wait(wait_s)
            if self._stop.is_set():
                return []
            pending = sorted((c for c in self._cams if c.pending is not None), key=lambda c: c.pending[1])  # type: ignore[index]
            batch = []
            for cam in pending[: self._batch.max_batch_size]:
                msg, t = cam.pending  # type: ignore[misc]
                cam.pending = None
                batch.append((cam, msg, t))
            return batch

    def _run_worker(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let one bad batch kill the worker
                if not rclpy.ok() or self._stop.is_set():
                    return
                self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
                with self._lock:
                    for cam, _, _ in batch:
                        cam.rejected += 1
                        cam.last_reject = f"inference failed: {exc}"

    def _reject(self, cam: _Camera, reason: str) -> None:
        now = time.monotonic_ns()
        with self._lock:
            cam.rejected += 1
            cam.last_reject = reason
            log = now - cam.last_log_ns >= LOG_THROTTLE_S * 1e9
            suppressed, cam.suppressed = (cam.suppressed, 0) if log else (0, cam.suppressed + 1)
            if log:
                cam.last_log_ns = now
        if log:
            more = f" ({suppressed} more since the last message)" if suppressed else ""
            self.get_logger().error(f"rejected a frame on {cam.topic}: {reason}{more}")

    def _process(self, batch: list[tuple[_Camera, Any, int]]) -> None:
        detector = self._detector
        if detector is None:
            return
        t0 = time.perf_counter()
        good: list[tuple[_Camera, Any, int, RawImage]] = []
        for cam, msg, t in batch:
            try:
                raw = compressed_msg_to_array(msg) if cam.transport == "compressed" else image_msg_to_array(msg)
            except ImageConversionError as exc:
                self._reject(cam, str(exc))
                continue
            good.append((cam, msg, t, raw))
        if not good:
            return
        t1 = time.perf_counter()
        results = detector.detect([g[3].array for g in good], orders=[g[3].order for g in good])
        t2 = time.perf_counter()
        self._log_fallbacks(detector)
        annotate = 0.0
        for (cam, msg, t, raw), det in zip(good, results):
            out = detections_to_msg(msg.header, det.boxes, det.scores, det.labels)
            pub = cam.det_pub
            if pub is None:
                return
            pub.publish(out)  # detections first: drawing the annotated frame must not delay them
            latency_ms = (time.monotonic_ns() - t) / 1e6
            with self._lock:
                cam.processed += 1
                self._latencies.append(latency_ms)
            ann = cam.ann_pub
            if ann is not None and ann.get_subscription_count() > 0:
                ta = time.perf_counter()
                canvas = draw_detections(to_bgr(raw), det.boxes, det.scores, det.labels, self._class_names)
                ann.publish(bgr_to_image_msg(canvas, msg.header))
                annotate += time.perf_counter() - ta
        t3 = time.perf_counter()
        with self._lock:
            self._batches += 1
            self._batched_frames += len(good)
            sums = self._stage_sums
            sums["convert"] += t1 - t0
            sums["detect"] += t2 - t1
            sums["publish"] += t3 - t2 - annotate
            sums["annotate"] += annotate
            self._stage_batches += 1

    def _log_fallbacks(self, detector: Detector) -> None:
        """Log once when the forward pass left a fast path at run time (it goes on, slower but correct)."""
        for what, err in (("onnxruntime forward failed, using torch from now on", detector.backend_error),
                          ("torch.compile path disabled, running eagerly", detector.compile_error)):
            if err and err not in self._fallbacks_logged:
                self._fallbacks_logged.add(err)
                self.get_logger().error(f"{what}: {err}")

    # ---------------------------------------------------------------- diagnostics

    def stats(self, *, reset_stages: bool = False) -> dict[str, Any]:
        """Counters, latency percentiles and mean stage times (what the diagnostics publish), as plain
        Python values.  ``reset_stages`` starts a new averaging window for the stage times (the
        diagnostics timer does, so each message shows the batches since the previous one)."""
        with self._lock:
            lat = np.asarray(self._latencies, dtype=np.float64)
            cams = {
                c.topic: {"received": c.received, "processed": c.processed, "dropped": c.dropped,
                          "rejected": c.rejected, "last_reject": c.last_reject}
                for c in self._cams
            }
            batches, frames = self._batches, self._batched_frames
            n = self._stage_batches
            stage_ms = {k: (v / n * 1e3 if n else float("nan")) for k, v in self._stage_sums.items()}
            if reset_stages:
                self._stage_sums = dict.fromkeys(STAGES, 0.0)
                self._stage_batches = 0
        return {
            "state": self._state,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "batches": batches,
            "mean_batch_size": frames / batches if batches else 0.0,
            "stage_ms": stage_ms,  # mean ms per batch of each of STAGES since the last reset (NaN: no batch)
            "cameras": cams,
        }

    def _publish_diagnostics(self) -> None:
        st = self.stats(reset_stages=True)
        now = time.monotonic()
        processed = sum(c["processed"] for c in st["cameras"].values())
        t0, n0 = self._diag_last
        fps = (processed - n0) / (now - t0) if now > t0 and processed >= n0 else 0.0
        self._diag_last = (now, processed)
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: detector"
        detector = self._detector
        status.hardware_id = f"{detector.device} ({detector.backend})" if detector is not None else ""
        rejected = sum(c["rejected"] for c in st["cameras"].values())
        if self._error:
            status.level, status.message = DiagnosticStatus.ERROR, self._error
        elif self._state != "active":
            status.level, status.message = DiagnosticStatus.WARN, f"{self._state}: not processing"
        elif rejected:
            status.level, status.message = DiagnosticStatus.WARN, f"{fps:.1f} fps, {rejected} frames rejected"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{fps:.1f} fps"
        values = {
            "state": st["state"],
            "fps": f"{fps:.2f}",
            "latency_p50_ms": f"{st['latency_p50_ms']:.2f}",
            "latency_p99_ms": f"{st['latency_p99_ms']:.2f}",
            "batches": str(st["batches"]),
            "mean_batch_size": f"{st['mean_batch_size']:.2f}",
        }
        for stage, ms in st["stage_ms"].items():  # since the previous message; "nan" when no batch ran
            values[f"{stage}_ms_per_batch"] = f"{ms:.2f}"
        if detector is not None and detector.backend_error:  # onnxruntime requested or failed: torch runs
            values["backend_error"] = detector.backend_error
        if detector is not None and detector.compile_error:  # torch.compile failed: the eager model runs
            values["compile_error"] = detector.compile_error
        for topic, c in st["cameras"].items():
            for key in ("received", "processed", "dropped", "rejected"):
                values[f"{topic} {key}"] = str(c[key])
            if c["last_reject"]:
                values[f"{topic} last_reject"] = c["last_reject"]
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Console script ``centernet-detector [--ros-args --params-file config/detect.yaml ...]``."""
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = DetectorNode()
    except (InvalidParameterTypeException, InvalidParameterValueException, ValueError) as exc:
        print(f"centernet-detector: invalid parameters: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        if node.get_parameter("autostart").value:
            node.autostart()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
