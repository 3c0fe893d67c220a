"""The detector node with ``backend: onnxruntime-int8`` on a real ROS 2 graph: a model overfit on a synthetic
scene, quantised by ``centernet-export --int8`` to the default path beside its weights, finds the scene's box
(image -> node -> Detection2DArray) and says on /diagnostics that the INT8 model runs.
"""
from __future__ import annotations

import array
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
pytest.importorskip("onnxruntime.quantization", reason="onnxruntime (with its quantization tools) not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from centernet_ros.ros.node import DetectorNode  # noqa: E402

BOX = (100.0, 50.0, 220.0, 130.0)  # x1, y1, x2, y2 of the rectangle in the 320x180 scene
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def _scene(shift: int = 0) -> np.ndarray:
    """BGR 320x180: a red rectangle (``BOX`` moved right by ``shift`` px) on grey."""
    img = np.full((180, 320, 3), 90, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    img[y1:y2, x1 + shift:x2 + shift] = (40, 40, 220)
    return img


@pytest.fixture(scope="module")
def int8_weights(tmp_path_factory) -> Path:
    """Overfit a small CenterNet on the scene (the project's targets and loss), then ``centernet-export --int8``
    with a few shifted scenes as calibration images; returns the weights (INT8 file at the default path)."""
    from centernet_ros.export import main as export_main
    from centernet_ros.losses import CenterNetLoss
    from centernet_ros.model import centernet_resnet18
    from centernet_ros.preprocess import letterbox
    from centernet_ros.targets import TargetConfig, build_targets
    from centernet_ros.weights import save_model

    torch.manual_seed(0)
    size = (128, 128)
    x, lb = letterbox([torch.from_numpy(_scene())], size=size, bgr=True)
    box = torch.tensor([BOX]) * lb.scale[0] + lb.offset[0].repeat(2)  # (1, 4) network-input pixels
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
    root = tmp_path_factory.mktemp("int8node")
    weights = root / "scene.safetensors"
    save_model(weights, model, class_names=["box"], input_size=size)
    calib = root / "calib"
    calib.mkdir()
    for i, shift in enumerate((-60, -30, 0, 30, 60)):
        cv2.imwrite(str(calib / f"scene{i}.png"), _scene(shift))
    assert export_main(["--weights", str(weights), "--int8", "--calib-data", str(calib), "--calib-count", "5"]) == 0
    assert (root / "scene.int8-128x128.onnx").is_file()
    return weights


def _image(bgr: np.ndarray, sec: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.frame_id = sec, "cam"
    msg.height, msg.width, msg.encoding, msg.step = bgr.shape[0], bgr.shape[1], "bgr8", bgr.shape[1] * 3
    msg.data = array.array("B", bgr.tobytes())
    return msg


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("where", ["default path", "int8_model parameter"])
def test_node_runs_the_int8_model_end_to_end(where, int8_weights, rclpy_context, make_node, spin_until, tmp_path):
    params = dict(weights=str(int8_weights), device="cpu", backend="onnxruntime-int8",
                  camera_topics=["/int8cam/image_raw"], max_batch_latency_ms=0.0, diagnostics_period=0.2)
    if where == "int8_model parameter":  # the file elsewhere, under another name: only the parameter finds it
        moved = tmp_path / "elsewhere" / "my_int8.onnx"
        moved.parent.mkdir()
        moved.write_bytes((int8_weights.parent / "scene.int8-128x128.onnx").read_bytes())
        params["int8_model"] = str(moved)
        params["weights"] = str(tmp_path / "elsewhere" / "scene.safetensors")
        Path(params["weights"]).write_bytes(int8_weights.read_bytes())
    node = DetectorNode("int8_detector", context=rclpy_context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        assert node.autostart(), node.last_error
        io = make_node("int8_tester")
        pub = io.create_publisher(Image, "/int8cam/image_raw", RELIABLE)
        got: list[Detection2DArray] = []
        diags: list[DiagnosticArray] = []
        io.create_subscription(Detection2DArray, "/int8cam/detections", got.append, RELIABLE)
        io.create_subscription(DiagnosticArray, "/diagnostics", diags.append, RELIABLE)
        deadline = time.monotonic() + 30.0
        while not got and time.monotonic() < deadline:  # discovery may drop the first frames
            pub.publish(_image(_scene(), 3))
            spin_until(lambda: bool(got), node, io, timeout=0.25)
        assert got, "no Detection2DArray came back"
        assert got[0].header.stamp.sec == 3 and got[0].header.frame_id == "cam"
        best = max(got[0].detections, key=lambda d: d.results[0].hypothesis.score)
        c, sx, sy = best.bbox.center.position, best.bbox.size_x, best.bbox.size_y
        assert _iou((c.x - sx / 2, c.y - sy / 2, c.x + sx / 2, c.y + sy / 2), BOX) > 0.7
        assert best.results[0].hypothesis.class_id == "0" and best.results[0].hypothesis.score > 0.3
        hardware = lambda: {s.hardware_id for a in diags for s in a.status if s.hardware_id}  # noqa: E731
        assert spin_until(lambda: "cpu (onnxruntime-int8)" in hardware(), node, io, timeout=10.0), hardware()
    finally:
        node.close()
        node.destroy_node()
