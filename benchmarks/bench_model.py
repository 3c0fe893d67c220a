#!/usr/bin/env python3
"""Model speed: our triplet CenterNet vs the plain "Objects as Points" ResNet-18 CenterNet (ctdet).

Legend: B batch, C classes, S input side (square input S x S), H/W output map size (S / 4).

For every precision x input size x batch size, both models run on the same random input
``Tensor[B, 3, S, S]`` (random weights: speed does not depend on the values) in rounds, each round timing
every model once, the order alternating from round to round (A B, B A, A B, ...) so that a changing load
on a shared machine affects both alike and neither always runs first. Three timings, each the median of
at least ``--repeats`` synchronised rounds after ``--warmup`` rounds:

- forward: ``model(x)`` under ``torch.inference_mode()`` (+ autocast for fp16/bf16);
- decode: the model's batched decoder on the stored outputs (ours: ``centernet_ros.decode.decode``;
  baseline: ``baseline_ctdet.ctdet_decode``), outputs cast to fp32 first;
- total: forward + decode in one call (what a detector pays per batch).

Reported per image (ms) and as images/s (= B / total). GMAC per image is counted once per model and input
size with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; the max-pooling and
element-wise ops are not counted).

Ours / baseline: the median of the per-round forward-time ratios (each round's two calls ran back to back,
so a load change between rounds cancels), with its interquartile range and min-max. Rounds continue past
``--repeats`` until the 95 % confidence interval of that median is within +-2 % of it (``--max-repeats``
caps them): two runs on a noisy machine then agree within a few percent (docs/benchmarks.md). Every row
records the load average at its start and end. Issue 3 target: our forward no slower than the baseline.

Optional fast paths: ``--channels-last`` (NHWC memory format), ``--compile`` (``torch.compile``;
``--compile-mode reduce-overhead`` uses CUDA graphs on CUDA). When compilation fails (no compiler, an
unsupported op) the script prints why and falls back to eager, recording ``compiled: false`` in the row.

Examples::

    python benchmarks/bench_model.py --device cpu --json out/bench_model_cpu.json   # 384, batch 1, fp32, C=5
    python benchmarks/bench_model.py --device cpu --sizes 384 512 --batch-sizes 1 4 --precisions fp32 bf16
    python benchmarks/bench_model.py --device cuda --channels-last --json out/bench_model_cuda.json
    python benchmarks/bench_model.py --device cuda --channels-last --compile --compile-mode reduce-overhead
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_args,
    autocast_context,
    environment,
    format_env,
    format_table,
    load_average,
    paired_ratios,
    resolve_device,
    resolve_precisions,
    run_script,
    setup_threads,
    time_callable,
    time_interleaved,
)
from baseline_ctdet import ctdet_decode, ctdet_resnet18  # noqa: E402

from centernet_ros.decode import DecodeConfig, decode  # noqa: E402
from centernet_ros.model import centernet_resnet18  # noqa: E402

MODELS = ("ours", "baseline", "ours-onnxruntime")
MODEL_LABEL = {"ours": "ours: triplet CenterNet R18", "baseline": "baseline: ctdet R18 (Objects as Points)",
               "ours-onnxruntime": "ours exported to ONNX and run by ONNX Runtime (CPU, fp32; the node's CPU default)"}

COLUMNS = [
    ("model", "model"),
    ("size", "input"),
    ("batch", "batch"),
    ("precision", "precision"),
    ("forward_ms_per_img", "forward ms/img"),
    ("decode_ms_per_img", "decode ms/img"),
    ("total_ms_per_img", "total ms/img"),
    ("img_per_s", "img/s"),
    ("forward_ms_per_batch", "forward ms/batch"),
    ("gmac_per_img", "GMAC/img"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--models", nargs="+", default=["ours", "baseline"], choices=MODELS,
                   help="default: ours baseline; ours-onnxruntime needs onnxruntime and the CPU (fp32 rows only)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="default: 1 4 8 16 on CUDA, 1 on CPU")
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="square input sides, multiples of 32 (default: 384 512 on CUDA, 384 on CPU)")
    p.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "fp16", "bf16"),
                   help="default: fp32 fp16 (+bf16 if supported) on CUDA; fp32 on CPU")
    p.add_argument("--num-classes", type=int, default=5, help="heatmap channels C of both models (default 5, the "
                   "bundled vehicle model)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default: 10 CUDA, 3 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds at least, medians reported (default: 30 "
                   "CUDA, 15 CPU)")
    p.add_argument("--max-repeats", type=int, default=None, help="timed rounds at most: more run while the ours / "
                   "baseline ratio is uncertain by more than 2 %% (default: 3x --repeats; = --repeats: fixed)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (falls back to eager on failure)")
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode; reduce-overhead = CUDA graphs on CUDA")
    p.add_argument("--no-flops", action="store_true", help="skip the GMAC count")
    args = p.parse_args(argv)
    for s in args.sizes or ():
        if s < 32 or s % 32:
            p.error(f"--sizes must be positive multiples of 32, got {s!r}")
    if args.batch_sizes is not None and any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes!r}")
    if args.num_classes < 1:
        p.error(f"--num-classes must be >= 1, got {args.num_classes!r}")
    if "ours-onnxruntime" in args.models and args.device == "cuda":
        p.error("--models ours-onnxruntime runs on the CPU only (use --device cpu)")
    return args


class OrtModel(nn.Module):
    """``ours`` run by ONNX Runtime as the detector does (``detector._OrtForward``): one session per input
    size, exported in memory on first use (fixed size, dynamic batch)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model  # the torch weights (parameter count, GMAC)
        self._sessions: dict[tuple[int, int], Any] = {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from centernet_ros.detector import _OrtForward

        size = (int(x.shape[2]), int(x.shape[3]))
        if size not in self._sessions:
            self._sessions[size] = _OrtForward(copy.deepcopy(self.model), size, torch.device("cpu"))
        return self._sessions[size](x)


def build_model(name: str, num_classes: int) -> nn.Module:
    if name == "ours":
        return centernet_resnet18(num_classes=num_classes)
    if name == "ours-onnxruntime":
        return OrtModel(centernet_resnet18(num_classes=num_classes))
    return ctdet_resnet18(num_classes=num_classes)


def make_decoder(name: str) -> Callable[[dict[str, torch.Tensor]], Any]:
    if name in ("ours", "ours-onnxruntime"):
        cfg = DecodeConfig()

        def _ours(out: dict[str, torch.Tensor]):
            return decode({k: v.float() for k, v in out.items()}, cfg)

        return _ours
    return lambda out: ctdet_decode(out)


def count_gmac(model: nn.Module, size: int, device: torch.device) -> float | None:
    """Multiply-accumulates (1e9) of one forward of Tensor[1, 3, size, size]; None if counting fails."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        x = torch.randn(1, 3, size, size, device=device)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(x)
        return counter.get_total_flops() / 2e9
    except Exception as exc:  # flop counting is a nicety, never a reason to fail the benchmark
        print(f"warning: GMAC count failed: {exc}", file=sys.stderr)
        return None


def maybe_compile(model: nn.Module, args: argparse.Namespace, example: torch.Tensor, precision: str,
                  device: torch.device) -> tuple[nn.Module, bool, str | None]:
    """``torch.compile`` with a test call; on failure return the eager model and the reason."""
    if not args.compile:
        return model, False, None
    try:
        compiled = torch.compile(model, mode=args.compile_mode)
        with torch.inference_mode(), autocast_context(precision, device):
            compiled(example)
        return compiled, True, None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"warning: torch.compile failed, using eager ({reason})", file=sys.stderr)
        return model, False, reason


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    # one intra-op thread on a CPU unless told otherwise: with a thread per core, any other process on the
    # machine stalls every op at its thread barrier (measured: 3.6 s instead of 0.24 s per forward, ratios
    # 2.33 vs 0.95 in two runs at load 3-4 on 2 cores); one thread is what the node runs (cpu_threads -1)
    setup_threads(args.threads if args.threads is not None or cuda else 1)
    if cuda and "ours-onnxruntime" in args.models:
        raise SystemExit("bench_model.py: --models ours-onnxruntime runs on the CPU only (use --device cpu)")
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch_sizes = args.batch_sizes or ([1, 4, 8, 16] if cuda else [1])
    args.sizes = args.sizes or ([384, 512] if cuda else [384])
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    repeats = args.repeats if args.repeats is not None else (30 if cuda else 15)
    max_repeats = max(repeats, args.max_repeats if args.max_repeats is not None else 3 * repeats)
    precisions, skipped = resolve_precisions(args.precisions or (None if cuda else ["fp32"]), device)
    for msg in skipped:
        print(f"note: {msg}", file=sys.stderr)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    models = {name: build_model(name, args.num_classes).eval().to(device, memory_format=memory_format)
              for name in args.models}
    decoders = {name: make_decoder(name) for name in args.models}
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}
    gmac: dict[tuple[str, int], float | None] = {}
    if not args.no_flops:
        for name, m in models.items():
            for s in args.sizes:
                gmac[(name, s)] = count_gmac(m.model if isinstance(m, OrtModel) else m, s, device)

    rows: list[dict[str, Any]] = []
    for precision in precisions:
        # compile once per model and precision (shape changes recompile on demand inside torch.compile)
        runners: dict[str, tuple[nn.Module, bool, str | None]] = {}
        for name, m in models.items():
            example = torch.randn(1, 3, args.sizes[0], args.sizes[0], device=device).to(memory_format=memory_format)
            runners[name] = (m, False, None) if isinstance(m, OrtModel) else maybe_compile(m, args, example, precision, device)
        for size in args.sizes:
            for b in batch_sizes:
                x = torch.randn(b, 3, size, size, device=device).to(memory_format=memory_format)  # (B, 3, S, S)
                fwd_fns, tot_fns = {}, {}
                names = [n for n in args.models if n != "ours-onnxruntime" or precision == "fp32"]
                for name in names:
                    model, dec = runners[name][0], decoders[name]

                    def fwd(model=model):
                        with torch.inference_mode(), autocast_context(precision, device):
                            return model(x)

                    def total(model=model, dec=dec):
                        with torch.inference_mode():
                            with autocast_context(precision, device):
                                out = model(x)
                            return dec(out)

                    fwd_fns[name], tot_fns[name] = fwd, total
                # the models alternate call by call on the same input, the order flipping every round
                pair = ("ours", "baseline") if {"ours", "baseline"} <= set(names) else None
                load_start = load_average()
                t_fwd = time_interleaved(fwd_fns, device=device, warmup=warmup, repeats=repeats,
                                         max_repeats=max_repeats, ratio=pair)
                t_tot = time_interleaved(tot_fns, device=device, warmup=warmup, repeats=repeats)
                ratios = {name: paired_ratios(t_fwd[name], t_fwd["baseline"]).as_dict()
                          for name in names if "baseline" in names and name != "baseline"}
                dec_times = {}
                for name in names:
                    outputs = fwd_fns[name]()
                    with torch.inference_mode():
                        t_dec = time_callable(lambda: decoders[name](outputs), device=device, warmup=warmup,
                                              repeats=repeats)
                    dec_times[name] = t_dec
                load_end = load_average()
                for name in names:
                    _, compiled, compile_error = runners[name]
                    tf, tt, t_dec = t_fwd[name], t_tot[name], dec_times[name]
                    row = {
                        "model": name,
                        "size": size,
                        "batch": b,
                        "precision": precision,
                        "channels_last": args.channels_last,
                        "compiled": compiled,
                        "compile_error": compile_error,
                        "forward_ms_per_batch": tf.median * 1e3,
                        "forward_ms_per_img": tf.median * 1e3 / b,
                        "decode_ms_per_img": t_dec.median * 1e3 / b,
                        "total_ms_per_img": tt.median * 1e3 / b,
                        "img_per_s": b / tt.median,
                        "gmac_per_img": gmac.get((name, size)),
                        "params_m": params[name],
                        "forward": tf.as_dict(),
                        "decode": t_dec.as_dict(),
                        "total": tt.as_dict(),
                        "forward_ratio_vs_baseline": ratios.get(name),  # per-round ratios: median, IQR, min-max
                        "load_start": load_start,  # 1 / 5 / 15-minute load average before the timings
                        "load_end": load_end,  # ... and after them
                    }
                    rows.append(row)
                    print(f"  {name:8s} {precision} S={size} B={b}: forward {row['forward_ms_per_img']:.1f} "
                          f"decode {row['decode_ms_per_img']:.2f} total {row['total_ms_per_img']:.1f} ms/img",
                          file=sys.stderr, flush=True)

    env = environment(device, script=__file__, argv=args.argv, cudnn_benchmark=torch.backends.cudnn.benchmark if cuda else None)
    config = {
        "models": args.models, "batch_sizes": batch_sizes, "sizes": args.sizes, "precisions": precisions,
        "skipped_precisions": skipped, "num_classes": args.num_classes, "warmup": warmup, "repeats": repeats,
        "max_repeats": max_repeats,
        "channels_last": args.channels_last, "compile": args.compile, "compile_mode": args.compile_mode,
        "params_m": params, "decode_config": repr(DecodeConfig()),
    }
    return {"env": env, "config": config, "rows": rows, "issue3": issue3_summary(rows)}


def issue3_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / baseline forward time for every (precision, size, batch) where both ran: the median of the
    per-round ratios with its IQR and min-max; "met" when that median is <= 1."""
    by_key = {(r["precision"], r["size"], r["batch"], r["model"]): r for r in rows}
    out = []
    for (prec, size, b, name), r in by_key.items():
        if name != "ours" or (prec, size, b, "baseline") not in by_key:
            continue
        base, st = by_key[(prec, size, b, "baseline")], r["forward_ratio_vs_baseline"]
        out.append({"precision": prec, "size": size, "batch": b, "ours_ms": r["forward_ms_per_img"],
                    "baseline_ms": base["forward_ms_per_img"], "ratio": st["median"],
                    "iqr": f"{st['p25']:.3f}-{st['p75']:.3f}", "range": f"{st['min']:.3f}-{st['max']:.3f}",
                    "rounds": st["rounds"], "load": _load_span(r), "met": "yes" if st["median"] <= 1.0 else "no"})
    return out


def _load_span(row: dict[str, Any]) -> str:
    a, b = row.get("load_start"), row.get("load_end")
    return "-" if a is None or b is None else f"{a[0]:.2f} -> {b[0]:.2f}"


def report(result: dict[str, Any]) -> str:
    env, cfg = result["env"], result["config"]
    lines = ["## Model speed", "", format_env(env), "",
             f"warm-up {cfg['warmup']} rounds, medians of {cfg['repeats']}-{cfg['max_repeats']} rounds "
             f"(order alternating); channels_last={cfg['channels_last']}, "
             f"compile={cfg['compile']} ({cfg['compile_mode']}); C={cfg['num_classes']}; "
             f"params (M): " + ", ".join(f"{k} {v:.2f}" for k, v in cfg["params_m"].items()), ""]
    for msg in cfg["skipped_precisions"]:
        lines.append(f"note: {msg}")
    lines += [format_table(result["rows"], COLUMNS), ""]
    failed = {(r["model"], r["precision"]): r["compile_error"] for r in result["rows"] if r.get("compile_error")}
    for (model, prec), reason in failed.items():
        lines.append(f"note: torch.compile failed for {model} ({prec}), eager used: {reason}")
    if result["issue3"]:
        lines += ["### Issue 3: ours / baseline forward time (target <= 1.0)", "",
                  format_table(result["issue3"], [("precision", "precision"), ("size", "input"), ("batch", "batch"),
                                                  ("ours_ms", "ours ms/img"), ("baseline_ms", "baseline ms/img"),
                                                  ("ratio", "ratio (median of rounds)"), ("iqr", "IQR"),
                                                  ("range", "min-max"), ("rounds", "rounds"),
                                                  ("load", "load avg start -> end"), ("met", "target met")]), ""]
    lines += ["models: " + "; ".join(f"{k} = {MODEL_LABEL[k]}" for k in cfg["models"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    sys.exit(main())
