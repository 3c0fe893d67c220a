"""The Fast DDS profile for camera frames between processes (config/fastdds_large_frames.xml): where it is,
how the environment names it, and that a camera process using it delivers 640x360 frames to another
process (with Fast DDS's built-in transports 16-47 % of them arrived here; README "Large images between
processes").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from centernet_ros.ros.fastdds import (
    PROFILE_VARIABLES,
    apply_fastdds_profile,
    fastdds_profile_path,
    launch_profile_env,
    profile_variable,
    with_fastdds_profile,
)

REPO = Path(__file__).resolve().parents[1]
NS = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}


def test_the_profile_is_the_config_file_with_a_16_mb_segment():
    path = fastdds_profile_path()
    assert path.samefile(REPO / "config" / "fastdds_large_frames.xml")
    root = ET.parse(path).getroot()
    shm = [d for d in root.iterfind("p:transport_descriptors/p:transport_descriptor", NS) if d.findtext("p:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1 and int(shm[0].findtext("p:segment_size", namespaces=NS)) == 16 * 1024 * 1024
    participant = root.find("p:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind("p:rtps/p:userTransports/p:transport_id", NS)]
    kinds = {d.findtext("p:transport_id", namespaces=NS): d.findtext("p:type", namespaces=NS)
             for d in root.iterfind("p:transport_descriptors/p:transport_descriptor", NS)}
    assert sorted(kinds[t] for t in used) == ["SHM", "UDPv4"]  # UDPv4 stays: discovery, other hosts
    assert participant.findtext("p:rtps/p:useBuiltinTransports", namespaces=NS) == "false"


def test_the_environment_names_it_unless_the_user_chose_a_profile():
    path = str(fastdds_profile_path())
    assert with_fastdds_profile({"ROS_DISTRO": "kilted"}) == {"ROS_DISTRO": "kilted", "FASTDDS_DEFAULT_PROFILES_FILE": path}
    assert with_fastdds_profile({})["FASTDDS_DEFAULT_PROFILES_FILE"] == path
    assert with_fastdds_profile({"ROS_DISTRO": "humble"})["FASTRTPS_DEFAULT_PROFILES_FILE"] == path  # Fast DDS 2.6
    assert profile_variable({"ROS_DISTRO": "humble"}) == "FASTRTPS_DEFAULT_PROFILES_FILE"
    for key in PROFILE_VARIABLES:
        assert with_fastdds_profile({key: "/mine.xml"}) == {key: "/mine.xml"}
    env: dict[str, str] = {}
    apply_fastdds_profile(env)
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": path}
    assert subprocess.run([sys.executable, "-m", "centernet_ros.ros.fastdds"], capture_output=True, text=True,
                          cwd=REPO, check=True).stdout.strip() == path


def test_the_launch_argument_auto_a_path_or_none(tmp_path):
    path = str(fastdds_profile_path())
    assert launch_profile_env("auto", {}) == {"FASTDDS_DEFAULT_PROFILES_FILE": path}
    assert launch_profile_env("auto", {"ROS_DISTRO": "humble"}) == {"FASTRTPS_DEFAULT_PROFILES_FILE": path}
    for key in PROFILE_VARIABLES:  # the user's profile applies: nothing added
        assert launch_profile_env("auto", {key: "/theirs.xml"}) == {}
    assert launch_profile_env("", {}) == {} and launch_profile_env(" ", {}) == {}
    mine = tmp_path / "mine.xml"
    mine.write_text("<profiles/>")
    # an explicit path wins over the environment's
    assert launch_profile_env(str(mine), {"FASTDDS_DEFAULT_PROFILES_FILE": "/theirs.xml"}) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(mine)}
    with pytest.raises(FileNotFoundError, match=r"fastdds_profile:=.*nope\.xml.*no such file"):
        launch_profile_env(str(tmp_path / "nope.xml"), {})


def test_a_camera_process_with_the_profile_delivers_its_frames(make_node, spin_until):
    # Only the camera (the writer) gets the profile: Fast DDS sends same-host samples through the
    # writer's shared-memory segment. 40 frames of 640x360 bgr8 (921,600 bytes) at 10 Hz, best effort.
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    io = make_node("transport_tester")
    seen: set[str] = set()
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                     durability=DurabilityPolicy.VOLATILE)
    io.create_subscription(Image, "/profiled/cam0/image_raw", lambda m: seen.add(m.header.frame_id), qos)
    env = with_fastdds_profile({k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES})
    cam = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "camera_publisher.py"), "--cameras", "1",
                            "--size", "640x360", "--rate", "10", "--duration", "4", "--prefix", "/profiled"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while cam.poll() is None and time.monotonic() < deadline:
            spin_until(lambda: False, io, timeout=0.1)
        spin_until(lambda: False, io, timeout=1.0)
    finally:
        if cam.poll() is None:
            cam.kill()
        out, err = cam.communicate()
    published = json.loads(out.strip().splitlines()[-1])["published"][0]
    assert published == 40, err[-2000:]
    assert len(seen) >= 38, (len(seen), err[-2000:])  # >= 95 %
    assert "profile" not in err.lower() or "error" not in err.lower(), err[-2000:]  # the XML loaded cleanly
