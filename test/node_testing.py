"""Shared by the detector-node tests: a tiny model overfit on a synthetic scene, a node factory and
message helpers (a pytest plugin: test modules load it with ``pytest_plugins = ["node_testing"]``).

A tiny model is trained once per session to overfit a synthetic scene (a red rectangle on grey,
320x180, letterboxed into a 128x128 input), so the node's output has a known answer: the box
must come back in the original pixels of whatever image size is published.  Import this module only
after rclpy is known to be importable (the test modules skip first).
"""
from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from centernet_ros.ros.node import DetectorNode

REPO = Path(__file__).resolve().parents[1]
SCENE_BOX = (100.0, 50.0, 220.0, 130.0)  # x1, y1, x2, y2 of the rectangle in the 320x180 scene
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
TIMEOUT = 30.0


def scene(scale: int = 1) -> np.ndarray:
    """The synthetic BGR scene, ``scale`` times 320x180 (nearest-neighbour, so the box scales exactly)."""
    img = np.full((180, 320, 3), 90, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in SCENE_BOX)
    img[y1:y2, x1:x2] = (40, 40, 220)
    return np.repeat(np.repeat(img, scale, 0), scale, 1) if scale > 1 else img


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Overfit a small CenterNet on the scene with the project's targets and loss (10-20 s on a CPU)."""
    from centernet_ros.losses import CenterNetLoss
    from centernet_ros.model import centernet_resnet18
    from centernet_ros.preprocess import letterbox
    from centernet_ros.targets import TargetConfig, build_targets
    from centernet_ros.weights import save_model

    torch.manual_seed(0)
    size = (128, 128)
    x, lb = letterbox([torch.from_numpy(scene())], size=size, bgr=True)
    box = torch.tensor([SCENE_BOX]) * lb.scale[0] + lb.offset[0].repeat(2)  # (1, 4) network-input pixels
    targets = build_targets([box], [torch.tensor([0])], output_size=(32, 32), cfg=TargetConfig(num_classes=1))
    model = centernet_resnet18(num_classes=1, head_width=32, pool_width=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = CenterNetLoss()
    model.train()
    for _ in range(100):
        loss, _ = loss_fn(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(path, model, class_names=["box"], input_size=size)
    return path


@pytest.fixture
def start_detector(rclpy_context, tiny_weights):
    """Factory: a DetectorNode in the test's context, configured + activated (autostart), closed afterwards."""
    nodes: list[DetectorNode] = []

    def _start(name: str = "centernet_detector", *, autostart: bool = True, **params) -> DetectorNode:
        values = dict(weights=str(tiny_weights), device="cpu", camera_topics=["/cam0/image_raw"],
                      max_batch_latency_ms=0.0)
        values.update(params)
        node = DetectorNode(name, context=rclpy_context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        nodes.append(node)
        if autostart:
            assert node.autostart(), node.last_error
        return node

    yield _start
    for node in nodes:
        node.close()
        node.destroy_node()


def image_msg(bgr: np.ndarray, *, stamp: tuple[int, int] = (1, 0), frame_id: str = "cam", encoding: str = "bgr8",
              step: int | None = None, data: bytes | None = None, height: int | None = None,
              width: int | None = None) -> Image:
    """An Image built field by field (independently of the package's conversions)."""
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    msg.height = bgr.shape[0] if height is None else height
    msg.width = bgr.shape[1] if width is None else width
    msg.encoding = encoding
    msg.step = bgr.shape[1] * 3 if step is None else step
    msg.data = array.array("B", bgr.tobytes() if data is None else data)
    return msg


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def corners(det) -> tuple[float, float, float, float]:
    c, sx, sy = det.bbox.center.position, det.bbox.size_x, det.bbox.size_y
    return (c.x - sx / 2, c.y - sy / 2, c.x + sx / 2, c.y + sy / 2)


class Listener:
    """Collects messages of one topic."""

    def __init__(self, node, msg_type, topic, qos=RELIABLE):
        self.msgs: list = []
        self.sub = node.create_subscription(msg_type, topic, self.msgs.append, qos)


def publish_until(spin_until, pub, msg, done, *nodes, timeout=TIMEOUT, period=0.25) -> bool:
    """Publish ``msg`` every ``period`` s until ``done()`` (discovery may drop the first ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(msg)
        if spin_until(done, *nodes, timeout=period):
            return True
    return done()


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def spawn_node(*ros_args: str) -> subprocess.Popen:
    """The console script ``centernet-detector`` as a process (``python -m centernet_ros.ros.node``)."""
    cmd = [sys.executable, "-m", "centernet_ros.ros.node", "--ros-args", *ros_args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def stop_process(proc: subprocess.Popen) -> tuple[int, str, str]:
    """SIGINT (if still running), then (exit code, stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


