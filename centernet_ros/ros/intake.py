"""Camera intake of the detector node: the newest pending frame of each camera and the batches taken from them.

Legend: B frames in one batch (at most one per camera), N cameras.

Each camera keeps at most one pending frame: a newer one overwrites it and the older one is counted
as dropped.  The worker thread takes a batch of B <= ``max_batch_size`` pending frames after waiting up
to ``max_batch_latency_ms`` (counted from the moment the first of them became pending) for more cameras.
When more cameras have a frame pending than a batch takes, the ones served longest ago go first (round
robin), so with N cameras and a node slower than their rate each camera gets ~1/N of the processed frames.

Every frame taken in is accounted for once: ``received = processed + dropped + rejected`` once nothing
is pending or in the worker (dropped: overwritten, or pending at deactivation, or its publisher gone;
see ``last_drop``).  ``lost`` counts the frames a publisher sent that never reached the callback, from
the gaps in each publisher's sequence numbers (``MessageInfo.publication_sequence_number`` per
``publisher_gid``): lost in transport, or overwritten in the subscription's queue (``qos_depth``) before
the executor took them; so ``published = received + lost`` from each publisher's first frame received.
``lost_reported`` counts the middleware's ``message_lost`` events (the transport losses it detects); a
middleware without sequence numbers gets ``lost = lost_reported``.
Nothing here touches ROS: messages are opaque, publishers and subscriptions are the node's handles.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .encodings import bounded
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
    waiting_since: int = 0  # monotonic ns at which the camera's slot last became pending (not reset by overwrites)
    served: int = -1  # turn at which the worker last took a frame of this camera (-1: never): round robin
    received: int = 0
    processed: int = 0
    dropped: int = 0  # overwritten by a newer frame, pending at deactivation, or publisher gone (see last_drop)
    rejected: int = 0  # undecodable input, or the forward pass failed (see last_reject)
    lost: int = 0  # sent by a publisher, never reached the callback (gaps in its sequence numbers)
    lost_reported: int = 0  # reported lost by the middleware (message_lost events)
    last_seq: dict[bytes, int] = field(default_factory=dict)  # publisher gid -> last sequence number received
    last_reject: str = ""
    last_drop: str = ""
    last_log_ns: int = 0
    suppressed: int = 0
    last_frame_ns: int = 0  # monotonic ns of the last frame received, or of the activation
    incompatible_qos: str = ""  # policy of the last incompatible publisher (requested_incompatible_qos event)
    incompatible_ns: int = 0  # monotonic ns of that event

    def counters(self) -> dict[str, Any]:
        return {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                "rejected": self.rejected, "lost": self.lost if self.last_seq else self.lost_reported,
                "lost_reported": self.lost_reported, "last_reject": self.last_reject, "last_drop": self.last_drop}

    def warning(self, now_ns: int, timeout_s: float) -> str:
        """Why this camera is not delivering (empty when it is): an incompatible-QoS publisher seen since the
        last frame, or no frame for ``timeout_s`` seconds (counted from the activation before the first)."""
        if self.incompatible_qos and self.incompatible_ns >= self.last_frame_ns:
            return f"incompatible QoS: a publisher's {self.incompatible_qos} does not match the subscription"
        silent_s = (now_ns - self.last_frame_ns) / 1e9
        if silent_s >= timeout_s:
            return f"no frames for {silent_s:.1f} s"
        return ""


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
        self.turns = 0  # frames taken so far (numbers the cameras' ``served``)

    def start(self, now_ns: int | None = None) -> None:
        """Accept frames from now on; the cameras' silence is counted from ``now_ns`` (default: now)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self.lock:
            self.open = True
            for cam in self.cams:
                cam.last_frame_ns = now

    def receive(self, cam: Camera, msg: Any, info: dict[str, Any]) -> None:
        """The subscription callback (with its ``rclpy`` ``MessageInfo``): :meth:`offer` with the sequence number."""
        gid = info.get("publisher_gid")
        self.offer(cam, msg, seq=info.get("publication_sequence_number"), publisher=bytes(gid["data"]) if gid else b"")

    def offer(self, cam: Camera, msg: Any, now_ns: int | None = None, *, seq: int | None = None,
              publisher: bytes = b"") -> None:
        """A camera's frame: becomes the camera's pending one (a frame still pending is dropped).
        ``now_ns``: its receive time (monotonic ns; default: now).  ``seq``: its publisher's sequence number
        (None or 0: unknown), ``publisher``: the publisher's id; a gap since that publisher's previous frame
        counts as lost."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self.lock:
            if not self.open:
                return
            if seq:
                last = cam.last_seq.get(publisher)
                if last is None or seq > last:
                    if last is not None:
                        cam.lost += seq - last - 1
                    cam.last_seq[publisher] = seq
            cam.received += 1
            cam.last_frame_ns = now
            if cam.pending is not None:
                cam.dropped += 1
                cam.last_drop = "overwritten by a newer frame before the worker took it"
            else:
                cam.waiting_since = now
            cam.pending = (msg, now)
            self.lock.notify_all()

    def take_batch(self) -> list[tuple[Camera, Any, int]]:
        """Block until frames are pending; return up to max_batch_size of them as (camera, message,
        receive time ns), oldest first: the cameras served longest ago when not all fit. Empty once
        ``stop`` is set."""
        with self.lock:
            while not self.stop.is_set() and not any(c.pending is not None for c in self.cams):
                self.lock.wait(0.2)
            if self.stop.is_set():
                return []
            while not self.stop.is_set():
                pending = [c for c in self.cams if c.pending is not None]
                limit = min(self.batch.max_batch_size, len(self.cams))
                oldest = min(c.waiting_since for c in pending)
                wait_s = (oldest + self.batch.max_batch_latency_ms * 1e6 - time.monotonic_ns()) / 1e9
                if len(pending) >= limit or wait_s <= 0:
                    break
                self.lock.wait(wait_s)
            if self.stop.is_set():
                return []
            return self._take()

    def _take(self) -> list[tuple[Camera, Any, int]]:
        """The batch from the pending frames (lock held): the cameras served longest ago (round robin),
        returned oldest first."""
        pending = [c for c in self.cams if c.pending is not None]
        chosen = sorted(pending, key=lambda c: (c.served, c.waiting_since, c.index))[: self.batch.max_batch_size]
        for cam in chosen:  # turns in the order of choice: the next batch continues the round from there
            cam.served = self.turns
            self.turns += 1
        batch = []
        for cam in sorted(chosen, key=lambda c: c.pending[1]):  # type: ignore[index]
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

    def clear_pending(self, reason: str) -> int:
        """Discard the pending frames, each counted as dropped with ``reason``. Returns how many."""
        with self.lock:
            n = 0
            for cam in self.cams:
                if cam.pending is not None:
                    cam.pending = None
                    cam.dropped += 1
                    cam.last_drop = reason
                    n += 1
            return n

    def drop(self, cam: Camera, reason: str) -> None:
        """Count a taken frame of ``cam`` that will not be published (e.g. its publisher is gone)."""
        with self.lock:
            cam.dropped += 1
            cam.last_drop = bounded(reason)

    def lost(self, cam: Camera, count: int) -> None:
        """``count`` more frames of ``cam`` reported lost by the middleware (a ``message_lost`` event)."""
        with self.lock:
            cam.lost_reported += max(0, int(count))

    def incompatible(self, cam: Camera, policy: str, now_ns: int | None = None) -> None:
        """A publisher of ``cam``'s topic has QoS incompatible with the subscription (``policy``, e.g. RELIABILITY)."""
        with self.lock:
            cam.incompatible_qos = bounded(policy, 64)
            cam.incompatible_ns = time.monotonic_ns() if now_ns is None else now_ns

    def reject(self, cam: Camera, reason: str, throttle_s: float) -> str | None:
        """Count a frame of ``cam`` that could not be used. Returns the line to log, or None while
        within ``throttle_s`` of the camera's previous one (the skipped ones are counted in the next)."""
        reason = bounded(reason)
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
