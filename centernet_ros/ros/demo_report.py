"""What ``centernet-demo`` reports beyond its counters: detections per frame, the distribution of box
sizes, and a picture of a few annotated frames of the clip (issue 11 item 7).

Legend: H/W frame height/width in pixels, N frames in a picture.

- :class:`BoxSizes` collects the boxes of every processed frame (``bbox.size_x`` / ``size_y`` of the
  ``Detection2DArray``: pixels of the camera frame) and summarises them: mean detections per frame,
  width and height quantiles in pixels and as a fraction of the frame, the boxes wider than half the
  frame (a sign of a detector that boxes a whole row of cars as one).
- :class:`FramePicker` keeps the annotated frames at chosen indices of the stream; :func:`tile` lays
  frames out in one picture, each labelled with its index; :func:`picture_indices` spreads N indices
  evenly over a run.
- ``python -m centernet_ros.ros.demo_report out/demo.mp4 docs/demo_frames.png`` makes the same picture
  from a video the demo wrote, without running it again.

Nothing here imports ROS.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["QUANTILES", "PICTURE_FRAMES", "BoxSizes", "FramePicker", "describe", "picture_indices", "tile", "write_picture",
           "main"]

QUANTILES = (0.1, 0.5, 0.9, 1.0)  # reported as p10, p50, p90, max
PICTURE_FRAMES = 6  # frames in the picture by default (a 3 x 2 grid)
TILE_WIDTH = 640  # px: wider frames are scaled down in the picture


class BoxSizes:
    """Box widths and heights (pixels) of every processed frame, for :meth:`summary`."""

    def __init__(self) -> None:
        self.frames = 0
        self.widths: list[float] = []
        self.heights: list[float] = []

    def add_frame(self, widths: Sequence[float], heights: Sequence[float]) -> None:
        """One processed frame with these boxes (``widths[i]`` x ``heights[i]`` px; none is a frame too)."""
        if len(widths) != len(heights):
            raise ValueError(f"{len(widths)} widths but {len(heights)} heights")
        self.frames += 1
        self.widths.extend(float(w) for w in widths)
        self.heights.extend(float(h) for h in heights)

    def summary(self, frame_size: tuple[int, int] | None) -> dict:
        """``detections_per_frame`` (mean over the frames, None before any), ``boxes``, and for ``width`` and
        ``height`` the ``QUANTILES`` in pixels (``px``: p10, p50, p90, max) and as a fraction of the frame's
        width / height (``frac``; None without ``frame_size`` = (H, W)); ``wider_than_half_frame``: boxes
        whose width exceeds W / 2 (None without ``frame_size``). Quantiles are None without boxes."""
        h_frame, w_frame = frame_size if frame_size else (None, None)
        out: dict = {
            "detections_per_frame": round(len(self.widths) / self.frames, 3) if self.frames else None,
            "boxes": len(self.widths),
        }
        for key, values, extent in (("width", self.widths, w_frame), ("height", self.heights, h_frame)):
            q = _quantiles(values)
            out[key] = {
                "px": {k: round(v, 1) for k, v in q.items()} if q else None,
                "frac": {k: round(v / extent, 3) for k, v in q.items()} if q and extent else None,
            }
        out["wider_than_half_frame"] = (int(sum(w > w_frame / 2 for w in self.widths)) if w_frame else None)
        return out


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {("max" if q == 1.0 else f"p{round(q * 100)}"): float(np.quantile(a, q)) for q in QUANTILES}


def describe(s: dict) -> list[str]:
    """The lines ``centernet-demo`` prints for a :meth:`BoxSizes.summary` ``s``."""
    if not s["boxes"]:
        return ["boxes: none"]
    lines = [f"boxes: {s['detections_per_frame']} per frame on average ({s['boxes']} in all)"]
    for key in ("width", "height"):
        px, frac = s[key]["px"], s[key]["frac"]
        text = ", ".join(f"{k} {v:g}" for k, v in px.items())
        if frac:
            text += " px (of the frame: " + ", ".join(f"{k} {v:.0%}" for k, v in frac.items()) + ")"
        else:
            text += " px"
        lines.append(f"  box {key}: {text}")
    if s["wider_than_half_frame"] is not None:
        lines.append(f"  boxes wider than half the frame: {s['wider_than_half_frame']}")
    return lines


def picture_indices(total: int, n: int = PICTURE_FRAMES) -> list[int]:
    """``n`` frame indices spread evenly over frames ``0 .. total-1`` (the middle of each of ``n`` equal
    parts), fewer when ``total < n``; ``[]`` for ``total <= 0``. Raises ValueError for ``n < 1``."""
    if n < 1:
        raise ValueError(f"the picture needs at least 1 frame, got {n}")
    if total <= 0:
        return []
    return sorted({min(total - 1, int((k + 0.5) * total / n)) for k in range(n)})


class FramePicker:
    """Keeps the frames of a stream whose index (0, 1, ... in the order :meth:`offer` sees them) is wanted."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.wanted = sorted(set(int(i) for i in indices))
        self.frames: dict[int, np.ndarray] = {}
        self.seen = 0

    def offer(self, bgr: np.ndarray) -> None:
        """The next frame of the stream (``uint8[H, W, 3]``), copied when wanted."""
        if self.seen in self.wanted:
            self.frames[self.seen] = np.array(bgr, copy=True)
        self.seen += 1


def tile(frames: dict[int, np.ndarray], columns: int | None = None, tile_width: int = TILE_WIDTH) -> np.ndarray:
    """The frames (index -> ``uint8[H, W, 3]`` BGR, all of one shape) in one ``uint8[rows*h, columns*w, 3]``
    picture, in index order, row by row (``columns``: default 3 for 5+ frames, else 2 for 2-4, else 1),
    each scaled to at most ``tile_width`` px wide and labelled "frame <index>" in its top-left corner.
    Empty cells are black. Raises ValueError for no frames or frames of different shapes."""
    import cv2

    if not frames:
        raise ValueError("no frames to tile")
    shapes = {f.shape for f in frames.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"frames must be HxWx3 and of one shape, got {sorted(shapes)}")
    n = len(frames)
    columns = columns or (3 if n >= 5 else 2 if n >= 2 else 1)
    rows = -(-n // columns)
    h, w, _ = next(iter(shapes))
    scale = min(1.0, tile_width / w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((rows * th, columns * tw, 3), np.uint8)
    for k, (index, frame) in enumerate(sorted(frames.items())):
        cell = frame if scale == 1.0 else cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
        cell = np.ascontiguousarray(cell)
        label = f"frame {index}"
        (lw, lh), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(cell, (0, 0), (lw + 8, lh + base + 8), (0, 0, 0), -1)
        cv2.putText(cell, label, (4, lh + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(k, columns)
        out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cell
    return out


def write_picture(path: Path, frames: dict[int, np.ndarray]) -> np.ndarray:
    """:func:`tile` the frames and write the picture to ``path`` (format from its suffix, e.g. .png/.jpg;
    folders created). Returns the picture; raises ValueError as :func:`tile` does, OSError when the file
    cannot be written."""
    import cv2

    picture = tile(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = cv2.imwrite(str(path), picture)
    except cv2.error as exc:  # e.g. no writer for the suffix
        raise OSError(f"cannot write the picture '{path}': {str(exc).strip().splitlines()[-1]}") from None
    if not written:
        raise OSError(f"cannot write the picture '{path}'")
    return picture


def main(argv: list[str] | None = None) -> int:
    """``python -m centernet_ros.ros.demo_report VIDEO PICTURE [--frames N | --indices I ...]``: the picture
    from a video the demo wrote. Exit status 0, 1 when the video cannot be read, 2 on bad options."""
    import cv2

    p = argparse.ArgumentParser(prog="python -m centernet_ros.ros.demo_report",
                                description="Tile a few frames of an (annotated) video into one picture.")
    p.add_argument("video", type=Path, help="video file, e.g. out/demo.mp4")
    p.add_argument("picture", type=Path, help="picture to write, e.g. docs/demo_frames.png")
    p.add_argument("--frames", type=int, default=PICTURE_FRAMES, help=f"frames spread over the video (default {PICTURE_FRAMES})")
    p.add_argument("--indices", type=int, nargs="+", default=None, help="these frame indices instead")
    args = p.parse_args(argv)
    if args.frames < 1 or (args.indices and min(args.indices) < 0):
        p.error("--frames must be >= 1 and --indices >= 0")
    cap = cv2.VideoCapture(str(args.video))
    try:
        if not cap.isOpened():
            print(f"demo_report: cannot read the video '{args.video}'", file=sys.stderr)
            return 1
        picker = FramePicker(args.indices or picture_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), args.frames))
        while picker.seen <= max(picker.wanted, default=-1):
            ok, frame = cap.read()
            if not ok:
                break
            picker.offer(frame)
    finally:
        cap.release()
    missing = sorted(set(picker.wanted) - set(picker.frames))
    if not picker.frames:
        print(f"demo_report: no frame {picker.wanted} in '{args.video}' ({picker.seen} frames read)", file=sys.stderr)
        return 1
    picture = write_picture(args.picture, picker.frames)
    print(f"wrote {args.picture} ({picture.shape[1]}x{picture.shape[0]}: frames {sorted(picker.frames)}"
          + (f"; not in the video: {missing}" if missing else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
