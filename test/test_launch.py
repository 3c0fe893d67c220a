"""The launch files through the real ``ros2 launch`` (see ros2_cli.py: skipped without the ROS 2 CLI,
failed under CI=true): detect.launch.py comes up in a namespace, activates and answers a frame with
detections, with the Fast DDS profile in its environment; demo.launch.py plays a few frames and ends by
itself; Ctrl-C at start-up or while running ends everything with exit status 0 and no traceback.
The ``fastdds_profile`` launch argument is also checked in-process, on the actions the launch files make."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import ASYNCIO_UNKNOWN_CHILD, REPO, assert_clean, cli, clip_frame, graph, wait_until_handled  # noqa: E402,F401  (cli, graph: fixtures)

from centernet_ros.ros.fastdds import PROFILE_FILE, PROFILE_VARIABLES, fastdds_profile_path, profile_variable  # noqa: E402

# the bundled model with the plain torch forward pass: no ONNX export at activation (seconds on a CPU)
FAST = ("device:=cpu", "backend:=torch", "cpu_threads:=1")


def test_detect_launch_in_a_namespace_answers_a_frame_then_ctrl_c(cli, graph):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from centernet_ros.ros.conversions import bgr_to_image_msg

    # reliable: a 640x360 frame is ~0.7 MB, which best effort loses between processes on a busy machine
    launch = cli.start("launch", "centernet_ros", "detect.launch.py", *FAST, "namespace:=robot1", "log_level:=debug",
                       "qos_reliability:=reliable")
    launch.wait_for(r"\[robot1\.centernet_detector\]: active on cpu with torch")
    node, spin_until = graph
    dets: list = []
    labels: list = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(Detection2DArray, "/robot1/camera/detections", dets.append, 10)
    node.create_subscription(LabelInfo, "/robot1/label_info", labels.append, latched)
    pub = node.create_publisher(Image, "/robot1/camera/image_raw", 10)
    msg = bgr_to_image_msg(clip_frame(0))
    msg.header.stamp.sec, msg.header.frame_id = 7, "cam"
    # the relative default topics moved with the namespace: the detector listens on /robot1/camera/image_raw
    assert spin_until(lambda: pub.get_subscription_count() > 0, timeout=30.0), launch.output
    assert spin_until(lambda: labels, timeout=30.0), "no LabelInfo on /robot1/label_info"
    for _ in range(10):  # publish until one frame comes back (the first may go before discovery settled)
        pub.publish(msg)
        if spin_until(lambda: dets, timeout=5.0):
            break
    assert dets, "no detections on /robot1/camera/detections:\n" + launch.output
    assert (dets[0].header.stamp.sec, dets[0].header.frame_id) == (7, "cam")
    assert len(dets[0].detections) > 0  # the clip's first frame has cars in it
    assert len(labels[0].class_map) == 5  # the bundled model's classes

    # log_level:=debug: the node's logger only (its own debug line), none of rcl / rmw / rclpy
    started = launch.wait_for(r"\[DEBUG\] \[[\d.]+\] \[robot1\.centernet_detector\]: started \(pid (\d+)")
    others = [line for line in launch.output.splitlines()
              if "[DEBUG]" in line and "[robot1.centernet_detector" not in line]
    assert not others, "\n".join(others[:10])

    # fastdds_profile:=auto (default): the node's process was started with the package's profile
    environ = Path(f"/proc/{started.group(1)}/environ").read_bytes().split(b"\0")
    named = {k.decode(): v.decode() for k, _, v in (e.partition(b"=") for e in environ) if k.decode() in PROFILE_VARIABLES}
    if any(os.environ.get(k) for k in PROFILE_VARIABLES):  # the user's own profile is kept
        assert named == {k: os.environ[k] for k in PROFILE_VARIABLES if k in os.environ}, named
    else:
        assert list(named) == [profile_variable()], named
        assert Path(named[profile_variable()]).samefile(REPO / "config" / PROFILE_FILE), named

    launch.signal_group(signal.SIGINT)  # Ctrl-C in a terminal: launch and the node get it, then launch's own
    assert_clean(launch, launch.wait(60.0), interrupted_launch=True)
    assert re.search(r"\[centernet-detector-1\]: process has finished cleanly", launch.output), launch.output


def test_demo_launch_runs_to_its_end(cli):
    launch = cli.start("launch", "centernet_ros", "demo.launch.py", "device:=cpu", "max_frames:=3")
    code = launch.wait(240.0)  # ends by itself after the video's last (here: 3rd) frame
    assert_clean(launch, code)
    out = launch.output
    assert re.search(r"active on cpu with \S+ \(input 384x640", out), out  # centernet-demo's size
    assert re.search(r"\[video_publisher\]: done: published 3 frames", out), out
    assert "the video publisher has ended" in out, out
    for name in ("centernet-video-publisher-1", "centernet-detector-2"):
        assert f"[{name}]: process has finished cleanly" in out, out


@pytest.mark.parametrize("during, group", [("imports", True), ("activation", False)])
def test_ctrl_c_during_start_up_ends_cleanly(cli, during, group):
    for _ in range(3):  # again only when asyncio lost the node's exit status (ASYNCIO_UNKNOWN_CHILD)
        launch = cli.start("launch", "centernet_ros", "detect.launch.py", *FAST)
        if during == "imports":  # torch, rclpy, ...: seconds, right after the executable installed its handlers
            wait_until_handled(launch.popen.pid)
        else:  # loading the model
            launch.wait_for(r"\]: configured: model")
        if group:  # a terminal's Ctrl-C: launch and the node get it, then the node gets launch's SIGINT too
            launch.signal_group(signal.SIGINT)
        else:  # SIGINT to launch only: launch passes it on
            launch.popen.send_signal(signal.SIGINT)
            # launch 3.7.1 can lose a SIGINT that lands while it handles an event (LAUNCH_SIGINT_RACE in ros2_cli.py:
            # the KeyboardInterrupt is swallowed, no "user interrupted" line, nothing stops): press Ctrl-C again, as
            # a user would. Only launch's acknowledgement is waited for; the node's clean end is asserted below.
            deadline = time.monotonic() + 10.0
            while "user interrupted with ctrl-c" not in launch.output and time.monotonic() < deadline:
                time.sleep(0.1)
            if "user interrupted with ctrl-c" not in launch.output:
                launch.popen.send_signal(signal.SIGINT)
        code = launch.wait(60.0)
        if ASYNCIO_UNKNOWN_CHILD not in launch.output:
            break
    assert_clean(launch, code, interrupted_launch=True)
    assert "[centernet-detector-1]: process has finished cleanly" in launch.output, launch.output


def test_bad_launch_argument_fails_with_its_name(cli):
    proc = cli.start("launch", "centernet_ros", "detect.launch.py", "score_threshold:=high")
    code = proc.wait(60.0)
    assert code != 0
    assert "score_threshold:='high'" in proc.output, proc.output


def test_launch_arguments_are_described(cli):
    res = cli("launch", "centernet_ros", "detect.launch.py", "--show-args")
    assert res.returncode == 0, res.stdout
    described = re.findall(r"^    '(\w+)':\n        (.+)$", res.stdout, flags=re.M)
    assert len(described) > 20 and all(text.strip() for _, text in described), res.stdout
    assert ("weights", "model file (.safetensors); empty: from params_file "
            "(config/detect.yaml: the bundled models/centernet_vehicles.safetensors)") in described
    res = cli("launch", "centernet_ros", "demo.launch.py", "--show-args")
    assert res.returncode == 0 and "'max_frames':" in res.stdout, res.stdout


def test_launch_overrides_are_node_parameters_of_their_type():
    params = pytest.importorskip("centernet_ros.ros.params", reason="rclpy is not installed")
    detect = _load_launch_file("detect.launch.py")
    assert set(detect.OVERRIDES) <= set(params.DEFAULTS)  # a typo here would set a parameter nobody reads
    for name, (kind, _) in detect.OVERRIDES.items():
        if kind is bool:
            assert isinstance(params.DEFAULTS[name], bool), name
            assert detect._convert(name, "true") is True and detect._convert(name, "False") is False
            with pytest.raises(ValueError, match=f"{name}:='1'"):
                detect._convert(name, "1")
    assert {"flip_test", "exclusive_centres"} <= set(detect.OVERRIDES)


def _load_launch_file(name: str):
    pytest.importorskip("launch_ros", reason="the launch / launch_ros packages are not installed")
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env_of(node, context) -> dict[str, str]:
    from launch.utilities import perform_substitutions

    return {perform_substitutions(context, k): perform_substitutions(context, v) for k, v in node.additional_env or []}


@pytest.mark.parametrize("user_profile", [None, "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"])
def test_fastdds_profile_argument_reaches_the_started_processes(monkeypatch, tmp_path, user_profile):
    from launch import LaunchContext
    from launch_ros.actions import Node

    detect, demo = _load_launch_file("detect.launch.py"), _load_launch_file("demo.launch.py")
    for key in PROFILE_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    if user_profile:
        monkeypatch.setenv(user_profile, "/theirs.xml")
    mine = tmp_path / "mine.xml"
    mine.write_text("<profiles/>")
    ours = {"FASTDDS_DEFAULT_PROFILES_FILE": str(fastdds_profile_path())}
    for choice, expected in [("auto", {} if user_profile else ours), ("", {}),
                             (str(mine), {"FASTDDS_DEFAULT_PROFILES_FILE": str(mine)})]:
        context = LaunchContext()
        context.launch_configurations.update({"node_name": "n", "namespace": "", "log_level": "info",
                                              "params_file": "p.yaml", "fastdds_profile": choice})
        context.launch_configurations.update({name: "" for name in detect.OVERRIDES})
        context.launch_configurations["input_size"] = "[256, 448]"
        context.launch_configurations.update({name: "" for name in ("video", "rate", "loop", "max_frames")})
        (node,) = detect._launch_node(context)
        assert _env_of(node, context) == expected, choice
        video = [a for a in demo._video_publisher(context) if isinstance(a, Node)]
        assert [_env_of(v, context) for v in video] == [expected], choice
        (include,) = demo._detector(context)  # demo.launch.py hands the argument on to detect.launch.py
        assert dict(include.launch_arguments)["fastdds_profile"] == choice

    context.launch_configurations["fastdds_profile"] = str(tmp_path / "missing.xml")
    with pytest.raises(ValueError, match="fastdds_profile:=.*missing.xml.*no such file"):
        detect._launch_node(context)
