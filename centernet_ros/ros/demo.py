"""``centernet-demo`` (``make demo``): the whole pipeline on a ROS 2 graph in one command.

Legend: H/W frame or network-input height/width.

Three nodes share one process and one single-threaded executor, talking over real topics (the forward
pass runs on the detector's own worker thread; rclpy's MultiThreadedExecutor spun a core at 100 % while a
callback ran, and the demo went from 3.0 to 5.4 frames/s on 2 cores without it):

    video_publisher --/demo/camera/image_raw--> centernet_detector --/demo/camera/detections-------> demo_recorder
                   <-------- lockstep: next frame once its detections are out --/demo/camera/detections_image-->

The recorder writes the annotated frames to ``<out>/demo.mp4`` and a summary (frames, detections per
class name, detections per frame and the box-size distribution (:mod:`.demo_report`), FPS, latency
p50/p99) to stdout and ``<out>/demo_summary.json``; ``--frames-picture`` also tiles a few annotated
frames, spread evenly over the run, into one picture. The process uses the package's Fast DDS profile
(:mod:`.fastdds`) unless the environment names one, so that a viewer in another process (rviz) gets
the annotated frames. The publisher waits for
each frame's detections before sending the next, so every frame is processed even on a slow CPU.
The network input defaults to 384x640 on every device: the clip's 640x360 at full resolution, the size
the bundled model is measured at and the node's own default for it (the whole 917-frame clip in about
6 minutes on two CPU cores). ``--input-size 256 448`` runs twice as fast on a CPU and misses more of the
nearest cars. ``--max-frames`` shortens the run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .demo_report import PICTURE_FRAMES, BoxSizes, FramePicker, describe, picture_indices, write_picture
from .package_files import package_file

__all__ = ["INPUT_SIZE", "main", "parse_args"]

CAMERA = "/demo/camera/image_raw"
DETECTIONS = "/demo/camera/detections"
ANNOTATED = "/demo/camera/detections_image"
LABEL_INFO = "/label_info"
# (H, W) network input of centernet-demo and demo.launch.py on every device: the clip at full resolution
INPUT_SIZE = (384, 640)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="centernet-demo",
        description="Run the detector on a video through ROS 2 topics; write an annotated video and a summary.",
    )
    p.add_argument("--video", type=Path, default=None, help="input video (default: bundled models/slow_traffic_small.mp4)")
    p.add_argument("--weights", type=Path, default=None,
                   help="model file (default: bundled models/centernet_vehicles.safetensors)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder for demo.mp4 and demo_summary.json")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help=f"network input, multiples of 32 (default: {INPUT_SIZE[0]} {INPUT_SIZE[1]}, the clip at full "
                   "resolution; 256 448 is twice as fast on a CPU and misses more near cars)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (default: 0 = whole video)")
    p.add_argument("--score-threshold", type=float, default=None, help="detection score threshold (default: params file)")
    p.add_argument("--params-file", type=Path, default=None, help="ROS parameters file (default: config/demo.yaml)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds (default: 1800)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--frames-picture", type=Path, default=None, metavar="PATH",
                   help="also write this picture (.png, .jpg) of annotated frames spread evenly over the run")
    p.add_argument("--picture-frames", type=int, default=PICTURE_FRAMES, metavar="N",
                   help=f"frames in that picture (default: {PICTURE_FRAMES}, a 3 x 2 grid)")
    args = p.parse_args(argv)
    if args.picture_frames < 1:
        p.error(f"--picture-frames must be >= 1, got {args.picture_frames}")
    if args.frames_picture is not None:
        import cv2

        if not cv2.haveImageWriter(str(args.frames_picture)):
            p.error(f"--frames-picture: OpenCV cannot write '{args.frames_picture}' (use .png or .jpg)")
    if args.max_frames < 0:
        p.error(f"--max-frames must be >= 0, got {args.max_frames}")
    if args.input_size is not None and any(v <= 0 or v % 32 for v in args.input_size):
        p.error(f"--input-size must be positive multiples of 32, got {args.input_size}")
    return args


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def main(argv: list[str] | None = None, *, stop: Any = None) -> int:
    """Console script ``centernet-demo``. Exit status 0 when frames were processed, and after SIGINT /
    SIGTERM at any moment (``stop``: the :class:`.stop.StopSignals` that the console script installed
    first; installed here when None): interrupted while streaming, it still writes the summary of the
    frames so far. 1 when no frame came through or a file (the ``--frames-picture`` included) cannot be read
or written, 2 on bad options."""
    from .stop import Interrupted, StopSignals, quietly

    stop = stop or StopSignals.install()
    args = parse_args(argv)

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from tqdm import tqdm
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from ..detector import resolve_device
    from .conversions import image_msg_to_array, to_bgr
    from .fastdds import apply_fastdds_profile, profile_variable
    from .node import DetectorNode, default_weights_path
    from .video_publisher import VideoPublisher, default_video_path

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"centernet-demo: {exc}", file=sys.stderr)
        return 2
    input_size = list(args.input_size or INPUT_SIZE)
    video_path = args.video or default_video_path()
    weights = args.weights or default_weights_path()
    params_file = args.params_file or package_file("config", "demo.yaml")
    if not Path(video_path).is_file():
        print(f"centernet-demo: video file not found: '{video_path}'", file=sys.stderr)
        return 2

    apply_fastdds_profile()  # before rclpy.init: Fast DDS reads it when the participant is created
    context = Context()
    nodes: list[Any] = []
    writer = None
    executor = None
    try:
        # rclpy's handlers would raise KeyboardInterrupt anywhere (see .stop): ours stay installed
        rclpy.init(args=["--ros-args", "--params-file", str(params_file)], context=context,
                   signal_handler_options=SignalHandlerOptions.NO)
        overrides = [
            Parameter("weights", value=str(weights)),
            Parameter("device", value=str(device)),
            Parameter("input_size", value=[int(v) for v in input_size]),
            Parameter("camera_topics", value=[CAMERA]),
            Parameter("publish_annotated", value=True),
            # cpu_threads keeps its default -1: one core stays with the five ROS/recorder threads of this
            # process (on 2 cores ~3x faster than one torch thread per core: 4.5 vs 1.4 frames/s)
        ]
        if args.score_threshold is not None:
            overrides.append(Parameter("score_threshold", value=float(args.score_threshold)))
        detector = DetectorNode(context=context, parameter_overrides=overrides)
        nodes.append(detector)
        if not detector.autostart():
            print(f"centernet-demo: {detector.last_error}", file=sys.stderr)
            return 1

        recorder = Node("demo_recorder", context=context)
        nodes.append(recorder)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        names: dict[int, str] = dict(enumerate(detector.class_names))
        per_class: collections.Counter[str] = collections.Counter()
        e2e_ms: list[float] = []
        boxes = BoxSizes()
        picker = FramePicker([])  # the frames wanted: once the video's length is known
        frame_size: list[tuple[int, int]] = []  # (H, W) of the annotated frames
        state = {"det_frames": 0, "video_frames": 0, "first": None, "last": None}
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        video_out = out_dir / "demo.mp4"
        fps_in = [30.0]

        def on_labels(msg: Any) -> None:
            names.update({int(c.class_id): c.class_name for c in msg.class_map})

        def on_detections(msg: Any) -> None:
            now = time.time()
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            e2e_ms.append((now - stamp) * 1e3)
            for d in msg.detections:
                cid = d.results[0].hypothesis.class_id if d.results else "?"
                per_class[names.get(int(cid), cid) if cid.isdigit() else cid] += 1
            boxes.add_frame([d.bbox.size_x for d in msg.detections], [d.bbox.size_y for d in msg.detections])
            state["det_frames"] += 1
            state["last"] = time.monotonic()

        def on_annotated(msg: Any) -> None:
            nonlocal writer
            import cv2

            bgr = to_bgr(image_msg_to_array(msg))
            if writer is None:
                writer = cv2.VideoWriter(str(video_out), cv2.VideoWriter_fourcc(*"mp4v"), fps_in[0],
                                         (bgr.shape[1], bgr.shape[0]))
                if not writer.isOpened():
                    raise RuntimeError(f"cannot write '{video_out}' (no mp4v encoder in this OpenCV build?)")
            writer.write(bgr)
            state["video_frames"] += 1
            frame_size[:] = [bgr.shape[:2]]
            if args.frames_picture is not None:
                picker.offer(bgr)

        recorder.create_subscription(LabelInfo, LABEL_INFO, on_labels, latched)
        recorder.create_subscription(Detection2DArray, DETECTIONS, on_detections, reliable)
        recorder.create_subscription(Image, ANNOTATED, on_annotated, reliable)

        executor = SingleThreadedExecutor(context=context)
        executor.add_node(detector)
        executor.add_node(recorder)
        stop.running()  # from here on the loops below poll stop.requested
        # Start the camera only once the recorder is matched with both detector outputs: the
        # annotated image is drawn only for frames that have a subscriber when they are processed.
        deadline = time.monotonic() + 30.0
        while min(detector.output_subscriber_counts()[CAMERA]) < 1:
            if stop.requested:
                print(f"centernet-demo: interrupted ({stop.name})", file=sys.stderr)
                return 0
            if time.monotonic() > deadline:
                print("centernet-demo: the recorder did not connect to the detector within 30 s", file=sys.stderr)
                return 1
            executor.spin_once(timeout_sec=0.05)

        video = VideoPublisher(context=context, parameter_overrides=[
            Parameter("path", value=str(video_path)),
            Parameter("topic", value=CAMERA),
            Parameter("lockstep_topic", value=DETECTIONS),
            Parameter("rate", value=-1.0),
            Parameter("loop", value=False),
            Parameter("max_frames", value=int(args.max_frames)),
            Parameter("wait_for_subscribers", value=1),
        ])
        nodes.append(video)
        fps_in[0] = video.file_fps
        executor.add_node(video)
        total = video.total_frames if not args.max_frames else min(args.max_frames, video.total_frames or args.max_frames)
        picker.wanted = picture_indices(total, args.picture_frames)
        t0 = time.monotonic()
        done_at = None
        with tqdm(total=total or None, unit="frame", desc="centernet-demo", disable=args.no_progress) as bar:
            while not stop.requested:
                executor.spin_once(timeout_sec=0.05)
                bar.update(state["det_frames"] - bar.n)
                if state["first"] is None and video.sent:
                    state["first"] = time.monotonic()
                if video.done:
                    done_at = done_at or time.monotonic()
                    caught_up = state["det_frames"] >= video.sent and state["video_frames"] >= video.sent
                    if caught_up or time.monotonic() - done_at > 5.0:
                        break
                if time.monotonic() - t0 > args.timeout:
                    print(f"centernet-demo: timed out after {args.timeout:.0f} s", file=sys.stderr)
                    break
        stats = detector.stats()
        cam_stats = stats["cameras"][CAMERA]
        span = (state["last"] - state["first"]) if state["first"] is not None and state["last"] is not None else 0.0
        summary = {
            "video": str(video_path),
            "weights": str(weights),
            "device": str(device),
            "input_size": list(detector.input_size or input_size),
            "frames": state["det_frames"],
            "frames_published": video.sent,
            "frames_written": state["video_frames"],
            "dropped": cam_stats["dropped"],
            "rejected": cam_stats["rejected"],
            "detections": int(sum(per_class.values())),
            "detections_per_class": dict(per_class.most_common()),
            "boxes": boxes.summary(frame_size[0] if frame_size else None),
            "fps": round(state["det_frames"] / span, 2) if span > 0 else None,
            "latency_ms": _percentiles(detector.latencies_ms()),
            "end_to_end_latency_ms": _percentiles(e2e_ms),
            "output_video": str(video_out),
            "frames_picture": None,  # set below once written
            "fastdds_profile": os.environ.get(profile_variable()) or None,
            "wall_time_s": round(time.monotonic() - t0, 1),
            "interrupted": stop.name or None,
        }
    except Interrupted:
        print(f"centernet-demo: interrupted ({stop.name})", file=sys.stderr)
        return 0
    except RuntimeError as exc:  # e.g. the video file cannot be read or written
        print(f"centernet-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.running()  # from here on a signal is only counted
        if executor is not None:
            quietly("centernet-demo", "executor shutdown", lambda: executor.shutdown(timeout_sec=5.0))
        if writer is not None:
            quietly("centernet-demo", "closing the video", writer.release)
        for node in reversed(nodes):
            if isinstance(node, DetectorNode):
                quietly("centernet-demo", "stopping the detector", node.close)
            quietly("centernet-demo", "destroy_node", node.destroy_node)
        quietly("centernet-demo", "rclpy shutdown", lambda: rclpy.try_shutdown(context=context))

    picture_error = ""
    if args.frames_picture is not None:
        try:  # ValueError: no annotated frame came through
            write_picture(args.frames_picture, picker.frames)
            summary["frames_picture"] = str(args.frames_picture)
        except (OSError, ValueError) as exc:
            picture_error = f"centernet-demo: the frames picture: {exc}"
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lat, e2e = summary["latency_ms"], summary["end_to_end_latency_ms"]
    print(f"frames: {summary['frames']} processed ({summary['dropped']} dropped, {summary['rejected']} rejected) "
          f"on {summary['device']} at input {summary['input_size'][0]}x{summary['input_size'][1]}")
    print("detections: " + (", ".join(f"{k} {v}" for k, v in summary["detections_per_class"].items()) or "none")
          + f" ({summary['detections']} total)")
    print("\n".join(describe(summary["boxes"])))
    print(f"throughput: {summary['fps']} fps; latency receive->publish p50 {lat['p50']} ms, p99 {lat['p99']} ms; "
          f"camera->recorder p50 {e2e['p50']} ms, p99 {e2e['p99']} ms")
    print(f"wrote {summary['output_video']} ({summary['frames_written']} frames) and {out_dir / 'demo_summary.json'}")
    if summary["frames_picture"]:
        print(f"wrote {summary['frames_picture']} (frames {sorted(picker.frames)} of the annotated stream)")
    if picture_error:
        print(picture_error, file=sys.stderr)
        return 1
    if stop.requested:
        print(f"centernet-demo: interrupted ({stop.name}) after {summary['frames']} frames", file=sys.stderr)
        return 0
    return 0 if summary["frames"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
