"""The detector node's ROS parameters: declaration with descriptors, and their mapping onto the settings.

Three groups, each read into its own config:

- :class:`NodeSettings`: model, topics, QoS, ... (change only while the node is unconfigured);
- :class:`BatchSettings`: ``max_batch_size``, ``max_batch_latency_ms`` (change at run time);
- :class:`~centernet_ros.decode.DecodeConfig`: the decode settings (change at run time); three of its
  fields have other names on the ROS side (:data:`DECODE_RENAMED`), and every error names the ROS one.

Each parameter is declared with a ``ParameterDescriptor``: its description, its type, and the
``FloatingPointRange`` / ``IntegerRange`` its validation implies (``ros2 param describe`` shows them;
the configs' own checks stay the complete ones, e.g. ``score_threshold`` in [0, 1) within the range
[0, 1]).  A whole number given for a floating-point parameter (``score_threshold: 0`` in a params file,
``ros2 param set ... score_threshold 0``) is taken as that float.  A start-up value outside its range is
kept (the node stays up and the configure step refuses it, quoting it): that parameter is declared
without its range until a valid value is set.
"""
from __future__ import annotations

import math
import os
import posixpath
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..decode import DecodeConfig
from ..detector import BACKENDS, resolve_device
from .package_files import package_file

__all__ = [
    "NodeSettings", "BatchSettings", "DECODE_DEFAULTS", "DECODE_RENAMED", "STATIC", "BATCH", "DECODE", "RELIABILITY",
    "LATCHED",
    "DEFAULTS", "default_weights_path", "detections_topic_for", "cpu_threads_for", "descriptor_of", "declare_all",
    "restore_ranges", "coerce_whole_numbers", "read_settings", "read_batch", "read_decode",
]

DEFAULT_MODEL = "centernet_vehicles.safetensors"
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
# LabelInfo: the last message kept for subscribers that join later
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
_TRANSPORTS = ("auto", "raw", "compressed")


def default_weights_path() -> Path:
    """The bundled model: ``<share>/centernet_ros/models/...`` when installed, else the source tree's ``models/``."""
    return package_file("models", DEFAULT_MODEL)


def _strip_transport(topic: str) -> str:
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def detections_topic_for(camera_topic: str, name: str = "detections") -> str:
    """Sibling topic of a camera topic: ``/cam0/image_raw`` (or ``.../image_raw/compressed``) -> ``/cam0/<name>``."""
    ns = posixpath.dirname(_strip_transport(camera_topic).rstrip("/") or "/")
    if ns in ("", "/"):
        return ("/" if camera_topic.startswith("/") else "") + name
    return f"{ns}/{name}"


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
    #                        | onnxruntime-int8 (the INT8 file of centernet-export --int8; CPU)
    int8_model: str = ""  # backend onnxruntime-int8: the INT8 .onnx; "" = <weights stem>.int8-<H>x<W>.onnx beside the weights
    camera_topics: list[str] = field(default_factory=lambda: ["camera/image_raw"])  # sensor_msgs/Image topics (relative: follow the namespace)
    transports: list[str] = field(default_factory=lambda: ["auto"])  # one for all or one per topic: auto|raw|compressed
    detections_topics: list[str] = field(default_factory=lambda: ["auto"])  # ["auto"] = <camera ns>/detections
    publish_annotated: bool = True  # <camera ns>/detections_image, drawn only while someone subscribes
    label_info_topic: str = "label_info"  # vision_msgs/LabelInfo, transient local
    qos_reliability: str = "best_effort"  # camera subscriptions: best_effort (also hears reliable) | reliable
    qos_depth: int = 1  # camera subscription queue depth (newest frame wins anyway)
    diagnostics_period: float = 1.0  # seconds between /diagnostics messages
    camera_timeout: float = 5.0  # seconds without a frame after which a camera is reported WARN ("no frames for N s")
    max_compressed_pixels: int = 50_000_000  # largest W x H a CompressedImage may declare (8K UHD: 33.2 Mpx); larger
    #                                          ones are rejected before decoding (decompression bombs)
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
        if self.qos_reliability not in RELIABILITY:
            raise ValueError(f"qos_reliability must be one of {sorted(RELIABILITY)}, got {self.qos_reliability!r}")
        if int(self.qos_depth) < 1:
            raise ValueError(f"qos_depth must be >= 1, got {self.qos_depth!r}")
        if not self.diagnostics_period > 0:
            raise ValueError(f"diagnostics_period must be > 0, got {self.diagnostics_period!r}")
        if not (self.camera_timeout > 0 and math.isfinite(self.camera_timeout)):
            raise ValueError(f"camera_timeout must be a finite number of seconds > 0, got {self.camera_timeout!r}")
        if isinstance(self.max_compressed_pixels, bool) or not isinstance(self.max_compressed_pixels, int) \
                or self.max_compressed_pixels < 1:
            raise ValueError(f"max_compressed_pixels must be an int >= 1, got {self.max_compressed_pixels!r}")
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

    def camera_qos(self) -> QoSProfile:
        """QoS of the camera subscriptions: keep the last ``qos_depth``, ``qos_reliability``, volatile."""
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(self.qos_depth),
                          reliability=RELIABILITY[self.qos_reliability], durability=DurabilityPolicy.VOLATILE)


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


STATIC = {f.name for f in fields(NodeSettings)}
BATCH = {f.name for f in fields(BatchSettings)}
# ROS parameter name -> DecodeConfig field. ``stride`` follows the model and ``host_sync`` is an
# implementation detail, so neither is a parameter; three fields get clearer names on the ROS side.
DECODE_RENAMED = {"decode_mode": "mode", "nms_method": "nms", "max_detections": "max_per_image"}
_DECODE_HIDDEN = {"stride", "host_sync"}
DECODE = {
    {v: k for k, v in DECODE_RENAMED.items()}.get(f.name, f.name): f.name
    for f in fields(DecodeConfig)
    if f.name not in _DECODE_HIDDEN
}
# Node defaults that differ from DecodeConfig's (the paper's evaluation settings, plus exclusive_centres).
DECODE_DEFAULTS = {"score_threshold": 0.22}  # = config/detect.yaml (tuned for the bundled model)

_DESCRIPTIONS = {
    "weights": "model file (.safetensors); empty = bundled models/" + DEFAULT_MODEL,
    "device": "auto | cpu | cuda | cuda:N",
    "input_size": "[H, W] network input (multiples of 32); [0, 0] = the size stored in the model file",
    "fp16": "half-precision forward pass on CUDA",
    "channels_last": "NHWC memory format for the forward pass (CUDA)",
    "compile": "torch.compile with CUDA graphs for the padded batch sizes (CUDA only; falls back to eager)",
    "backend": "forward pass: auto (onnxruntime on CPU when installed, else torch) | torch | onnxruntime | "
               "onnxruntime-int8 (the INT8 file of centernet-export --int8; CPU)",
    "int8_model": "backend onnxruntime-int8: the INT8 .onnx file; empty = <weights stem>.int8-<H>x<W>.onnx beside "
                  "the weights",
    "camera_topics": "sensor_msgs/Image (or CompressedImage) topics, one per camera",
    "transports": "auto | raw | compressed, one for all topics or one per topic (auto: '/compressed' suffix)",
    "detections_topics": "['auto'] (= <camera ns>/detections) or one vision_msgs/Detection2DArray topic per camera",
    "publish_annotated": "publish <ns>/detections_image (drawn only while subscribed)",
    "label_info_topic": "vision_msgs/LabelInfo topic (transient local)",
    "qos_reliability": "camera subscriptions: best_effort | reliable",
    "qos_depth": "camera subscription queue depth",
    "diagnostics_period": "seconds between diagnostic_msgs/DiagnosticArray on /diagnostics (> 0)",
    "camera_timeout": "seconds without a frame after which /diagnostics reports the camera WARN (no frames for N s)",
    "max_compressed_pixels": "largest width x height a CompressedImage may declare; larger ones are rejected before "
                             "decoding (decompression bombs)",
    "cpu_threads": "torch / onnxruntime intra-op threads for CPU inference (-1 = all cores but one, 0 = torch default)",
    "autostart": "configure and activate on start",
    "max_batch_size": "most camera frames in one forward pass",
    "max_batch_latency_ms": "longest wait (ms) for more cameras after the first pending frame",
    "score_threshold": "publish detections with score > this, in [0, 1)",
    "ae_threshold": "max |tl_tag - br_tag| embedding distance of a corner pair (> 0)",
    "topk": "keypoints kept per heatmap",
    "num_dets": "best corner pairs kept before the centre check",
    "kernel": "max-pool window of the peak test (odd)",
    "decode_mode": "triplet (corner pair + centre keypoint) | pairs (corners only, CornerNet)",
    "small_area": "box area (input px^2) up to which n_small applies",
    "n_small": "central-region scale n for small boxes",
    "n_large": "central-region scale n for large boxes",
    "exclusive_centres": "a centre keypoint confirming a better-scoring box nested inside a box does not confirm "
                         "that box too (removes boxes around queues of cars; false = the paper's rule)",
    "size_ratio": "with a model that predicts object sizes at centres (ct_size): a centre keypoint confirms a box only "
                  "when the box's width and height are within this factor of its predicted size (removes boxes "
                  "spanning several objects); 0 = off, else >= 1",
    "group_score_ratio": "after NMS, drop a box that encloses two distinct detections of its class, each scoring at "
                         "least this times its score (a box around a queue of cars; triplet mode; detections below "
                         "score_threshold count too); 0 = off, <= 1 sensible",
    "flip_test": "also run each frame flipped left-right and merge both views' boxes (the paper's single-scale "
                 "test: more recall, twice the forward-pass work and GPU memory; with compile, switching it on "
                 "captures new CUDA graphs on the next batches)",
    "nms_method": "soft | soft_linear | hard | none",
    "nms_sigma": "Gaussian soft-NMS sigma (> 0)",
    "nms_iou": "IoU threshold of hard / linear soft NMS, in [0, 1]",
    "max_detections": "most detections published per image",
}

_INT_MAX = 2**63 - 1  # IntegerRange is int64: "no upper bound"
# (from, to[, step]) of each parameter with one, inclusive as ROS ranges are; never stricter than the
# configs' own checks (an open bound such as ae_threshold > 0 is the closed one here).
_RANGES: dict[str, tuple] = {
    "qos_depth": (1, _INT_MAX),
    "diagnostics_period": (0.0, math.inf),
    "camera_timeout": (0.0, math.inf),
    "max_compressed_pixels": (1, _INT_MAX),
    "cpu_threads": (-1, _INT_MAX),
    "max_batch_size": (1, _INT_MAX),
    "max_batch_latency_ms": (0.0, math.inf),
    "score_threshold": (0.0, 1.0),
    "ae_threshold": (0.0, math.inf),
    "topk": (1, _INT_MAX),
    "num_dets": (1, _INT_MAX),
    "kernel": (1, _INT_MAX, 2),  # odd: 1, 3, 5, ...
    "small_area": (0.0, math.inf),
    "n_small": (1, _INT_MAX),
    "n_large": (1, _INT_MAX),
    "size_ratio": (0.0, math.inf),  # 0 (off) or >= 1: DecodeConfig says which values between are bad
    "group_score_ratio": (0.0, math.inf),
    "nms_sigma": (0.0, math.inf),
    "nms_iou": (0.0, 1.0),
    "max_detections": (1, _INT_MAX),
}


def _ros_value(v: Any) -> Any:
    """A dataclass default as a ROS parameter value (tuples -> lists)."""
    return list(v) if isinstance(v, tuple) else v


def _defaults() -> dict[str, Any]:
    """ROS parameter name -> default value, in declaration order."""
    out: dict[str, Any] = {}
    for f in fields(NodeSettings):
        out[f.name] = _ros_value(f.default if f.default_factory is MISSING else f.default_factory())  # type: ignore[misc]
    for f in fields(BatchSettings):
        out[f.name] = f.default
    decode = DecodeConfig()
    for ros_name, field_name in DECODE.items():
        out[ros_name] = _ros_value(DECODE_DEFAULTS.get(ros_name, getattr(decode, field_name)))
    return out


DEFAULTS = _defaults()
_FLOATS = {name for name, v in DEFAULTS.items() if isinstance(v, float)}


def descriptor_of(name: str, *, ranged: bool = True) -> ParameterDescriptor:
    """The descriptor a parameter is declared with: description, type, and its range (``ranged``)."""
    desc = ParameterDescriptor(
        name=name, description=_DESCRIPTIONS[name], type=Parameter.Type.from_parameter_value(DEFAULTS[name]).value
    )
    bounds = _RANGES.get(name) if ranged else None
    if bounds is not None:
        lo, hi, *step = bounds
        if name in _FLOATS:
            desc.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
        else:
            desc.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step[0] if step else 0)]
    return desc


def _as_declared(name: str, value: Any) -> Any:
    """A whole number given for a floating-point parameter, as that float; anything else unchanged."""
    if name in _FLOATS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def declare_all(node: Any) -> set[str]:
    """Declare every parameter on ``node`` with its descriptor, taking start-up values (params file,
    ``-p``, ``parameter_overrides``) as :func:`_as_declared` reads them.

    Returns the names whose start-up value lies outside the range: those are declared without it (so the
    node stays up and its configure step refuses the value, quoting it); :func:`restore_ranges` puts it
    back once a valid value is set.  Raises ``ValueError`` naming the parameter for a value of the wrong type.
    """
    unranged: set[str] = set()
    for name, default in DEFAULTS.items():
        # Declared typeless first, so that the start-up value comes through whatever its type ...
        loose = ParameterDescriptor(description=_DESCRIPTIONS[name], dynamic_typing=True)
        given = node.declare_parameter(name, default, loose).value
        value = _as_declared(name, given)
        want = Parameter.Type.from_parameter_value(default)
        if Parameter.Type.from_parameter_value(value) != want:
            raise ValueError(f"{name} must be of type {want.name.lower()}, got {given!r}")
        # ... then typed and ranged, the value converted where needed.
        as_msg = Parameter(name, value=value).get_parameter_value()
        try:
            node.set_descriptor(name, descriptor_of(name), as_msg)
        except InvalidParameterValueException:  # outside its range: kept, refused by the configure step
            node.set_descriptor(name, descriptor_of(name, ranged=False), as_msg)
            unranged.add(name)
    return unranged


def restore_ranges(node: Any, unranged: set[str], params: list[Parameter]) -> None:
    """After ``params`` were set (each valid, so within its range): re-declare the range of those in ``unranged``."""
    for p in params:
        if p.name in unranged:
            node.set_descriptor(p.name, descriptor_of(p.name))
            unranged.discard(p.name)


def coerce_whole_numbers(params: list[Parameter]) -> list[Parameter]:
    """Pre-set callback: an INTEGER value sent for a floating-point parameter becomes that DOUBLE
    (``ros2 param set /centernet_detector score_threshold 0``)."""
    return [
        Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
        if p.name in _FLOATS and p.type_ == Parameter.Type.INTEGER else p
        for p in params
    ]


def _from_ros(template: Any, v: Any) -> Any:
    """A ROS parameter value converted to the type of the dataclass default ``template``."""
    if isinstance(template, tuple):
        return tuple(v)
    if isinstance(template, list):
        return list(v)
    return v


def read_settings(values: dict[str, Any]) -> NodeSettings:
    """``NodeSettings`` from ROS parameter values (name -> value). Raises ``ValueError`` naming the parameter."""
    template = NodeSettings()
    return NodeSettings(**{k: _from_ros(getattr(template, k), values[k]) for k in STATIC})


def read_batch(values: dict[str, Any]) -> BatchSettings:
    """``BatchSettings`` from ROS parameter values. Raises ``ValueError`` naming the parameter."""
    return BatchSettings(max_batch_size=int(values["max_batch_size"]),
                         max_batch_latency_ms=float(values["max_batch_latency_ms"]))


def read_decode(values: dict[str, Any]) -> DecodeConfig:
    """``DecodeConfig`` from ROS parameter values. Raises ``ValueError`` naming the ROS parameter
    (``decode_mode``, not the field ``mode``)."""
    template = DecodeConfig()
    try:
        return DecodeConfig(**{field_name: _from_ros(getattr(template, field_name), values[ros_name])
                               for ros_name, field_name in DECODE.items()})
    except ValueError as exc:
        text = str(exc)
        for ros_name, field_name in DECODE_RENAMED.items():
            if text.startswith(field_name + " "):  # DecodeConfig's messages start with the field's name
                raise ValueError(ros_name + text[len(field_name):]) from None
        raise
