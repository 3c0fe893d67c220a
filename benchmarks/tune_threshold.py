"""Choose the node's ``score_threshold`` for a model: precision, recall and F1 at IoU 0.5 on the validation
datasets of a training config, through the node's own inference path (``Detector``, triplet decoding).

Legend: D detections of one image, N ground-truth boxes of one image.

Usage::

    python benchmarks/tune_threshold.py --weights models/centernet_vehicles.safetensors
    python benchmarks/tune_threshold.py --weights runs/vehicles_cpu/best.safetensors --input-size 256 448 \\
        --config config/train_vehicles_cpu.yaml --json out/bench/threshold.json

For every threshold t (0.05 .. 0.95, step 0.01) a detection counts when its score is > t (the node's rule);
detections and boxes are matched greedily per image and class by score (IoU >= 0.5, each box at most once).
The chosen threshold maximises the mean F1 over the datasets (each dataset weighs the same, however many
boxes it has). Ignore regions (unmapped classes, crowd boxes) take their matching detections out of the
count, as in the COCO evaluation. Also prints the detections' box sizes at the chosen threshold.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO_ROOT, environment, format_env, format_table, run_script

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)  # (T,)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "train_vehicles_cpu.yaml",
                   help="training config whose data.val datasets (with class maps) are used")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="network input (default: the model file's)")
    p.add_argument("--limit-images", type=int, default=None, help="at most N images per dataset")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="auto", help="Detector backend (default auto, as the node)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    return p.parse_args(argv)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(D, 4)`` x ``(N, 4)`` -> IoU ``(D, N)`` (``box_ops.box_iou`` on the host)."""
    import torch

    from centernet_ros.box_ops import box_iou

    return box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def match(det_boxes, det_scores, det_labels, gt_boxes, gt_labels, ignore) -> tuple[np.ndarray, ...]:
    """Greedy matching of one image: ``(is_true_positive bool (D,), counted bool (D,), scores (D,))``, detections
    sorted by score; a detection that matches no box but lies in an ignore region (intersection over its
    own area >= 0.5) is not counted."""
    order = np.argsort(-det_scores, kind="stable")
    tp = np.zeros(len(order), bool)
    counted = np.ones(len(order), bool)
    used = np.zeros(len(gt_boxes), bool)
    ious = _iou(det_boxes[order], gt_boxes) if len(gt_boxes) else np.zeros((len(order), 0))
    for k, d in enumerate(order):
        cand = np.flatnonzero((gt_labels == det_labels[d]) & ~used & (ious[k] >= 0.5))
        if cand.size:
            used[cand[np.argmax(ious[k, cand])]] = True
            tp[k] = True
        elif ignore is not None and len(ignore):
            b = det_boxes[d]
            lt = np.maximum(b[:2], ignore[:, :2])
            rb = np.minimum(b[2:], ignore[:, 2:])
            inter = np.clip(rb - lt, 0, None).prod(-1)
            area = max(float(np.prod(np.clip(b[2:] - b[:2], 0, None))), 1e-9)
            counted[k] = not (inter / area >= 0.5).any()
    return tp, counted, det_scores[order]


def run(args) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    from centernet_ros.decode import DecodeConfig
    from centernet_ros.detector import Detector, DetectorConfig
    from centernet_ros.mixing import load_spec_dataset
    from centernet_ros.train_config import load_config
    from centernet_ros.weights import read_meta

    meta = read_meta(args.weights)
    cfg = load_config(args.config)
    size = tuple(args.input_size) if args.input_size else tuple(meta.input_size)
    det = Detector(DetectorConfig(weights=args.weights, device="cpu", input_size=size, backend=args.backend),
                   decode=DecodeConfig(score_threshold=0.0))
    per_dataset, rows = {}, []
    for spec in cfg.data.val:
        spec.limit_images = args.limit_images
        ds = load_spec_dataset(spec, meta.class_names)
        scores, tps, n_gt = [], [], 0
        sizes = []
        for start in range(0, len(ds), args.batch_size):
            samples = [ds[i] for i in range(start, min(len(ds), start + args.batch_size))]
            with torch.inference_mode():
                out = det.detect([s.image for s in samples], "rgb")
            for s, d in zip(samples, out):
                tp, counted, sc = match(d.boxes, d.scores, d.labels, s.boxes, s.labels, s.ignore)
                scores.append(sc[counted])
                tps.append(tp[counted])
                n_gt += len(s.boxes)
                sizes.append(np.c_[d.boxes[:, 2:] - d.boxes[:, :2], d.scores])
        sc, tp = np.concatenate(scores), np.concatenate(tps)
        p, r, f1 = [], [], []
        for t in THRESHOLDS:
            keep = sc > t
            ntp, ndet = int(tp[keep].sum()), int(keep.sum())
            p.append(ntp / ndet if ndet else 1.0)
            r.append(ntp / n_gt if n_gt else float("nan"))
            f1.append(2 * p[-1] * r[-1] / (p[-1] + r[-1]) if p[-1] + r[-1] > 0 else 0.0)
        per_dataset[spec.name] = {"precision": p, "recall": r, "f1": f1, "num_gt": n_gt, "images": len(ds),
                                  "max_score": float(sc.max()) if sc.size else 0.0,
                                  "sizes": np.concatenate(sizes)}
    mean_f1 = np.mean([v["f1"] for v in per_dataset.values()], axis=0)  # (T,)
    best = int(np.argmax(mean_f1))
    t_best = float(THRESHOLDS[best])
    for name, v in per_dataset.items():
        wh = v["sizes"][v["sizes"][:, 2] > t_best, :2]  # (D, 2)
        imgs = v["images"]
        rows.append({"dataset": name, "images": imgs, "boxes": v["num_gt"], "max_score": v["max_score"],
                     "threshold": t_best, "precision": v["precision"][best], "recall": v["recall"][best],
                     "f1": v["f1"][best], "best_own_threshold": float(THRESHOLDS[int(np.argmax(v["f1"]))]),
                     "dets_per_image": len(wh) / max(imgs, 1),
                     "median_w": float(np.median(wh[:, 0])) if len(wh) else None,
                     "median_h": float(np.median(wh[:, 1])) if len(wh) else None,
                     "max_w": float(wh[:, 0].max()) if len(wh) else None})
        v.pop("sizes")
    env = environment(torch.device("cpu"), script=__file__, argv=args.argv)
    return {"env": env, "config": {"weights": str(args.weights), "input_size": list(size),
                                   "backend": det.backend if hasattr(det, "backend") else args.backend},
            "threshold": t_best, "mean_f1": float(mean_f1[best]), "rows": rows,
            "curves": {"thresholds": THRESHOLDS.tolist(), **per_dataset}}


def report(res: dict[str, Any]) -> str:
    cols = [("dataset", "dataset"), ("images", "images"), ("boxes", "boxes"), ("max_score", "max score"),
            ("threshold", "threshold"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
            ("best_own_threshold", "own F1-best threshold"), ("dets_per_image", "dets/image"),
            ("median_w", "median w px"), ("median_h", "median h px"), ("max_w", "max w px")]
    c = res["config"]
    head = (f"score_threshold for {c['weights']} at {c['input_size'][0]}x{c['input_size'][1]}: "
            f"**{res['threshold']:.2f}** (mean F1 {res['mean_f1']:.3f} at IoU 0.5)")
    return "\n".join([head, "", format_table(res["rows"], cols), "", format_env(res["env"])])


def main(argv=None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
