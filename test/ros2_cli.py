"""Driving the real ROS 2 command line (``ros2 launch``, ``ros2 run``, ``ros2 param``, ``ros2 lifecycle``)
from pytest: helpers and the fixtures ``cli`` and ``graph`` (test modules import them by name).

The ``ros2`` command comes from ``make setup`` (the wheels of ../shared/ros2-tools, installed in the
venv beside this interpreter) or from a ROS 2 install on PATH. Where there is none, the tests that
need it skip with that reason; under ``CI=true`` they fail instead (CI must run them).

Isolation: every test gets its own ``ROS_DOMAIN_ID`` (101..200, apart from conftest's 1..100 of the
in-process graph tests, so that a process left over by one test cannot answer in the next) and its
own ``ROS_LOG_DIR``; discovery stays on this machine (conftest: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
CLI verbs run with ``--no-daemon``, or with a daemon of the test's domain that it stops at its end
(``Cli.start_daemon``): no ros2 daemon is left behind. Processes start in their own session
(process group), like a terminal's foreground job, and are killed at the end of the test if still there.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO / "models" / "slow_traffic_small.mp4"
TIMEOUT = 120.0  # start-up on two busy cores: imports, model load
_domains = itertools.count()


def find_ros2() -> str | None:
    """The ``ros2`` command: the one beside this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("ros2")
    return str(beside) if beside.is_file() else shutil.which("ros2")


def require_ros2() -> str:
    """The ``ros2`` command; skips the test without one (fails it under CI=true)."""
    ros2 = find_ros2()
    if ros2 is None:
        reason = ("no `ros2` command: `make setup` installs it from ../shared/ros2-tools when that folder "
                  "exists (or source a ROS 2 install)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: the ROS 2 CLI tests must run, but there is {reason}")
        pytest.skip(reason)
    return ros2


class Proc:
    """A process started in its own session; its output (stdout and stderr) is collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd = cmd
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, errors="replace", env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """The first output line matching ``pattern`` (regex); fails the test on a timeout or an early exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if not self._reader.is_alive():
                    pytest.fail(f"{self.cmd[:4]} ended (exit {self.popen.poll()}) before printing /{pattern}/:\n"
                                + self.output)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no /{pattern}/ from {self.cmd[:4]} within {timeout:.0f} s:\n" + "\n".join(self.lines))
                self._cond.wait(min(remaining, 0.5))

    def signal_group(self, sig: int = signal.SIGINT) -> None:
        """``sig`` to the whole process group, as a terminal's Ctrl-C does (launch and its nodes get it)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit status (fails the test when the process is still running after ``timeout`` s)."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.cmd[:4]} still running after {timeout:.0f} s:\n" + self.output)
        self._reader.join(timeout=10.0)
        return code

    def kill(self) -> None:
        """SIGKILL to the process group (what the test started), if anything of it is left."""
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            pass


def children(pid: int) -> list[int]:
    """Process ids of the direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux /proc/<pid>/status ``SigCgt``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, flags=re.M).group(1), 16)
    return bool(mask >> (sig - 1) & 1)


def wait_until_handled(parent: int, timeout: float = TIMEOUT) -> int:
    """The pid of the (only) child of ``parent`` once it handles SIGTERM: the executables install their
    SIGINT / SIGTERM handling first thing (centernet_ros/ros/stop.py), before their heavy imports; only the
    interpreter's own start-up (~0.1 s on an idle core) comes before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(parent)
        if len(kids) == 1 and catches(kids[0], signal.SIGTERM):
            return kids[0]
        time.sleep(0.01)
    pytest.fail(f"no child of {parent} handling SIGTERM within {timeout:.0f} s")


# launch 3.7.1 leaves Python's SIGINT handler in place (AsyncSafeSignalManager only adds a wake-up fd), so a
# Ctrl-C that lands while it handles an event raises KeyboardInterrupt inside LaunchService._process_one_event;
# that task is then dropped and asyncio's "Task was destroyed but it is pending!" sets launch's exit status to 1
# (ros2/launch#495 is the same family). Launch's own race, not the nodes': accepted only with this signature.
LAUNCH_SIGINT_RACE = ("Task was destroyed but it is pending!", "coro=<LaunchService._process_one_event()")
# asyncio's ThreadedChildWatcher (Python 3.11) could not waitpid() a child that something else in launch's process
# had already reaped; it then reports exit status 255 for it, so launch prints "process has died ... exit code 255"
# whatever the child's real status was. Seen once in CI (2026-12-01) on a Ctrl-C during the node's imports, not in
# the 8 reruns after it. The run says nothing about the node, so a test that meets it runs its scenario again
# (ASYNCIO_UNKNOWN_CHILD in its output).
ASYNCIO_UNKNOWN_CHILD = "will report returncode 255"


def assert_clean(proc: Proc, code: int, *, interrupted_launch: bool = False) -> None:
    """Exit status 0 and no traceback, no node that died (``process has died``) in the output.

    ``interrupted_launch``: the process is ``ros2 launch`` that got a SIGINT; exit status 1 is accepted when the
    output shows launch's own event-task race (``LAUNCH_SIGINT_RACE``) and nothing else went wrong."""
    out = proc.output
    if interrupted_launch and code == 1 and all(part in out for part in LAUNCH_SIGINT_RACE):
        code = 0
    assert code == 0, f"exit status {code}:\n{out}"
    assert "Traceback" not in out, out
    assert "process has died" not in out, out


class Cli:
    """The ``ros2`` command with this test's environment (domain, log directory)."""

    def __init__(self, ros2: str, env: dict[str, str], procs: list[Proc]) -> None:
        self.ros2 = ros2
        self.env = env
        self.domain_id = int(env["ROS_DOMAIN_ID"])
        self._procs = procs
        self.daemon_started = False

    def start_daemon(self) -> None:
        """``ros2 daemon start`` for this test's domain (stopped at its end): a verb then answers in ~2 s
        instead of ~5 s with ``--no-daemon`` (discovering the graph itself, node creation and all)."""
        res = self("daemon", "start")
        assert res.returncode == 0, res.stdout
        self.daemon_started = True

    def start(self, *args: str) -> Proc:
        """``ros2 <args>`` as a background process (e.g. ``launch``, ``run``)."""
        proc = Proc([self.ros2, *args], self.env)
        self._procs.append(proc)
        return proc

    def __call__(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``ros2 <args>`` to its end: (returncode, stdout + stderr as ``.stdout``)."""
        return subprocess.run([self.ros2, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, env=self.env, timeout=timeout)


@pytest.fixture
def cli(tmp_path) -> Cli:
    """The real ``ros2`` command in a domain of its own (see the module docstring)."""
    ros2 = require_ros2()
    domain = 101 + (os.getpid() + next(_domains)) % 100
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(domain),
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "RCUTILS_COLORIZED_OUTPUT": "0",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    procs: list[Proc] = []
    cli = Cli(ros2, env, procs)
    yield cli
    for proc in procs:
        if proc.popen.poll() is None:
            proc.kill()
    if cli.daemon_started:
        cli("daemon", "stop")


@pytest.fixture
def graph(cli):
    """An rclpy node of the test in the ``cli`` fixture's domain: (node, spin_until(predicate, timeout))."""
    try:
        import rclpy
    except ImportError as exc:
        pytest.skip(f"rclpy is not importable ({exc})")
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    context = Context()
    rclpy.init(args=[], context=context, domain_id=cli.domain_id)
    node = Node("cli_tester", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return bool(predicate())
            executor.spin_once(timeout_sec=0.05)
        return True

    try:
        yield node, spin_until
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def clip_frame(index: int = 0):
    """``uint8[H, W, 3]`` BGR frame ``index`` of the bundled clip (640x360)."""
    import cv2

    cap = cv2.VideoCapture(str(VIDEO))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    assert ok, f"cannot read frame {index} of {VIDEO}"
    return frame
