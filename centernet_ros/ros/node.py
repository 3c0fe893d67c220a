"""``centernet-detector``: a lifecycle node that batches camera frames through the CenterNet detector.

Legend: B frames in one forward pass (one per camera with a pending frame), D detections of one frame.

Data flow::

    camera_topics[i] --(callback: keep newest frame, count overwritten ones as dropped)--> slot[i]
        (gaps in each publisher's sequence numbers -> lost[i]; subscription events: message_lost ->
         lost_reported[i], requested_incompatible_qos -> camera i WARN)
    worker thread: wait for a pending slot, up to max_batch_latency_ms for more (max_batch_size; round
                   robin over the cameras when more are pending than a batch takes)
                   -> decode (zero-copy views) -> Detector.detect (upload, letterbox, forward, decode)
                   -> Detection2DArray on detections_topics[i] (every processed frame, empty included)
                   -> annotated bgr8 image on <ns>/detections_image (only while someone subscribes)
    timer: DiagnosticArray on /diagnostics (fps, latency p50/p99, mean ms per batch of each stage,
           per-camera counters; one status per camera, WARN while it is not delivering)

Every frame received is counted once: processed, dropped (overwritten, pending at deactivation, no
publisher) or rejected (undecodable, a decompression bomb, the forward pass failed); frames a camera
sent that never reached the callback are ``lost`` (see :mod:`.intake`).  Strings taken from messages or
exceptions are bounded (``conversions.bounded``).

Lifecycle: configure (read parameters, check the model file, create publishers, publish LabelInfo),
activate (load the model onto the device, subscribe, start the worker), deactivate (unsubscribe,
stop the worker, free the model and the GPU memory), cleanup (destroy publishers). Started from its
console script with ``autostart: true`` (default) it configures and activates itself; a failing step
logs one line and leaves the node alive in its previous state (fix the parameter, then
``ros2 lifecycle set``), so a launch file never crash-loops on a missing model file.

This module wires the pieces together: :mod:`.params` (declaration, descriptors, validation into the
settings), :mod:`.intake` (pending frames and batching), :mod:`.worker` (the inference thread and
publishing) and :mod:`.diagnostics` (statistics and the DiagnosticStatus); the process around it
(``centernet-detector``): :mod:`.detector_main`.
"""
from __future__ import annotations

import functools
import gc
import sys
import warnings
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_policy_name_from_kind
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ..decode import DecodeConfig
from ..detector import Detector, DetectorConfig
from . import params
from .conversions import label_info_msg
from .diagnostics import FrameRate, Stats, node_statuses
from .intake import Camera, Intake, cameras_for
from .params import BatchSettings, NodeSettings, cpu_threads_for, default_weights_path, detections_topic_for
from .worker import Worker

__all__ = ["DetectorNode", "NodeSettings", "BatchSettings", "cpu_threads_for", "default_weights_path",
           "detections_topic_for", "main"]

NODE_NAME = "centernet_detector"


class DetectorNode(LifecycleNode):
    """Lifecycle node running the batched CenterNet detector over several camera topics."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._intake = Intake()
        self._lock = self._intake.lock  # also guards _state, _detector and _decode_cfg swaps
        self._stats = Stats(self._lock)
        self._rates: dict[str, FrameRate] = {}  # "" (the node) / camera topic -> processed frames per second
        self._state = "unconfigured"
        self._error = ""  # last configure / activate failure (shown in the diagnostics)
        self._detector: Detector | None = None
        self._worker = Worker(self._intake, self._stats, self.get_logger())
        self._label_pub = None
        self._class_names: list[str] = []

        self._unranged = params.declare_all(self)  # start-up values outside their range (refused by configure)
        try:  # a bad value from a params file fails the configure step with its reason, not the constructor
            self._decode_cfg, self._intake.batch = self._read_decode(), self._read_batch()
        except (ValueError, TypeError):
            self._decode_cfg = DecodeConfig(score_threshold=params.DECODE_DEFAULTS["score_threshold"])
        self.add_pre_set_parameters_callback(params.coerce_whole_numbers)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(functools.partial(params.restore_ranges, self, self._unranged))

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diag_timer = self.create_timer(period if period > 0 else 1.0, self._publish_diagnostics)

    # ---------------------------------------------------------------- parameters

    def _values(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value, with ``overrides`` (the ones being set) in place of the current ones."""
        out = {n: self.get_parameter(n).value for n in params.DEFAULTS}
        out.update({k: v for k, v in (overrides or {}).items() if k in out})
        return out

    def _read_settings(self, overrides: dict[str, Any] | None = None) -> NodeSettings:
        return params.read_settings(self._values(overrides))

    def _read_batch(self, overrides: dict[str, Any] | None = None) -> BatchSettings:
        return params.read_batch(self._values(overrides))

    def _read_decode(self, overrides: dict[str, Any] | None = None) -> DecodeConfig:
        return params.read_decode(self._values(overrides))

    def _on_set_parameters(self, changed: list[Any]) -> SetParametersResult:
        new = {p.name: p.value for p in changed}
        static = sorted(n for n in new if n in params.STATIC)
        if static and self._state != "unconfigured":
            return SetParametersResult(
                successful=False,
                reason=f"{', '.join(static)} can only change while the node is unconfigured (it is {self._state}); "
                "deactivate and clean it up first",
            )
        try:
            if static:
                self._read_settings(new)
            batch = self._read_batch(new) if params.BATCH & set(new) else None
            decode = self._read_decode(new) if set(params.DECODE) & set(new) else None
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=f"rejected {', '.join(sorted(new))}: {exc}")
        with self._lock:
            if batch is not None:
                self._intake.batch = batch
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
            self._decode_cfg, self._intake.batch = decode, batch
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
            + ", ".join(f"{c.topic} ({c.transport}) -> {c.detections_topic}" for c in self._intake.cams)
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
                        int8_model=s.int8_model or None,
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
        qos = s.camera_qos()
        with self._lock:
            self._detector = detector
            self._state = "active"
        self._intake.start()
        try:
            for cam in self._intake.cams:
                cam.sub = self._subscribe(cam, qos)
        except Exception as exc:
            self._deactivate()
            return self._fail("cannot subscribe", exc)
        # Everything alive now (torch, the model, rclpy: ~10^5-10^6 objects) leaves the cyclic GC's sight:
        # otherwise each full collection walks it all and stalls the worker mid-frame (measured in the demo
        # on 2 vCPUs: receive->publish p99 267 -> 108 ms with the GC off, p50 unchanged).  Per-frame garbage
        # is freed by reference counting; unfrozen again on deactivation, so a dropped model can be collected.
        gc.collect()
        gc.freeze()
        self._worker.start(detector, self._class_names, s.max_compressed_pixels)  # fast-path failures: logged above
        self._error = ""
        h, w = detector.input_size
        self.get_logger().info(f"active on {detector.device} with {detector.backend} (input {h}x{w}, fp16={detector.fp16})")
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, cam: Camera, qos: QoSProfile) -> Any:
        """The camera's subscription, with its events: message_lost -> ``cam.lost_reported``, an
        incompatible-QoS publisher -> ``cam`` WARN in /diagnostics (and one warning line per event)."""
        msg_type = CompressedImage if cam.transport == "compressed" else Image

        def incompatible(info: Any) -> None:
            policy = qos_policy_name_from_kind(info.last_policy_kind)
            self._intake.incompatible(cam, policy)
            self.get_logger().warning(
                f"a publisher on {cam.topic} offers QoS incompatible with the subscription ({policy}, "
                f"qos_reliability={self._settings.qos_reliability}): no frames from it")

        def lost(info: Any) -> None:
            self._intake.lost(cam, info.total_count_change)

        callback = functools.partial(self._intake.receive, cam)  # (msg, MessageInfo): sequence numbers -> lost
        try:
            events = SubscriptionEventCallbacks(incompatible_qos=incompatible, message_lost=lost)
            return self.create_subscription(msg_type, cam.topic, callback, qos, event_callbacks=events)
        except UnsupportedEventTypeError:  # a middleware without message_lost: no lost counts
            events = SubscriptionEventCallbacks(incompatible_qos=incompatible)
            return self.create_subscription(msg_type, cam.topic, callback, qos, event_callbacks=events)

    def _deactivate(self) -> None:
        with self._lock:
            if self._state == "active":
                self._state = "inactive"
        self._intake.close()
        for cam in self._intake.cams:
            if cam.sub is not None:
                self.destroy_subscription(cam.sub)
                cam.sub = None
        self._worker.stop()  # finishes (and counts) the batch in flight
        discarded = self._intake.clear_pending("pending at deactivation")
        if discarded:
            self.get_logger().info(f"deactivating: {discarded} pending frame(s) dropped")
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
        self.get_logger().info("cleaned up: publishers destroyed (unconfigured)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._destroy_publishers()
        self._state = "finalized"  # centernet-detector's spin loop ends the process
        self.get_logger().info(f"shut down from {state.label}: model unloaded, publishers destroyed (finalized)")
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
            for c in self._intake.cams
        }

    def latencies_ms(self) -> list[float]:
        """Receive -> publish latencies of the most recent frames (up to 2048), in milliseconds."""
        return self._stats.latencies_ms()

    @property
    def class_names(self) -> list[str]:
        """Class index -> name of the configured model (empty while unconfigured)."""
        return list(self._class_names)

    def _create_publishers(self, s: NodeSettings) -> None:
        self._intake.cams = cameras_for(s)
        for cam in self._intake.cams:
            cam.det_pub = self.create_publisher(Detection2DArray, cam.detections_topic, 10)
            if s.publish_annotated:
                cam.ann_pub = self.create_publisher(Image, cam.annotated_topic, 5)
        self._label_pub = self.create_publisher(LabelInfo, s.label_info_topic, params.LATCHED)

    def _destroy_publishers(self) -> None:
        for cam in self._intake.cams:
            for pub in (cam.det_pub, cam.ann_pub):
                if pub is not None:
                    self.destroy_publisher(pub)
            cam.det_pub = cam.ann_pub = None
        self._intake.cams = []
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

    # ---------------------------------------------------------------- diagnostics

    def stats(self, *, reset_stages: bool = False) -> dict[str, Any]:
        """Counters, latency percentiles and mean stage times (what the diagnostics publish), as plain
        Python values: ``state``, ``latency_p50_ms``, ``latency_p99_ms``, ``batches``, ``mean_batch_size``,
        ``stage_ms`` (mean ms per batch of each of ``STAGES``) and ``cameras`` (topic -> counters).
        ``reset_stages`` starts a new averaging window for the stage times (the diagnostics timer does,
        so each message shows the batches since the previous one)."""
        timeout = getattr(self, "_settings", None)
        return self._stats.snapshot(self._intake.cams, self._state, reset_stages=reset_stages,
                                    camera_timeout=timeout.camera_timeout if timeout is not None else 5.0)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = node_statuses(self.get_fully_qualified_name(), self.stats(reset_stages=True), self._rates,
                                   error=self._error, detector=self._detector)
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None, *, stop: Any = None) -> int:
    """Console script ``centernet-detector``: :func:`.detector_main.main` (kept here for
    ``python -m centernet_ros.ros.node``)."""
    from .detector_main import main as run

    return run(args, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
