"""The evaluation loop of ``centernet-eval`` and of validation during training, in two halves.

Letters: B batch, D detections per image.

* :func:`predict`: model outputs for every image of a dataset, decoded once per decode configuration.
* :func:`evaluate_predictions`: ``(sample, {name: detections})`` per image into one evaluator per name,
  :func:`make_evaluators` choosing the ground truth: a COCO JSON dataset (:func:`coco_json_source`) is
  scored against its annotation file (``coco_eval.CocoJsonEvaluator``), any other against its samples'
  boxes (``evaluation.DetectionEvaluator``). Detections can be fed here without a model (tests).
* :func:`predict_and_evaluate`: both, returning the metrics. :func:`write_detections`: COCO results files.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .coco_eval import CocoJsonEvaluator, load_coco_ground_truth
from .coco_dataset import CocoDataset
from .data import collate_samples, worker_init_fn
from .datasets import DetectionDataset, Sample
from .decode import DecodeConfig, decode, flip_test_batch
from .evaluation import DetectionEvaluator, EvalResult
from .mixing import ClassMappedDataset, FirstImages

__all__ = ["Dets", "predict", "predict_and_evaluate", "evaluate_predictions", "make_evaluators",
           "coco_json_source", "write_detections"]

# (boxes Tensor[D, 4] x1, y1, x2, y2 original pixels, scores Tensor[D], labels Tensor[D]) of one image
Dets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def coco_json_source(dataset: DetectionDataset) -> CocoDataset | None:
    """The :class:`CocoDataset` whose annotation file scores ``dataset``'s detections, or None.

    ``dataset`` itself, or one seen through an identity class map (``mixing.ClassMappedDataset``) or
    cut to its first images (``mixing.FirstImages``). A class map that changes labels: None (the ground
    truth is then built from the mapped samples).
    """
    while True:
        if isinstance(dataset, CocoDataset):
            return dataset
        if isinstance(dataset, FirstImages) or (
            isinstance(dataset, ClassMappedDataset)
            and np.array_equal(dataset.lookup, np.arange(len(dataset.base.class_names)))
        ):
            dataset = dataset.base
            continue
        return None


def make_evaluators(
    dataset: DetectionDataset, names: Iterable[str], *, class_names: Sequence[str], max_dets: int = 100
) -> dict[str, CocoJsonEvaluator | DetectionEvaluator]:
    """One evaluator per name: :class:`CocoJsonEvaluator` (sharing one ground truth) when
    :func:`coco_json_source` finds the annotation file, else :class:`DetectionEvaluator`."""
    src = coco_json_source(dataset)
    if src is not None:
        gt = load_coco_ground_truth(src.annotation_json)
        return {n: CocoJsonEvaluator(gt, class_names, max_dets=max_dets) for n in names}
    return {n: DetectionEvaluator(class_names, max_dets=max_dets) for n in names}


def evaluate_predictions(
    dataset: DetectionDataset,
    predictions: Iterable[tuple[Sample, Mapping[str, Dets]]],
    *,
    class_names: Sequence[str],
    names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, CocoJsonEvaluator | DetectionEvaluator]:
    """Feed ``(sample, {name: detections})`` per image (from :func:`predict`, or given by a test) to
    :func:`make_evaluators`' evaluators; returns them (``compute()``, ``results()``) in ``names`` order."""
    evaluators = make_evaluators(dataset, names, class_names=class_names, max_dets=max_dets)
    for sample, dets in predictions:
        for name, ev in evaluators.items():
            ev.add_sample(sample, *dets[name])
    return evaluators


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    input_size: tuple[int, int],
    decode_cfgs: Mapping[str, DecodeConfig],
    device: torch.device | str,
    batch_size: int = 16,
    workers: int = 0,
    amp: bool = False,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> Iterator[tuple[Sample, dict[str, Dets]]]:
    """Run ``model`` over ``dataset`` once; yield ``(sample, {name: (boxes, scores, labels)})`` per image.

    Images are letterboxed to ``input_size`` on ``device``; each decode configuration decodes the same
    outputs and ``decode`` maps its boxes back to the sample's pixels (padding rows dropped; CPU tensors).
    With ``flip_test`` (all configurations alike, else ``ValueError``) the model also sees each batch
    flipped left-right.
    ``amp``: fp16 autocast on CUDA (ignored on CPU). The model is put in eval mode and restored to its
    previous mode when the iteration ends.
    """
    from tqdm import tqdm

    from .preprocess import letterbox

    flips = {c.flip_test for c in decode_cfgs.values()}
    if len(flips) > 1:
        raise ValueError(f"decode configurations disagree on flip_test: "
                         f"{ {n: c.flip_test for n, c in decode_cfgs.items()} }")
    flip = flips == {True}
    device = torch.device(device)
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=worker_init_fn,
    )
    was_training = model.training
    model.eval()
    use_amp = amp and device.type == "cuda"
    try:
        for samples in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False, file=sys.stderr):
            images = [torch.from_numpy(s.image) for s in samples]
            x, lb = letterbox(images, size=input_size, bgr=False, device=device)  # (B, 3, H, W)
            if flip:
                x = flip_test_batch(x)  # (2B, 3, H, W)
            ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with ctx:
                outputs = model(x)
            outputs = {k: v.float() for k, v in outputs.items()}
            per_image: list[dict[str, Dets]] = [{} for _ in samples]
            for name, cfg in decode_cfgs.items():
                dets = decode(outputs, cfg, scale=lb.scale, offset=lb.offset, orig_size=lb.orig_size)
                boxes, scores, labels, num = (t.cpu() for t in dets)  # (B, D, 4), (B, D), (B, D), (B,)
                for i in range(len(samples)):
                    n = int(num[i])
                    per_image[i][name] = (boxes[i, :n], scores[i, :n], labels[i, :n])
            yield from zip(samples, per_image)
    finally:
        model.train(was_training)


def predict_and_evaluate(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    class_names: Sequence[str],
    input_size: tuple[int, int],
    decode_cfgs: Mapping[str, DecodeConfig],
    device: torch.device | str,
    batch_size: int = 16,
    workers: int = 0,
    amp: bool = False,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    max_dets: int = 100,
) -> dict[str, EvalResult]:
    """Run ``model`` over ``dataset`` once and evaluate each decode configuration on the same outputs.

    :func:`predict` then :func:`evaluate_predictions` (a COCO JSON dataset is scored against its file's
    annotations, others against their samples' boxes). Returns ``{name: EvalResult}`` in the order of
    ``decode_cfgs``.
    """
    preds = predict(model, dataset, input_size=input_size, decode_cfgs=decode_cfgs, device=device,
                    batch_size=batch_size, workers=workers, amp=amp, indices=indices, progress=progress)
    evaluators = evaluate_predictions(dataset, preds, class_names=class_names, names=list(decode_cfgs),
                                      max_dets=max_dets)
    return {name: ev.compute() for name, ev in evaluators.items()}


def write_detections(out: Path, evaluators: Mapping[str, CocoJsonEvaluator | DetectionEvaluator]) -> dict:
    """Write each evaluator's detections (COCO results JSON) to ``out``: the first as ``detections.json``,
    the others as ``detections_<name>.json``; plus ``ground_truth.json`` when the ground truth is not an
    annotation file. Returns the report fields that name these files."""
    files = {}
    for k, (name, ev) in enumerate(evaluators.items()):
        fname = "detections.json" if k == 0 else f"detections_{name}.json"
        (out / fname).write_text(json.dumps(ev.results()) + "\n")
        files[name] = fname
    first = next(iter(evaluators.values()), None)
    if isinstance(first, DetectionEvaluator):
        (out / "ground_truth.json").write_text(json.dumps(first.ground_truth()) + "\n")
        gt = "ground_truth.json"
        cats = {n: k + 1 for k, n in enumerate(first.class_names)}
    elif first is not None:
        gt = str(first.gt_path) if first.gt_path is not None else None
        cats = dict(zip(first.class_names, first.category_ids))
    else:
        gt, cats = None, {}
    return {"detections": files, "ground_truth": gt, "category_ids": cats}
