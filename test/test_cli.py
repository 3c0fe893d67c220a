"""The package through the real ROS 2 command line (see ros2_cli.py: skipped without it, failed under
CI=true): ``ros2 pkg`` finds it as colcon would install it, ``ros2 run`` starts each executable,
``ros2 param set`` takes good values and refuses bad ones with the reason, ``ros2 lifecycle`` walks the
node through its states and ``shutdown`` ends its process; SIGINT / SIGTERM end the nodes with exit 0."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import REPO, TIMEOUT, assert_clean, children, cli  # noqa: E402,F401  (cli: fixture)

EXECUTABLES = ("centernet-demo", "centernet-detector", "centernet-eval", "centernet-export", "centernet-train",
               "centernet-video-publisher")
NODE = "/centernet_detector"
FAST = ("-p", "device:=cpu", "-p", "backend:=torch", "-p", "cpu_threads:=1")


def test_pkg_finds_the_executables_and_share_files(cli):
    from importlib import metadata

    scripts = sorted(ep.name for ep in metadata.distribution("centernet_ros").entry_points
                     if ep.group == "console_scripts")
    assert set(EXECUTABLES) <= set(scripts)
    res = cli("pkg", "executables", "centernet_ros")
    assert res.returncode == 0, res.stdout
    assert res.stdout.split() == [w for name in scripts for w in ("centernet_ros", name)], res.stdout
    share = cli("pkg", "prefix", "--share", "centernet_ros").stdout.strip()
    for rel in ("launch/detect.launch.py", "launch/demo.launch.py", "config/detect.yaml", "config/demo.yaml",
                "models/centernet_vehicles.safetensors", "package.xml"):
        path = Path(share, rel)
        assert path.is_file() and not path.parent.is_symlink(), path  # files in directories, not a linked dir
        assert path.read_bytes() == (REPO / rel).read_bytes()


def test_ros2_run_starts_each_tool(cli):
    tools = ("centernet-demo", "centernet-eval", "centernet-export", "centernet-train")
    procs = {exe: cli.start("run", "centernet_ros", exe, "--help") for exe in tools}  # side by side: quicker
    for exe, proc in procs.items():
        assert_clean(proc, proc.wait(60.0))
        assert re.search(rf"usage: {exe}", proc.output), proc.output
        assert str(REPO) not in proc.output and "/work/shared" not in proc.output  # no development machine's path


def test_ros2_run_video_publisher_plays_its_frames_and_ends(cli):
    proc = cli.start("run", "centernet_ros", "centernet-video-publisher", "--ros-args", "-p", "max_frames:=3",
                     "-p", "wait_for_subscribers:=0", "-p", "rate:=-1.0")
    assert_clean(proc, proc.wait(60.0))
    out = proc.output
    assert re.search(r"publishing '.*slow_traffic_small\.mp4' .* on /camera/image_raw", out), out  # relative default
    assert "done: published 3 frames" in out, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ros2_run_video_publisher_stops_on_a_signal(cli, sig):
    proc = cli.start("run", "centernet_ros", "centernet-video-publisher", "--ros-args", "-p", "loop:=true",
                     "-p", "wait_for_subscribers:=0", "-p", "rate:=30.0")
    proc.wait_for(r"\[video_publisher\]: publishing")
    time.sleep(0.5)  # streaming
    (node_pid,) = children(proc.popen.pid)
    os.kill(node_pid, sig)  # the node itself: `ros2 run` does not pass SIGTERM on
    assert_clean(proc, proc.wait(30.0))
    assert re.search(rf"{sig.name}: stopping after \d+ frames", proc.output), proc.output


def test_ros2_run_detector_param_set_and_lifecycle_to_shutdown(cli):
    proc = cli.start("run", "centernet_ros", "centernet-detector", "--ros-args", "-p", "autostart:=false", *FAST)
    cli.start_daemon()  # meanwhile
    res = cli("param", "get", "--timeout", str(int(TIMEOUT)), NODE, "score_threshold", timeout=TIMEOUT + 30)
    from centernet_ros.ros.params import DECODE_DEFAULTS  # rclpy: imported once the CLI exists

    default = DECODE_DEFAULTS["score_threshold"]  # the node default (= config/detect.yaml), tuned per shipped model
    assert res.returncode == 0 and f"Double value is: {default}" in res.stdout, res.stdout + proc.output

    def param_set(name: str, value: str) -> str:
        return cli("param", "set", NODE, name, value).stdout

    def lifecycle(transition: str, log_line: str) -> None:
        res = cli("lifecycle", "set", NODE, transition)
        assert res.returncode == 0 and "Transitioning successful" in res.stdout, res.stdout + proc.output
        proc.wait_for(log_line, timeout=10.0)

    assert "Set parameter successful" in param_set("score_threshold", "0.3")
    out = param_set("score_threshold", "1.5")  # outside [0, 1)
    assert "Setting parameter failed" in out and "1.5" in out, out
    out = param_set("max_batch_size", "many")  # wrong type
    assert "Setting parameter failed" in out, out
    assert "0.3" in cli("param", "get", NODE, "score_threshold").stdout  # the good value, not the bad ones

    lifecycle("configure", r"\]: configured: model")
    out = param_set("weights", "/nowhere.safetensors")  # static: only while unconfigured
    assert "Setting parameter failed" in out and "unconfigured" in out, out
    lifecycle("activate", r"\]: active on cpu with torch")
    lifecycle("deactivate", r"\]: deactivated")
    assert cli("lifecycle", "get", NODE).stdout.startswith("inactive")
    lifecycle("cleanup", r"\]: cleaned up: publishers destroyed")
    lifecycle("shutdown", r"\]: shut down from unconfigured: .*\(finalized\)")
    assert_clean(proc, proc.wait(30.0))  # the process ends by itself
    assert "finalized: exiting" in proc.output


def test_ros2_run_detector_stops_on_sigterm_while_active(cli):
    proc = cli.start("run", "centernet_ros", "centernet-detector", "--ros-args", *FAST)
    proc.wait_for(r"active on cpu with torch")
    time.sleep(0.5)  # spinning (a signal during start-up: see test_launch.py)
    (node_pid,) = children(proc.popen.pid)
    os.kill(node_pid, signal.SIGTERM)
    assert_clean(proc, proc.wait(30.0))
    assert "SIGTERM: shutting down" in proc.output, proc.output
