"""Shared helpers for the benchmark scripts: device choice, environment record, tables, JSON (timing: timing.py,
re-exported here).

Legend: B batch, C classes, H/W map size (no tensors are built here; the scripts document their own).

Every benchmark prints Markdown tables to stdout and, with ``--json PATH``, writes
``{"env": environment(...), "config": {...}, "rows": [...]}`` so a figure in ``docs/benchmarks.md`` can be
traced to the machine, the versions and the exact command that produced it.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


__all__ = [
    "REPO_ROOT",
    "RatioStats",
    "Timing",
    "add_common_args",
    "add_decode_plan_arg",
    "busy_processes",
    "autocast_context",
    "command_line",
    "cpu_name",
    "environment",
    "format_env",
    "format_table",
    "load_average",
    "median_ci",
    "paired_ratios",
    "resolve_device",
    "resolve_precisions",
    "set_decode_plan",
    "setup_threads",
    "synchronize",
    "time_callable",
    "time_interleaved",
    "run_script",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python benchmarks/bench_x.py` from a checkout without install
    sys.path.insert(0, str(REPO_ROOT))
if str(Path(__file__).resolve().parent) not in sys.path:  # timing.py, next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from centernet_ros.detector import resolve_device  # noqa: E402,F401  (re-exported for the scripts)
from centernet_ros.train_support import cpu_bf16_supported  # noqa: E402,F401  (one probe for training and benchmarks)
from timing import (  # noqa: E402,F401  (re-exported for the scripts)
    RatioStats,
    Timing,
    load_average,
    median_ci,
    paired_ratios,
    synchronize,
    time_callable,
    time_interleaved,
)

PRECISIONS = ("fp32", "fp16", "bf16")


def add_decode_plan_arg(parser) -> None:
    """``--decode-plan``: where a host_sync decode runs (``centernet_ros.decode.HOST_SYNC_PLANS``)."""
    from centernet_ros.decode import HOST_SYNC_PLANS

    parser.add_argument("--decode-plan", default=None, choices=HOST_SYNC_PLANS,
                        help="where a host_sync decode runs on this device (default 'host' on CPU, 'copy' on CUDA: "
                             "keypoints on the GPU, one copy, the rest in numpy; 'device': the tensor path)")


def set_decode_plan(device: torch.device, plan: str | None, *, host_sync: bool = True) -> str:
    """Use ``plan`` (a ``decode.HOST_SYNC_PLANS`` entry; None: the default) for host_sync decodes on
    ``device`` in this process; returns what a decode there runs (for the report)."""
    from centernet_ros import decode as _decode

    if plan == "host" and device.type != "cpu":
        raise SystemExit(f"--decode-plan host needs --device cpu, got {device}")
    if plan is not None:
        _decode._HOST_SYNC_PLAN[device.type] = plan
    return _decode._HOST_SYNC_PLAN.get(device.type, "copy") if host_sync else "device, sync-free"


def add_common_args(parser) -> None:
    """Options every benchmark shares: ``--device``, ``--threads``, ``--json``."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda when available, else cpu (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, usually the core count)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results and environment as JSON to PATH")


def setup_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads!r}")
        torch.set_num_threads(threads)


def resolve_precisions(requested: Sequence[str] | None, device: torch.device) -> tuple[list[str], list[str]]:
    """Default precisions for ``device`` and the list of skipped ones with a reason.

    fp16 runs only on CUDA (CPU fp16 convolutions are slow emulation); bf16 runs on CUDA when the GPU
    supports it and on CPU when oneDNN has native bf16 kernels. Returns ``(run, skipped_messages)``.
    """
    if requested is None:
        if device.type == "cuda":
            requested = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        else:
            requested = ["fp32"] + (["bf16"] if cpu_bf16_supported() else [])
    run, skipped = [], []
    for p in requested:
        if p not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")
        if p == "fp16" and device.type != "cuda":
            skipped.append("fp16 skipped: fp16 autocast is only benchmarked on CUDA")
        elif p == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
            skipped.append("bf16 skipped: this CPU has no native bf16 kernels (oneDNN)")
        elif p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            skipped.append("bf16 skipped: this GPU does not support bf16")
        else:
            run.append(p)
    return run, skipped


def autocast_context(precision: str, device: torch.device):
    """``torch.autocast`` for fp16/bf16, a no-op context for fp32."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def cpu_name() -> str:
    """CPU model name from ``lscpu`` (falls back to /proc/cpuinfo, then platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(script: str | Path | None = None, argv: Sequence[str] | None = None) -> str:
    """The exact command, shell-quoted: interpreter, script (relative to the repository when inside it)
    and arguments. Defaults to ``sys.argv``; ``main(argv)`` called in-process passes its own."""
    if script is None:
        script = sys.argv[0]
    script = Path(script).resolve()
    try:
        shown = str(script.relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(script)
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, shown, *args])


def environment(device: torch.device, *, script: str | Path | None = None, argv: Sequence[str] | None = None,
                **extra: Any) -> dict[str, Any]:
    """Machine and software record stored with every result (``script``/``argv``: see :func:`command_line`)."""
    import numpy

    env: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "busy_processes": busy_processes(),
        "command": command_line(script, argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "onnxruntime": _version_of("onnxruntime"),
        "git_commit": _git_commit(),
    }
    env.update(extra)
    return env


def busy_processes(limit: int = 5, min_cpu: float = 5.0) -> list[str] | None:
    """What else runs on the machine: up to ``limit`` other processes using >= ``min_cpu`` % of a core
    (``ps``'s lifetime average), as ``"<%cpu> <command line, 100 characters>"``; None without ``ps``."""
    try:
        out = subprocess.run(["ps", "-eo", "pid=,pcpu=,args=", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) in (os.getpid(), os.getppid()):
            continue
        if float(parts[1]) < min_cpu or len(rows) >= limit:
            break
        rows.append(f"{parts[1]}% {parts[2][:100]}")
    return rows


def _version_of(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # not installed (or broken): recorded as None
        return None


def _git_commit() -> str | None:
    """Commit of the repository the benchmarks run from (``+dirty`` with uncommitted changes), if git is there."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def format_env(env: dict[str, Any]) -> str:
    """Short Markdown bullet list of the environment."""
    keys = ("device", "cpu", "gpu", "torch_threads", "torch", "cuda", "onnxruntime", "python", "git_commit",
            "load_average", "command")
    lines = []
    for k in keys:
        v = env.get(k)
        if v is None:
            continue
        if k == "load_average":
            v = ", ".join(f"{x:.2f}" for x in v) + " (1/5/15 min, end of run)"
            start = env.get("load_average_at_start")
            if start:
                v += "; at start: " + ", ".join(f"{x:.2f}" for x in start)
        lines.append(f"- {k}: `{v}`")
    for key, when in (("busy_processes_at_start", "start"), ("busy_processes", "end")):
        if env.get(key):
            lines.append(f"- beside it at {when} (%CPU over each process's life): " +
                         "; ".join(f"`{p[:70]}`" for p in env[key]))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # nan
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01 or v == 0:
            return f"{v:.2f}"
        return f"{v:.2e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table; ``columns`` is a list of ``(key, header)``. Missing keys print ``-``."""
    header = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([header, sep, *body])


def _json_safe(v: Any) -> Any:
    """NaN / inf -> None (strict JSON), tuples -> lists, recursively."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as strict JSON (NaN -> null) to ``path``; no-op for ``None``."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=2, default=str, allow_nan=False) + "\n")
    print(f"\nwrote {path}")


def run_script(argv: Sequence[str] | None, *, parse_args, run, report, ok: Callable[[dict], bool] | None = None) -> int:
    """The scripts' shared ``main``: parse, run, print the Markdown report, write the JSON; exit 1 when ``ok`` fails."""
    args = parse_args(argv)
    args.argv = argv
    busy, load = busy_processes(), load_average()  # what ran beside the benchmark when it started
    result = run(args)
    if isinstance(result.get("env"), dict):
        result["env"].update(busy_processes_at_start=busy, load_average_at_start=load)
    print(report(result))
    write_json(args.json, result)
    return 0 if ok is None or ok(result) else 1
