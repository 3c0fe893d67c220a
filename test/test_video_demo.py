"""The demo tools on a real ROS 2 graph: the video publisher (frames, lockstep), its frame reader, and
``centernet-demo`` end to end.  Fixtures and helpers: node_testing.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
pytest.register_assert_rewrite("node_testing")  # shared fixtures (also loaded as a plugin below)
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from node_testing import REPO, RELIABLE, TIMEOUT, Listener, scene, stamp_of  # noqa: E402

pytest_plugins = ["node_testing"]


@pytest.fixture(scope="module")
def scene_clip(tmp_path_factory) -> Path:
    """A 6-frame mp4 of the scene, the rectangle shifted right by 4 px per frame."""
    path = tmp_path_factory.mktemp("clip") / "scene.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 180))
    assert writer.isOpened()
    for i in range(6):
        writer.write(np.roll(scene(), 4 * i, axis=1))
    writer.release()
    return path


def _read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_video_publisher_frames_and_lockstep(rclpy_context, make_node, spin_until, scene_clip):
    from centernet_ros.ros.video_publisher import VideoPublisher

    io = make_node("tester")
    frames = Listener(io, Image, "/vp/image_raw")
    echo = io.create_publisher(Detection2DArray, "/vp/detections", RELIABLE)
    video = VideoPublisher(context=rclpy_context, parameter_overrides=[
        Parameter("path", value=str(scene_clip)), Parameter("topic", value="/vp/image_raw"),
        Parameter("frame_id", value="clip"), Parameter("rate", value=-1.0), Parameter("max_frames", value=4),
        Parameter("lockstep_topic", value="/vp/detections"), Parameter("lockstep_timeout", value=3600.0)])
    try:
        assert spin_until(lambda: len(frames.msgs) == 1, video, io, timeout=TIMEOUT)
        # without an answer on the lockstep topic the next frame is held back
        assert not spin_until(lambda: video.sent > 1, video, io, timeout=1.0)

        def answer():  # play the detector: echo each frame's header as its (empty) detections
            while len(frames.msgs) > answered[0]:
                reply = Detection2DArray()
                reply.header = frames.msgs[answered[0]].header
                echo.publish(reply)
                answered[0] += 1
            return video.done and len(frames.msgs) == 4

        answered = [0]
        assert spin_until(answer, video, io, timeout=TIMEOUT)
        assert video.sent == 4
        want = _read_frames(scene_clip)[:4]
        stamps = [stamp_of(m) for m in frames.msgs]
        assert stamps == sorted(stamps) and len(set(stamps)) == 4
        for msg, ref in zip(frames.msgs, want):
            assert (msg.height, msg.width, msg.encoding, msg.step, msg.header.frame_id) == (180, 320, "bgr8", 960, "clip")
            np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(180, 320, 3), ref)
    finally:
        video.destroy_node()


def test_frame_reader_decodes_ahead_loops_and_stops(scene_clip):
    from centernet_ros.ros.video_publisher import _FrameReader

    want = _read_frames(scene_clip)
    assert len(want) == 6
    once = _FrameReader(cv2.VideoCapture(str(scene_clip)), loop=False, depth=2)
    got = [once.read() for _ in range(6)]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert once.read() is None and once.read() is None  # the end, for good
    once.close()

    looped = _FrameReader(cv2.VideoCapture(str(scene_clip)), loop=True, depth=3)
    got = [looped.read() for _ in range(14)]
    assert all(np.array_equal(g, want[i % 6]) for i, g in enumerate(got))
    looped.close()
    assert not looped._thread.is_alive()

    class Unreadable:  # opens, but no frame decodes: looping must not spin forever
        released = False

        def read(self):
            return False, None

        def set(self, *args):
            raise AssertionError("no rewind without a decoded frame")

        def release(self):
            self.released = True

    cap = Unreadable()
    empty = _FrameReader(cap, loop=True)
    assert empty.read(timeout=5.0) is None
    empty.close()
    assert cap.released


def test_demo_writes_annotated_video_and_summary(tiny_weights, scene_clip, tmp_path):
    import json

    from centernet_ros.ros.fastdds import PROFILE_VARIABLES, fastdds_profile_path

    out = tmp_path / "out"
    picture = tmp_path / "pictures" / "frames.png"
    cmd = [sys.executable, "-m", "centernet_ros.ros.demo", "--video", str(scene_clip), "--weights", str(tiny_weights),
           "--device", "cpu", "--input-size", "128", "128", "--max-frames", "5", "--out", str(out), "--no-progress",
           "--frames-picture", str(picture), "--picture-frames", "4"]
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES and k != "ROS_DISTRO"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["frames"] == 5 and summary["frames_published"] == 5 and summary["frames_written"] == 5
    assert summary["dropped"] == 0 and summary["rejected"] == 0
    assert summary["input_size"] == [128, 128] and summary["device"] == "cpu"
    assert summary["detections_per_class"].get("box", 0) >= 5  # class names come from the model / LabelInfo
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    assert summary["fps"] > 0
    assert "frames: 5 processed" in proc.stdout and "box" in proc.stdout
    # the demo gave itself the Fast DDS profile (none was set)
    assert Path(summary["fastdds_profile"]).samefile(fastdds_profile_path())
    # detections per frame and box sizes (the scene's rectangle is 100-odd px wide in a 320x180 frame)
    boxes = summary["boxes"]
    assert boxes["boxes"] == summary["detections"] and boxes["detections_per_frame"] == summary["detections"] / 5
    assert 0 < boxes["width"]["px"]["p10"] <= boxes["width"]["px"]["p50"] <= boxes["width"]["px"]["max"]
    assert boxes["width"]["frac"]["p50"] == pytest.approx(boxes["width"]["px"]["p50"] / 320, abs=1e-3)
    assert boxes["height"]["frac"]["max"] == pytest.approx(boxes["height"]["px"]["max"] / 180, abs=1e-3)
    assert 0 <= boxes["wider_than_half_frame"] <= boxes["boxes"]
    assert f"boxes wider than half the frame: {boxes['wider_than_half_frame']}" in proc.stdout
    assert "per frame on average" in proc.stdout
    written = _read_frames(out / "demo.mp4")
    source = _read_frames(scene_clip)[:5]
    assert len(written) == 5 and written[0].shape == (180, 320, 3)
    # the boxes are drawn: the written frames differ from the input along the rectangle's outline
    assert (np.abs(written[0].astype(int) - source[0].astype(int)).max(axis=2) > 60).sum() > 200
    # --frames-picture: frames 0, 1, 3, 4 of the annotated stream in a 2 x 2 grid
    assert summary["frames_picture"] == str(picture) and "frames [0, 1, 3, 4]" in proc.stdout
    tiles = cv2.imread(str(picture))
    assert tiles.shape == (360, 640, 3)
    for cell, index in zip(((0, 0), (0, 320), (180, 0), (180, 320)), (0, 1, 3, 4)):
        y, x = cell
        got = tiles[y + 40:y + 180, x:x + 320].astype(int)  # below the "frame N" label
        # the annotated frame itself (lossless here; lossy in demo.mp4): closer to that one than to any other
        diffs = [np.abs(got - w[40:].astype(int)).mean() for w in written]
        assert int(np.argmin(diffs)) == index and diffs[index] < 8, (index, diffs)
