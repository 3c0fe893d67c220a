"""The detector node under hostile input and unhealthy cameras, on a real ROS 2 graph: decompression bombs
rejected in bounded memory, message strings bounded in /diagnostics, silent and incompatible-QoS cameras
reported WARN with the reason, frames pending at deactivation counted.  Fixtures: node_testing.py.
"""
from __future__ import annotations

import array
import sys
import time
from pathlib import Path

import cv2
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
pytest.register_assert_rewrite("node_testing")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from node_testing import (  # noqa: E402
    BEST_EFFORT,
    RELIABLE,
    TIMEOUT,
    Listener,
    image_msg,
    publish_until,
    scene,
    spawn_node,
    stop_process,
)

sys.path.insert(0, str(Path(__file__).parent))
from imaging import bmp_rle8_bomb, png_zero_bomb  # noqa: E402

pytest_plugins = ["node_testing"]


def statuses(diags: Listener, suffix: str) -> list[DiagnosticStatus]:
    """Every status named ``...<suffix>`` received so far, oldest first."""
    return [st for arr in diags.msgs for st in arr.status if st.name.endswith(suffix)]


def values_of(st: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in st.values}


def latest_values(diags: Listener, suffix: str) -> dict[str, str]:
    found = statuses(diags, suffix)
    return values_of(found[-1]) if found else {}


def compressed(payload: bytes, stamp: int = 1) -> CompressedImage:
    msg = CompressedImage()
    msg.header.stamp.sec, msg.format = stamp, "png"
    msg.data = array.array("B", payload)
    return msg


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a running process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the node's peak RSS from /proc")
def test_decompression_bombs_are_rejected_and_the_node_stays_under_1_gb(tiny_weights, make_node, spin_until):
    topic = "/bomb/image_raw/compressed"
    proc = spawn_node("-p", f"weights:={tiny_weights}", "-p", "device:=cpu", "-p", f"camera_topics:=[{topic}]",
                      "-p", "diagnostics_period:=0.3")
    try:
        io = make_node("tester")
        pub = io.create_publisher(CompressedImage, topic, RELIABLE)
        diags = Listener(io, DiagnosticArray, "/diagnostics")

        def last_reject() -> str:
            return latest_values(diags, "detector").get(f"{topic} last_reject", "")

        bombs = [png_zero_bomb(), bmp_rle8_bomb()]  # 30000x30000 each: 875 KB and 1,080 bytes
        assert 850_000 < len(bombs[0]) < 900_000 and len(bombs[1]) == 1080
        # Wait on each bomb's own reason: a slow start-up may see the first one published (and rejected) twice.
        reasons = ["png declares 30000x30000", "not a JPEG or PNG"]
        for k, (bomb, reason) in enumerate(zip(bombs, reasons), start=1):
            done = lambda reason=reason: last_reject().startswith(reason)  # noqa: E731
            assert publish_until(spin_until, pub, compressed(bomb, k), done, io, timeout=90.0), (k, last_reject())
        values = latest_values(diags, "detector")
        assert values[f"{topic} processed"] == "0" and int(values[f"{topic} rejected"]) >= 2
        assert peak_rss_kib(proc.pid) < 1024 * 1024  # decoding them took the node to 5.8 GB
        jpeg = cv2.imencode(".jpg", scene())[1].tobytes()
        out = Listener(io, Detection2DArray, "/bomb/detections")  # ... and it still answers a real image
        assert publish_until(spin_until, pub, compressed(jpeg, 9), lambda: len(out.msgs) > 0, io, timeout=60.0)
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err[-2000:]
    lines = [line for line in err.splitlines() if "[ERROR]" in line]
    assert any("png declares 30000x30000 = 900000000 pixels" in line for line in lines), err[-2000:]
    assert "Traceback" not in err and not any("libpng" in line for line in err.splitlines())


def test_max_compressed_pixels_is_the_limit(start_detector, make_node, spin_until):
    det = start_detector(camera_topics=["/cam0/image_raw/compressed"], max_compressed_pixels=320 * 180 - 1)
    io = make_node("tester")
    pub = io.create_publisher(CompressedImage, "/cam0/image_raw/compressed", RELIABLE)
    jpeg = cv2.imencode(".jpg", scene())[1].tobytes()  # 320x180: one pixel above the limit
    cam = "/cam0/image_raw/compressed"
    assert publish_until(spin_until, pub, compressed(jpeg), lambda: det.stats()["cameras"][cam]["rejected"] > 0, det, io)
    assert "above the limit of 57599" in det.stats()["cameras"][cam]["last_reject"]


def test_a_1mb_encoding_string_is_bounded_in_diagnostics_and_the_log(start_detector, make_node, spin_until, capfd):
    det = start_detector(diagnostics_period=0.2)
    io = make_node("tester")
    pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    diags = Listener(io, DiagnosticArray, "/diagnostics")
    msg = image_msg(scene(), encoding="e" * 1_000_000)
    assert publish_until(spin_until, pub, msg, lambda: det.stats()["cameras"]["/cam0/image_raw"]["rejected"] > 0, det, io)
    assert spin_until(lambda: latest_values(diags, "detector").get("/cam0/image_raw rejected", "0") != "0", det, io,
                      timeout=TIMEOUT)
    for arr in diags.msgs[-3:]:
        for st in arr.status:
            assert len(st.message) <= 1000
            assert all(len(kv.value) <= 200 for kv in st.values)
            assert sum(len(kv.value) for kv in st.values) < 10_000  # was 1 MB per message
    reason = latest_values(diags, "detector")["/cam0/image_raw last_reject"]
    assert reason.startswith("unsupported encoding 'eeee") and reason.endswith("chars]")
    assert max(len(line) for line in capfd.readouterr().err.splitlines()) < 1000


def test_silent_and_incompatible_qos_cameras_are_reported_warn(start_detector, make_node, spin_until):
    # The node requires reliable delivery; cam1's publisher offers best effort (incompatible), cam2 sends nothing.
    topics = ["/cam0/image_raw", "/cam1/image_raw", "/cam2/image_raw"]
    det = start_detector("health", camera_topics=topics, qos_reliability="reliable", camera_timeout=2.0,
                         diagnostics_period=0.2)
    io = make_node("tester")
    good = io.create_publisher(Image, topics[0], RELIABLE)
    io.create_publisher(Image, topics[1], BEST_EFFORT)
    diags = Listener(io, DiagnosticArray, "/diagnostics")

    def levels() -> dict[str, tuple[int, str]]:
        out = {}
        for st in (statuses(diags, "")[-8:]):
            for topic in topics:
                if st.name.endswith(f"camera {topic}"):
                    out[topic] = (st.level, st.message)
        return out

    def reported() -> bool:
        lv = levels()
        return (lv.get(topics[0], (None,))[0] == DiagnosticStatus.OK
                and lv.get(topics[1], (None,))[0] == DiagnosticStatus.WARN and "incompatible" in lv[topics[1]][1]
                and lv.get(topics[2], (None,))[0] == DiagnosticStatus.WARN and "no frames" in lv[topics[2]][1])

    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and not reported():
        good.publish(image_msg(scene()))
        spin_until(reported, det, io, timeout=0.2)
    lv = levels()
    assert reported(), lv
    assert "RELIABILITY" in lv[topics[1]][1]
    assert float(lv[topics[2]][1].split()[3]) >= 2.0  # "no frames for N s", N >= camera_timeout
    detector = statuses(diags, "health: detector")[-1]
    assert detector.level == DiagnosticStatus.WARN
    assert topics[1] in detector.message and topics[2] in detector.message and topics[0] not in detector.message
    values = values_of(detector)
    assert all(f"{t} lost" in values for t in topics)  # the middleware's losses, per camera


def test_a_frame_pending_at_deactivation_is_counted_dropped(start_detector, make_node, spin_until):
    # A long batching window keeps cam0's frame pending (the worker waits for cam1) when the node deactivates.
    det = start_detector(camera_topics=["/cam0/image_raw", "/cam1/image_raw"], max_batch_latency_ms=60_000.0)
    io = make_node("tester")
    pub = io.create_publisher(Image, "/cam0/image_raw", RELIABLE)
    assert spin_until(lambda: pub.get_subscription_count() > 0, det, io, timeout=TIMEOUT)
    pub.publish(image_msg(scene()))
    cam = "/cam0/image_raw"
    assert spin_until(lambda: det.stats()["cameras"][cam]["received"] == 1, det, io, timeout=TIMEOUT)
    det.trigger_deactivate()
    c = det.stats()["cameras"][cam]
    assert (c["received"], c["processed"], c["dropped"], c["rejected"]) == (1, 0, 1, 0)
    assert c["last_drop"] == "pending at deactivation"
    det.trigger_activate()  # counters go on across cycles, and still close
    assert publish_until(spin_until, pub, image_msg(scene()), lambda: det.stats()["cameras"][cam]["received"] >= 2,
                         det, io)
    det.trigger_deactivate()
    c = det.stats()["cameras"][cam]
    assert c["received"] == c["processed"] + c["dropped"] + c["rejected"]
