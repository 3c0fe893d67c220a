"""Pieces of ``centernet-train`` around the loop: processes, data, validation, logs, signals.

Letters: B batch, S datasets.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import CenterNetDataset
from .datasets import DetectionDataset
from .evaluate import predict_and_evaluate, resolve_device
from .mixing import EpochSampler, MixedDataset, load_spec_dataset
from .train_config import TrainConfig

__all__ = ["Dist", "init_distributed", "TrainData", "build_data", "validate", "CsvLog", "tensorboard",
           "StopSignals", "cpu_bf16_supported", "train_worker_init"]


@dataclass
class Dist:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), device


def cpu_bf16_supported() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where CPU autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN has native bf16 kernels here
    except Exception:  # pragma: no cover - older / unusual builds
        return False


@dataclass
class TrainData:
    """Everything the loop needs about the data."""

    class_names: list[str]
    train_set: CenterNetDataset
    sampler: EpochSampler
    val_sets: list[tuple[str, DetectionDataset]]  # (name, dataset in model classes)
    source_names: list[str]  # training dataset names, in mixing order


def build_data(cfg: TrainConfig, *, target_cfg_factory, dist: Dist) -> TrainData:
    """Open the datasets of ``cfg.data`` with their class maps and build the resumable sampler.

    ``target_cfg_factory(num_classes)`` returns the ``targets.TargetConfig``. Raises ``ValueError`` /
    ``datasets.DatasetError`` naming the dataset, file or class that is wrong.
    """
    import cv2

    # OpenCV's worker pool does not survive fork(): a DataLoader worker forked after this process decoded
    # images with it (the image cache, validation) deadlocks in its first cv2 call. This process needs no pool.
    cv2.setNumThreads(1)
    specs = cfg.data.train_specs()
    if cfg.data.class_names is not None:
        names = list(cfg.data.class_names)
    else:
        names = list(load_spec_dataset(specs[0]).class_names)
    parts = []
    for s in specs:
        try:
            parts.append(load_spec_dataset(s, names))
        except ValueError as exc:
            raise ValueError(f"training dataset {s.name!r} ({s.path}): {exc}") from None
    mixed = MixedDataset(parts, names=[s.name for s in specs])
    oc = cfg.train
    train_set = CenterNetDataset(
        mixed, input_size=oc.input_size, train=True, augment=cfg.augment, target_cfg=target_cfg_factory(len(names)),
        normalize=False, cache_images=cfg.data.cache_images,
    )
    epoch_size = cfg.data.epoch_size or len(mixed)
    if epoch_size < oc.batch_size:
        raise ValueError(f"an epoch of {epoch_size} draws is smaller than the batch size {oc.batch_size}")
    sampler = EpochSampler(mixed.sizes, [s.weight for s in specs], epoch_size, seed=oc.seed,
                           rank=dist.rank, world=dist.world)
    val_sets = []
    for s in cfg.data.val_specs():
        try:
            val_sets.append((s.name, load_spec_dataset(s, names)))
        except ValueError as exc:
            raise ValueError(f"validation dataset {s.name!r} ({s.path}): {exc}") from None
    return TrainData(names, train_set, sampler, val_sets, [s.name for s in specs])


def validate(model, data: TrainData, cfg: TrainConfig, *, device, batch_size: int, amp: bool) -> dict[str, Any]:
    """Triplet and pairs metrics of ``model`` on every validation dataset, and their mean.

    Returns ``{"datasets": {name: {"triplet": EvalResult, "pairs": EvalResult}}, "ap", "ap50", "fd",
    "ap_pairs", "ap50_pairs"}`` (means over the datasets, fractions).
    """
    size = cfg.train.eval_size or cfg.train.input_size
    per = {}
    for name, ds in data.val_sets:
        per[name] = predict_and_evaluate(
            model, ds, class_names=data.class_names, input_size=size,
            decode_cfgs={m: dataclasses.replace(cfg.decode, mode=m) for m in ("triplet", "pairs")},
            device=device, batch_size=batch_size, workers=min(cfg.train.workers, 2), amp=amp,
            progress=cfg.train.progress, max_dets=cfg.decode.max_per_image,
        )

    def mean(mode: str, key: str) -> float:
        vals = [getattr(r[mode], key) for r in per.values()]
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    return {
        "datasets": per,
        "ap": mean("triplet", "ap"), "ap50": mean("triplet", "ap50"), "fd": mean("triplet", "fd"),
        "ap_pairs": mean("pairs", "ap"), "ap50_pairs": mean("pairs", "ap50"),
    }


class CsvLog:
    """``log.csv``: one row per epoch (losses, LR, time, mean validation metrics)."""

    FIELDS = ("epoch", "step", "lr", "loss", "focal", "pull", "push", "regr", "epoch_time_s",
              "val_ap", "val_ap50", "val_fd", "val_ap_pairs", "val_ap50_pairs")

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in self.FIELDS])


def write_val_json(path: Path, epoch: int, step: int, val: dict[str, Any]) -> None:
    """Append one line of per-dataset validation results to ``val.jsonl``."""
    row = {"epoch": epoch, "step": step,
           "mean": {k: val[k] for k in ("ap", "ap50", "fd", "ap_pairs", "ap50_pairs")},
           "datasets": {n: {m: r.to_dict() for m, r in res.items()} for n, res in val["datasets"].items()}}
    with path.open("a") as f:
        f.write(json.dumps(row, default=lambda v: None) + "\n")


def tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(out_dir / "tb"))


def train_worker_init(worker_id: int) -> None:
    """DataLoader worker setup for training: :func:`data.worker_init_fn`, and SIGINT / SIGTERM ignored.

    Ctrl-C in a terminal, ``timeout`` or a service manager signal the whole process group; a worker that
    died of it would take the run down before the main process could checkpoint. The main process ends
    the workers itself (and they exit when it is gone).
    """
    from .data import worker_init_fn

    worker_init_fn(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopSignals:
    """Turn SIGTERM / SIGINT into a flag the loop checks after each iteration (it then checkpoints and
    leaves); a second signal of the same kind raises ``KeyboardInterrupt`` at once. Restores the previous
    handlers on exit. Only in the main thread (elsewhere a no-op)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
