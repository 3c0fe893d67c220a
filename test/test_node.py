"""The detector node on a real ROS 2 graph (rclpy over rmw_fastrtps_cpp; isolation from conftest.py):
detections in the original pixels, transports, bad inputs, fallbacks, QoS, batching and diagnostics,
the lifecycle, and the console script as a process.  Fixtures and helpers: node_testing.py.
"""
from __future__ import annotations

import array
import math
import os

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
pytest.register_assert_rewrite("node_testing")  # shared fixtures (also loaded as a plugin below)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from centernet_ros.detector import onnxruntime_available  # noqa: E402
from node_testing import (  # noqa: E402
    BEST_EFFORT,
    RELIABLE,
    REPO,
    SCENE_BOX,
    TIMEOUT,
    Listener,
    corners,
    image_msg,
    iou,
    publish_until,
    scene,
    spawn_node,
    stamp_of,
    stop_process,
)

pytest_plugins = ["node_testing"]


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


def test_console_script_with_params_file(tiny_weights, make_node, spin_until):
    proc = spawn_node("--params-file", str(REPO / "config" / "detect.yaml"), "-p", f"weights:={tiny_weights}",
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
        code, _, err = stop_process(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_console_script_with_missing_weights_stays_up_with_one_error_line(make_node, spin_until, tmp_path):
    missing = tmp_path / "missing.safetensors"
    proc = spawn_node("--params-file", str(REPO / "config" / "detect.yaml"), "-p", f"weights:={missing}")
    try:
        io = make_node("tester")
        diags = Listener(io, DiagnosticArray, "/diagnostics")
        # it keeps running (no crash loop) and reports the problem on /diagnostics
        assert spin_until(lambda: any(s.level == s.ERROR for a in diags.msgs for s in a.status), io, timeout=90.0)
        assert proc.poll() is None
    finally:
        code, _, err = stop_process(proc)
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "model file not found" in errors[0] and str(missing) in errors[0], err
    assert "Traceback" not in err
    assert code == 0
