"""vision_msgs as installed for this package: interface layout and RIHS01 type hashes.

Under `make setup` vision_msgs is generated from .ci/vision_msgs; on a ROS 2 install it is the
distribution's package. Either way the interface must be vision_msgs 4.x, whose type hashes
are fixed below (a subscriber of another vision_msgs build only matches when they agree).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

vision_msgs_msg = pytest.importorskip(
    "vision_msgs.msg", reason="ROS 2 test: vision_msgs is not importable; `make test` installs it"
)

# vision_msgs 4.x (Humble .. Kilted) type hashes.
EXPECTED_HASHES = {
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
}

# Field names and types, in order, of the vision_msgs 4.x interfaces this project relies on.
EXPECTED_FIELDS = {
    "Point2D": {"x": "double", "y": "double"},
    "Pose2D": {"position": "vision_msgs/Point2D", "theta": "double"},
    "BoundingBox2D": {"center": "vision_msgs/Pose2D", "size_x": "double", "size_y": "double"},
    "BoundingBox2DArray": {
        "header": "std_msgs/Header",
        "boxes": "sequence<vision_msgs/BoundingBox2D>",
    },
    "ObjectHypothesis": {"class_id": "string", "score": "double"},
    "ObjectHypothesisWithPose": {
        "hypothesis": "vision_msgs/ObjectHypothesis",
        "pose": "geometry_msgs/PoseWithCovariance",
    },
    "Detection2D": {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
        "bbox": "vision_msgs/BoundingBox2D",
        "id": "string",
    },
    "Detection2DArray": {
        "header": "std_msgs/Header",
        "detections": "sequence<vision_msgs/Detection2D>",
    },
    "Classification": {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesis>",
    },
    "VisionClass": {"class_id": "uint16", "class_name": "string"},
    "LabelInfo": {
        "header": "std_msgs/Header",
        "class_map": "sequence<vision_msgs/VisionClass>",
        "threshold": "float",
    },
    "VisionInfo": {
        "header": "std_msgs/Header",
        "method": "string",
        "database_location": "string",
        "database_version": "int32",
    },
}


def _share_dir() -> Path:
    ament = pytest.importorskip("ament_index_python.packages")
    return Path(ament.get_package_share_directory("vision_msgs"))


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_fields_match_vision_msgs_4(name):
    cls = getattr(vision_msgs_msg, name)
    assert list(cls.get_fields_and_field_types().items()) == list(EXPECTED_FIELDS[name].items())


def test_defaults():
    det = vision_msgs_msg.Detection2D()
    assert det.id == "" and list(det.results) == []
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.theta) == (0, 0, 0)
    assert det.bbox.size_x == det.bbox.size_y == 0.0
    hyp = vision_msgs_msg.ObjectHypothesisWithPose()
    assert hyp.pose.pose.orientation.w == 1.0 and list(hyp.pose.covariance) == [0.0] * 36
    info = vision_msgs_msg.LabelInfo()
    assert info.threshold == 0.0 and list(info.class_map) == []
    hypothesis = vision_msgs_msg.ObjectHypothesis()
    assert (hypothesis.class_id, hypothesis.score) == ("", 0.0)


@pytest.mark.parametrize("name", sorted(EXPECTED_HASHES))
def test_type_description_hash(name):
    path = _share_dir() / "msg" / f"{name}.json"
    if not path.exists() and os.environ.get("ROS_DISTRO") == "humble":
        pytest.skip("type descriptions and hashes exist from ROS 2 Iron on")
    description = json.loads(path.read_text())
    hashes = {entry["type_name"]: entry["hash_string"] for entry in description["type_hashes"]}
    assert hashes[f"vision_msgs/msg/{name}"] == EXPECTED_HASHES[name]
    # Nested vision_msgs types are listed with their own hashes; they must agree with ours too.
    for other, expected in EXPECTED_HASHES.items():
        if f"vision_msgs/msg/{other}" in hashes:
            assert hashes[f"vision_msgs/msg/{other}"] == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_HASHES))
def test_type_hash_advertised_on_the_graph(make_node, spin_until, name):
    """The hash compiled into the C type support, as the middleware advertises it."""
    from rclpy.qos import QoSProfile

    node = make_node(f"test_hash_{name.lower()}")
    topic = f"/type_hash_probe_{name.lower()}"
    node.create_publisher(getattr(vision_msgs_msg, name), topic, QoSProfile(depth=1))
    infos: list = []

    def found() -> bool:
        infos[:] = node.get_publishers_info_by_topic(topic)
        return len(infos) == 1

    assert spin_until(found, node)
    assert infos[0].topic_type == f"vision_msgs/msg/{name}"
    if not hasattr(infos[0], "topic_type_hash") and os.environ.get("ROS_DISTRO") == "humble":
        pytest.skip("type hashes exist from ROS 2 Iron on")
    assert str(infos[0].topic_type_hash) == EXPECTED_HASHES[name]
