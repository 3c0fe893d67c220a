"""The detector node's parameters: declaration with descriptors (ranges), whole numbers for floating-point
parameters (params file at start-up, ``ros2 param set`` at run time), validation naming the ROS parameter,
and their effect at run time.  Fixtures and helpers: node_testing.py.
"""
from __future__ import annotations

import math
import os
import textwrap

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
pytest.register_assert_rewrite("node_testing")  # shared fixtures (also loaded as a plugin below)
import torch  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from centernet_ros.ros import params  # noqa: E402
from centernet_ros.ros.node import DetectorNode, NodeSettings, cpu_threads_for, detections_topic_for  # noqa: E402
from node_testing import (  # noqa: E402
    LATCHED,
    RELIABLE,
    TIMEOUT,
    Listener,
    image_msg,
    publish_until,
    scene,
    spawn_node,
    stamp_of,
    stop_process,
)

pytest_plugins = ["node_testing"]
INT64_MAX = 2**63 - 1


def _set_through_service(client, spin_until, *nodes, **kv):
    """What ``ros2 param set`` does: the set_parameters service, values typed as given (0 is an INTEGER)."""
    fut = client.set_parameters([Parameter(k, value=v) for k, v in kv.items()])
    assert spin_until(fut.done, *nodes, timeout=TIMEOUT)
    return fut.result().results


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


def test_runtime_threshold_and_parameter_validation(start_detector, make_node, spin_until):
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
                             ("nms_method", "fancy", "nms_method must be one of"),
                             ("decode_mode", "quad", "decode_mode must be one of"), ("score_threshold", 2, "2"),
                             ("kernel", 4, "kernel"), ("ae_threshold", 0.0, "ae_threshold"),
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


def test_label_info_reaches_a_late_subscriber_and_follows_the_threshold(start_detector, make_node, spin_until):
    det = start_detector()
    io = make_node("tester")
    assert spin_until(lambda: False, det, io, timeout=0.5) is False  # the node is up well before we subscribe
    late = Listener(io, LabelInfo, "/label_info", LATCHED)
    assert spin_until(lambda: len(late.msgs) > 0, det, io, timeout=TIMEOUT)
    info = late.msgs[-1]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "box")]
    assert info.threshold == pytest.approx(params.DECODE_DEFAULTS["score_threshold"])  # the node default (config/detect.yaml)
    assert det.set_parameters([Parameter("score_threshold", value=0.6)])[0].successful
    assert spin_until(lambda: late.msgs[-1].threshold == pytest.approx(0.6), det, io, timeout=TIMEOUT)


def test_read_decode_errors_name_the_ros_parameter():
    values = dict(params.DEFAULTS)
    for name, bad, message in [
        ("decode_mode", "quad", "decode_mode must be one of ('triplet', 'pairs'), got 'quad'"),
        ("nms_method", "fancy", "nms_method must be one of ('soft', 'soft_linear', 'hard', 'none'), got 'fancy'"),
        ("max_detections", 0, "max_detections must be an int >= 1, got 0"),
        ("nms_sigma", 0.0, "nms_sigma must be > 0, got 0.0"),  # not renamed: DecodeConfig's own words
    ]:
        with pytest.raises(ValueError) as info:
            params.read_decode({**values, name: bad})
        assert str(info.value) == message
    assert params.read_decode({**values, "max_detections": 7, "nms_method": "hard"}).max_per_image == 7
    assert params.read_decode(values).exclusive_centres is True
    assert params.read_decode({**values, "exclusive_centres": False}).exclusive_centres is False
    assert params.read_decode(values).flip_test is False
    assert params.read_decode({**values, "flip_test": True}).flip_test is True
    assert params.read_decode(values).group_score_ratio == 0.5
    assert params.read_decode({**values, "group_score_ratio": 0.0}).group_score_ratio == 0.0


def test_every_parameter_is_described_with_its_type_and_range(rclpy_context):
    node = DetectorNode("described", context=rclpy_context)
    try:
        descs = {d.name: d for d in node.describe_parameters(list(params.DEFAULTS))}
        assert set(descs) == set(params.DEFAULTS) and len(descs) == 39  # 20 node, 2 batching, 17 decode
        assert all(d.description and not d.dynamic_typing for d in descs.values())

        def floats(n):
            return [(r.from_value, r.to_value, r.step) for r in descs[n].floating_point_range]

        def ints(n):
            return [(r.from_value, r.to_value, r.step) for r in descs[n].integer_range]

        assert descs["score_threshold"].type == ParameterType.PARAMETER_DOUBLE
        assert descs["max_batch_size"].type == ParameterType.PARAMETER_INTEGER
        assert descs["camera_topics"].type == ParameterType.PARAMETER_STRING_ARRAY
        assert descs["exclusive_centres"].type == ParameterType.PARAMETER_BOOL
        assert descs["flip_test"].type == ParameterType.PARAMETER_BOOL
        assert floats("score_threshold") == [(0.0, 1.0, 0.0)] and floats("nms_iou") == [(0.0, 1.0, 0.0)]
        for name in ("max_batch_latency_ms", "diagnostics_period", "camera_timeout", "ae_threshold", "nms_sigma",
                     "small_area", "size_ratio", "group_score_ratio"):
            assert floats(name) == [(0.0, math.inf, 0.0)], name
        for name in ("max_batch_size", "qos_depth", "topk", "num_dets", "n_small", "n_large", "max_detections",
                     "max_compressed_pixels"):
            assert ints(name) == [(1, INT64_MAX, 0)], name
        assert ints("kernel") == [(1, INT64_MAX, 2)]  # odd
        assert ints("cpu_threads") == [(-1, INT64_MAX, 0)]
        for name in ("weights", "device", "decode_mode", "nms_method", "input_size", "fp16"):
            assert not descs[name].floating_point_range and not descs[name].integer_range, name
        # rclpy enforces the ranges; the reason names the ROS parameter
        for name, bad in [("kernel", 4), ("max_detections", 0), ("nms_iou", 1.5)]:
            res = node.set_parameters([Parameter(name, value=bad)])[0]
            assert not res.successful and name in res.reason and str(bad) in res.reason, res.reason
    finally:
        node.destroy_node()


def test_whole_numbers_for_float_parameters_at_start_up(rclpy_context, tiny_weights):
    overrides = dict(weights=str(tiny_weights), device="cpu", max_batch_latency_ms=5, score_threshold=0, nms_iou=1,
                     diagnostics_period=2)
    node = DetectorNode("ints", context=rclpy_context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    try:
        for name, want in [("max_batch_latency_ms", 5.0), ("score_threshold", 0.0), ("nms_iou", 1.0),
                           ("diagnostics_period", 2.0)]:
            p = node.get_parameter(name)
            assert p.type_ == Parameter.Type.DOUBLE and isinstance(p.value, float) and p.value == want, (name, p.value)
        assert node.describe_parameters(["max_batch_latency_ms"])[0].floating_point_range  # typed and ranged
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
        assert node.state == "inactive" and node.last_error == ""
    finally:
        node.close()
        node.destroy_node()


def test_params_file_with_whole_numbers_starts_the_node(tmp_path, make_node, spin_until):
    path = tmp_path / "ints.yaml"  # as users type it: 5, 0, 1 for floating-point parameters
    path.write_text(textwrap.dedent("""\
        /**:
          ros__parameters:
            autostart: false
            max_batch_latency_ms: 5
            score_threshold: 0
            nms_iou: 1
        """))
    proc = spawn_node("--params-file", str(path), "-r", "__node:=ints_detector")
    try:
        io = make_node("tester")
        client = AsyncParameterClient(io, "ints_detector")
        assert client.wait_for_services(timeout_sec=90.0), proc.poll()
        fut = client.get_parameters(["max_batch_latency_ms", "score_threshold", "nms_iou"])
        assert spin_until(fut.done, io, timeout=TIMEOUT)
        got = [(v.type, v.double_value) for v in fut.result().values]
        assert got == [(ParameterType.PARAMETER_DOUBLE, 5.0), (ParameterType.PARAMETER_DOUBLE, 0.0),
                       (ParameterType.PARAMETER_DOUBLE, 1.0)]
        fut = client.describe_parameters(["score_threshold"])  # what `ros2 param describe` shows
        assert spin_until(fut.done, io, timeout=TIMEOUT)
        (desc,) = fut.result().descriptors
        assert [(r.from_value, r.to_value) for r in desc.floating_point_range] == [(0.0, 1.0)]
        assert "score" in desc.description
        assert proc.poll() is None
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err
    assert "invalid parameters" not in err and "Traceback" not in err


def test_whole_numbers_set_at_run_time(start_detector, make_node, spin_until):
    det = start_detector()
    io = make_node("tester")
    labels = Listener(io, LabelInfo, "/label_info", LATCHED)
    client = AsyncParameterClient(io, "centernet_detector")
    assert client.wait_for_services(timeout_sec=TIMEOUT)
    results = _set_through_service(client, spin_until, det, io, score_threshold=0, max_batch_latency_ms=2)
    assert all(r.successful for r in results), [r.reason for r in results]
    for name, want in [("score_threshold", 0.0), ("max_batch_latency_ms", 2.0)]:
        p = det.get_parameter(name)
        assert p.type_ == Parameter.Type.DOUBLE and p.value == want, (name, p.type_, p.value)
    # in effect: the LabelInfo (latched) now carries the new threshold
    assert spin_until(lambda: labels.msgs and labels.msgs[-1].threshold == 0.0, det, io, timeout=TIMEOUT)
    (ok,) = _set_through_service(client, spin_until, det, io, score_threshold=1)  # whole, but out of [0, 1)
    assert not ok.successful and "score_threshold" in ok.reason and "1.0" in ok.reason, ok.reason
    assert det.get_parameter("score_threshold").value == 0.0


def test_out_of_range_start_up_value_fails_configure_then_can_be_fixed(start_detector):
    bad = start_detector("bad_max", autostart=False, max_detections=0)
    assert bad.get_parameter("max_detections").value == 0  # kept as given ...
    assert not bad.describe_parameters(["max_detections"])[0].integer_range  # ... so declared without its range
    assert bad.autostart() is False and bad.state == "unconfigured"
    assert bad.last_error == "invalid parameters: max_detections must be an int >= 1, got 0"
    assert bad.set_parameters([Parameter("max_detections", value=20)])[0].successful
    assert [(r.from_value, r.step) for r in bad.describe_parameters(["max_detections"])[0].integer_range] == [(1, 0)]
    assert bad.autostart() is True and bad.state == "active"
