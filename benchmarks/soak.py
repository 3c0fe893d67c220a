#!/usr/bin/env python3
"""Soak: N cameras at a fixed rate into the detector node for a chosen duration, every frame accounted for.

Legend: N cameras, H/W image size.

Three processes on a private ``ROS_DOMAIN_ID``: the detector node (``python -m centernet_ros.ros.node``
with ``config/detect.yaml``: default QoS, batching and model; camera topics ``/soak/cam<i>/image_raw``),
the cameras (``camera_publisher.py``: N x ``bgr8`` at ``--rate`` Hz for ``--duration`` s, best effort)
and this script, which reads the node's counters from ``/diagnostics`` and its memory from
``/proc/<pid>/status``.  ``--profile ours`` (default) gives the node and the cameras the project's Fast DDS
profile (``config/fastdds_large_frames.xml``); ``--profile default`` runs Fast DDS's built-in transports.

Printed per camera: published (by the camera process), received / processed / dropped / rejected / lost
(the node's counters once it is idle again), ``lost_reported`` (of ``lost``: the middleware's
``message_lost`` events) and ``unaccounted`` = published - processed - dropped - rejected - lost (0: the
row closes; frames lost before the node's first frame of a camera or after its last one are not seen as
gaps and show here).  Then the node's RSS (and threads, open fds) when its first frames were processed
("first"), after ``--warmup`` seconds more ("start"), in the middle of the remaining time and at the end of
the publishing; RSS growth from start to end (and from first to end); the spread of processed frames
over the cameras (max / min - 1).  ``--json PATH`` writes the same.  The counters are read once the
node is idle: every frame received is processed, dropped or rejected (nothing pending or in a batch).

Example (the issue's 10-minute soak)::

    python benchmarks/soak.py --cameras 4 --rate 30 --size 640x360 --duration 600 --json out/bench/soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT))
from camera_publisher import parse_size  # noqa: E402

from centernet_ros.ros.fastdds import PROFILE_VARIABLES, with_fastdds_profile  # noqa: E402

COUNTERS = ("received", "processed", "dropped", "rejected", "lost", "lost_reported")


def proc_status(pid: int, t0: float) -> dict[str, float]:
    """RSS (KiB), threads and open file descriptors of a running process (Linux /proc); ``t``: seconds since ``t0``."""
    out: dict[str, float] = {"t": time.monotonic() - t0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
        elif key == "Threads":
            out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def beside() -> str:
    """Load average and the busiest other processes (what shared the CPU)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()
    mine = {str(os.getpid())}
    top = [" ".join(line.split()[:4])[:90] for line in ps[1:6] if not any(m in line for m in mine)]
    return f"load average {os.getloadavg()[0]:.1f}; busiest: " + " | ".join(top)


class Diagnostics:
    """The node's per-camera counters from its latest /diagnostics message."""

    def __init__(self, node, topics: list[str]):
        from diagnostic_msgs.msg import DiagnosticArray

        self.topics = topics
        self.latest: dict[str, dict[str, int]] = {}
        self.state = ""
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_msg, 10)

    def _on_msg(self, arr) -> None:
        for st in arr.status:
            if st.name.endswith("soak_detector: detector"):
                values = {kv.key: kv.value for kv in st.values}
                self.state = values.get("state", "")
                self.latest = {t: {k: int(values.get(f"{t} {k}", "0")) for k in COUNTERS} for t in self.topics}

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.latest.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--rate", type=float, default=30.0, help="Hz per camera")
    p.add_argument("--size", type=parse_size, default=(640, 360), help="WxH (default 640x360)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of publishing")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after the first processed frame before the 'start' RSS (default: duration / 6, <= 100)")
    p.add_argument("--profile", choices=("ours", "default"), default="ours",
                   help="Fast DDS profile of both processes: the project's (default) or Fast DDS's built-in")
    p.add_argument("--params-file", type=Path, default=REPO_ROOT / "config" / "detect.yaml")
    p.add_argument("--node-arg", action="append", default=[], help="extra -p name:=value for the node (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(201, 214))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    for key in PROFILE_VARIABLES:
        env.pop(key, None)
    if args.profile == "ours":
        env = with_fastdds_profile(env)
    os.environ.clear()
    os.environ.update(env)  # this process's participant too (it only reads /diagnostics)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    topics = [f"/soak/cam{i}/image_raw" for i in range(args.cameras)]
    w, h = args.size
    setup = (f"{args.cameras} cameras x {args.rate:g} Hz, {w}x{h} bgr8, {args.duration:g} s; node: "
             f"{args.params_file.name} defaults; Fast DDS profile: {args.profile}; ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}")
    print(f"# soak: {setup}", flush=True)
    print(f"# beside it at start: {beside()}", flush=True)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    node_cmd = [sys.executable, "-m", "centernet_ros.ros.node", "--ros-args", "-r", "__node:=soak_detector",
                "--params-file", str(args.params_file), "-p", f"camera_topics:=[{','.join(topics)}]"]
    for extra in args.node_arg:
        node_cmd += ["-p", extra]
    detector = subprocess.Popen(node_cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    rclpy.init(args=[])
    me = rclpy.create_node("soak_monitor")
    diags = Diagnostics(me, topics)
    executor = SingleThreadedExecutor()
    executor.add_node(me)

    def spin_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=min(0.1, max(0.0, end - time.monotonic())))

    cameras = None
    rss: dict[str, dict[str, int]] = {}
    try:
        deadline = time.monotonic() + 300
        while diags.state != "active":
            if detector.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the detector node did not become active: {detector.stderr.read()[-2000:]}")
            spin_for(0.2)
        cameras = subprocess.Popen(
            [sys.executable, str(HERE / "camera_publisher.py"), "--cameras", str(args.cameras), "--size", f"{w}x{h}",
             "--rate", str(args.rate), "--duration", str(args.duration), "--prefix", "/soak"],
            env=env, stdout=subprocess.PIPE, text=True)
        while diags.total("processed") == 0:  # start: the first frames are through
            if cameras.poll() is not None:
                raise RuntimeError("the camera process ended before the node processed a frame")
            spin_for(0.2)
        t_start = time.monotonic()
        rss["first"] = proc_status(detector.pid, t_start)
        warmup = min(100.0, args.duration / 6) if args.warmup is None else args.warmup
        spin_for(warmup)
        rss["start"] = proc_status(detector.pid, t_start)
        spin_for(max(0.0, (args.duration - warmup) / 2 - 1))
        rss["middle"] = proc_status(detector.pid, t_start)
        mid_beside = beside()
        while cameras.poll() is None:
            spin_for(0.5)
        rss["end"] = proc_status(detector.pid, t_start)
        published = json.loads(cameras.stdout.read().strip().splitlines()[-1])["published"]
        seconds = time.monotonic() - t_start
        deadline = time.monotonic() + 300  # idle: every frame received is processed, dropped or rejected
        while time.monotonic() < deadline and any(
                c["received"] != c["processed"] + c["dropped"] + c["rejected"] for c in diags.latest.values()):
            spin_for(0.5)
        spin_for(2.5)  # and a diagnostics message more
    finally:
        if cameras is not None and cameras.poll() is None:
            cameras.send_signal(signal.SIGINT)
        detector.send_signal(signal.SIGINT)
        try:
            detector.wait(timeout=60)
        except subprocess.TimeoutExpired:
            detector.kill()
        me.destroy_node()
        rclpy.try_shutdown()

    rows = []
    print(f"\n# measured: {seconds:.0f} s from the first processed frame; beside it in the middle: {mid_beside}\n")
    print("| camera | published | received | processed | dropped | rejected | lost | (lost_reported) | unaccounted |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for topic, pub in zip(topics, published):
        c = diags.latest[topic]
        unaccounted = pub - c["processed"] - c["dropped"] - c["rejected"] - c["lost"]
        rows.append({"camera": topic, "published": pub, **c, "unaccounted": unaccounted})
        print(f"| {topic} | {pub} | {c['received']} | {c['processed']} | {c['dropped']} | {c['rejected']} | "
              f"{c['lost']} | ({c['lost_reported']}) | {unaccounted} |")
    processed = [r["processed"] for r in rows]
    spread = max(processed) / min(processed) - 1 if min(processed) > 0 else float("inf")
    growth = rss["end"]["VmRSS"] / rss["start"]["VmRSS"] - 1
    growth_first = rss["end"]["VmRSS"] / rss["first"]["VmRSS"] - 1
    print("\n| node | at s | RSS MiB | threads | fds |\n| --- | --- | --- | --- | --- |")
    for when in ("first", "start", "middle", "end"):
        s = rss[when]
        print(f"| {when} | {s['t']:.0f} | {s['VmRSS'] / 1024:.1f} | {s['Threads']} | {s['fds']} |")
    print(f"\nRSS growth start -> end: {growth:+.2%} (first -> end: {growth_first:+.2%}); processed per camera: "
          f"spread {spread:.1%} (max/min - 1); {sum(processed) / seconds:.2f} frames/s processed in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setup": setup, "seconds": seconds, "rows": rows, "rss_kib": rss,
                                         "rss_growth": growth, "rss_growth_from_first": growth_first, "processed_spread": spread, "beside_middle": mid_beside},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
