"""Run-time statistics of the detector node and the ``diagnostic_msgs/DiagnosticStatus`` made of them.

:class:`Stats` accumulates what the worker measures (receive -> publish latencies, batch sizes, time
per stage of each batch); :meth:`Stats.snapshot` turns it, with the cameras' counters, into plain
Python values (``DetectorNode.stats()``), and :func:`detector_status` / :func:`camera_status` (both:
:func:`node_statuses`) into the statuses that the node publishes on ``/diagnostics`` every ``diagnostics_period`` seconds: one for the
detector, one per camera (WARN with the reason while a camera is not delivering: an incompatible-QoS
publisher, or no frames for ``camera_timeout`` seconds).  Every string in them is bounded.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from .encodings import bounded
from .intake import Camera

__all__ = ["STAGES", "LATENCY_WINDOW", "COUNTERS", "Stats", "FrameRate", "detector_status", "camera_status",
           "node_statuses"]

LATENCY_WINDOW = 2048  # latencies kept for the p50 / p99 in the diagnostics
# Per-batch stages timed by the worker (wall clock; ``detect`` ends with the one device -> host copy, so
# it holds the whole GPU time): message -> array, Detector.detect (preprocess, forward, decode), building
# and publishing the Detection2DArrays, drawing + publishing annotated frames (only when subscribed).
STAGES = ("convert", "detect", "publish", "annotate")
COUNTERS = ("received", "processed", "dropped", "rejected", "lost", "lost_reported")  # per camera, see intake.Camera


class Stats:
    """Latencies (ms), batch counts and seconds per stage, guarded by ``lock`` (the intake's, so a
    snapshot of the cameras' counters and of these is taken at one moment)."""

    def __init__(self, lock: threading.Condition) -> None:
        self.lock = lock
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.batches = 0
        self.batched_frames = 0
        # seconds per stage summed over the batches since the last reset (see STAGES)
        self.stage_sums = dict.fromkeys(STAGES, 0.0)
        self.stage_batches = 0

    def frame_published(self, cam: Camera, latency_ms: float) -> None:
        with self.lock:
            cam.processed += 1
            self.latencies.append(latency_ms)

    def batch_done(self, frames: int, stage_s: dict[str, float]) -> None:
        """One batch of ``frames`` frames went through; ``stage_s``: seconds spent in each of STAGES."""
        with self.lock:
            self.batches += 1
            self.batched_frames += frames
            for k, v in stage_s.items():
                self.stage_sums[k] += v
            self.stage_batches += 1

    def latencies_ms(self) -> list[float]:
        with self.lock:
            return list(self.latencies)

    def snapshot(self, cams: list[Camera], state: str, *, reset_stages: bool = False,
                 camera_timeout: float = math.inf) -> dict[str, Any]:
        """Counters, latency percentiles and mean stage times, as plain Python values.  ``reset_stages``
        starts a new averaging window for the stage times.  While ``state`` is active, each camera's
        ``warning`` says why it is not delivering (empty when it is; see ``Camera.warning``)."""
        now = time.monotonic_ns()
        with self.lock:
            lat = np.asarray(self.latencies, dtype=np.float64)
            per_cam = {c.topic: {**c.counters(), "warning": c.warning(now, camera_timeout) if state == "active" else ""}
                       for c in cams}
            batches, frames = self.batches, self.batched_frames
            n = self.stage_batches
            stage_ms = {k: (v / n * 1e3 if n else float("nan")) for k, v in self.stage_sums.items()}
            if reset_stages:
                self.stage_sums = dict.fromkeys(STAGES, 0.0)
                self.stage_batches = 0
        return {
            "state": state,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "batches": batches,
            "mean_batch_size": frames / batches if batches else 0.0,
            "stage_ms": stage_ms,  # mean ms per batch of each of STAGES since the last reset (NaN: no batch)
            "cameras": per_cam,
        }


class FrameRate:
    """Frames per second between two readings of a running count."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)  # (time, count) at the last reading

    def update(self, count: int) -> float:
        now = time.monotonic()
        t0, n0 = self._last
        self._last = (now, count)
        return (count - n0) / (now - t0) if now > t0 and count >= n0 else 0.0


def detector_status(name: str, st: dict[str, Any], fps: float, *, error: str = "", hardware_id: str = "",
                    backend_error: str | None = None, compile_error: str | None = None) -> DiagnosticStatus:
    """The node's ``DiagnosticStatus`` from a :meth:`Stats.snapshot` ``st``: ERROR with the last
    configure / activate failure, WARN while not active, while a camera is not delivering (each one
    with its reason) or when frames were rejected, else OK."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    rejected = sum(c["rejected"] for c in st["cameras"].values())
    silent = [f"{topic}: {c['warning']}" for topic, c in st["cameras"].items() if c["warning"]]
    state = st["state"]
    if error:
        status.level, status.message = DiagnosticStatus.ERROR, bounded(error)
    elif state != "active":
        status.level, status.message = DiagnosticStatus.WARN, f"{state}: not processing"
    elif silent:
        status.level, status.message = DiagnosticStatus.WARN, bounded(f"{fps:.1f} fps; " + "; ".join(silent), 1000)
    elif rejected:
        status.level, status.message = DiagnosticStatus.WARN, f"{fps:.1f} fps, {rejected} frames rejected"
    else:
        status.level, status.message = DiagnosticStatus.OK, f"{fps:.1f} fps"
    values = {
        "state": state,
        "fps": f"{fps:.2f}",
        "latency_p50_ms": f"{st['latency_p50_ms']:.2f}",
        "latency_p99_ms": f"{st['latency_p99_ms']:.2f}",
        "batches": str(st["batches"]),
        "mean_batch_size": f"{st['mean_batch_size']:.2f}",
    }
    for stage, ms in st["stage_ms"].items():  # since the previous message; "nan" when no batch ran
        values[f"{stage}_ms_per_batch"] = f"{ms:.2f}"
    if backend_error:  # onnxruntime requested or failed: torch runs
        values["backend_error"] = bounded(backend_error)
    if compile_error:  # torch.compile failed: the eager model runs
        values["compile_error"] = bounded(compile_error)
    for topic, c in st["cameras"].items():
        for key in COUNTERS:
            values[f"{topic} {key}"] = str(c[key])
        for key in ("last_reject", "last_drop", "warning"):
            if c[key]:
                values[f"{topic} {key}"] = bounded(c[key])
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


def camera_status(node: str, topic: str, c: dict[str, Any], fps: float) -> DiagnosticStatus:
    """One camera's ``DiagnosticStatus`` (name ``<node>: camera <topic>``) from its entry ``c`` of a
    snapshot's ``cameras``: WARN with the reason while it is not delivering, else OK with its processed
    frames per second (``fps``)."""
    status = DiagnosticStatus()
    status.name = f"{node}: camera {topic}"
    status.hardware_id = topic
    if c["warning"]:
        status.level, status.message = DiagnosticStatus.WARN, bounded(c["warning"])
    else:
        status.level, status.message = DiagnosticStatus.OK, f"{fps:.1f} fps"
    values = {"fps": f"{fps:.2f}", **{k: str(c[k]) for k in COUNTERS}}
    values.update({k: bounded(c[k]) for k in ("last_reject", "last_drop", "warning") if c[k]})
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


def node_statuses(name: str, st: dict[str, Any], rates: dict[str, FrameRate], *, error: str = "",
                  detector: Any = None) -> list[DiagnosticStatus]:
    """What one ``/diagnostics`` message of node ``name`` holds, from a :meth:`Stats.snapshot` ``st``: the
    :func:`detector_status` (``error``: the last configure / activate failure; ``detector``: the loaded
    ``Detector`` or None), then, while active, one :func:`camera_status` per camera.  ``rates``: the
    running :class:`FrameRate` of the whole node (key ``""``) and of each camera topic, created on first
    use and read here (frames per second since the previous message)."""
    fps = rates.setdefault("", FrameRate()).update(sum(c["processed"] for c in st["cameras"].values()))
    statuses = [detector_status(
        f"{name}: detector", st, fps, error=error,
        hardware_id=f"{detector.device} ({detector.backend})" if detector is not None else "",
        backend_error=detector.backend_error if detector is not None else None,
        compile_error=detector.compile_error if detector is not None else None,
    )]
    if st["state"] == "active":
        for topic, c in st["cameras"].items():
            statuses.append(camera_status(name, topic, c, rates.setdefault(topic, FrameRate()).update(c["processed"])))
    return statuses
