"""centernet-demo's report (centernet_ros/ros/demo_report.py): box-size statistics against numpy on
the same numbers, frame indices spread over a run, the tiled picture cell by cell, and the picture made
from a written video (``python -m centernet_ros.ros.demo_report``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from centernet_ros.ros.demo_report import BoxSizes, FramePicker, describe, picture_indices, tile, write_picture

REPO = Path(__file__).resolve().parents[1]


def test_box_sizes_summary_matches_numpy():
    rng = np.random.default_rng(0)
    boxes = BoxSizes()
    frames = [(rng.uniform(5, 400, n), rng.uniform(5, 300, n)) for n in (3, 0, 7, 1, 4)]
    for w, h in frames:
        boxes.add_frame(list(w), list(h))
    s = boxes.summary((360, 640))
    widths = np.concatenate([w for w, _ in frames])
    heights = np.concatenate([h for _, h in frames])
    assert s["boxes"] == 15 and s["detections_per_frame"] == 3.0  # 15 boxes over 5 frames, the empty one too
    for key, values, extent in (("width", widths, 640), ("height", heights, 360)):
        for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("max", 1.0)):
            assert s[key]["px"][name] == pytest.approx(np.quantile(values, q), abs=0.05)
            assert s[key]["frac"][name] == pytest.approx(np.quantile(values, q) / extent, abs=5e-4)
    assert s["wider_than_half_frame"] == int((widths > 320).sum()) > 0
    text = "\n".join(describe(s))
    assert "3.0 per frame" in text and "boxes wider than half the frame: " + str(s["wider_than_half_frame"]) in text

    # without the frame size: pixels only; without boxes: None
    assert boxes.summary(None)["width"]["frac"] is None and boxes.summary(None)["wider_than_half_frame"] is None
    empty = BoxSizes()
    empty.add_frame([], [])
    assert empty.summary((360, 640)) == {"detections_per_frame": 0.0, "boxes": 0, "width": {"px": None, "frac": None},
                                         "height": {"px": None, "frac": None}, "wider_than_half_frame": 0}
    assert BoxSizes().summary(None)["detections_per_frame"] is None
    with pytest.raises(ValueError, match="2 widths but 1 heights"):
        boxes.add_frame([1, 2], [3])


def test_picture_indices_spread_over_the_run():
    assert picture_indices(922) == [76, 230, 384, 537, 691, 845]  # the bundled clip: the same frames every run
    assert picture_indices(6) == [0, 1, 2, 3, 4, 5]
    assert picture_indices(3) == [0, 1, 2]  # fewer frames than asked
    assert picture_indices(100, 4) == [12, 37, 62, 87]
    assert picture_indices(0) == []
    with pytest.raises(ValueError, match="at least 1 frame, got 0"):
        picture_indices(10, 0)


def _frames(n: int, h: int = 90, w: int = 160) -> list[np.ndarray]:
    return [np.full((h, w, 3), 20 * (i + 1), np.uint8) for i in range(n)]


def test_picker_keeps_the_wanted_frames_and_tile_lays_them_out():
    picker = FramePicker([4, 1, 2, 1])
    for frame in _frames(6):
        picker.offer(frame)
    assert sorted(picker.frames) == [1, 2, 4] and picker.seen == 6
    assert int(picker.frames[4][0, 0, 0]) == 100

    frames = {i: f for i, f in enumerate(_frames(5))}
    picture = tile(frames)  # 5 frames: 3 columns, 2 rows, the last cell black
    assert picture.shape == (180, 480, 3) and picture.dtype == np.uint8
    for k in range(5):
        r, c = divmod(k, 3)
        cell = picture[r * 90:(r + 1) * 90, c * 160:(c + 1) * 160]
        assert (cell[40:, :] == 20 * (k + 1)).all()  # the frame itself below its label
        assert (cell[:20, :60] != 20 * (k + 1)).any()  # the "frame k" label
    assert (picture[90:, 320:] == 0).all()
    # wide frames are scaled down to the tile width, keeping their shape
    assert tile({0: np.zeros((720, 1280, 3), np.uint8), 9: np.zeros((720, 1280, 3), np.uint8)}).shape == (360, 1280, 3)
    with pytest.raises(ValueError, match="no frames"):
        tile({})
    with pytest.raises(ValueError, match="one shape"):
        tile({0: np.zeros((10, 10, 3), np.uint8), 1: np.zeros((10, 12, 3), np.uint8)})


def test_write_picture_and_the_picture_from_a_video(tmp_path):
    frames = {3: _frames(4)[3], 0: _frames(4)[0]}
    out = tmp_path / "sub" / "frames.png"
    picture = write_picture(out, frames)
    assert np.array_equal(cv2.imread(str(out)), picture)
    with pytest.raises(OSError, match="cannot write"):
        write_picture(tmp_path / "frames.unknown", frames)

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 90))
    assert writer.isOpened()
    for frame in _frames(8):
        writer.write(frame)
    writer.release()
    out = tmp_path / "picture.png"
    res = subprocess.run([sys.executable, "-m", "centernet_ros.ros.demo_report", str(video), str(out), "--frames", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "frames [1, 3, 5, 7]" in res.stdout  # picture_indices(8, 4)
    picture = cv2.imread(str(out))
    assert picture.shape == (180, 320, 3)
    assert abs(int(picture[60, 80, 0]) - 40) <= 4  # frame 1 (grey 40) in the first cell, after mp4 compression
    res = subprocess.run([sys.executable, "-m", "centernet_ros.ros.demo_report", str(tmp_path / "none.mp4"), str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "cannot read the video" in res.stderr


def test_demo_options_for_the_picture(capsys):
    from centernet_ros.ros.demo import parse_args

    args = parse_args(["--frames-picture", "docs/demo_frames.png"])
    assert args.frames_picture == Path("docs/demo_frames.png") and args.picture_frames == 6
    for bad, message in ((["--frames-picture", "frames.unknown"], "OpenCV cannot write 'frames.unknown'"),
                         (["--picture-frames", "0"], "--picture-frames must be >= 1, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
