"""The detector node's inference thread: batches from the intake -> detector -> published messages.

Legend: B frames in one batch (at most one per camera).

Per batch: each message -> array (an undecodable one is rejected and counted, with a throttled log
line), one ``Detector.detect`` over the B arrays, then per frame a ``Detection2DArray`` on the
camera's detections topic (every processed frame, empty included) and, only while someone
subscribes, the annotated bgr8 image.  Each stage's wall time goes to :class:`.diagnostics.Stats`.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import rclpy

from ..detector import Detector
from .conversions import (
    ImageConversionError,
    RawImage,
    bgr_to_image_msg,
    compressed_msg_to_array,
    detections_to_msg,
    draw_detections,
    image_msg_to_array,
    to_bgr,
)
from .diagnostics import Stats
from .intake import Camera, Intake

__all__ = ["Worker", "LOG_THROTTLE_S"]

LOG_THROTTLE_S = 5.0  # at most one bad-input error line per camera topic in this many seconds


class Worker:
    """Runs one detector over the intake's batches in a daemon thread, from :meth:`start` to :meth:`stop`."""

    def __init__(self, intake: Intake, stats: Stats, logger: Any) -> None:
        self._intake = intake
        self._stats = stats
        self._logger = logger
        self._thread: threading.Thread | None = None
        self._detector: Detector | None = None
        self._class_names: list[str] = []
        self._fallbacks_logged: set[str | None] = set()  # fast-path failures already in the log

    def start(self, detector: Detector, class_names: list[str]) -> None:
        """Start the thread (the intake's ``stop`` cleared). Fast-path failures known now count as logged."""
        self._detector = detector
        self._class_names = list(class_names)
        self._fallbacks_logged = {detector.backend_error, detector.compile_error}
        self._intake.stop.clear()
        self._thread = threading.Thread(target=self._run, name="centernet-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Wait for the thread to end (the caller has closed the intake) and drop the detector."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        self._thread = None
        self._detector = None

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while not self._intake.stop.is_set():
            batch = self._intake.take_batch()
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let one bad batch kill the worker
                if not rclpy.ok() or self._intake.stop.is_set():
                    return
                self._logger.error(f"inference failed: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
                with self._intake.lock:
                    for cam, _, _ in batch:
                        cam.rejected += 1
                        cam.last_reject = f"inference failed: {exc}"

    def _process(self, batch: list[tuple[Camera, Any, int]]) -> None:
        detector = self._detector
        if detector is None:
            return
        t0 = time.perf_counter()
        good: list[tuple[Camera, Any, int, RawImage]] = []
        for cam, msg, t in batch:
            try:
                raw = compressed_msg_to_array(msg) if cam.transport == "compressed" else image_msg_to_array(msg)
            except ImageConversionError as exc:
                line = self._intake.reject(cam, str(exc), LOG_THROTTLE_S)
                if line is not None:
                    self._logger.error(line)
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
            self._stats.frame_published(cam, (time.monotonic_ns() - t) / 1e6)
            ann = cam.ann_pub
            if ann is not None and ann.get_subscription_count() > 0:
                ta = time.perf_counter()
                canvas = draw_detections(to_bgr(raw), det.boxes, det.scores, det.labels, self._class_names)
                ann.publish(bgr_to_image_msg(canvas, msg.header))
                annotate += time.perf_counter() - ta
        t3 = time.perf_counter()
        self._stats.batch_done(len(good), {"convert": t1 - t0, "detect": t2 - t1, "publish": t3 - t2 - annotate,
                                           "annotate": annotate})

    def _log_fallbacks(self, detector: Detector) -> None:
        """Log once when the forward pass left a fast path at run time (it goes on, slower but correct)."""
        for what, err in (("onnxruntime forward failed, using torch from now on", detector.backend_error),
                          ("torch.compile path disabled, running eagerly", detector.compile_error)):
            if err and err not in self._fallbacks_logged:
                self._fallbacks_logged.add(err)
                self._logger.error(f"{what}: {err}")
