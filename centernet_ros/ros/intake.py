"""Camera intake of the detector node: the newest pending frame of each camera and the batches taken from them.

Legend: B frames in one batch (at most one per camera).

Each camera keeps at most one pending frame: a newer one overwrites it and the older one is counted
as dropped.  The worker thread takes a batch of B <= ``max_batch_size`` pending frames, oldest first,
after waiting up to ``max_batch_latency_ms`` (counted from the oldest pending frame) for more cameras.
Nothing here touches ROS: messages are opaque, publishers and subscriptions are the node's handles.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .params import BatchSettings, NodeSettings

__all__ = ["Camera", "Intake", "cameras_for"]


@dataclass
class Camera:
    """One camera topic: its output topics and handles, its pending frame and its counters."""

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

    def counters(self) -> dict[str, Any]:
        return {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                "rejected": self.rejected, "last_reject": self.last_reject}


def cameras_for(s: NodeSettings) -> list[Camera]:
    """One :class:`Camera` per camera topic of the settings. Raises ``ValueError`` when two cameras
    would publish on one detections topic."""
    cams = [
        Camera(index=i, topic=topic, transport=s.transport_of(i), detections_topic=s.detections_topic_of(i),
               annotated_topic=s.annotated_topic_of(i))
        for i, topic in enumerate(s.camera_topics)
    ]
    seen: dict[str, str] = {}
    for cam in cams:
        if cam.detections_topic in seen:
            raise ValueError(
                f"camera topics {seen[cam.detections_topic]!r} and {cam.topic!r} both map to "
                f"{cam.detections_topic!r}; set detections_topics"
            )
        seen[cam.detections_topic] = cam.topic
    return cams


class Intake:
    """The cameras' pending frames behind one condition (``lock``, which the node shares for the
    state it swaps at run time).  Frames are taken in only while ``open``."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.stop = threading.Event()  # set: the worker returns from take_batch with nothing
        self.cams: list[Camera] = []
        self.batch = BatchSettings()
        self.open = False  # frames are accepted (the node is active)

    def offer(self, cam: Camera, msg: Any) -> None:
        """A camera callback's frame: becomes the camera's pending one (a frame still pending is dropped)."""
        now = time.monotonic_ns()
        with self.lock:
            if not self.open:
                return
            cam.received += 1
            if cam.pending is not None:
                cam.dropped += 1
            cam.pending = (msg, now)
            self.lock.notify_all()

    def take_batch(self) -> list[tuple[Camera, Any, int]]:
        """Block until frames are pending; return up to max_batch_size of them as (camera, message,
        receive time ns), oldest first. Empty once ``stop`` is set."""
        with self.lock:
            while not self.stop.is_set() and not any(c.pending is not None for c in self.cams):
                self.lock.wait(0.2)
            if self.stop.is_set():
                return []
            while not self.stop.is_set():
                pending = [c for c in self.cams if c.pending is not None]
                limit = min(self.batch.max_batch_size, len(self.cams))
                oldest = min(c.pending[1] for c in pending)  # type: ignore[index]
                wait_s = (oldest + self.batch.max_batch_latency_ms * 1e6 - time.monotonic_ns()) / 1e9
                if len(pending) >= limit or wait_s <= 0:
                    break
                self.lock.wait(wait_s)
            if self.stop.is_set():
                return []
            pending = sorted((c for c in self.cams if c.pending is not None), key=lambda c: c.pending[1])  # type: ignore[index]
            batch = []
            for cam in pending[: self.batch.max_batch_size]:
                msg, t = cam.pending  # type: ignore[misc]
                cam.pending = None
                batch.append((cam, msg, t))
            return batch

    def close(self) -> None:
        """Stop taking frames in and wake the worker so that it returns."""
        with self.lock:
            self.open = False
            self.stop.set()
            self.lock.notify_all()

    def clear_pending(self) -> None:
        with self.lock:
            for cam in self.cams:
                cam.pending = None

    def reject(self, cam: Camera, reason: str, throttle_s: float) -> str | None:
        """Count a frame of ``cam`` that could not be used. Returns the line to log, or None while
        within ``throttle_s`` of the camera's previous one (the skipped ones are counted in the next)."""
        now = time.monotonic_ns()
        with self.lock:
            cam.rejected += 1
            cam.last_reject = reason
            log = now - cam.last_log_ns >= throttle_s * 1e9
            suppressed, cam.suppressed = (cam.suppressed, 0) if log else (0, cam.suppressed + 1)
            if log:
                cam.last_log_ns = now
        if not log:
            return None
        more = f" ({suppressed} more since the last message)" if suppressed else ""
        return f"rejected a frame on {cam.topic}: {reason}{more}"
