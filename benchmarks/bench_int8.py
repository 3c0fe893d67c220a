#!/usr/bin/env python3
"""INT8 vs fp32 ONNX Runtime on the CPU: forward speed and AP of the same model file.

Legend: B batch, H/W network input height/width.

For every input size (default: the demo's 256x448 and the size stored in the model file) the script makes
the INT8 model of ``--weights`` (``centernet_ros.int8.quantize_int8``, the code behind ``centernet-export
--int8``; an up-to-date file in ``--int8-dir`` from the same weights and calibration settings is reused)
and compares it with the fp32 graph the detector's ``backend: onnxruntime`` runs:

- speed: ``session.run`` on ``Tensor[B, 3, H, W]``, the two sessions alternating in rounds whose order flips
  every round (``common.time_interleaved``); reported: medians, and the speed-up as the median of the
  per-round ratios fp32 / INT8 with its IQR and min-max; rounds continue until the speed-up's 95 %
  interval is within +-2 % (``--max-repeats`` caps them). Load average at start and end in every row.
- AP: ``centernet_ros.evaluate.predict_and_evaluate`` (the ``centernet-eval`` loop: letterbox, forward,
  ``decode`` with the paper settings, pycocotools) on each ``--eval`` split, once with each session.
  ``--eval`` takes ``centernet-eval`` arguments (``--data ROOT --split valid --class-map YAML ...``); a
  split whose class names differ from the model's (and no ``--class-map``) is skipped with the reason.

Goal (issue 15): INT8 >= 2x faster than fp32 with AP lower by at most 1.0 (points of AP 0.5:0.95).
Re-run after the model changes: the INT8 files are remade (their metadata holds the weights' SHA-256).

Example::

    python benchmarks/bench_int8.py --json out/bench/int8.json
    python benchmarks/bench_int8.py --sizes 256x448 --no-ap        # speed only
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    add_common_args,
    environment,
    format_env,
    format_table,
    load_average,
    paired_ratios,
    run_script,
    setup_threads,
    time_interleaved,
)

DEFAULT_EVAL = ["--data ../shared/data/vehicles-openimages --split valid",
                "--data ../shared/data/traffic-cctv --split valid --class-map config/class_maps/traffic-cctv.yaml"]
GOAL_SPEEDUP, GOAL_AP_DROP = 2.0, 1.0


def parse_size(text: str) -> tuple[int, int]:
    """``"256x448"`` -> (256, 448) = (H, W), multiples of 32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x448, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"size must be positive multiples of 32, got {text!r}")
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--weights", type=Path, default=REPO_ROOT / "models" / "centernet_vehicles.safetensors")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                   help="HxW network inputs (default: 256x448, the demo's, and the model file's own size)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1], help="speed at these batch sizes (default 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds (default 3)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds at least (default 15)")
    p.add_argument("--max-repeats", type=int, default=45, help="timed rounds at most (default 45)")
    q = p.add_argument_group("INT8 model (as centernet-export --int8)")
    q.add_argument("--calib-data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "vehicles-openimages",
                   help="folder of images or a dataset root (default: ../shared/data/vehicles-openimages)")
    q.add_argument("--calib-split", default="train")
    q.add_argument("--calib-count", type=int, default=300)
    q.add_argument("--calib-method", default="minmax", choices=("minmax", "percentile", "entropy"))
    q.add_argument("--int8-dir", type=Path, default=REPO_ROOT / "out" / "int8",
                   help="where the INT8 files are written / reused (default out/int8)")
    q.add_argument("--requantize", action="store_true", help="remake the INT8 files even when up to date")
    e = p.add_argument_group("AP")
    e.add_argument("--eval", nargs="*", default=DEFAULT_EVAL, metavar="ARGS",
                   help="centernet-eval arguments of each split, one quoted string each (default: the Open Images "
                        "and traffic-cctv valid splits, the latter through config/class_maps/traffic-cctv.yaml)")
    e.add_argument("--no-ap", action="store_true", help="speed only")
    e.add_argument("--no-speed", action="store_true", help="AP only")
    e.add_argument("--limit-images", type=int, default=None, help="first N images of each split (smoke tests)")
    e.add_argument("--eval-batch-size", type=int, default=8)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.max_repeats < args.repeats or args.warmup < 0:
        p.error(f"need --warmup >= 0 and 1 <= --repeats <= --max-repeats, got {args.warmup}, {args.repeats}, "
                f"{args.max_repeats}")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes!r}")
    if args.device == "cuda":
        p.error("the INT8 path runs on the CPU (--device cpu)")
    return args


class OrtModule(nn.Module):
    """An ONNX Runtime session as the ``nn.Module`` that ``predict_and_evaluate`` expects."""

    def __init__(self, forward) -> None:
        super().__init__()
        self._forward = forward

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._forward(x)


def int8_file(args: argparse.Namespace, size: tuple[int, int], class_names: list[str]) -> tuple[Path, dict, bool]:
    """The INT8 model of ``args.weights`` at ``size``: reused if up to date, else made. (path, info, made)."""
    from centernet_ros.int8 import Int8Config, check_int8_model, default_int8_path, quantize_int8
    from centernet_ros.weights import load_model

    cfg = Int8Config(args.calib_data, args.calib_split, args.calib_count, args.calib_method)
    path = args.int8_dir / default_int8_path(args.weights, size).name
    if not args.requantize:
        try:
            info = check_int8_model(path, weights=args.weights, input_size=size, class_names=class_names)
            want = {"calib_data": str(cfg.calib_data), "calib_split": cfg.calib_split, "calib_count": cfg.calib_count,
                    "method": cfg.method, "keep_pools_fp32": cfg.keep_pools_fp32, "fuse_chains": cfg.fuse_chains}
            if all(info.get(k) == v for k, v in want.items()):
                return path, info, False
        except (OSError, ValueError):
            pass
    model, _ = load_model(args.weights)
    print(f"quantising {args.weights} at {size[0]}x{size[1]} on {cfg.calib_count} images of {cfg.calib_data} ...",
          file=sys.stderr, flush=True)
    quantize_int8(model, path, weights=args.weights, input_size=size, class_names=class_names, cfg=cfg, progress=True)
    return path, check_int8_model(path, weights=args.weights, input_size=size, class_names=class_names), True


def sessions(weights: Path, size: tuple[int, int], int8_path: Path):
    """(fp32, int8) forward callables ``Tensor[B, 3, H, W] -> heads`` as the detector builds them."""
    from centernet_ros.detector import _OrtForward
    from centernet_ros.weights import load_model

    model, _ = load_model(weights)
    cpu = torch.device("cpu")
    return _OrtForward(model, size, cpu), _OrtForward(model, size, cpu, onnx_path=int8_path)


def speed_rows(args, size, fp32, int8) -> list[dict[str, Any]]:
    rows = []
    for b in args.batch_sizes:
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((b, 3, *size), dtype=np.float32))
        load_start = load_average()
        t = time_interleaved({"fp32": lambda: fp32(x), "int8": lambda: int8(x)}, device=torch.device("cpu"),
                             warmup=args.warmup, repeats=args.repeats, max_repeats=args.max_repeats,
                             ratio=("fp32", "int8"))
        st = paired_ratios(t["fp32"], t["int8"]).as_dict()
        rows.append({"size": f"{size[0]}x{size[1]}", "batch": b, "fp32_ms": t["fp32"].median * 1e3 / b,
                     "int8_ms": t["int8"].median * 1e3 / b, "speedup": st["median"],
                     "iqr": f"{st['p25']:.2f}-{st['p75']:.2f}", "range": f"{st['min']:.2f}-{st['max']:.2f}",
                     "rounds": st["rounds"], "speedup_stats": st, "fp32": t["fp32"].as_dict(),
                     "int8": t["int8"].as_dict(), "load_start": load_start, "load_end": load_average(),
                     "load": None})
        rows[-1]["load"] = f"{rows[-1]['load_start'][0]:.2f} -> {rows[-1]['load_end'][0]:.2f}" if load_start else "-"
        print(f"  {size[0]}x{size[1]} B={b}: fp32 {rows[-1]['fp32_ms']:.1f} ms, int8 {rows[-1]['int8_ms']:.1f} ms, "
              f"x{st['median']:.2f} ({st['rounds']} rounds)", file=sys.stderr, flush=True)
    return rows


def ap_rows(args, size, class_names, fp32, int8) -> tuple[list[dict[str, Any]], list[str]]:
    from centernet_ros.evaluate import config_from_args, load_dataset, predict_and_evaluate

    rows, notes = [], []
    for spec in args.eval:
        cfg = config_from_args(["--weights", str(args.weights), *shlex.split(spec)])
        name = f"{Path(cfg.data or cfg.coco_json).name} ({cfg.split if cfg.data else 'coco'})"
        try:
            dataset = load_dataset(cfg, class_names)  # through cfg.class_map when given
        except (OSError, ValueError) as exc:
            notes.append(f"{name}: skipped, {exc}")
            continue
        if list(dataset.class_names) != list(class_names):
            notes.append(f"{name}: skipped, its {len(dataset.class_names)} classes are not the model's "
                         f"{len(class_names)} (give centernet-eval's --class-map): `{spec}`")
            continue
        n = len(dataset) if args.limit_images is None else min(args.limit_images, len(dataset))
        row: dict[str, Any] = {"dataset": name, "size": f"{size[0]}x{size[1]}", "images": n, "eval_args": spec}
        for label, fwd in (("fp32", fp32), ("int8", int8)):
            res = predict_and_evaluate(OrtModule(fwd), dataset, class_names=class_names, input_size=size,
                                       decode_cfgs={"triplet": replace(cfg.decode, mode="triplet")},
                                       device="cpu", batch_size=args.eval_batch_size, indices=range(n),
                                       progress=False, max_dets=cfg.decode.max_per_image)["triplet"]
            row[f"{label}_ap"], row[f"{label}_ap50"] = 100 * res.ap, 100 * res.ap50
            row[f"{label}_ap75"] = 100 * res.ap75
        row["ap_drop"] = row["fp32_ap"] - row["int8_ap"]
        row["ap50_drop"] = row["fp32_ap50"] - row["int8_ap50"]
        rows.append(row)
        print(f"  {name} {size[0]}x{size[1]}: AP fp32 {row['fp32_ap']:.2f} int8 {row['int8_ap']:.2f}",
              file=sys.stderr, flush=True)
    return rows, notes


def run(args: argparse.Namespace) -> dict[str, Any]:
    from centernet_ros.int8 import file_sha256
    from centernet_ros.weights import read_meta

    setup_threads(args.threads if args.threads is not None else 1)  # the node's CPU default: one inference thread
    meta = read_meta(args.weights)
    sizes = args.sizes or list(dict.fromkeys([(256, 448), tuple(meta.input_size)]))
    speed, ap, notes, files = [], [], [], {}
    for size in sizes:
        path, info, made = int8_file(args, size, list(meta.class_names))
        files[f"{size[0]}x{size[1]}"] = {"path": str(path), "made_now": made, "int8": info}
        fp32, int8 = sessions(args.weights, size, path)
        if not args.no_speed:
            speed += speed_rows(args, size, fp32, int8)
        if not args.no_ap:
            rows, why = ap_rows(args, size, list(meta.class_names), fp32, int8)
            ap += rows
            notes += [w for w in why if w not in notes]
    met_speed = bool(speed) and all(r["speedup"] >= GOAL_SPEEDUP for r in speed)
    met_ap = bool(ap) and all(r["ap_drop"] <= GOAL_AP_DROP for r in ap)
    env = environment(torch.device("cpu"), script=__file__, argv=args.argv, weights=str(args.weights),
                      weights_sha256=file_sha256(args.weights))
    config = {"sizes": [list(s) for s in sizes], "batch_sizes": args.batch_sizes, "warmup": args.warmup,
              "repeats": args.repeats, "max_repeats": args.max_repeats, "calib_data": str(args.calib_data),
              "calib_split": args.calib_split, "calib_count": args.calib_count, "calib_method": args.calib_method,
              "eval": args.eval, "limit_images": args.limit_images, "int8_files": files}
    return {"env": env, "config": config, "rows": speed, "ap": ap, "notes": notes,
            "goal": {"speedup_met": met_speed, "ap_met": met_ap, "met": met_speed and met_ap}}


def report(result: dict[str, Any]) -> str:
    env, cfg = result["env"], result["config"]
    lines = ["## INT8 vs fp32 (ONNX Runtime, CPU)", "", format_env(env),
             f"- weights: `{env['weights']}` (sha256 `{env['weights_sha256'][:12]}`)", ""]
    for size, f in cfg["int8_files"].items():
        i = f["int8"]
        lines.append(f"- INT8 {size}: `{f['path']}` ({'made now' if f['made_now'] else 'reused'}; {i['method']} "
                     f"on {i['images']} images of {i['calib_data']} ({i['calib_split']}); {i['excluded_nodes']} "
                     f"corner-pool nodes kept out of the quantiser, {i['uint8_chains']} max chains on uint8 codes)")
    if result["rows"]:
        lines += ["", "### Forward pass, ms per image (1 thread unless --threads)", "",
                  format_table(result["rows"], [("size", "input HxW"), ("batch", "batch"), ("fp32_ms", "fp32 ms"),
                                                ("int8_ms", "INT8 ms"), ("speedup", "speed-up (median of rounds)"),
                                                ("iqr", "IQR"), ("range", "min-max"), ("rounds", "rounds"),
                                                ("load", "load avg start -> end")])]
    if result["ap"]:
        lines += ["", "### AP (triplet decoding, paper settings; percent)", "",
                  format_table(result["ap"], [("dataset", "split"), ("size", "input HxW"), ("images", "images"),
                                              ("fp32_ap", "fp32 AP"), ("int8_ap", "INT8 AP"), ("ap_drop", "AP drop"),
                                              ("fp32_ap50", "fp32 AP50"), ("int8_ap50", "INT8 AP50"),
                                              ("ap50_drop", "AP50 drop")])]
    lines += [f"note: {n}" for n in result["notes"]]
    g = result["goal"]
    lines += ["", f"goal (>= {GOAL_SPEEDUP:g}x faster, AP drop <= {GOAL_AP_DROP:g}): speed "
              f"{'met' if g['speedup_met'] else 'not met'}, AP {'met' if g['ap_met'] else 'not met'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    sys.exit(main())
