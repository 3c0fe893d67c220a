"""The detector node's intake and worker without a ROS graph: fair batches (round robin), and every frame
counted once (deactivation, the worker's error path, a publisher gone), with deterministic receive times.
"""
from __future__ import annotations

import array
import itertools

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")
from sensor_msgs.msg import Image  # noqa: E402

from centernet_ros.detector import ImageDetections  # noqa: E402
from centernet_ros.ros.diagnostics import Stats, detector_status  # noqa: E402
from centernet_ros.ros.intake import Camera, Intake  # noqa: E402
from centernet_ros.ros.params import BatchSettings, NodeSettings  # noqa: E402
from centernet_ros.ros.worker import Worker  # noqa: E402

CLOCK = itertools.count(1_000_000)  # fake monotonic ns: one tick per frame, strictly increasing


def make_intake(n: int, max_batch_size: int) -> Intake:
    intake = Intake()
    intake.cams = [Camera(index=i, topic=f"/cam{i}/image_raw", transport="raw", detections_topic=f"/cam{i}/detections",
                          annotated_topic=f"/cam{i}/detections_image") for i in range(n)]
    intake.batch = BatchSettings(max_batch_size=max_batch_size, max_batch_latency_ms=0.0)
    intake.start(now_ns=next(CLOCK))
    return intake


def balanced(cam: Camera, taken: int) -> bool:
    """received = taken by the worker + dropped + still pending."""
    return cam.received == taken + cam.dropped + (cam.pending is not None)


@pytest.mark.parametrize("n, batch_size", [(4, 1), (4, 3), (3, 2), (8, 5)])
def test_cameras_share_the_batches_when_not_all_fit(n, batch_size):
    # Every camera delivers one frame per round, always in the same order (cam0 first, as an executor
    # serves its subscriptions), and the node takes one batch per round: fewer frames than arrive.
    # Oldest-receive-time-first served cam0 in every batch; round robin gives each camera its share.
    intake = make_intake(n, batch_size)
    taken = [0] * n
    rounds = 10 * n
    for _ in range(rounds):
        for cam in intake.cams:
            intake.offer(cam, "frame", now_ns=next(CLOCK))
        batch = intake.take_batch()
        assert len(batch) == batch_size and len({c.index for c, _, _ in batch}) == batch_size
        assert [t for _, _, t in batch] == sorted(t for _, _, t in batch)  # oldest first within the batch
        for cam, _, _ in batch:
            taken[cam.index] += 1
    assert taken == [rounds * batch_size // n] * n
    assert all(balanced(cam, taken[cam.index]) for cam in intake.cams)


def test_uneven_rates_still_get_their_turn():
    # cam0 sends 3 frames for every frame of the others; one frame per batch: each camera with a frame
    # pending gets served in turn, so the slow cameras are not starved by the fast one.
    intake = make_intake(3, 1)
    taken = [0, 0, 0]
    for r in range(30):
        for _ in range(3):
            intake.offer(intake.cams[0], "fast", now_ns=next(CLOCK))
        for cam in intake.cams[1:]:
            intake.offer(cam, "slow", now_ns=next(CLOCK))
        for cam, _, _ in intake.take_batch():
            taken[cam.index] += 1
    assert taken == [10, 10, 10]
    assert all(balanced(cam, taken[cam.index]) for cam in intake.cams)


def test_all_pending_frames_go_when_the_batch_has_room():
    intake = make_intake(3, 8)
    for cam in reversed(intake.cams):
        intake.offer(cam, cam.index, now_ns=next(CLOCK))
    assert [msg for _, msg, _ in intake.take_batch()] == [2, 1, 0]  # all, oldest first


def test_deactivation_counts_pending_frames_as_dropped():
    intake = make_intake(2, 1)
    intake.offer(intake.cams[0], "a", now_ns=next(CLOCK))
    intake.offer(intake.cams[0], "b", now_ns=next(CLOCK))  # overwrites a
    intake.offer(intake.cams[1], "c", now_ns=next(CLOCK))
    intake.close()
    assert intake.take_batch() == []  # the worker stops taking frames
    intake.offer(intake.cams[1], "late", now_ns=next(CLOCK))  # after close: not taken in at all
    assert intake.clear_pending("pending at deactivation") == 2
    cam0, cam1 = intake.cams
    assert (cam0.received, cam0.dropped, cam1.received, cam1.dropped) == (2, 2, 1, 1)
    assert cam0.last_drop == cam1.last_drop == "pending at deactivation"
    assert cam0.pending is None and cam1.pending is None


def test_silent_and_incompatible_cameras_warn():
    intake = make_intake(2, 2)
    t0 = intake.cams[0].last_frame_ns
    cam0, cam1 = intake.cams
    assert cam0.warning(t0 + int(4.9e9), 5.0) == ""
    assert cam0.warning(t0 + int(6e9), 5.0) == "no frames for 6.0 s"
    intake.offer(cam0, "x", now_ns=t0 + int(6e9))
    assert cam0.warning(t0 + int(7e9), 5.0) == ""  # a frame arrived
    intake.incompatible(cam1, "RELIABILITY", now_ns=t0 + 10)
    assert "incompatible QoS" in cam1.warning(t0 + 20, 5.0) and "RELIABILITY" in cam1.warning(t0 + 20, 5.0)
    intake.offer(cam1, "y", now_ns=t0 + 30)  # a compatible publisher delivers again
    assert cam1.warning(t0 + 40, 5.0) == ""


# ------------------------------------------------------------------------------------------ worker


class Logger:
    def __init__(self):
        self.lines: list[str] = []

    def error(self, text, **kwargs):
        self.lines.append(text)


class Publisher:
    def __init__(self, fail: bool = False):
        self.sent: list = []
        self.fail = fail

    def publish(self, msg):
        if self.fail:
            raise RuntimeError("publisher exploded " + "x" * 5000)
        self.sent.append(msg)

    def get_subscription_count(self):
        return 0


class FakeDetector:
    backend_error = compile_error = None

    def __init__(self, fail: bool = False):
        self.fail = fail

    def detect(self, arrays, orders):
        if self.fail:
            raise RuntimeError("forward pass failed")
        return [ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                for _ in arrays]


def frame(encoding: str = "bgr8") -> Image:
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.step = 4, 4, encoding, 12
    msg.data = array.array("B", bytes(48))
    return msg


def make_worker(n: int, detector) -> tuple[Intake, Worker, Logger]:
    intake = make_intake(n, n)
    logger = Logger()
    worker = Worker(intake, Stats(intake.lock), logger)
    worker._detector = detector  # as start() sets it, without the thread
    for cam in intake.cams:
        cam.det_pub = Publisher()
    return intake, worker, logger


def batch_of(intake: Intake, msgs) -> list:
    for cam, msg in zip(intake.cams, msgs):
        intake.offer(cam, msg, now_ns=next(CLOCK))
    return intake.take_batch()


def closes(cam: Camera) -> bool:
    return cam.received == cam.processed + cam.dropped + cam.rejected


def test_a_failed_forward_pass_rejects_only_the_frames_not_counted_yet():
    intake, worker, logger = make_worker(2, FakeDetector(fail=True))
    worker.run_batch(batch_of(intake, [frame("32FC1"), frame()]))  # cam0 undecodable, cam1 reaches detect
    cam0, cam1 = intake.cams
    assert (cam0.rejected, cam1.rejected) == (1, 1)  # was: cam0 counted twice
    assert "unsupported encoding" in cam0.last_reject and cam1.last_reject == "inference failed: forward pass failed"
    assert closes(cam0) and closes(cam1)
    assert any(line == "inference failed: forward pass failed" for line in logger.lines)


def test_a_failure_after_publishing_counts_the_published_frame_once():
    intake, worker, logger = make_worker(3, FakeDetector())
    intake.cams[1].det_pub = Publisher(fail=True)  # cam0 is published, then cam1's publish raises
    worker.run_batch(batch_of(intake, [frame(), frame(), frame()]))
    cam0, cam1, cam2 = intake.cams
    assert (cam0.processed, cam0.rejected) == (1, 0) and len(cam0.det_pub.sent) == 1
    assert (cam1.processed, cam1.rejected, cam2.processed, cam2.rejected) == (0, 1, 0, 1)
    assert all(closes(c) for c in intake.cams)
    assert len(cam1.last_reject) <= 200 and cam1.last_reject.endswith("chars]")  # the exception text is bounded
    assert all(len(line) <= 250 for line in logger.lines)


def test_a_publisher_gone_mid_batch_drops_the_rest():
    intake, worker, _ = make_worker(3, FakeDetector())
    intake.cams[1].det_pub = None  # cleaned up while the batch ran
    worker.run_batch(batch_of(intake, [frame(), frame(), frame()]))
    cam0, cam1, cam2 = intake.cams
    assert (cam0.processed, cam1.dropped, cam2.dropped) == (1, 1, 1)
    assert cam2.last_drop == "detections publisher gone (the node was cleaned up)"
    assert all(closes(c) for c in intake.cams)


def test_no_model_drops_the_batch():
    intake, worker, _ = make_worker(2, None)
    worker.run_batch(batch_of(intake, [frame(), frame()]))
    assert all(c.dropped == 1 and closes(c) for c in intake.cams)


def test_diagnostics_bound_every_message_string():
    intake, worker, _ = make_worker(1, FakeDetector())
    worker.run_batch(batch_of(intake, [frame("e" * 1_000_000)]))
    st = Stats(intake.lock).snapshot(intake.cams, "active", camera_timeout=5.0)
    status = detector_status("det", st, 0.0)
    assert intake.cams[0].rejected == 1
    assert max(len(kv.value) for kv in status.values) <= 200
    assert sum(len(kv.key) + len(kv.value) for kv in status.values) < 4000


@pytest.mark.parametrize("name, bad", [("camera_timeout", 0.0), ("camera_timeout", float("inf")),
                                       ("camera_timeout", float("nan")), ("max_compressed_pixels", 0),
                                       ("max_compressed_pixels", True), ("max_compressed_pixels", 1.5)])
def test_health_settings_are_validated(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be .*got {bad!r}"):
        NodeSettings(**{name: bad})


def test_gaps_in_each_publishers_sequence_numbers_count_as_lost():
    intake = make_intake(1, 1)
    cam = intake.cams[0]
    for seq in (1, 2, 5, 6, 10):  # 3, 4, 7, 8, 9 never arrived
        intake.receive(cam, "f", {"publication_sequence_number": seq, "publisher_gid": {"data": b"A"}})
    for seq in (100, 101, 103):  # a second publisher on the topic: counted from its own first frame
        intake.receive(cam, "g", {"publication_sequence_number": seq, "publisher_gid": {"data": b"B"}})
    intake.receive(cam, "late", {"publication_sequence_number": 4, "publisher_gid": {"data": b"A"}})  # out of order
    intake.lost(cam, 3)  # the middleware's message_lost events: counted apart
    c = cam.counters()
    assert (c["received"], c["lost"], c["lost_reported"]) == (9, 6, 3)
    plain = make_intake(1, 1)  # no sequence numbers (another middleware): lost = what the middleware reports
    plain.receive(plain.cams[0], "f", {"publication_sequence_number": None, "publisher_gid": None})
    plain.lost(plain.cams[0], 2)
    assert plain.cams[0].counters()["lost"] == 2
