"""The detector node on a real ROS 2 graph (rclpy over rmw_fastrtps_cpp; isolation from conftest.py).

A tiny model is trained once per session to overfit a synthetic scene (a red rectangle on grey,
320x180, letterboxed into a 128x128 input), so the node's output has a known answer: the box
must come back in the original pixels of whatever image size is published.
"""
from __future__ import annotations

import array
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from centernet_ros.detector import onnxruntime_available  # noqa: E402
from centernet_ros.ros.node import DetectorNode, NodeSettings, cpu_threads_for, detections_topic_for  # noqa: E402

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


# --------------------------------------------------------------------------------------------------


def test_detections_topic_naming():
    assert detections_topic_for("/cam0/image_raw") == "/cam0/detections"
    assert detections_topic_for("/cam0/image_raw/compressed") == "/cam0/detections"
    assert detections_topic_for("/a/b/image") == "/a/b/detections"
    assert detections_topic_for("/image_raw") == "/detections"
    assert detections_topic_for("image_raw") == "detections"
    assert detections_topic_for("cam/image_raw", "detections_image") == "cam/detections_image"


def test_cpu_threads_auto_leaves_a_core_to_ros():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_threads_for(-1, "cpu") == max(1, cores - 1)
    assert cpu_threads_for(0, "cpu") == 0 and cpu_threads_for(3, "auto") == 3
    if not torch.cuda.is_available():
        assert cpu_threads_for(-1, "cuda") == 0  # not a CPU run (the detector reports the missing GPU)
    assert NodeSettings().cpu_threads == -1
    with pytest.raises(ValueError, match="-2"):
        NodeSettings(cpu_threads=-2)


def test_two_cameras_boxes_in_original_pixels_and_headers(start_detector, make_node, spin_until):
    det = start_detector(camera_topics=["/cam0/image_raw", "/cam1/image_raw"])
    io = make_node("tester")
    pubs = [io.create_publisher(Image, f"/cam{i}/image_raw", RELIABLE) for i in range(2)]
    outs = [Listener(io, Detection2DArray, f"/cam{i}/detections") for i in range(2)]
    sent = [image_msg(scene(1), stamp=(11, 500), frame_id="left"), image_msg(scene(2), stamp=(12, 7), frame_id="right")]
    for pub, msg, out in zip(pubs, sent, outs):
        assert publish_until(spin_until, pub, msg, lambda o=out: len(o.msgs) > 0, det, io)
    for i, (msg, out) in enumerate(zip(sent, outs)):
        got = out.msgs[0]
        assert stamp_of(got) == stamp_of(msg) and got.header.frame_id == msg.header.frame_id
        assert len(got.detections) >= 1
        best = max(got.detections, key=lambda d: d.results[0].hypothesis.score)
        assert stamp_of(best) == stamp_of(msg) and best.header.frame_id == msg.header.frame_id
        assert best.results[0].hypothesis.class_id == "0" and best.results[0].hypothesis.score > 0.5
        assert best.bbox.center.theta == 0.0
        want = tuple(v * (i + 1) for v in SCENE_BOX)  # cam1 got the scene at twice the size
        assert iou(corners(best), want) > 0.7, (corners(best), want)


def test_compressed_topic_and_annotated_image(start_detector, make_node, spin_until):
    det = start_detector(camera_topics=["/cam2/image_raw/compressed"])
    io = make_node("tester")
    pub = io.create_publisher(CompressedImage, "/cam2/image_raw/compressed", RELIABLE)
    dets = Listener(io, Detection2DArray, "/cam2/detections")
    ann = Listener(io, Image, "/cam2/detections_image")
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.frame_id, msg.format = 5, "cam2", "jpeg"
    msg.data = array.array("B", cv2.imencode(".jpg", scene(), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    assert publish_until(spin_until, pub, msg, lambda: dets.msgs and ann.msgs, det, io)
    best = max(dets.msgs[0].detections, key=lambda d: d.results[0].hypothesis.score)
    assert iou(corners(best), SCENE_BOX) > 0.7
    img = ann.msgs[0]
    assert (img.height, img.width, img.encoding, img.header.stamp.sec) == (180, 320, "bgr8", 5)
    drawn = np.frombuffer(img.data, np.uint8).reshape(180, 320, 3)
    assert (drawn != scene()).any(axis=2).sum() > 200  # boxes and labels were drawn on the frame


def test_runtime_threshold_and_parameter_validation(start_detector, make_node, spin_until):
    from rclpy.parameter_client import AsyncParameterClient

    det = start_detector()
    io = make_node("tester")
    pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    out = Listener(io, Detection2DArray, "/cam0/detections")
    client = AsyncParameterClient(io, "centernet_detector")
    assert client.wait_for_services(timeout_sec=TIMEOUT)

    def set_params(**kv):
        fut = client.set_parameters([Parameter(k, value=v) for k, v in kv.items()])
        assert spin_until(fut.done, det, io, timeout=TIMEOUT)
        return fut.result().results

    (ok,) = set_params(score_threshold=0.99)
    assert ok.successful, ok.reason
    assert publish_until(spin_until, pub, image_msg(scene(), stamp=(3, 0)), lambda: len(out.msgs) > 0, det, io)
    assert len(out.msgs[0].detections) == 0 and stamp_of(out.msgs[0]) == (3, 0)  # processed, nothing above 0.99

    for name, bad, words in [("score_threshold", 1.5, "1.5"), ("score_threshold", -0.1, "-0.1"),
                             ("nms_method", "fancy", "fancy"), ("ae_threshold", 0.0, "ae_threshold"),
                             ("max_batch_size", 0, "max_batch_size"), ("device", "cpu", "unconfigured"),
                             ("camera_topics", ["/x/image"], "unconfigured")]:
        (res,) = set_params(**{name: bad})
        assert not res.successful and words in res.reason, (name, res.reason)
    assert det.get_parameter("score_threshold").value == pytest.approx(0.99)

    (ok,) = set_params(score_threshold=0.2)
    assert ok.successful
    out.msgs.clear()
    assert publish_until(spin_until, pub, image_msg(scene(), stamp=(4, 0)), lambda: len(out.msgs) > 0, det, io)
    assert len(out.msgs[-1].detections) >= 1


def test_bad_inputs_are_rejected_and_the_node_keeps_answering(start_detector, make_node, spin_until, capfd):
    det = start_detector(camera_topics=["/cam0/image_raw", "/cam1/image_raw/compressed"])
    io = make_node("tester")
    raw_pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    jpg_pub = io.create_publisher(CompressedImage, "/cam1/image_raw/compressed", RELIABLE)
    out = Listener(io, Detection2DArray, "/cam0/detections")
    good = scene()
    bad_raw = [
        image_msg(good, encoding="32FC1"),  # unsupported encoding (depth)
        image_msg(good, step=100),  # step shorter than a row
        image_msg(good, data=good.tobytes()[:1000]),  # truncated
        image_msg(good, data=b""),  # empty data
        image_msg(good, height=0, width=0, step=0, data=b""),  # zero-size image
    ]
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    bad_jpg = []
    for payload in (jpeg[: len(jpeg) // 3], b"", b"\x89PNG\r\n\x1a\n garbage"):
        m = CompressedImage()
        m.format, m.data = "jpeg", array.array("B", payload)
        bad_jpg.append(m)

    def rejected(topic):
        return det.stats()["cameras"][topic]["rejected"]

    for pub, topic, msgs in [(raw_pub, "/cam0/image_raw", bad_raw), (jpg_pub, "/cam1/image_raw/compressed", bad_jpg)]:
        for k, msg in enumerate(msgs, start=1):  # one at a time, so none is overwritten (dropped) by the next
            assert publish_until(spin_until, pub, msg, lambda: rejected(topic) >= k, det, io), (topic, k)
        assert rejected(topic) == len(msgs)  # every bad frame was counted once...
    assert det.stats()["cameras"]["/cam0/image_raw"]["processed"] == 0  # ...and none was published
    assert publish_until(spin_until, raw_pub, image_msg(good, stamp=(9, 9)), lambda: len(out.msgs) > 0, det, io)
    assert stamp_of(out.msgs[0]) == (9, 9) and len(out.msgs[0].detections) >= 1
    assert det.stats()["cameras"]["/cam0/image_raw"]["last_reject"].startswith("zero-size")  # the last bad one
    err = capfd.readouterr().err
    assert "rejected a frame on /cam0/image_raw: unsupported encoding '32FC1'" in err
    assert "rejected a frame on /cam1/image_raw/compressed" in err
    assert "Traceback" not in err


def test_onnxruntime_failures_fall_back_to_torch_with_one_log_line(start_detector, make_node, spin_until, capfd,
                                                                   monkeypatch):
    import centernet_ros.detector as detector_module

    class BrokenAtStart:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no such provider")

    class BrokenAtRunTime:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x):
            raise RuntimeError("ort exploded")

    monkeypatch.setattr(detector_module, "_OrtForward", BrokenAtStart)
    det = start_detector("det_a", backend="onnxruntime")
    assert det._detector.backend == "torch" and det._detector.backend_error == "RuntimeError: no such provider"
    err = capfd.readouterr().err
    assert err.count("onnxruntime backend unavailable, using torch: RuntimeError: no such provider") == 1, err
    det.close()

    monkeypatch.setattr(detector_module, "_OrtForward", BrokenAtRunTime)
    det = start_detector("det_b", backend="onnxruntime", diagnostics_period=0.2)
    assert det._detector.backend == "onnxruntime"
    io = make_node("tester")
    pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    out = Listener(io, Detection2DArray, "/cam0/detections")
    diags = Listener(io, DiagnosticArray, "/diagnostics")
    for k in (1, 2):  # the first frame hits the failure and is still answered (by torch); so is the next
        assert publish_until(spin_until, pub, image_msg(scene(), stamp=(k, 0)), lambda: len(out.msgs) >= k, det, io)
    assert all(len(m.detections) >= 1 for m in out.msgs)
    assert det._detector.backend == "torch" and det.stats()["cameras"]["/cam0/image_raw"]["processed"] == len(out.msgs)

    def diag():
        for arr in reversed(diags.msgs):
            for st in arr.status:
                if st.name.endswith("det_b: detector"):
                    return st.hardware_id, {kv.key: kv.value for kv in st.values}
        return None, {}

    assert spin_until(lambda: diag()[1].get("backend_error") == "RuntimeError: ort exploded", det, io, timeout=TIMEOUT)
    assert diag()[0] == "cpu (torch)"
    log = [line for line in capfd.readouterr().err.splitlines() if "[ERROR]" in line and "ort exploded" in line]
    assert len(log) == 1 and "onnxruntime forward failed, using torch from now on" in log[0], log


def test_best_effort_and_reliable_publishers_with_default_qos(start_detector, make_node, spin_until):
    det = start_detector(camera_topics=["/cam0/image_raw", "/cam1/image_raw"])
    assert det.get_parameter("qos_reliability").value == "best_effort"
    io = make_node("tester")
    pubs = [io.create_publisher(Image, "/cam0/image_raw", BEST_EFFORT),
            io.create_publisher(Image, "/cam1/image_raw", RELIABLE)]
    outs = [Listener(io, Detection2DArray, f"/cam{i}/detections") for i in range(2)]
    for i, (pub, out) in enumerate(zip(pubs, outs)):
        assert publish_until(spin_until, pub, image_msg(scene(), stamp=(20 + i, 0)), lambda o=out: len(o.msgs) > 0,
                             det, io), f"cam{i}"


def test_label_info_reaches_a_late_subscriber_and_follows_the_threshold(start_detector, make_node, spin_until):
    det = start_detector()
    io = make_node("tester")
    assert spin_until(lambda: False, det, io, timeout=0.5) is False  # the node is up well before we subscribe
    late = Listener(io, LabelInfo, "/label_info", LATCHED)
    assert spin_until(lambda: len(late.msgs) > 0, det, io, timeout=TIMEOUT)
    info = late.msgs[-1]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "box")]
    assert info.threshold == pytest.approx(0.15)  # the node default (config/detect.yaml)
    assert det.set_parameters([Parameter("score_threshold", value=0.6)])[0].successful
    assert spin_until(lambda: late.msgs[-1].threshold == pytest.approx(0.6), det, io, timeout=TIMEOUT)


def test_newest_frame_wins_batches_and_diagnostics(start_detector, make_node, spin_until):
    # A long batching window: the worker waits for the second camera, meanwhile cam0's first frame
    # is overwritten by its second one (dropped), then both cameras go through one forward pass.
    det = start_detector(camera_topics=["/cam0/image_raw", "/cam1/image_raw"], max_batch_latency_ms=3000.0,
                         diagnostics_period=0.2)
    io = make_node("tester")
    pubs = [io.create_publisher(Image, f"/cam{i}/image_raw", RELIABLE) for i in range(2)]
    outs = [Listener(io, Detection2DArray, f"/cam{i}/detections") for i in range(2)]
    diags = Listener(io, DiagnosticArray, "/diagnostics")
    assert spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), det, io, timeout=TIMEOUT)
    assert spin_until(lambda: det.count_publishers("/cam0/image_raw") > 0 and det.count_publishers("/cam1/image_raw") > 0,
                      det, io, timeout=TIMEOUT)
    pubs[0].publish(image_msg(scene(), stamp=(1, 0)))
    assert spin_until(lambda: det.stats()["cameras"]["/cam0/image_raw"]["received"] == 1, det, io, timeout=TIMEOUT)
    pubs[0].publish(image_msg(scene(), stamp=(2, 0)))
    assert spin_until(lambda: det.stats()["cameras"]["/cam0/image_raw"]["received"] == 2, det, io, timeout=TIMEOUT)
    pubs[1].publish(image_msg(scene(2), stamp=(3, 0)))
    assert spin_until(lambda: outs[0].msgs and outs[1].msgs, det, io, timeout=TIMEOUT)
    assert [stamp_of(m) for m in outs[0].msgs] == [(2, 0)]  # the stale frame was dropped, not processed
    st = det.stats()
    assert st["cameras"]["/cam0/image_raw"]["dropped"] == 1 and st["cameras"]["/cam0/image_raw"]["processed"] == 1
    assert st["batches"] == 1 and st["mean_batch_size"] == 2.0

    def diag_values():
        for arr in reversed(diags.msgs):
            for status in arr.status:
                if status.name.endswith("detector"):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    assert spin_until(lambda: diag_values().get("/cam1/image_raw processed") == "1", det, io, timeout=TIMEOUT)
    values = diag_values()
    assert values["/cam0/image_raw dropped"] == "1" and values["/cam0/image_raw rejected"] == "0"
    assert float(values["latency_p50_ms"]) > 0 and float(values["latency_p99_ms"]) >= float(values["latency_p50_ms"])
    assert "fps" in values and values["state"] == "active"
    # mean stage times per batch: the message covering the one batch has them, later ones say "nan"
    stages = [
        {k: float(kv.value) for kv in st.values if (k := kv.key).endswith("_ms_per_batch")}
        for arr in diags.msgs for st in arr.status if st.name.endswith("detector")
    ]
    assert all(set(d) == {f"{n}_ms_per_batch" for n in ("convert", "detect", "publish", "annotate")} for d in stages)
    timed = [d for d in stages if not math.isnan(d["detect_ms_per_batch"])]
    assert len(timed) == 1  # each message averages the batches since the previous one
    assert timed[0]["detect_ms_per_batch"] > 0 and timed[0]["convert_ms_per_batch"] >= 0
    assert timed[0]["annotate_ms_per_batch"] == 0.0  # nobody subscribed to the annotated images
    hardware = {st.hardware_id for arr in diags.msgs for st in arr.status if st.name.endswith("detector")}
    assert hardware == {f"cpu ({'onnxruntime' if onnxruntime_available() else 'torch'})"}  # backend auto on CPU


def test_lifecycle_and_missing_weights(start_detector, make_node, spin_until, tmp_path):
    import gc

    det = start_detector()
    assert det.state == "active" and det._detector is not None
    assert gc.get_freeze_count() > 0  # the long-lived objects are out of the cyclic GC's way while active
    det.trigger_deactivate()
    assert det.state == "inactive" and det._detector is None  # model freed on deactivate
    assert gc.get_freeze_count() == 0  # ... and collectable again
    det.trigger_activate()
    io = make_node("tester")
    pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    out = Listener(io, Detection2DArray, "/cam0/detections")
    assert publish_until(spin_until, pub, image_msg(scene()), lambda: len(out.msgs) > 0, det, io)

    broken = start_detector("broken_detector", autostart=False, weights=str(tmp_path / "nope.safetensors"))
    assert broken.autostart() is False
    assert broken.state == "unconfigured"
    assert "model file not found" in broken.last_error and "\n" not in broken.last_error
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(64))
    assert broken.set_parameters([Parameter("weights", value=str(corrupt))])[0].successful  # allowed: unconfigured
    assert broken.autostart() is False and "corrupt" in broken.last_error

    # an out-of-range value from a params file / overrides fails configure with its reason
    bad = start_detector("bad_params", autostart=False, score_threshold=1.5)
    assert bad.autostart() is False and bad.state == "unconfigured" and "1.5" in bad.last_error


# ------------------------------------------------------------------ the console script, as a process


def _spawn(*ros_args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "centernet_ros.ros.node", "--ros-args", *ros_args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_console_script_with_params_file(tiny_weights, make_node, spin_until):
    proc = _spawn("--params-file", str(REPO / "config" / "detect.yaml"), "-p", f"weights:={tiny_weights}",
                  "-p", "device:=cpu", "-p", "camera_topics:=[/proc/image_raw]")
    try:
        io = make_node("tester")
        pub = io.create_publisher(Image, "/proc/image_raw", RELIABLE)
        out = Listener(io, Detection2DArray, "/proc/detections")
        assert publish_until(spin_until, pub, image_msg(scene(), stamp=(42, 1)), lambda: len(out.msgs) > 0, io,
                             timeout=90.0)
        assert stamp_of(out.msgs[0]) == (42, 1)
        best = max(out.msgs[0].detections, key=lambda d: d.results[0].hypothesis.score)
        assert iou(corners(best), SCENE_BOX) > 0.7
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_console_script_with_missing_weights_stays_up_with_one_error_line(make_node, spin_until, tmp_path):
    missing = tmp_path / "missing.safetensors"
    proc = _spawn("--params-file", str(REPO / "config" / "detect.yaml"), "-p", f"weights:={missing}")
    try:
        io = make_node("tester")
        diags = Listener(io, DiagnosticArray, "/diagnostics")
        # it keeps running (no crash loop) and reports the problem on /diagnostics
        assert spin_until(lambda: any(s.level == s.ERROR for a in diags.msgs for s in a.status), io, timeout=90.0)
        assert proc.poll() is None
    finally:
        code, _, err = _stop(proc)
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "model file not found" in errors[0] and str(missing) in errors[0], err
    assert "Traceback" not in err
    assert code == 0


# ------------------------------------------------------------------ video publisher and demo


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

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "centernet_ros.ros.demo", "--video", str(scene_clip), "--weights", str(tiny_weights),
           "--device", "cpu", "--input-size", "128", "128", "--max-frames", "5", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["frames"] == 5 and summary["frames_published"] == 5 and summary["frames_written"] == 5
    assert summary["dropped"] == 0 and summary["rejected"] == 0
    assert summary["input_size"] == [128, 128] and summary["device"] == "cpu"
    assert summary["detections_per_class"].get("box", 0) >= 5  # class names come from the model / LabelInfo
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    assert summary["fps"] > 0
    assert "frames: 5 processed" in proc.stdout and "box" in proc.stdout
    written = _read_frames(out / "demo.mp4")
    source = _read_frames(scene_clip)[:5]
    assert len(written) == 5 and written[0].shape == (180, 320, 3)
    # the boxes are drawn: the written frames differ from the input along the rectangle's outline
    assert (np.abs(written[0].astype(int) - source[0].astype(int)).max(axis=2) > 60).sum() > 200
