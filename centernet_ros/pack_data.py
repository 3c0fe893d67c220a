"""``centernet-pack-data``: copy a training config's datasets into a small YOLO-format folder that fits a
size budget (e.g. the 64 MiB that travel to a GPU machine), and write the config that points at it.

Usage::

    centernet-pack-data --config config/train_vehicles.yaml --out out/gpu_pack/data --budget-mib 56
    centernet-pack-data --config config/train_vehicles.yaml --out /tmp/p --max-side 512 --quality 80 --every 2

Each image is re-encoded as JPEG with its longer side at most ``--max-side`` pixels (the training input:
pixels beyond it are never seen) at ``--quality``; ``--every N`` keeps every N-th training image of datasets
marked as video frames (``--thin NAME``: consecutive CCTV frames are near-duplicates). Labels are YOLO
``class cx cy w h`` normalised to the image, so resizing leaves them valid; they are copied as they are,
with the dataset's ``data.yaml``. COCO datasets are written in YOLO form (crowd boxes are dropped: they are
ignore regions, not objects). Packed data over ``--budget-mib`` is an error that says what to change. Only
the training datasets are packed unless ``--with-val`` (validation then runs where the full data is).
Writes ``<out>/config.yaml``: the input config with every dataset path replaced by its packed copy.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

from .mixing import DatasetSpec, load_spec_dataset

__all__ = ["pack_dataset", "pack_config", "main"]


def _encode(rgb: np.ndarray, max_side: int, quality: int) -> bytes:
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def pack_dataset(spec: DatasetSpec, out_root: Path, *, max_side: int, quality: int, every: int = 1) -> int:
    """Write ``spec``'s split as ``out_root/<split>/{images,labels}`` (+ ``data.yaml``); returns bytes written."""
    ds = load_spec_dataset(spec)  # source classes: the class map still applies to the packed copy
    img_dir, lab_dir = out_root / spec.split / "images", out_root / spec.split / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    (out_root / "data.yaml").write_text(yaml.safe_dump({"names": list(ds.class_names), "nc": ds.num_classes}))
    total = 0
    for i in range(0, len(ds), every):
        s = ds[i]
        h, w = s.image.shape[:2]
        data = _encode(s.image, max_side, quality)
        stem = f"{i:06d}_{Path(s.path).stem}"
        (img_dir / f"{stem}.jpg").write_bytes(data)
        b = np.asarray(s.boxes, np.float64).reshape(-1, 4)
        lines = [f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                 for (x1, y1, x2, y2), c in zip(b.tolist(), s.labels.tolist()) if x2 > x1 and y2 > y1]
        text = "\n".join(lines) + ("\n" if lines else "")
        (lab_dir / f"{stem}.txt").write_text(text)
        total += len(data) + len(text)
    return total


def pack_config(config: str | Path, out: str | Path, *, max_side: int = 512, quality: int = 85,
                thin: Sequence[str] = (), every: int = 2, budget_mib: float | None = None,
                limit_images: int | None = None, sections: Sequence[str] = ("train",)) -> dict:
    """Pack every dataset of ``config`` (train and val) into ``out``; returns a summary dict."""
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    data = raw.get("data") or {}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    sizes, packed_paths = {}, {}
    for section in sections:
        for entry in data.get(section) or []:
            spec = DatasetSpec(**{k: v for k, v in entry.items() if k != "limit_images"})
            lim = entry.get("limit_images") if section == "val" else None
            lim = min(x for x in (lim, limit_images) if x is not None) if (lim or limit_images) else None
            spec.limit_images = lim
            root = out / spec.name
            n_every = every if (section == "train" and spec.name in thin) else 1
            sizes[f"{spec.name}/{spec.split}"] = pack_dataset(spec, root, max_side=max_side, quality=quality,
                                                              every=n_every)
            packed_paths[(section, spec.name)] = str(root)  # as given: relative to where training runs
    total = sum(sizes.values())
    if budget_mib is not None and total > budget_mib * 2**20:
        raise ValueError(f"packed data is {total / 2**20:.1f} MiB, over the budget of {budget_mib} MiB: lower "
                         f"--quality or --max-side, or raise --every")
    new = dict(raw)
    new["data"] = dict(data)
    for section in ("train", "val"):
        entries = []
        for entry in data.get(section) or []:
            if section not in sections:
                continue
            e = dict(entry)
            name = DatasetSpec(**{k: v for k, v in entry.items() if k != "limit_images"}).name
            e.update(path=packed_paths[(section, name)], format="yolo", name=name)
            e.pop("images", None)
            if isinstance(e.get("class_map"), str):  # a file: inline it so the packed config is self-contained
                from .mixing import read_class_map

                e["class_map"] = read_class_map(e["class_map"])
            entries.append(e)
        new["data"][section] = entries
    (out / "config.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
    return {"out": str(out), "quality": quality, "max_side": max_side, "mib": total / 2**20,
            "datasets": {k: v / 2**20 for k, v in sizes.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="centernet-pack-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config whose datasets are packed")
    p.add_argument("--out", required=True, help="output folder (replaced)")
    p.add_argument("--max-side", type=int, default=512, help="longer image side after packing (default 512)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality to start from (default 85)")
    p.add_argument("--thin", nargs="*", default=(), metavar="NAME", help="training datasets of video frames")
    p.add_argument("--every", type=int, default=2, help="keep every N-th image of --thin datasets (default 2)")
    p.add_argument("--budget-mib", type=float, default=None, help="lower the quality until the data fits")
    p.add_argument("--limit-images", type=int, default=None, help="at most N images per dataset (smoke tests)")
    p.add_argument("--with-val", action="store_true", help="pack the validation datasets too (default: train only; "
                   "the packed config then has no validation)")
    a = p.parse_args(argv)
    try:
        if a.max_side < 32 or not 1 <= a.quality <= 100 or a.every < 1:
            raise ValueError(f"need --max-side >= 32, --quality in 1..100, --every >= 1; got {a.max_side}, "
                             f"{a.quality}, {a.every}")
        res = pack_config(a.config, a.out, max_side=a.max_side, quality=a.quality, thin=a.thin, every=a.every,
                          budget_mib=a.budget_mib, limit_images=a.limit_images,
                          sections=("train", "val") if a.with_val else ("train",))
    except (ValueError, OSError) as exc:
        print(f"centernet-pack-data: error: {exc}", file=sys.stderr)
        return 2
    for k, v in res["datasets"].items():
        print(f"{k}: {v:.1f} MiB")
    print(f"packed {res['mib']:.1f} MiB at JPEG quality {res['quality']}, max side {res['max_side']} -> "
          f"{res['out']}/config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
