#!/usr/bin/env python3
"""Ctrl-C at random moments to the launched demo: does everything end with exit 0 and no traceback?

    .venv/bin/python benchmarks/interrupt_launch.py --runs 20
    .venv/bin/python benchmarks/interrupt_launch.py --runs 5 --target launch -- device:=cpu max_frames:=10

First one calibration run of ``ros2 launch centernet_ros demo.launch.py <launch args>`` to its end
(default args: ``device:=cpu max_frames:=20``) measures its phases: start-up (imports, model loading),
streaming (from the detector's "active on" line), shutdown (from the video publisher's "done: published"
line to the end). Then run i of ``--runs`` aims at phase i mod 3 (start-up, streaming, shutdown, so all
three are hit on a machine whose speed varies) and sends SIGINT at a moment drawn uniformly within that
phase's calibrated length (``--seed``), counted from the run's own start / "active on" / "done" line:
with ``--target group`` (default) to the whole process group, as a terminal's Ctrl-C does (launch and
both nodes get it, then launch sends its own SIGINT: two per node), with ``--target launch`` to the
launch process only.

Prints one row per run (the phase, when, exit status, tracebacks in the nodes' output and in that of
``ros2 launch`` itself, nodes that died, processes of the run still there a second after launch ended
(found by the run's ROS_LOG_DIR in /proc/<pid>/environ, then killed), seconds from the signal to the
end) and the totals; ``--json PATH`` writes them. Needs the ``ros2`` command
(``make setup`` with ../shared/ros2-tools). Each run uses a private ROS_DOMAIN_ID, localhost discovery.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_LAUNCH_ARGS = ["device:=cpu", "max_frames:=20"]
ACTIVE = re.compile(r"\]: active on ")
DONE = re.compile(r"\]: done: published \d+ frames")


def find_ros2() -> str:
    beside = Path(sys.executable).with_name("ros2")
    found = str(beside) if beside.is_file() else shutil.which("ros2")
    if found is None:
        sys.exit("interrupt_launch: no `ros2` command (run `make setup` with ../shared/ros2-tools beside the repo)")
    return found


class Run:
    """One ``ros2 launch`` in its own session; output lines with their time since the start."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.t0 = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, errors="replace", env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def first(self, rx: re.Pattern) -> float | None:
        return next((t for t, line in list(self.lines) if rx.search(line)), None)

    def wait_line(self, rx: re.Pattern, timeout: float) -> float | None:
        """Seconds since the start when a line matching ``rx`` came; None if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first(rx)
            if t is not None or not self._reader.is_alive():
                return t
            time.sleep(0.02)
        return None

    def finish(self, timeout: float) -> tuple[int | None, float]:
        """(exit status or None when it had to be killed, seconds since the start)."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            code = None
        self._reader.join(timeout=10.0)
        return code, time.monotonic() - self.t0

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def left_running(marker: str) -> list[int]:
    """Processes still running with ``marker`` in their environment (Linux /proc): nodes a run left behind."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:  # gone, or not ours to read
            pass
    return pids


def phase_at(run: Run, t: float) -> str:
    active, done = run.first(ACTIVE), run.first(DONE)
    if done is not None and t >= done:
        return "shutdown"
    if active is not None and t >= active:
        return "streaming"
    return "start-up"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="interrupted runs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random delays' seed (default 0)")
    p.add_argument("--target", choices=("group", "launch"), default="group",
                   help="SIGINT to the process group (a terminal's Ctrl-C, default) or to launch only")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take after the signal")
    p.add_argument("--json", type=Path, default=None, help="write the rows and totals here")
    p.add_argument("--show", action="store_true", help="print the output of runs with a traceback or exit != 0")
    p.add_argument("launch_args", nargs="*", default=None,
                   help=f"demo.launch.py arguments (default: {' '.join(DEFAULT_LAUNCH_ARGS)})")
    args = p.parse_args(argv)
    launch_args = args.launch_args or DEFAULT_LAUNCH_ARGS
    cmd = [find_ros2(), "launch", "centernet_ros", "demo.launch.py", *launch_args]
    log_dir = Path(tempfile.mkdtemp(prefix="interrupt_launch-"))
    base_env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(log_dir),
                "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONUNBUFFERED": "1"}
    base_env.pop("ROS_LOCALHOST_ONLY", None)

    def env_for(i: int) -> dict[str, str]:  # a log directory per run also marks its processes
        domain = 150 + (os.getpid() + i) % 80  # 150..229 (Fast DDS: at most 232)
        return {**base_env, "ROS_DOMAIN_ID": str(domain), "ROS_LOG_DIR": str(log_dir / f"run{i}")}

    print(f"command: {' '.join(cmd)}  (SIGINT to the {args.target}, seed {args.seed})")
    calib = Run(cmd, env_for(0))
    code, length = calib.finish(args.timeout + 600)
    active, done = calib.first(ACTIVE), calib.first(DONE)
    if code != 0 or active is None or done is None:
        print(calib.text)
        sys.exit(f"interrupt_launch: the calibration run did not play to its end (exit {code})")
    print(f"calibration run: {length:.1f} s (active at {active:.1f} s, video done at {done:.1f} s), exit {code}, "
          f"{calib.text.count('Traceback')} tracebacks\n")
    if args.runs < 1:
        return 0

    rng = random.Random(args.seed)
    rows = []
    phases = (("start-up", None, active), ("streaming", ACTIVE, done - active), ("shutdown", DONE, length - done))
    print("| run | aimed at | SIGINT at s | phase hit | exit | tracebacks: nodes | tracebacks: ros2 launch | nodes died "
          "| left running | s to end |")
    print("| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i in range(1, args.runs + 1):
        aim, marker, span = phases[(i - 1) % 3]
        offset = rng.uniform(0.0, span)
        run = Run(cmd, env_for(i))
        start = 0.0 if marker is None else run.wait_line(marker, args.timeout + 600)
        if start is not None:
            time.sleep(max(0.0, start + offset - (time.monotonic() - run.t0)))
        sent_at = time.monotonic() - run.t0
        if run.popen.poll() is None:
            phase = phase_at(run, sent_at)
            if args.target == "group":
                os.killpg(run.popen.pid, signal.SIGINT)
            else:
                run.popen.send_signal(signal.SIGINT)
        else:
            phase = "after the end"
        code, end = run.finish(args.timeout)
        time.sleep(1.0)
        left = left_running(str(log_dir / f"run{i}"))
        for pid in left:  # report, then end them (started by this script)
            os.kill(pid, signal.SIGKILL)
        # launch prefixes each line of a node's output with "[<executable>-<n>] "
        node_tb = sum(1 for _, line in run.lines if re.match(r"\[centernet-[\w-]+\] .*Traceback", line))
        row = {"run": i, "aimed_at": aim, "signal_s": round(sent_at, 2), "phase": phase, "exit": code,
               "node_tracebacks": node_tb, "launch_tracebacks": run.text.count("Traceback") - node_tb,
               "died": run.text.count("process has died"), "left_running": len(left),
               "s_to_end": round(end - sent_at, 2)}
        rows.append(row)
        print(f"| {i} | {aim} | {row['signal_s']:.1f} | {phase} | {code if code is not None else 'killed'} | "
              f"{node_tb} | {row['launch_tracebacks']} | {row['died']} | {len(left)} | {row['s_to_end']:.1f} |", flush=True)
        if args.show and (node_tb or row["launch_tracebacks"] or row["died"] or left or code != 0):
            print(run.text)
    total = {"runs": len(rows), "node_tracebacks": sum(r["node_tracebacks"] for r in rows),
             "launch_tracebacks": sum(r["launch_tracebacks"] for r in rows),
             "nonzero_exit": sum(1 for r in rows if r["exit"] != 0),
             "nodes_died": sum(r["died"] for r in rows),
             "left_running": sum(r["left_running"] for r in rows),
             "phases": {ph: sum(1 for r in rows if r["phase"] == ph)
                        for ph in ("start-up", "streaming", "shutdown", "after the end")}}
    print(f"\n{total['runs']} runs: {total['node_tracebacks']} tracebacks from the nodes, "
          f"{total['launch_tracebacks']} from `ros2 launch` itself, {total['nonzero_exit']} exits != 0, "
          f"{total['nodes_died']} nodes died, {total['left_running']} processes left running; "
          f"phases hit: {total['phases']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": cmd, "target": args.target, "seed": args.seed,
                                         "calibration_s": round(length, 2), "rows": rows, "total": total}, indent=2))
    shutil.rmtree(log_dir, ignore_errors=True)
    bad = (total["node_tracebacks"] + total["launch_tracebacks"] + total["nonzero_exit"] + total["nodes_died"]
           + total["left_running"])
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
