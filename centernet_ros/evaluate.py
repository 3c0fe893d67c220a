"""``centernet-eval``: COCO mAP and false discovery rate of a trained model on a dataset split.

Letters: B batch, C classes, D detections per image, N ground-truth objects of one image.

Usage::

    centernet-eval --weights runs/vehicles/best.safetensors \\
        --data ../shared/data/vehicles-openimages --split valid --out runs/vehicles/eval
    centernet-eval --weights model.safetensors --coco-images val2017/ --coco-json instances_val2017.json
    centernet-eval --weights models/centernet_vehicles.safetensors --data ../shared/data/traffic-cctv \\
        --class-map config/class_maps/traffic-cctv.yaml       # a 12-class dataset scored in 5 classes

One forward pass per batch (images letterboxed on the device with ``preprocess.letterbox``) is decoded
twice: ``triplet`` (the paper: a corner pair is kept only if a centre keypoint confirms it) and ``pairs``
(CornerNet: no centre check), so both rows of the report come from the same network outputs. Writes
``metrics.json`` and ``metrics.md`` (one Markdown table: AP, AP50, AP75, APs/m/l, FD, FD_S/M/L; and the
per-class AP) to ``--out`` and prints the table.

Ground truth. A COCO JSON dataset (--coco-json, no --class-map) is scored against the file's own
annotations, as pycocotools' COCOeval run on that file scores it (iscrowd, area, category-specific crowd
regions, images without annotations; coco_eval.CocoJsonEvaluator). A YOLO dataset, or any dataset seen
through --class-map, is scored against a COCO ground truth built from its boxes (image ids 1..n in
evaluation order, category id = model label + 1, ignore regions as iscrowd boxes of every class).

Detections. --out also gets the detections in COCO results format (image_id, category_id, bbox as
[x, y, w, h] in pixels of the annotated image size, score): detections.json (triplet) and
detections_pairs.json (pairs). For a COCO JSON dataset the ids are the file's, so any tool scores them
against that file; otherwise --out also gets ground_truth.json, the COCO ground truth they are scored
against. pycocotools' COCOeval (default maxDets 1/10/100) on either pair reproduces metrics.json when
--max-per-image is 100 (FD: the same with iouThrs 0.05:0.05:0.5).

Image sizes. A COCO JSON whose width/height disagree with an image file is refused (the message names the
file and both sizes); --rescale-mismatched scales that image's boxes to the file instead (detections are
written in the JSON's size).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from .coco_dataset import CocoDataset
from .datasets import DetectionDataset, YoloDataset
from .decode import MODES, NMS_CHOICES, DecodeConfig
from .detector import resolve_device
from .eval_loop import (
    coco_json_source,
    evaluate_predictions,
    make_evaluators,
    predict,
    predict_and_evaluate,
    write_detections,
)
from .evaluation import EvalResult

__all__ = ["EvalConfig", "predict", "predict_and_evaluate", "evaluate_predictions", "make_evaluators",
           "coco_json_source", "write_detections", "format_markdown", "load_dataset", "run_eval", "main", "MODES"]


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.1f}"


def format_markdown(results: Mapping[str, EvalResult], *, title: str | None = None) -> str:
    """One Markdown table with a row per decode mode (values in percent) plus a per-class AP table."""
    cols = [
        ("AP", "ap"),
        ("AP50", "ap50"),
        ("AP75", "ap75"),
        ("APs", "ap_small"),
        ("APm", "ap_medium"),
        ("APl", "ap_large"),
        ("FD", "fd"),
        ("FD_S", "fd_small"),
        ("FD_M", "fd_medium"),
        ("FD_L", "fd_large"),
    ]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| mode | " + " | ".join(c for c, _ in cols) + " |")
    lines.append("| --- |" + " ---: |" * len(cols))
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_pct(getattr(r, a)) for _, a in cols) + " |")
    if results:
        first = next(iter(results.values()))
        classes = list(first.per_class_ap)
        lines += ["", "Per-class AP (IoU 0.5:0.95):", ""]
        lines.append("| class | " + " | ".join(results) + " |")
        lines.append("| --- |" + " ---: |" * len(results))
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(_pct(r.per_class_ap.get(c)) for r in results.values()) + " |")
        lines += ["", f"{first.num_images} images, {first.num_gt} ground-truth boxes. "
                  "AP: COCO box AP in percent; FD = 100 - AP over IoU 0.05:0.05:0.5 (lower is better)."]
    return "\n".join(lines) + "\n"


@dataclass
class EvalConfig:
    """Options of ``centernet-eval`` (one field per command-line flag)."""

    weights: str  # model file written by weights.save_model (.safetensors)
    data: str | None = None  # YOLO dataset root (data.yaml, <split>/images, <split>/labels)
    split: str = "valid"  # YOLO split folder (or data.yaml key)
    coco_images: str | None = None  # COCO: image folder (instead of --data)
    coco_json: str | None = None  # COCO: annotation json
    input_size: tuple[int, int] | None = None  # (H, W) network input; None = the one stored in the model file
    batch_size: int = 16  # images per forward pass
    workers: int = 2  # DataLoader worker processes that decode images
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # fp16 autocast on CUDA
    limit_images: int | None = None  # evaluate only the first N images (smoke tests)
    out: str | None = None  # folder for metrics.json / metrics.md (None: print only)
    # YAML file mapping the dataset's class names to the model's (or null: ignore regions, not scored);
    # None: the dataset's classes must be the model's
    class_map: str | None = None
    # COCO: an image file whose size differs from the JSON's width/height is refused (False) or its boxes
    # are scaled to the file (True)
    rescale_mismatched: bool = False
    progress: bool = True  # tqdm progress bar
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # decode settings shared by both modes

    def __post_init__(self) -> None:
        if (self.data is None) == (self.coco_json is None):
            raise ValueError(
                f"give either data (YOLO root) or coco_json + coco_images, got data={self.data!r}, "
                f"coco_json={self.coco_json!r}"
            )
        if self.coco_json is not None and self.coco_images is None:
            raise ValueError(f"coco_json={self.coco_json!r} needs coco_images")
        if self.rescale_mismatched and self.coco_json is None:
            raise ValueError(f"rescale_mismatched applies to COCO JSON datasets (image sizes in the JSON), "
                             f"got data={self.data!r}")
        if self.input_size is not None:
            s = tuple(self.input_size)
            if len(s) == 1:
                s = (s[0], s[0])
            if len(s) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in s):
                raise ValueError(f"input_size must be (H, W), positive multiples of 32, got {self.input_size!r}")
            self.input_size = (int(s[0]), int(s[1]))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        if self.limit_images is not None and self.limit_images < 1:
            raise ValueError(f"limit_images must be >= 1, got {self.limit_images!r}")


def load_dataset(cfg: EvalConfig, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """The dataset ``cfg`` names; with ``cfg.class_map`` seen through it in the model's ``class_names``."""
    if cfg.data is not None:
        base: DetectionDataset = YoloDataset(cfg.data, cfg.split)
    else:
        base = CocoDataset(cfg.coco_images, cfg.coco_json, rescale_mismatched=cfg.rescale_mismatched)
        if base.num_rescaled:
            print(f"warning: {base.num_rescaled} images of {cfg.coco_json} differ in size from the JSON; "
                  "their boxes are rescaled to the files (--rescale-mismatched)", file=sys.stderr)
    if cfg.class_map is None:
        return base
    from .mixing import ClassMappedDataset, read_class_map

    if class_names is None:
        raise ValueError("a class map needs the model's class names")
    return ClassMappedDataset(base, class_names, read_class_map(cfg.class_map))


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate per ``cfg``; returns the report dict (also written to ``cfg.out`` when set)."""
    from .weights import load_model

    device = resolve_device(cfg.device)
    model, meta = load_model(cfg.weights, device=device)
    dataset = load_dataset(cfg, meta.class_names)
    if list(dataset.class_names) != list(meta.class_names):
        print(
            f"warning: dataset classes {dataset.class_names} differ from the model's {meta.class_names}; "
            "labels are compared by index",
            file=sys.stderr,
        )
        if dataset.num_classes != len(meta.class_names):
            raise ValueError(
                f"the model has {len(meta.class_names)} classes but the dataset has {dataset.num_classes}"
            )
    input_size = cfg.input_size or tuple(meta.input_size)
    n = len(dataset) if cfg.limit_images is None else min(cfg.limit_images, len(dataset))
    decode_cfgs = {m: replace(cfg.decode, mode=m) for m in MODES}
    preds = predict(model, dataset, input_size=input_size, decode_cfgs=decode_cfgs, device=device,
                    batch_size=cfg.batch_size, workers=cfg.workers, amp=cfg.amp, indices=range(n),
                    progress=cfg.progress)
    evaluators = evaluate_predictions(dataset, preds, class_names=meta.class_names, names=list(decode_cfgs),
                                      max_dets=cfg.decode.max_per_image)
    results = {name: ev.compute() for name, ev in evaluators.items()}
    source = cfg.data if cfg.data is not None else cfg.coco_json
    md = format_markdown(results, title=f"{Path(cfg.weights).name} on {source} ({cfg.split if cfg.data else 'coco'})")
    report = {
        "weights": str(cfg.weights),
        "dataset": str(source),
        "split": cfg.split if cfg.data is not None else None,
        "num_images": n,
        "input_size": list(input_size),
        "device": str(device),
        "decode": asdict(cfg.decode),
        "results": {name: r.to_dict() for name, r in results.items()},
    }
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        report.update(write_detections(out, evaluators))
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "metrics.md").write_text(md)
    print(md)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="centernet-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", required=True, help="model file (.safetensors) from centernet-train")
    src = p.add_argument_group("dataset (YOLO or COCO)")
    src.add_argument("--data", help="YOLO dataset root (with data.yaml)")
    src.add_argument("--split", default="valid", help="YOLO split (default: valid)")
    src.add_argument("--coco-images", help="COCO image folder")
    src.add_argument("--coco-json", help="COCO annotation json")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", help="network input H [W] (default: model's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable fp16 autocast on CUDA")
    p.add_argument("--limit-images", type=int, help="evaluate only the first N images")
    p.add_argument("--out", help="folder for metrics.json and metrics.md")
    p.add_argument("--class-map", help="YAML file: dataset class -> model class or null (e.g. "
                   "config/class_maps/traffic-cctv.yaml); null classes become ignore regions")
    p.add_argument("--rescale-mismatched", action="store_true",
                   help="COCO: scale the boxes of an image whose file size differs from the JSON's width/height "
                   "(default: refuse the dataset)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    d = p.add_argument_group("decoding (shared by the triplet and pairs rows)")
    d.add_argument("--topk", type=int, default=DecodeConfig.topk)
    d.add_argument("--ae-threshold", type=float, default=DecodeConfig.ae_threshold)
    d.add_argument("--nms", choices=NMS_CHOICES, default=DecodeConfig.nms)
    d.add_argument("--exclusive-centres", action=argparse.BooleanOptionalAction, default=DecodeConfig.exclusive_centres,
                   help="a centre keypoint confirming a better nested box does not confirm the outer one "
                   "(--no-exclusive-centres: the paper's rule)")
    d.add_argument("--size-ratio", type=float, default=DecodeConfig.size_ratio,
                   help="models with a centre size head: a centre keypoint confirms a box only if the box's width "
                   "and height are within this factor of its predicted size (0: off)")
    d.add_argument("--group-score-ratio", type=float, default=DecodeConfig.group_score_ratio,
                   help="drop a box that encloses two distinct detections of its class, each scoring at least "
                   "this times its score (triplet rows; 0: off)")
    d.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=DecodeConfig.flip_test,
                   help="also run each image flipped left-right and merge both views' boxes (the paper's "
                   "single-scale test; twice the forward-pass work)")
    d.add_argument("--max-per-image", type=int, default=DecodeConfig.max_per_image)
    d.add_argument("--score-threshold", type=float, default=DecodeConfig.score_threshold)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> EvalConfig:
    a = build_parser().parse_args(argv)
    dec = DecodeConfig(
        topk=a.topk,
        ae_threshold=a.ae_threshold,
        nms=a.nms,
        exclusive_centres=a.exclusive_centres,
        size_ratio=a.size_ratio,
        group_score_ratio=a.group_score_ratio,
        flip_test=a.flip_test,
        max_per_image=a.max_per_image,
        score_threshold=a.score_threshold,
    )
    return EvalConfig(
        weights=a.weights,
        data=a.data,
        split=a.split,
        coco_images=a.coco_images,
        coco_json=a.coco_json,
        input_size=tuple(a.input_size) if a.input_size else None,
        batch_size=a.batch_size,
        workers=a.workers,
        device=a.device,
        amp=a.amp,
        limit_images=a.limit_images,
        out=a.out,
        class_map=a.class_map,
        rescale_mismatched=a.rescale_mismatched,
        progress=a.progress,
        decode=dec,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from .weights import WeightsError

    try:
        cfg = config_from_args(argv)
        run_eval(cfg)
    except (ValueError, OSError, WeightsError) as exc:
        print(f"centernet-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
