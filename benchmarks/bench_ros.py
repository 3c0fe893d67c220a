#!/usr/bin/env python3
"""End to end through ROS 2: N simulated cameras -> ``centernet_detector`` node -> Detection2DArray.

Legend: N cameras, B frames in one forward pass (<= N), H/W camera image size, D detections of a frame.

For every camera count N x image size, the script starts the detector node in its own process
(``python -m centernet_ros.ros.node`` with a generated parameter file, on a private ``ROS_DOMAIN_ID``,
topics under ``/bench``; with Fast DDS both processes use ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``,
see ``--dds-transport``), then publishes real ``sensor_msgs/Image``
frames (``bgr8``, frames of the traffic clip resized to the camera size, or synthetic frames when the
clip is missing) on N topics:

- ``--rate 0`` (default): closed loop, as fast as the node can go, synchronised cameras: all N cameras
  publish a frame, and the next round starts as soon as the detections of all N frames arrived (a round
  with an unanswered frame is given up after ``--loop-timeout``), so the node batches up to N frames
  and never has to drop one;
- ``--rate R``: every camera publishes at R Hz; frames the node cannot keep up with are dropped by it
  (newest frame wins) and counted.

Measured over ``--duration`` seconds after ``--warmup`` seconds:

- latency p50 / p99: arrival of the Detection2DArray minus its ``header.stamp`` (the stamp the camera
  set when publishing; both clocks are this process's ROS clock), i.e. camera -> node -> camera;
- node latency p50 / p99: the node's own receive -> publish latency from ``/diagnostics``;
- frames/s and detections/s answered, mean batch size and frames dropped (node counters from
  ``/diagnostics``: ``dropped`` = overwritten before processing; ``lost`` = published, never answered).

Then, with the node stopped, the same pipeline the node runs per batch is timed stage by stage in this
process with B = N frames (``rclpy`` deserialisation of the Image messages, ``image_msg_to_array``,
``Detector.preprocess``, the model forward, decode + host copy inside ``Detector.detect``,
``detections_to_msg`` and serialisation of the Detection2DArray). "overhead" = everything but the forward,
as a fraction of the forward (target < 10 %).

Example::

    python benchmarks/bench_ros.py --device cpu --cameras 1 2 4 8 --resolutions 640x360 1280x720 \\
        --input-size 192 320 --json out/bench_ros_cpu.json
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    run_script,
    REPO_ROOT,
    add_common_args,
    environment,
    format_env,
    format_table,
    resolve_device,
    setup_threads,
    synchronize,
    time_callable,
)
from centernet_ros.detector import BACKENDS  # noqa: E402  (after common: it puts the repository on sys.path)

DEFAULT_VIDEO = REPO_ROOT.parent / "shared" / "data" / "video" / "slow_traffic_small.mp4"
DEFAULT_WEIGHTS = REPO_ROOT / "models" / "centernet_vehicles.safetensors"
TOPIC_PREFIX = "/bench"

E2E_COLUMNS = [
    ("cameras", "cameras"),
    ("resolution", "image"),
    ("rate", "rate/cam"),
    ("fps", "frames/s"),
    ("dets_per_s", "detections/s"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p99_ms", "latency p99 ms"),
    ("node_latency_p50_ms", "node p50 ms"),
    ("node_latency_p99_ms", "node p99 ms"),
    ("mean_batch", "mean batch"),
    ("published", "published"),
    ("dropped", "dropped (node)"),
    ("lost", "lost"),
]
STAGE_COLUMNS = [
    ("batch", "batch"),
    ("resolution", "image"),
    ("deserialize_ms", "deserialize"),
    ("convert_ms", "to array"),
    ("preprocess_ms", "preprocess"),
    ("forward_ms", "forward"),
    ("decode_ms", "decode+copy"),
    ("to_msg_ms", "to msg"),
    ("serialize_ms", "serialize"),
    ("pipeline_ms", "pipeline"),
    ("detect_ms", "detect() alone"),
    ("dets_per_frame", "dets/frame"),
    ("overhead_ms", "overhead"),
    ("overhead_pct", "overhead % of forward"),
]


def parse_resolution(text: str) -> tuple[int, int]:
    """``"640x360"`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 640x360, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {text!r}")
    return w, h


def add_pipeline_args(p: argparse.ArgumentParser, *, score_threshold: float, what: str) -> None:
    """Options ``bench_ros.py`` and ``bench_pipeline.py`` share: cameras, image sizes, the network input,
    the model and the detector settings (``what`` names where the settings go, for the help texts)."""
    p.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4, 8], help="camera counts N")
    p.add_argument("--resolutions", nargs="+", type=parse_resolution, default=[(640, 360), (1280, 720)],
                   help="camera image sizes WxH")
    p.add_argument("--input-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="network input (multiples of 32); default 192 320 on CPU, 384 640 on CUDA")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"model file; default {DEFAULT_WEIGHTS.relative_to(REPO_ROOT)} if present, else a random-weight model")
    p.add_argument("--num-classes", type=int, default=5, help="classes of the random-weight model")
    p.add_argument("--score-threshold", type=float, default=score_threshold, help=f"{what} score_threshold")
    p.add_argument("--fp16", action="store_true", help=f"{what} fp16 (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help=f"{what} channels_last (NHWC forward)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help=f"{what} backend (auto = onnxruntime on CPU when installed, else torch; onnxruntime-int8 = "
                        "the INT8 model of centernet-export --int8 beside the weights)")
    p.add_argument("--compile", action="store_true",
                   help=f"{what} compile (torch.compile + CUDA graphs, CUDA only; falls back to eager)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_pipeline_args(p, score_threshold=0.3, what="node parameter")
    p.add_argument("--rate", type=float, default=0.0, help="Hz per camera; 0 = closed loop (as fast as possible)")
    p.add_argument("--max-batch-size", type=int, default=8, help="node parameter max_batch_size")
    p.add_argument("--max-batch-latency-ms", type=float, default=5.0, help="node parameter max_batch_latency_ms")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per configuration")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before measuring")
    p.add_argument("--loop-timeout", type=float, default=2.0, help="closed loop: resend after this many seconds")
    p.add_argument("--node-threads", type=int, default=None, help="OMP_NUM_THREADS of the node process")
    # The wait ends as soon as the node is active (and at once if its process ends): a long limit costs nothing
    # when it works. Activation (model load, ONNX export on a CPU) took over 60 s on two cores under load.
    p.add_argument("--startup-timeout", type=float, default=300.0,
                   help="seconds to wait for the node to be active and subscribed (default: 300)")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip the camera frames come from")
    p.add_argument("--stage-repeats", type=int, default=5, help="timed repeats of the stage breakdown")
    p.add_argument("--no-stages", action="store_true", help="skip the in-process stage breakdown")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs (stage breakdown only)")
    p.add_argument("--qos", default="best_effort", choices=("best_effort", "reliable"),
                   help="camera QoS reliability (publishers and the node's qos_reliability parameter)")
    p.add_argument("--dds-transport", default="LARGE_DATA",
                   help="FASTDDS_BUILTIN_TRANSPORTS for both processes when the RMW is Fast DDS and the variable "
                        "is not set already (LARGE_DATA: shared memory + TCP; 'default' = leave Fast DDS's default, "
                        "UDP fragments, which loses most large best-effort frames here)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.cameras):
        p.error(f"--cameras must be >= 1, got {args.cameras!r}")
    if args.rate < 0:
        p.error(f"--rate must be >= 0, got {args.rate!r}")
    if args.input_size is not None and any(v < 32 or v % 32 for v in args.input_size):
        p.error(f"--input-size must be positive multiples of 32, got {args.input_size!r}")
    if args.duration <= 0 or args.warmup < 0:
        p.error(f"--duration must be > 0 and --warmup >= 0, got {args.duration!r}, {args.warmup!r}")
    return args


# --------------------------------------------------------------------------------------------------
# Frames and model file
# --------------------------------------------------------------------------------------------------


def load_frames(video: Path, size: tuple[int, int], count: int = 8) -> list[np.ndarray]:
    """``count`` BGR frames ``uint8[H, W, 3]`` of ``video`` resized to ``size`` (W, H); synthetic if unreadable
    (or OpenCV is not installed)."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    frames = []
    if cv2 is not None and video.is_file():
        cap = cv2.VideoCapture(str(video))
        step = 0
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if step % 10 == 0:  # spread over the clip
                frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
            step += 1
        cap.release()
    if not frames:
        print(f"note: {video} not readable (or OpenCV missing), using synthetic frames", file=sys.stderr)
        rng = np.random.default_rng(0)
        w, h = size
        for _ in range(count):
            img = np.full((h, w, 3), 90, np.uint8)
            for _ in range(6):  # coloured rectangles up to a third of the frame, any frame size
                rh, rw = int(rng.integers(1, max(2, h // 3))), int(rng.integers(1, max(2, w // 3)))
                y, x = int(rng.integers(0, max(1, h - rh))), int(rng.integers(0, max(1, w - rw)))
                img[y : y + rh, x : x + rw] = rng.integers(0, 255, 3)
            frames.append(img)
    return frames


def prepare_weights(args: argparse.Namespace, input_size: tuple[int, int], tmpdir: Path) -> tuple[Path, str]:
    """The model file to benchmark and a description of it."""
    if args.weights is not None:
        return args.weights, str(args.weights)
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, str(DEFAULT_WEIGHTS.relative_to(REPO_ROOT))
    import torch

    from centernet_ros.model import centernet_resnet18
    from centernet_ros.weights import save_model

    torch.manual_seed(0)
    model = centernet_resnet18(num_classes=args.num_classes)
    path = tmpdir / "random.safetensors"
    save_model(path, model, class_names=[f"class{i}" for i in range(args.num_classes)], input_size=input_size)
    return path, f"random weights ({args.num_classes} classes)"


def image_messages(frames: list[np.ndarray]) -> list[Any]:
    from centernet_ros.ros.conversions import bgr_to_image_msg

    msgs = []
    for i, f in enumerate(frames):
        m = bgr_to_image_msg(f)
        m.header.frame_id = f"bench_frame{i}"
        msgs.append(m)
    return msgs


# --------------------------------------------------------------------------------------------------
# Node process
# --------------------------------------------------------------------------------------------------


def write_params(path: Path, *, weights: Path, device: str, input_size: tuple[int, int], topics: list[str],
                 args: argparse.Namespace) -> None:
    import yaml

    params = {
        "weights": str(weights),
        "device": device,
        "input_size": list(input_size),
        "fp16": bool(args.fp16),
        "camera_topics": topics,
        "publish_annotated": False,
        "diagnostics_period": 0.5,
        "max_batch_size": int(args.max_batch_size),
        "max_batch_latency_ms": float(args.max_batch_latency_ms),
        "score_threshold": float(args.score_threshold),
        "qos_reliability": args.qos,
    }
    if args.channels_last:  # only set when asked: older node versions do not declare these parameters
        params["channels_last"] = True
    if args.compile:
        params["compile"] = True
    if args.backend != "auto":
        params["backend"] = args.backend
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))


def start_node(params: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "centernet_ros.ros.node", "--ros-args", "--params-file", str(params),
           "-r", "__node:=bench_detector"]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# Cameras + measurement (runs in this process)
# --------------------------------------------------------------------------------------------------


class Bench:
    """rclpy node publishing N cameras and listening to their detections and to /diagnostics."""

    def __init__(self, n: int, msgs: list[Any], rate: float, loop_timeout: float, qos: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.node = Node("bench_cameras")
        self.n, self.msgs, self.rate, self.loop_timeout = n, msgs, rate, loop_timeout
        self.topics = [f"{TOPIC_PREFIX}/cam{i}/image_raw" for i in range(n)]
        reliability = ReliabilityPolicy.RELIABLE if qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        cam_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        det_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = [self.node.create_publisher(Image, t, cam_qos) for t in self.topics]
        self.subs = [
            self.node.create_subscription(Detection2DArray, f"{TOPIC_PREFIX}/cam{i}/detections",
                                          lambda m, i=i: self._on_detections(i, m), det_qos)
            for i in range(n)
        ]
        self.diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        self.sending = False
        self.frame_idx = [i for i in range(n)]  # cameras start on different frames
        self.outstanding: list[dict[int, int]] = [dict() for _ in range(n)]  # stamp ns -> publish ns
        self.waiting: set[int] = set()  # closed loop: cameras of the current round not answered yet
        self.round_start = 0
        self.reset_window(float("inf"))
        if rate > 0:
            self.timers = [self.node.create_timer(1.0 / rate, lambda i=i: self._publish(i)) for i in range(n)]
        else:
            self.timers = [self.node.create_timer(0.05, self._check_round)]

    # window bookkeeping: only frames published inside [start, end) count
    def reset_window(self, start_ns: float, end_ns: float = float("inf")) -> None:
        self.win_start, self.win_end = start_ns, end_ns
        self.latencies: list[float] = []
        self.answered = 0
        self.detections = 0
        self.published = 0

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _publish(self, i: int) -> None:
        if not self.sending:
            return
        msg = self.msgs[self.frame_idx[i] % len(self.msgs)]
        self.frame_idx[i] += 1
        t = self.now_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 1_000_000_000)
        self.outstanding[i][t] = t
        if len(self.outstanding[i]) > 1000:  # rate mode: forget very old unanswered frames
            self.outstanding[i].pop(next(iter(self.outstanding[i])))
        if self.win_start <= t < self.win_end:
            self.published += 1
        self.pubs[i].publish(msg)

    def _start_round(self) -> None:
        """Closed loop: every camera publishes its next frame (synchronised cameras)."""
        self.round_start = self.now_ns()
        self.waiting = set(range(self.n))
        for i in range(self.n):
            self._publish(i)

    def _check_round(self) -> None:
        """Closed loop: a round with a frame unanswered after loop_timeout is given up (counted as lost)."""
        if self.sending and self.waiting and self.now_ns() - self.round_start > self.loop_timeout * 1e9:
            self._start_round()

    def _on_detections(self, i: int, msg: Any) -> None:
        now = self.now_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        found = self.outstanding[i].pop(stamp, None) is not None
        if found and self.win_start <= stamp < self.win_end:
            self.latencies.append((now - stamp) / 1e6)
            self.answered += 1
            self.detections += len(msg.detections)
        if found and self.rate == 0:
            self.waiting.discard(i)
            if self.sending and not self.waiting:
                self._start_round()  # closed loop: all cameras answered -> next round

    def _on_diag(self, msg: Any) -> None:
        for st in msg.status:
            # the node's own status (the per-camera ones are named "<node>: camera <topic>")
            if "bench_detector" in st.name and ": camera " not in st.name:
                self.diag = {kv.key: kv.value for kv in st.values}
                self.diag_count += 1

    def start(self) -> None:
        self.sending = True
        if self.rate == 0:
            self._start_round()

    def counters(self) -> dict[str, float]:
        d = self.diag
        out = {"batches": float(d.get("batches", 0))}
        for key in ("received", "processed", "dropped", "rejected"):
            out[key] = sum(float(d.get(f"{t} {key}", 0)) for t in self.topics)
        return out


def spin_for(executor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))


def wait_fresh_diag(executor, bench: Bench, timeout: float = 3.0) -> dict[str, str]:
    """Spin until a new /diagnostics message arrived; return its values."""
    n0 = bench.diag_count
    end = time.monotonic() + timeout
    while bench.diag_count == n0 and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    return dict(bench.diag)


def run_e2e(n: int, res: tuple[int, int], *, args: argparse.Namespace, device: str, weights: Path,
            input_size: tuple[int, int], msgs: list[Any], tmpdir: Path, env: dict[str, str]) -> dict[str, Any]:
    from rclpy.executors import SingleThreadedExecutor

    topics = [f"{TOPIC_PREFIX}/cam{i}/image_raw" for i in range(n)]
    params = tmpdir / f"params_{n}_{res[0]}x{res[1]}.yaml"
    write_params(params, weights=weights, device=device, input_size=input_size, topics=topics, args=args)
    log = tmpdir / f"node_{n}_{res[0]}x{res[1]}.log"
    proc = start_node(params, env, log)
    bench = Bench(n, msgs, args.rate, args.loop_timeout, args.qos)
    executor = SingleThreadedExecutor()
    executor.add_node(bench.node)
    try:
        t0 = time.monotonic()
        while bench.diag.get("state") != "active":  # node configured, model loaded, subscribed
            if proc.poll() is not None or time.monotonic() - t0 > args.startup_timeout:
                why = (f"its process ended (exit {proc.returncode})" if proc.poll() is not None
                       else f"not within --startup-timeout {args.startup_timeout:g} s")
                raise RuntimeError(f"detector node did not become active: {why}; log:\n{log.read_text()[-3000:]}")
            executor.spin_once(timeout_sec=0.1)
        while any(p.get_subscription_count() == 0 for p in bench.pubs):
            if time.monotonic() - t0 > args.startup_timeout:
                raise RuntimeError(f"detector node did not subscribe to the camera topics within --startup-timeout "
                                   f"{args.startup_timeout:g} s")
            executor.spin_once(timeout_sec=0.05)
        startup_s = time.monotonic() - t0
        bench.start()
        spin_for(executor, args.warmup)
        c0 = bench.counters() if wait_fresh_diag(executor, bench) else {}
        start = bench.now_ns()
        bench.reset_window(start, start + args.duration * 1e9)
        spin_for(executor, args.duration)
        bench.sending = False
        c1 = bench.counters() if wait_fresh_diag(executor, bench) else {}
        spin_for(executor, max(1.0, args.loop_timeout))  # late answers to frames of the window
        diag = wait_fresh_diag(executor, bench)
        lat = np.asarray(bench.latencies)
        d = {k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in ("batches", "received", "processed", "dropped", "rejected")}
        row = {
            "cameras": n, "resolution": f"{res[0]}x{res[1]}", "rate": "loop" if args.rate == 0 else args.rate,
            "fps": bench.answered / args.duration, "dets_per_s": bench.detections / args.duration,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "node_latency_p50_ms": float(diag.get("latency_p50_ms", "nan")),
            "node_latency_p99_ms": float(diag.get("latency_p99_ms", "nan")),
            "mean_batch": d["processed"] / d["batches"] if d["batches"] else None,
            "published": bench.published, "answered": bench.answered,
            "dropped": int(d["dropped"]), "lost": bench.published - bench.answered,
            "node_window": d, "startup_s": startup_s,
        }
    finally:
        executor.remove_node(bench.node)
        bench.node.destroy_node()
        stop_node(proc)
    return row


# --------------------------------------------------------------------------------------------------
# Stage breakdown (in process, node stopped)
# --------------------------------------------------------------------------------------------------


def stage_breakdown(detector, msgs: list[Any], batch: int, repeats: int, warmup: int = 2) -> dict[str, Any]:
    """Per-batch milliseconds of each step the node's worker runs for ``batch`` frames.

    Every repeat runs the whole pipeline once and times each stage of that same pass (device
    synchronised between stages), so the stages of one row come from the same iterations; the row holds
    the median of each stage over ``repeats`` passes and the median of the per-pass overhead fraction.
    The decode stage repeats what ``Detector.detect`` does after the forward (``decode`` with the
    letterbox parameters, one packed device -> host copy, per-image unpacking); ``detect_ms`` times
    ``Detector.detect`` itself as a cross-check of preprocess + forward + decode.
    """
    import torch
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from centernet_ros.decode import decode
    from centernet_ros.ros.conversions import detections_to_msg, image_msg_to_array

    dev = detector.device
    # the forward Detector.detect runs (its compiled / padded path when enabled), else the plain model
    forward = getattr(detector, "_forward", None) or detector.model
    frames = [msgs[i % len(msgs)] for i in range(batch)]
    wire = [serialize_message(m) for m in frames]  # what the node's subscription receives

    def one_pass() -> tuple[dict[str, float], int]:
        t: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            synchronize(dev)
            now = time.perf_counter()
            t[name] = (now - clock[0]) * 1e3
            clock[0] = now

        received = [deserialize_message(w, Image) for w in wire]
        lap("deserialize_ms")
        raws = [image_msg_to_array(m) for m in received]
        arrays, orders = [r.array for r in raws], [r.order for r in raws]
        lap("convert_ms")
        with torch.inference_mode():
            x, params = detector.preprocess(arrays, orders)
            lap("preprocess_ms")
            outputs = forward(x)
            lap("forward_ms")
            det = decode(outputs, detector.decode_config, scale=params.scale, offset=params.offset,
                         orig_size=params.orig_size)
            packed = torch.cat([det.boxes.float(), det.scores.float().unsqueeze(-1),
                                det.labels.float().unsqueeze(-1)], -1).cpu().numpy()  # (B, D, 6)
            rows = [r[r[:, 5] >= 0] for r in packed]  # valid rows per image
            lap("decode_ms")
        out = [detections_to_msg(m.header, r[:, :4], r[:, 4], r[:, 5].astype(np.int64)) for m, r in zip(received, rows)]
        lap("to_msg_ms")
        for o in out:
            serialize_message(o)
        lap("serialize_ms")
        return t, sum(len(r) for r in rows)

    for _ in range(warmup):
        one_pass()
    passes, dets = [], 0
    for _ in range(repeats):
        t, dets = one_pass()
        t["pipeline_ms"] = sum(t.values())
        t["overhead_ms"] = t["pipeline_ms"] - t["forward_ms"]
        t["overhead_pct"] = 100.0 * t["overhead_ms"] / t["forward_ms"]
        passes.append(t)
    res: dict[str, Any] = {k: float(np.median([p[k] for p in passes])) for k in passes[0]}
    arrays = [image_msg_to_array(deserialize_message(w, Image)).array for w in wire]
    orders = [image_msg_to_array(frames[0]).order] * batch
    res["detect_ms"] = time_callable(lambda: detector.detect(arrays, orders), device=dev, warmup=1,
                                     repeats=repeats).median * 1e3
    res["dets_per_frame"] = dets / batch
    return res


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_threads(args.threads)
    device = resolve_device(args.device)
    input_size = tuple(args.input_size) if args.input_size else ((384, 640) if device.type == "cuda" else (192, 320))
    # private domain (215..232, outside the 1..100 the test suite picks): other ROS processes do not interfere
    domain = str(random.Random(os.getpid()).randint(215, 232))
    os.environ["ROS_DOMAIN_ID"] = domain
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if "fastrtps" in rmw and args.dds_transport.lower() != "default":
        os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", args.dds_transport)
    if os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "").upper().startswith("LARGE_DATA") and \
            os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST":
        # measured here: LOCALHOST discovery + LARGE_DATA delivers no samples at all between processes
        print("note: unsetting ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (no data flows with LARGE_DATA); "
              f"the private ROS_DOMAIN_ID={domain} isolates the benchmark", file=sys.stderr)
        os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.node_threads is not None:
        env["OMP_NUM_THREADS"] = str(args.node_threads)

    import rclpy

    rows, stages = [], []
    stage_backend = None  # what ran the forward pass of the stage breakdown (Detector.backend)
    with tempfile.TemporaryDirectory(prefix="bench_ros_") as tmp:
        tmpdir = Path(tmp)
        weights, weights_desc = prepare_weights(args, input_size, tmpdir)
        all_msgs = {res: image_messages(load_frames(args.video, res)) for res in args.resolutions}
        rclpy.init()
        try:
            for res in ([] if args.no_e2e else args.resolutions):
                for n in args.cameras:
                    print(f"  e2e: {n} camera(s) {res[0]}x{res[1]} ...", file=sys.stderr, flush=True)
                    row = run_e2e(n, res, args=args, device=str(device), weights=weights, input_size=input_size,
                                  msgs=all_msgs[res], tmpdir=tmpdir, env=env)
                    rows.append(row)
                    print(f"    {row['fps']:.1f} frames/s, p50 {row['latency_p50_ms']} ms, batch {row['mean_batch']}",
                          file=sys.stderr, flush=True)
            if not args.no_stages:
                from centernet_ros.decode import DecodeConfig
                from centernet_ros.detector import Detector, DetectorConfig

                extra = {k: True for k in ("channels_last", "compile") if getattr(args, k)}
                if args.backend != "auto":
                    extra["backend"] = args.backend
                detector = Detector(
                    DetectorConfig(weights=str(weights), device=str(device), input_size=input_size, fp16=args.fp16,
                                   **extra),
                    decode=DecodeConfig(score_threshold=args.score_threshold),
                )
                for res in args.resolutions:
                    for n in args.cameras:
                        b = min(n, args.max_batch_size)
                        t = stage_breakdown(detector, all_msgs[res], b, args.stage_repeats)
                        stages.append({"batch": b, "resolution": f"{res[0]}x{res[1]}", **t})
                        print(f"  stages B={b} {res[0]}x{res[1]}: forward {t['forward_ms']:.1f} ms, "
                              f"overhead {t['overhead_pct']:.1f} %", file=sys.stderr, flush=True)
                stage_backend = detector.backend
                detector.close()
        finally:
            rclpy.try_shutdown()
    config = {
        "cameras": args.cameras, "resolutions": [f"{w}x{h}" for w, h in args.resolutions], "rate": args.rate,
        "input_size": list(input_size), "weights": weights_desc, "score_threshold": args.score_threshold,
        "max_batch_size": args.max_batch_size, "max_batch_latency_ms": args.max_batch_latency_ms,
        "fp16": args.fp16, "channels_last": args.channels_last, "compile": args.compile, "backend": args.backend,
        "stage_backend": stage_backend,
        "duration_s": args.duration, "warmup_s": args.warmup, "node_threads": args.node_threads,
        "video": str(args.video), "ros_domain_id": domain, "qos": args.qos,
        "FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"),
        "rmw": os.environ.get("RMW_IMPLEMENTATION") or _rmw_name(),
    }
    return {"env": environment(device, script=__file__, argv=args.argv), "config": config, "rows": rows, "stages": stages}


def _rmw_name() -> str:
    try:
        from rclpy.utilities import get_rmw_implementation_identifier

        return get_rmw_implementation_identifier()
    except Exception:
        return "unknown"


def report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = ["## End to end through ROS 2", "", format_env(result["env"]), "",
             f"node input {cfg['input_size'][0]}x{cfg['input_size'][1]} (HxW), model: {cfg['weights']}, "
             f"score_threshold {cfg['score_threshold']}, max_batch_size {cfg['max_batch_size']}, "
             f"max_batch_latency_ms {cfg['max_batch_latency_ms']}, fp16 {cfg['fp16']}, channels_last {cfg['channels_last']}, "
             f"compile {cfg['compile']}, backend {cfg.get('backend', 'auto')} (stage breakdown ran "
             f"{cfg.get('stage_backend')}), rmw {cfg['rmw']} "
             f"(FASTDDS_BUILTIN_TRANSPORTS={cfg['FASTDDS_BUILTIN_TRANSPORTS']}), camera QoS {cfg['qos']}; "
             f"{cfg['warmup_s']} s warm-up, {cfg['duration_s']} s measured per row", ""]
    if result["rows"]:
        lines += [format_table(result["rows"], E2E_COLUMNS), "",
                  "latency: camera stamp -> Detection2DArray arrival (this process); node p50/p99: the node's "
                  "receive -> publish latency (its /diagnostics, last <= 2048 frames incl. warm-up); "
                  "dropped: frames the node overwrote before processing; lost: published in the window and not answered by the end of the grace period (max(1 s, --loop-timeout)).", ""]
    if result["stages"]:
        lines += ["### Node pipeline per batch (ms, in process, node stopped; target overhead < 10 % of forward)", "",
                  "median over passes of each stage of the same passes; overhead = pipeline - forward; "
                  "\"detect() alone\" times Detector.detect (preprocess + forward + decode) as a cross-check", "",
                  format_table(result["stages"], STAGE_COLUMNS)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    sys.exit(main())
