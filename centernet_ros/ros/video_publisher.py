"""``centernet-video-publisher``: a video file played as a camera (``sensor_msgs/Image``, ``bgr8``).

Legend: H/W frame height/width.

Pacing: ``rate`` > 0 frames per second, ``rate`` = 0 the file's own frame rate, ``rate`` < 0 as fast
as possible. With ``lockstep_topic`` set (a ``vision_msgs/Detection2DArray`` topic) the next frame is
sent only once the detections of the previous one came back (matched by stamp) or after
``lockstep_timeout`` seconds, so a slow detector processes every frame instead of dropping them.
Without ``loop`` the node logs a summary and its process ends after the last frame (or ``max_frames``).
Frames are decoded a few ahead in a background thread (``_FrameReader``), never inside a callback.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from .conversions import bgr_to_image_msg
from .package_files import package_file

__all__ = ["DEFAULT_VIDEO", "VideoPublisher", "default_video_path", "main"]

DEFAULT_VIDEO = "slow_traffic_small.mp4"


def default_video_path() -> Path:
    """The bundled clip: ``<share>/centernet_ros/models/slow_traffic_small.mp4``, else the source tree's."""
    return package_file("models", DEFAULT_VIDEO)


_PARAMS: dict[str, tuple[Any, str]] = {
    "path": ("", "video file; empty = the bundled models/" + DEFAULT_VIDEO),
    "topic": ("camera/image_raw", "sensor_msgs/Image topic (relative: a namespace or a remapping moves it)"),
    "frame_id": ("camera", "header.frame_id of the frames"),
    "rate": (0.0, "frames per second; 0 = the file's rate; < 0 = as fast as possible"),
    "loop": (False, "start over at the end of the file"),
    "max_frames": (0, "stop after this many frames (0 = no limit)"),
    "lockstep_topic": ("", "Detection2DArray topic; if set, wait for each frame's detections before the next"),
    "lockstep_timeout": (2.0, "seconds to wait for a frame's detections before sending the next anyway"),
    "wait_for_subscribers": (1, "send the first frame only once this many subscribers are matched"),
    "qos_reliability": ("reliable", "reliable | best_effort"),
    "qos_depth": (1, "publisher queue depth"),
}


class _FrameReader:
    """Decodes a ``cv2.VideoCapture`` in a background thread, up to ``depth`` frames ahead.

    Reading the capture inside an executor callback stalled the whole one-process demo (detector and
    recorder included) for 0.1-1.4 s at a time (measured on 2 vCPUs: 6.5-8.7 frames/s; decoded ahead in a
    thread: 9-11 frames/s, the detector's p99 0.1 s).  ``read`` hands out ``uint8[H, W, 3]``
    BGR frames, None once the video is over (or when decoding stalls for ``timeout`` seconds).
    """

    def __init__(self, cap: Any, *, loop: bool, depth: int = 4) -> None:
        self._cap = cap
        self._loop = loop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="video-decode", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():  # a timeout, so that close() never waits on a full queue
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import cv2

        decoded = False
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                if not ok and self._loop and decoded:  # start over (never on a file without a readable frame)
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = self._cap.read()
                if not ok or not self._put(frame):
                    break
                decoded = True
        finally:
            self._put(None)  # end of the video

    def read(self, timeout: float = 10.0) -> Any:
        """The next frame, or None at the end (every later call too)."""
        if self._ended:
            return None
        try:
            frame = self._queue.get(timeout=timeout)
        except queue.Empty:
            frame = None
        self._ended = frame is None
        return frame

    def close(self) -> None:
        """Stop decoding and release the capture."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():  # never release a capture that a read still uses
            self._cap.release()


class VideoPublisher(Node):
    """Publishes the frames of a video file; ``done`` turns True after the last one."""

    def __init__(self, node_name: str = "video_publisher", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        import cv2

        for name, (default, text) in _PARAMS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True))
        p = {name: self.get_parameter(name).value for name in _PARAMS}
        self.path = Path(p["path"]) if p["path"] else default_video_path()
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise RuntimeError(f"cannot open video file '{self.path}'")
        self.file_fps = float(self.cap.get(cv2.CAP_PROP_FPS)) or 30.0
        self.total_frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_id = str(p["frame_id"])
        self.loop = bool(p["loop"])
        self.max_frames = int(p["max_frames"])
        self.min_subscribers = int(p["wait_for_subscribers"])
        self.lockstep_timeout = float(p["lockstep_timeout"])
        rate = float(p["rate"])
        self.period = 1.0 / (rate if rate > 0 else self.file_fps) if rate >= 0 else 0.0
        if p["qos_reliability"] not in ("reliable", "best_effort"):
            raise ValueError(f"qos_reliability must be 'reliable' or 'best_effort', got {p['qos_reliability']!r}")
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=max(1, int(p["qos_depth"])),
            reliability=ReliabilityPolicy.RELIABLE if p["qos_reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.pub = self.create_publisher(Image, str(p["topic"]), qos)
        self.sent = 0
        self.done = False
        self._awaiting: tuple[int, int] | None = None  # stamp of the frame whose detections we wait for
        self._sent_at = 0.0
        self._t_first: float | None = None
        self._lockstep = bool(p["lockstep_topic"])
        if self._lockstep:
            from vision_msgs.msg import Detection2DArray

            self.create_subscription(Detection2DArray, str(p["lockstep_topic"]), self._on_detections, 10)
        # Poll fast enough for the rate. At full speed in lockstep the detections callback sends each next
        # frame itself, so the timer only starts the stream and handles the timeout: no need to wake the
        # executor every 2 ms there (no measurable difference in the demo's frame rate either way).
        if self.period > 0:
            tick = min(self.period, 0.01)
        else:
            tick = 0.05 if self._lockstep else 0.002
        self._reader = _FrameReader(self.cap, loop=self.loop)  # last: nothing below can fail and leave it running
        self.timer = self.create_timer(tick, self._tick)
        self.get_logger().info(
            f"publishing '{self.path}' ({self.total_frames} frames, {self.file_fps:.2f} fps in the file) on "
            f"{self.pub.topic_name} at "
            + (f"{1 / self.period:.2f} fps" if self.period > 0 else "full speed")
            + (" in lockstep with " + str(p["lockstep_topic"]) if self._lockstep else "")
        )

    def _on_detections(self, msg: Any) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if self._awaiting is not None and stamp == self._awaiting:
            self._awaiting = None
            self._tick()

    def _tick(self) -> None:
        if self.done:
            return
        now = time.monotonic()
        if self.sent == 0 and self.pub.get_subscription_count() < self.min_subscribers:
            return
        if self._awaiting is not None and now - self._sent_at < self.lockstep_timeout:
            return
        if self.sent and now - self._sent_at < self.period:
            return
        self._publish_next(now)

    def _publish_next(self, now: float) -> None:
        if self.max_frames and self.sent >= self.max_frames:
            self._finish()
            return
        frame = self._reader.read()
        if frame is None:
            self._finish()
            return
        msg = bgr_to_image_msg(frame)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        if self._lockstep:
            self._awaiting = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self._sent_at = now
        if self._t_first is None:
            self._t_first = now
        self.pub.publish(msg)
        self.sent += 1

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self._reader.close()
        elapsed = time.monotonic() - self._t_first if self._t_first is not None else 0.0
        fps = self.sent / elapsed if elapsed > 0 else 0.0
        self.get_logger().info(f"done: published {self.sent} frames of '{self.path}' in {elapsed:.1f} s ({fps:.1f} fps)")


    def destroy_node(self) -> None:
        if hasattr(self, "_reader"):
            self._reader.close()  # idempotent
        super().destroy_node()


def main(args: list[str] | None = None, *, stop: Any = None) -> int:
    """Console script ``centernet-video-publisher --ros-args -p path:=clip.mp4 -p rate:=10.0 ...``.

    Exit status 0 at the end of the video and after SIGINT / SIGTERM at any moment (``stop``: the
    :class:`.stop.StopSignals` that the console script installed first; installed here when None);
    1 when the video cannot be opened or a parameter is invalid."""
    from rclpy.signals import SignalHandlerOptions

    from .stop import Interrupted, StopSignals, quietly

    stop = stop or StopSignals.install()
    prog = "centernet-video-publisher"
    node: VideoPublisher | None = None
    try:
        # rclpy's handlers would raise KeyboardInterrupt anywhere (see .stop): ours stay installed
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
        try:
            node = VideoPublisher()
        except (RuntimeError, ValueError) as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        stop.running()
        while not node.done and not stop.requested:
            rclpy.spin_once(node, timeout_sec=0.1)  # a signal sets stop.requested; seen within 0.1 s
        if stop.requested:
            node.get_logger().info(f"{stop.name}: stopping after {node.sent} frames")
    except (Interrupted, ExternalShutdownException):
        pass
    finally:
        stop.running()  # from here on a signal is only counted
        if node is not None:
            quietly(prog, "destroy_node", node.destroy_node)
        quietly(prog, "rclpy shutdown", rclpy.try_shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
