"""The detector node's inference thread: batches from the intake -> detector -> published messages.

Legend: B frames in one batch (at most one per camera).

Per batch: each message -> array (an undecodable one is rejected and counted, with a throttled log
line; a ``CompressedImage`` declaring more than ``max_pixels`` is refused before decoding), one
``Detector.detect`` over the B arrays, then per frame a ``Detection2DArray`` on the camera's
detections topic (every processed frame, empty included) and, only while someone subscribes, the
annotated bgr8 image.  Each stage's wall time goes to :class:`.diagnostics.Stats`.

Each frame of a batch is counted exactly once: processed (published), rejected (undecodable, or the
forward pass failed: only the frames not yet published or rejected), or dropped (no detector or no
publisher any more, e.g. the node is being cleaned up).
"""
from __future__ import annotations

import threading
import time
from typing import Any

from ..detector import Detector
from .conversions import (
    MAX_PIXELS,
    ImageConversionError,
    RawImage,
    bgr_to_image_msg,
    bounded,
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
        self.max_pixels = MAX_PIXELS  # largest W x H a CompressedImage may declare (max_compressed_pixels)

    def start(self, detector: Detector, class_names: list[str], max_pixels: int = MAX_PIXELS) -> None:
        """Start the thread (the intake's ``stop`` cleared). Fast-path failures known now count as logged."""
        self._detector = detector
        self._class_names = list(class_names)
        self.max_pixels = int(max_pixels)
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
            if batch:
                self.run_batch(batch)

    def run_batch(self, batch: list[tuple[Camera, Any, int]]) -> None:
        """Process one batch of (camera, message, receive time ns); never raises: a failure rejects the
        frames not counted yet (logged, throttled)."""
        settled = [False] * len(batch)  # counted yet (published, rejected or dropped)
        try:
            self._process(batch, settled)
        except Exception as exc:  # never let one bad batch kill the worker
            self._failed(batch, settled, exc)

    def _failed(self, batch: list[tuple[Camera, Any, int]], settled: list[bool], exc: Exception) -> None:
        """A batch raised: its frames not counted yet are rejected with the (bounded) reason; logged unless
        the node is shutting down."""
        reason = bounded(f"inference failed: {exc}")
        with self._intake.lock:
            for (cam, _, _), done in zip(batch, settled):
                if not done:
                    cam.rejected += 1
                    cam.last_reject = reason
        if not self._intake.stop.is_set():  # a batch cut short by deactivation / shutdown is counted, not logged
            self._logger.error(reason, throttle_duration_sec=LOG_THROTTLE_S)

    def _drop_rest(self, batch: list[tuple[Camera, Any, int]], settled: list[bool], reason: str) -> None:
        for i, (cam, _, _) in enumerate(batch):
            if not settled[i]:
                self._intake.drop(cam, reason)
                settled[i] = True

    def _process(self, batch: list[tuple[Camera, Any, int]], settled: list[bool]) -> None:
        """Run one batch; ``settled[i]`` becomes True once frame i is counted (see the module docstring)."""
        detector = self._detector
        if detector is None:
            self._drop_rest(batch, settled, "no model loaded (the node was deactivated)")
            return
        t0 = time.perf_counter()
        good: list[tuple[int, Camera, Any, int, RawImage]] = []
        for i, (cam, msg, t) in enumerate(batch):
            try:
                if cam.transport == "compressed":
                    raw = compressed_msg_to_array(msg, max_pixels=self.max_pixels)
                else:
                    raw = image_msg_to_array(msg)
            except ImageConversionError as exc:
                line = self._intake.reject(cam, str(exc), LOG_THROTTLE_S)
                settled[i] = True
                if line is not None:
                    self._logger.error(line)
                continue
            good.append((i, cam, msg, t, raw))
        if not good:
            return
        t1 = time.perf_counter()
        results = detector.detect([g[4].array for g in good], orders=[g[4].order for g in good])
        t2 = time.perf_counter()
        self._log_fallbacks(detector)
        annotate = 0.0
        for (i, cam, msg, t, raw), det in zip(good, results):
            pub = cam.det_pub
            if pub is None:  # cleaned up meanwhile: this frame and the rest of the batch go unpublished
                self._drop_rest(batch, settled, "detections publisher gone (the node was cleaned up)")
                return
            out = detections_to_msg(msg.header, det.boxes, det.scores, det.labels)
            pub.publish(out)  # detections first: drawing the annotated frame must not delay them
            self._stats.frame_published(cam, (time.monotonic_ns() - t) / 1e6)
            settled[i] = True
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
