"""Real ROS 2 graph tests (rclpy over rmw_fastrtps_cpp, no mocks).

- Two nodes exchange sensor_msgs/Image and vision_msgs/Detection2DArray; every field of the
  received messages is compared with an independently built copy of what was sent.
- LabelInfo published with transient-local durability reaches a subscriber that joins later,
  in the same process and from another process; a volatile late joiner gets nothing.

Isolation (domain id, localhost discovery, rmw) comes from conftest.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it"
)
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import (  # noqa: E402
    Detection2D,
    Detection2DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)

RELIABLE = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
LATCHED = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def assert_msg_equal(got, want, path: str = "msg") -> None:
    """Compare two ROS messages field by field (recursively), naming the first differing field."""
    assert type(got) is type(want), f"{path}: type {type(got).__name__} != {type(want).__name__}"
    if hasattr(want, "get_fields_and_field_types"):
        fields = list(want.get_fields_and_field_types())
        assert fields, f"{path}: message type without fields"
        for field in fields:
            assert_msg_equal(getattr(got, field), getattr(want, field), f"{path}.{field}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_msg_equal(g, w, f"{path}[{i}]")
    elif isinstance(want, np.ndarray):
        assert got.shape == want.shape and got.dtype == want.dtype, f"{path}: {got!r} != {want!r}"
        assert np.array_equal(got, want), f"{path}: arrays differ"
    else:  # scalars, str, bytes, array.array (Image.data)
        assert got == want, f"{path}: {got!r} != {want!r}"


def make_image(height: int, width: int, encoding: str, seed: int) -> Image:
    channels = {"bgr8": 3, "rgb8": 3, "mono8": 1}[encoding]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    msg = Image()
    msg.header.stamp.sec = 1_700_000_000 + seed
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = f"camera_{seed}_optical_frame"
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = 0
    msg.step = width * channels
    msg.data = pixels.tobytes()
    return msg


def make_detections(image: Image) -> Detection2DArray:
    """A fully populated Detection2DArray derived deterministically from `image` (empty -> none)."""
    out = Detection2DArray()
    out.header = image.header
    n = 0 if image.height == 0 else 3
    for i in range(n):
        det = Detection2D()
        det.header = image.header
        det.id = f"track-{i}" if i % 2 == 0 else ""
        det.bbox.center.position.x = 10.25 + 40.5 * i
        det.bbox.center.position.y = 20.125 + 3.0 * i
        det.bbox.center.theta = 0.1 * i - math.pi / 8
        det.bbox.size_x = 12.5 + i
        det.bbox.size_y = 7.75 * (i + 1)
        for j in range(i + 1):  # a varying number of hypotheses per detection
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = ["car", "bus", "truck"][j]
            hyp.hypothesis.score = 0.9 - 0.25 * j
            hyp.pose.pose.position.x = float(i)
            hyp.pose.pose.position.y = float(j)
            hyp.pose.pose.position.z = -1.5
            hyp.pose.pose.orientation.x = 0.0
            hyp.pose.pose.orientation.y = 0.0
            hyp.pose.pose.orientation.z = math.sin(0.2 * j)
            hyp.pose.pose.orientation.w = math.cos(0.2 * j)
            hyp.pose.covariance = np.arange(36, dtype=np.float64) * (i + 1) + j
            det.results.append(hyp)
        out.detections.append(det)
    return out


def test_middleware_is_fastrtps_in_an_isolated_domain(rclpy_context, ros_domain_id):
    assert rclpy.get_rmw_implementation_identifier() == "rmw_fastrtps_cpp"
    assert rclpy_context.get_domain_id() == ros_domain_id
    assert 1 <= ros_domain_id <= 100 or "CENTERNET_TEST_ROS_DOMAIN_ID" in os.environ
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


@pytest.mark.parametrize(
    "height,width,encoding",
    [(0, 0, "bgr8"), (48, 64, "rgb8"), (360, 640, "bgr8"), (5, 7, "mono8")],
)
def test_image_and_detections_round_trip(make_node, spin_until, height, width, encoding):
    """camera -> Image -> detector -> Detection2DArray -> camera, all over DDS."""
    camera = make_node("test_camera")
    detector = make_node("test_detector")
    received_images: list[Image] = []
    received_detections: list[Detection2DArray] = []

    def on_image(msg: Image) -> None:
        received_images.append(msg)
        det_pub.publish(make_detections(msg))

    det_pub = detector.create_publisher(Detection2DArray, "detections", RELIABLE)
    detector.create_subscription(Image, "image_raw", on_image, RELIABLE)
    camera.create_subscription(Detection2DArray, "detections", received_detections.append, RELIABLE)
    img_pub = camera.create_publisher(Image, "image_raw", RELIABLE)

    assert spin_until(
        lambda: img_pub.get_subscription_count() == 1 and det_pub.get_subscription_count() == 1,
        camera,
        detector,
    ), "nodes did not discover each other"

    sent = [make_image(height, width, encoding, seed) for seed in range(3)]
    for msg in sent:
        img_pub.publish(msg)
    assert spin_until(lambda: len(received_detections) == len(sent), camera, detector)

    assert len(received_images) == len(sent)
    for got, seed in zip(received_images, range(3)):
        assert_msg_equal(got, make_image(height, width, encoding, seed), "image")
        assert len(got.data) == got.step * got.height
    for got, seed in zip(received_detections, range(3)):
        want = make_detections(make_image(height, width, encoding, seed))
        assert_msg_equal(got, want, "detections")
        assert len(got.detections) == (0 if height == 0 else 3)


def test_label_info_reaches_late_subscriber_in_process(make_node, spin_until):
    publisher_node = make_node("test_label_publisher")
    pub = publisher_node.create_publisher(LabelInfo, "label_info", LATCHED)
    sent = LabelInfo()
    sent.header.frame_id = "camera"
    sent.header.stamp.sec = 42
    sent.threshold = 0.375  # exact in float32
    sent.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(["car", "bus"])]
    pub.publish(sent)
    spin_until(lambda: False, publisher_node, timeout=0.2)  # let the sample be stored

    # joins after the publication
    latched: list[LabelInfo] = []
    volatile: list[LabelInfo] = []
    late = make_node("test_label_late_subscriber")
    late.create_subscription(LabelInfo, "label_info", latched.append, LATCHED)
    late.create_subscription(
        LabelInfo,
        "label_info",
        volatile.append,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE),
    )
    assert spin_until(lambda: len(latched) == 1, publisher_node, late)
    assert_msg_equal(latched[0], sent, "label_info")
    # the volatile subscription is a control: it must not be handed the old sample
    spin_until(lambda: False, publisher_node, late, timeout=0.5)
    assert volatile == []
    assert len(latched) == 1


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import sys
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import LabelInfo, VisionClass

    rclpy.init()
    node = rclpy.create_node("test_label_info_process")
    qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(LabelInfo, "label_info_xproc", qos)
    msg = LabelInfo(threshold=0.5)
    msg.header.frame_id = "xproc"
    msg.class_map = [VisionClass(class_id=7, class_name="bicycle"),
                     VisionClass(class_id=65535, class_name="unicode \\u00e9")]
    pub.publish(msg)
    print("published", flush=True)
    sys.stdin.read()  # stay alive (and keep the sample) until the test closes stdin
    node.destroy_node()
    rclpy.shutdown()
    """
)


def test_label_info_reaches_late_subscriber_across_processes(make_node, spin_until, ros_domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id))
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "published", f"publisher process failed: {proc.stderr.read()}"
        received: list[LabelInfo] = []
        node = make_node("test_label_xproc_subscriber")
        node.create_subscription(LabelInfo, "label_info_xproc", received.append, LATCHED)
        assert spin_until(lambda: len(received) == 1, node, timeout=20.0)
        got = received[0]
        assert got.header.frame_id == "xproc"
        assert got.threshold == pytest.approx(0.5)
        assert [(c.class_id, c.class_name) for c in got.class_map] == [
            (7, "bicycle"),
            (65535, "unicode \u00e9"),
        ]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
