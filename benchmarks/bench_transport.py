#!/usr/bin/env python3
"""Camera frames between two processes on one host: delivered / published with and without the Fast DDS
profile ``config/fastdds_large_frames.xml``.

Legend: N cameras, H/W image size.

For each profile setting x camera count N x image size, a subscriber process (``--role sub``: one
rclpy node, N subscriptions with the detector node's camera QoS: best effort, keep last
``--depth``, a trivial callback counting distinct frames and ``message_lost`` events) and a
publisher process (``camera_publisher.py``: N cameras, ``--rate`` Hz, ``--duration`` s, its own QoS)
run on a private ``ROS_DOMAIN_ID``.  Profile settings (``--profiles``):

- ``default``: neither process gets a profile file (Fast DDS's built-in transports);
- ``both``: both get ``FASTDDS_DEFAULT_PROFILES_FILE`` = the project's profile;
- ``sub``, ``pub``: only the subscriber / only the publisher gets it.

Printed per row: frames published per camera, delivered (distinct frames received, all cameras) /
published, the lowest camera's ratio, the losses the subscriber's middleware reported (``message_lost``),
the publisher's achieved rate and the load average.  ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is passed on
as set (``--discovery-range`` overrides it: the test suite uses ``LOCALHOST``).

Example::

    python benchmarks/bench_transport.py --cameras 1 4 --sizes 640x360 1280x720 --profiles default both
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
from camera_publisher import parse_size  # noqa: E402

PROFILE_SETTINGS = ("default", "both", "sub", "pub")


def run_sub(args: argparse.Namespace) -> int:
    """Subscriber role: count distinct frames per camera until SIGINT, then print JSON."""
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("now", True))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    rclpy.init(args=[], signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("transport_sub")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth, durability=DurabilityPolicy.VOLATILE,
                     reliability=ReliabilityPolicy.BEST_EFFORT)
    seen: list[set[str]] = [set() for _ in range(args.n)]
    lost = [0] * args.n
    for i in range(args.n):
        def on_frame(msg, i=i):
            seen[i].add(msg.header.frame_id)

        def on_lost(info, i=i):
            lost[i] += info.total_count_change

        node.create_subscription(Image, f"{args.prefix}/cam{i}/image_raw", on_frame, qos,
                                 event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print("ready", flush=True)
    while not stop["now"]:
        executor.spin_once(timeout_sec=0.05)
    print(json.dumps({"received": [len(s) for s in seen], "lost": lost}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


PROFILE_FILE: str | None = None  # --profile-file


def profile_path() -> str:
    if PROFILE_FILE:
        return PROFILE_FILE
    sys.path.insert(0, str(REPO_ROOT))
    from centernet_ros.ros.fastdds import fastdds_profile_path

    return str(fastdds_profile_path())


def env_for(with_profile: bool, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_FASTRTPS_USE_QOS_FROM_XML",
                "FASTDDS_BUILTIN_TRANSPORTS"):
        env.pop(key, None)
    if with_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile_path()
    return env


def measure(setting: str, n: int, size: tuple[int, int], args: argparse.Namespace, base: dict[str, str]) -> dict:
    prefix = f"/transport{random.randint(0, 10**6)}"
    sub_env = env_for(setting in ("both", "sub"), base)
    pub_env = env_for(setting in ("both", "pub"), base)
    sub = subprocess.Popen([sys.executable, __file__, "--role", "sub", "--n", str(n), "--prefix", prefix,
                            "--depth", str(args.depth)], env=sub_env, stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        sub.stdout.readline()  # "ready"
        w, h = size
        pub = subprocess.run([sys.executable, str(HERE / "camera_publisher.py"), "--cameras", str(n), "--size",
                              f"{w}x{h}", "--rate", str(args.rate), "--duration", str(args.duration), "--prefix", prefix,
                              "--reliability", args.reliability], env=pub_env, capture_output=True, text=True,
                             timeout=args.duration + 300)
        pub_out = json.loads(pub.stdout.strip().splitlines()[-1])
        time.sleep(1.0)  # frames still in flight
    finally:
        sub.send_signal(signal.SIGINT)
        out, _ = sub.communicate(timeout=60)
    sub_out = json.loads(out.strip().splitlines()[-1])
    published = pub_out["published"]
    ratios = [r / p if p else 0.0 for r, p in zip(sub_out["received"], published)]
    return {"profile": setting, "cameras": n, "size": f"{w}x{h}", "published": published,
            "received": sub_out["received"], "lost_events": sub_out["lost"],
            "delivered": sum(sub_out["received"]) / max(1, sum(published)), "worst_camera": min(ratios),
            "pub_rate_hz": pub_out["rate_hz"], "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("run", "sub"), default="run", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="/transport", help=argparse.SUPPRESS)
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 360), (1280, 720)])
    p.add_argument("--profiles", choices=PROFILE_SETTINGS, nargs="+", default=["default", "both"])
    p.add_argument("--rate", type=float, default=30.0, help="Hz per camera")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per row")
    p.add_argument("--depth", type=int, default=1, help="subscriber keep-last depth (the node's qos_depth: 1)")
    p.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort",
                   help="publisher reliability (the subscriber is best effort)")
    p.add_argument("--discovery-range", choices=("LOCALHOST", "SUBNET", "SYSTEM_DEFAULT"), default=None)
    p.add_argument("--profile-file", default=None, help="another Fast DDS XML profile instead of the project's")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.role == "sub":
        return run_sub(args)
    global PROFILE_FILE
    PROFILE_FILE = str(Path(args.profile_file).resolve()) if args.profile_file else None

    base = dict(os.environ)
    base["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(150, 200))
    base.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if args.discovery_range:
        base["ROS_AUTOMATIC_DISCOVERY_RANGE"] = args.discovery_range
    print(f"# {args.rate:g} Hz per camera, {args.duration:g} s per row, publisher {args.reliability} (depth 1), "
          f"subscriber best effort depth {args.depth}; ROS_AUTOMATIC_DISCOVERY_RANGE="
          f"{base.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '(unset)')}; profile {profile_path()}\n")
    print("| profile | cameras | image | published/cam | delivered | worst camera | lost (events) | pub Hz | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for setting in args.profiles:
        for size in args.sizes:
            for n in args.cameras:
                r = measure(setting, n, size, args, base)
                rows.append(r)
                print(f"| {setting} | {n} | {r['size']} | {r['published'][0]} | {r['delivered']:.1%} | "
                      f"{r['worst_camera']:.1%} | {sum(r['lost_events'])} | {r['pub_rate_hz']:.1f} | {r['load']:.1f} |",
                      flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
