#!/usr/bin/env python3
"""N simulated cameras in their own process: ``sensor_msgs/Image`` (bgr8) at a fixed rate, for the
transport and soak benchmarks (``bench_transport.py``, ``soak.py``).

Legend: N cameras, H/W image size.

Topics ``<prefix>/cam<i>/image_raw`` (i = 0..N-1).  The publisher waits until every topic has
``--wait-subscribers`` matched subscriptions (and ``--settle`` seconds more, so the subscribers have
matched it too), then publishes one frame on every camera each tick of ``1 / --rate`` seconds for
``--duration`` seconds (a late tick is published at once, never in a burst to catch up), and stays up
``--linger`` seconds more (the last frames are not cut off by the process's end).  Each frame's
``header.frame_id`` is ``cam<i>:<k>`` (k = tick number) so a subscriber can count distinct frames, and
``header.stamp`` is the publish time.  The last stdout line is JSON: ``{"published": [per camera],
"seconds": ..., "late_ticks": ..., "rate_hz": ...}``; SIGINT / SIGTERM end the run early (JSON still
printed).  Only rclpy and numpy are imported (no torch): a camera driver's footprint.

Example::

    python benchmarks/camera_publisher.py --cameras 4 --size 640x360 --rate 30 --duration 60
"""
from __future__ import annotations

import argparse
import array
import json
import signal
import sys
import time

import numpy as np


def parse_size(text: str) -> tuple[int, int]:
    """``"640x360"`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 640x360, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def synthetic_bgr(width: int, height: int, seed: int) -> np.ndarray:
    """``uint8[H, W, 3]``: grey with a coloured rectangle whose place depends on ``seed`` (one per camera)."""
    img = np.full((height, width, 3), 90, np.uint8)
    x0, y0 = (seed * 97) % max(1, width // 2), (seed * 53) % max(1, height // 2)
    img[y0:y0 + height // 3, x0:x0 + width // 3] = (40, 40, 220)
    return img


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, default=4, help="number of camera topics N")
    p.add_argument("--size", type=parse_size, default=(640, 360), help="image size WxH (default 640x360)")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--prefix", default="/bench", help="topic prefix: <prefix>/cam<i>/image_raw")
    p.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort",
                   help="publisher QoS reliability (depth 1, volatile: a camera driver's sensor-data QoS)")
    p.add_argument("--wait-subscribers", type=int, default=1, help="matched subscriptions to wait for per topic")
    p.add_argument("--wait-timeout", type=float, default=120.0, help="give up waiting for subscribers after (s)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after the subscribers matched")
    p.add_argument("--linger", type=float, default=2.0,
                   help="seconds to stay up after the last frame (its shared-memory segment goes with the process)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    args = p.parse_args(argv)
    if args.cameras < 1 or not args.rate > 0 or args.duration < 0:
        p.error(f"need --cameras >= 1, --rate > 0, --duration >= 0; got {args.cameras}, {args.rate}, {args.duration}")

    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rclpy.init(args=[], signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("camera_publisher")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
                     reliability=ReliabilityPolicy.BEST_EFFORT if args.reliability == "best_effort"
                     else ReliabilityPolicy.RELIABLE)
    w, h = args.size
    pubs, msgs = [], []
    for i in range(args.cameras):
        pubs.append(node.create_publisher(Image, f"{args.prefix}/cam{i}/image_raw", qos))
        msg = Image()
        msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = h, w, "bgr8", 0, 3 * w
        msg.data = array.array("B", synthetic_bgr(w, h, i).tobytes())
        msgs.append(msg)
    published = [0] * args.cameras
    late = 0
    t_start = t_end = time.monotonic()
    try:
        deadline = time.monotonic() + args.wait_timeout
        while not stop["now"] and any(pb.get_subscription_count() < args.wait_subscribers for pb in pubs):
            if time.monotonic() > deadline:
                print(f"camera_publisher: no {args.wait_subscribers} subscriber(s) on every topic after "
                      f"{args.wait_timeout:.0f} s", file=sys.stderr)
                break
            time.sleep(0.05)
        time.sleep(args.settle)
        period = 1.0 / args.rate
        t_start = time.monotonic()
        ticks = int(round(args.duration * args.rate))
        for k in range(ticks):
            if stop["now"]:
                break
            delay = t_start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            stamp = node.get_clock().now().to_msg()
            for i, (pb, msg) in enumerate(zip(pubs, msgs)):
                msg.header.stamp = stamp
                msg.header.frame_id = f"cam{i}:{k}"
                pb.publish(msg)
                published[i] += 1
        t_end = time.monotonic()
        end = time.monotonic() + args.linger
        while not stop["now"] and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        seconds = t_end - t_start
        print(json.dumps({"published": published, "seconds": round(seconds, 3), "late_ticks": late,
                          "rate_hz": round(published[0] / seconds, 2) if seconds > 0 else 0.0}), flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
