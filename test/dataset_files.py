"""Dataset folders built in the test: small PNG images and YOLO txt datasets.

Letters: H/W image height/width.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["write_image", "yolo_root"]


def write_image(path: Path, h: int = 40, w: int = 60, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * 3  # distinct channels and a horizontal ramp
    img[..., 2] //= 4
    cv2.imwrite(str(path), img)


def yolo_root(tmp_path: Path, labels: dict[str, str], *, names=("a", "b"), images=("img0", "img1")) -> Path:
    root = tmp_path / "ds"
    (root / "train" / "labels").mkdir(parents=True)
    for stem in images:
        write_image(root / "train" / "images" / f"{stem}.png")
    for stem, text in labels.items():
        (root / "train" / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"names: {list(names)!r}\nnc: {len(names)}\n")
    return root
