#!/usr/bin/env python3
"""Detector pipeline without ROS: N camera frames (uint8 BGR) -> ``Detector.detect`` -> detections on the host.

Legend: N cameras (= frames per batch), H/W camera image size, D detections of a frame.

What the node's worker does per batch, minus the ROS message handling (``bench_ros.py`` measures that
part: 0.2-3 ms per batch on a CPU): upload, colour order, letterbox and normalisation on the device, the
forward pass (torch eager / NHWC / CUDA graphs, or onnxruntime), decode, one device -> host copy and the
per-image unpacking. Closed loop: the next batch starts when the previous batch's detections are on the
host (``detect`` ends with that copy, so every latency includes all device work). Per camera count N x
image size: frames/s (N x batches/s) and the latency of a frame (its batch's ``detect`` time), p50 / p99
over ``--iters`` batches after ``--warmup`` batches.

For machines without ROS 2 (a GPU box with only torch): needs torch, numpy, safetensors and, for the
clip, OpenCV (synthetic frames otherwise). Issue 6 GPU targets: 1 camera >= 300 frames/s with p99 <= 10 ms,
8 cameras >= 1000 frames/s.

Examples::

    python benchmarks/bench_pipeline.py --device cpu --threads 1 --json out/bench/pipeline_cpu.json
    python benchmarks/bench_pipeline.py --device cuda --fp16 --channels-last --compile --json out/bench/pipeline_cuda.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_args,
    add_decode_plan_arg,
    environment,
    format_env,
    format_table,
    resolve_device,
    run_script,
    set_decode_plan,
    setup_threads,
)
from bench_ros import DEFAULT_VIDEO, REPO_ROOT, add_pipeline_args, load_frames, prepare_weights  # noqa: E402

BUNDLED_VIDEO = REPO_ROOT / "models" / "slow_traffic_small.mp4"  # the demo clip, part of the package

COLUMNS = [
    ("cameras", "cameras"),
    ("resolution", "image"),
    ("fps", "frames/s"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p99_ms", "latency p99 ms"),
    ("batch_ms_mean", "mean ms/batch"),
    ("dets_per_frame", "dets/frame"),
    ("batches", "batches"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_pipeline_args(p, score_threshold=0.15, what="detector setting")  # 0.15: the node's default
    add_decode_plan_arg(p)
    p.add_argument("--int8-model", type=Path, default=None,
                   help="--backend onnxruntime-int8: the INT8 .onnx (default: <weights stem>.int8-<H>x<W>.onnx beside the "
                        "weights, as centernet-export --int8 writes it)")
    p.add_argument("--iters", type=int, default=None, help="timed batches per row (default: 20 CPU, 300 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches per row (default: 2 CPU, 30 CUDA)")
    p.add_argument("--video", type=Path, default=BUNDLED_VIDEO if BUNDLED_VIDEO.is_file() else DEFAULT_VIDEO,
                   help="clip the camera frames come from (default: the bundled demo clip)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.cameras):
        p.error(f"--cameras must be >= 1, got {args.cameras!r}")
    if args.input_size is not None and any(v < 32 or v % 32 for v in args.input_size):
        p.error(f"--input-size must be positive multiples of 32, got {args.input_size!r}")
    for name in ("iters", "warmup"):
        v = getattr(args, name)
        if v is not None and v < (1 if name == "iters" else 0):
            p.error(f"--{name} must be >= {1 if name == 'iters' else 0}, got {v!r}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from centernet_ros.decode import DecodeConfig
    from centernet_ros.detector import Detector, DetectorConfig

    setup_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    plan = set_decode_plan(device, args.decode_plan)
    input_size = tuple(args.input_size) if args.input_size else ((384, 640) if cuda else (192, 320))
    iters = args.iters if args.iters is not None else (300 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (30 if cuda else 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, weights_desc = prepare_weights(args, input_size, Path(tmp))
        det = Detector(
            DetectorConfig(weights=str(weights), device=str(device), input_size=input_size, fp16=args.fp16,
                           channels_last=args.channels_last, compile=args.compile, backend=args.backend,
                           int8_model=args.int8_model),
            decode=DecodeConfig(score_threshold=args.score_threshold),
        )
        for res in args.resolutions:
            frames = load_frames(args.video, res, count=8)
            for n in args.cameras:
                batch = [frames[i % len(frames)] for i in range(n)]  # one frame per camera
                for _ in range(warmup):
                    det.detect(batch)
                times, dets = [], 0
                for _ in range(iters):
                    t0 = time.perf_counter()
                    out = det.detect(batch)  # ends with the device -> host copy: synchronised
                    times.append(time.perf_counter() - t0)
                    dets += sum(len(o.scores) for o in out)
                t = np.asarray(times) * 1e3  # ms per batch = latency of each of its frames
                row = {
                    "cameras": n, "resolution": f"{res[0]}x{res[1]}",
                    "fps": n * len(t) / (t.sum() / 1e3),
                    "latency_p50_ms": float(np.percentile(t, 50)), "latency_p99_ms": float(np.percentile(t, 99)),
                    "batch_ms_mean": float(t.mean()), "dets_per_frame": dets / (n * len(t)), "batches": len(t),
                }
                rows.append(row)
                print(f"  N={n} {res[0]}x{res[1]}: {row['fps']:.1f} frames/s, p50 {row['latency_p50_ms']:.2f} ms, "
                      f"p99 {row['latency_p99_ms']:.2f} ms", file=sys.stderr, flush=True)
        backend, backend_error = det.backend, det.backend_error
        compiled = det._compiled is not None
        compile_error, fp16 = det.compile_error, det.fp16
        det.close()
    config = {
        "input_size": list(input_size), "weights": weights_desc, "score_threshold": args.score_threshold,
        "fp16": fp16, "channels_last": args.channels_last, "compile": args.compile, "compiled": compiled,
        "compile_error": compile_error, "backend": backend, "backend_requested": args.backend,
        "backend_error": backend_error, "decode_plan": plan, "iters": iters, "warmup": warmup,
        "video": str(args.video),
    }
    return {"env": environment(device, script=__file__, argv=args.argv), "config": config, "rows": rows}


def report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = ["## Detector pipeline without ROS (frames -> detections on the host)", "", format_env(result["env"]), "",
             f"input {cfg['input_size'][0]}x{cfg['input_size'][1]} (HxW), model: {cfg['weights']}, backend "
             f"{cfg['backend']} (asked: {cfg['backend_requested']}), fp16 {cfg['fp16']}, channels_last "
             f"{cfg['channels_last']}, compile {cfg['compile']} (active: {cfg['compiled']}), score_threshold "
             f"{cfg['score_threshold']}, decode plan {cfg.get('decode_plan', '?')}; {cfg['warmup']} warm-up + "
             f"{cfg['iters']} timed batches per row, closed loop", "",
             format_table(result["rows"], COLUMNS), "",
             "latency: one batch's Detector.detect (upload, letterbox, forward, decode, host copy) = the latency of "
             "each of its frames; frames/s = cameras x batches/s."]
    for key in ("backend_error", "compile_error"):
        if cfg.get(key):
            lines.append(f"note: {key}: {cfg[key]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    sys.exit(main())
