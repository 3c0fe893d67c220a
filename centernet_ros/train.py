"""``centernet-train``: train the keypoint-triplet CenterNet (ResNet-18) on a YOLO or COCO dataset.

Letters: B batch, C classes, H/W map size, M max objects per image.

Usage::

    centernet-train --config config/train_vehicles.yaml
    centernet-train --config config/train_vehicles.yaml --epochs 50 --batch-size 16 --output-dir runs/v2
    centernet-train --config config/train_vehicles.yaml --resume runs/vehicles        # continue a run
    centernet-train --config config/train_tiny.yaml --max-iters 3 --limit-images 8   # smoke test
    torchrun --nproc_per_node 4 -m centernet_ros.train --config config/train_vehicles.yaml  # multi-GPU

The YAML file has the sections ``data``, ``model``, ``train``, ``augment`` (:class:`data.AugmentConfig`),
``targets`` (:class:`targets.TargetConfig` without ``num_classes``), ``loss`` (:class:`losses.LossConfig`)
and ``decode`` (:class:`decode.DecodeConfig`, used for validation); every key is optional and an unknown
key is an error. Command-line flags override the file: the named flags below, or any key with
``--set section.key=value`` (value parsed as YAML, e.g. ``--set train.lr=1e-3 --set augment.flip_prob=0``).

Recipe (CornerNet / CenterNet): Adam, linear LR warm-up then cosine decay (or steps), mixed precision on
CUDA, gradient-norm clipping. The global ``batch_size`` is split over the processes of a ``torchrun``
launch (DistributedDataParallel, DistributedSampler; only rank 0 logs, evaluates and saves).

Outputs in ``output_dir``: ``last.safetensors`` + ``last_state.pt`` (optimizer / scaler / epoch, a dict
of tensors and numbers readable with ``torch.load(weights_only=True)``), ``best.safetensors`` (best
validation AP of the triplet decoding; the final model when there is no validation), ``log.csv``,
``config.yaml`` (the resolved configuration) and TensorBoard events when ``tensorboard`` is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .data import AugmentConfig, CenterNetDataset, CocoDataset, DetectionDataset, YoloDataset, collate
from .data import normalize_images, worker_init_fn
from .decode import DecodeConfig
from .evaluate import predict_and_evaluate, resolve_device
from .losses import LossConfig

__all__ = [
    "DataConfig",
    "ModelOptions",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "lr_factor",
    "train",
    "main",
]


@dataclass
class DataConfig:
    """Where the images and labels are."""

    format: str = "yolo"  # "yolo" (root + split folders) or "coco" (image folder + json per split)
    root: str | None = None  # YOLO dataset root with data.yaml
    train_split: str = "train"  # YOLO split used for training
    val_split: str | None = "valid"  # YOLO split used for validation (None: no validation)
    train_images: str | None = None  # COCO training image folder
    train_json: str | None = None  # COCO training annotations
    val_images: str | None = None  # COCO validation image folder
    val_json: str | None = None  # COCO validation annotations (None: no validation)
    limit_images: int | None = None  # use only the first N images of each split (smoke tests)

    def __post_init__(self) -> None:
        if self.format not in ("yolo", "coco"):
            raise ValueError(f"data.format must be 'yolo' or 'coco', got {self.format!r}")
        if self.limit_images is not None and (not isinstance(self.limit_images, int) or self.limit_images < 1):
            raise ValueError(f"data.limit_images must be a positive int or null, got {self.limit_images!r}")


@dataclass
class ModelOptions:
    """Architecture and initialisation (see ``model.centernet_resnet18``)."""

    head_width: int = 64  # neck / head feature width
    pool_width: int = 32  # width of the pooling-module branches
    cascade: bool = True  # cascade corner pooling (paper); False: CornerNet corner pooling
    center_pooling: bool = True  # center pooling before the center head (paper)
    init_weights: str | None = None  # torchvision resnet18 .pth (backbone only) or a .safetensors model

    def __post_init__(self) -> None:
        for name in ("head_width", "pool_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"model.{name} must be a positive int, got {v!r}")


@dataclass
class OptimConfig:
    """Training loop settings (the ``train`` section)."""

    input_size: tuple[int, int] = (512, 512)  # (H, W) network input, multiples of 32
    batch_size: int = 32  # global batch (split over DDP processes)
    epochs: int = 100  # passes over the training set
    lr: float = 2.5e-4  # Adam learning rate after warm-up (CornerNet: 2.5e-4 at batch 49)
    weight_decay: float = 0.0  # Adam L2 weight decay (CornerNet: none)
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr) or "step" (x step_gamma at step_epochs)
    warmup_iters: int = 300  # linear warm-up iterations from warmup_factor * lr
    warmup_factor: float = 0.01  # LR multiplier at iteration 0
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    step_epochs: tuple[int, ...] = ()  # epochs after which the "step" schedule multiplies the LR
    step_gamma: float = 0.1  # factor of each step
    workers: int = 2  # DataLoader worker processes per training process
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: str = "bfloat16"  # "bfloat16" or "float16" (float16 adds a GradScaler)
    channels_last: bool = False  # channels-last memory format on CUDA
    grad_clip: float | None = 35.0  # max global gradient norm (None: no clipping)
    val_interval: int = 5  # validate every N epochs and after the last (0: never)
    save_interval: int = 1  # write last.* every N epochs (and after the last epoch and every validation)
    val_batch_size: int | None = None  # validation batch (None: the per-process training batch)
    output_dir: str = "runs/train"  # checkpoints, logs
    resume: str | None = None  # run folder or last.safetensors of a previous run
    seed: int = 0  # RNG seed (shuffling, augmentation, initialisation)
    max_iters: int | None = None  # stop after this many iterations in total (smoke tests)
    device: str = "auto"  # "auto", "cpu", "cuda" (with torchrun: cuda:<LOCAL_RANK>)
    sync_bn: bool = False  # SyncBatchNorm across DDP processes
    progress: bool = True  # tqdm progress bar (rank 0)
    log_every: int = 10  # iterations between progress-bar updates (each one syncs with the device)

    def __post_init__(self) -> None:
        s = self.input_size
        s = tuple(s) if isinstance(s, (list, tuple)) else (s, s)
        if len(s) == 1:
            s = (s[0], s[0])
        if len(s) != 2 or any(not isinstance(v, int) or v <= 0 or v % 32 for v in s):
            raise ValueError(f"train.input_size must be (H, W), positive multiples of 32, got {self.input_size!r}")
        self.input_size = (int(s[0]), int(s[1]))
        for name in ("batch_size", "epochs", "log_every", "save_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"train.{name} must be a positive int, got {v!r}")
        for name in ("warmup_iters", "workers", "val_interval", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"train.{name} must be an int >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"train.schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"train.warmup_factor must be in (0, 1], got {self.warmup_factor!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        self.step_epochs = tuple(int(e) for e in self.step_epochs)
        if any(e < 1 for e in self.step_epochs):
            raise ValueError(f"train.step_epochs must be positive epochs, got {self.step_epochs!r}")
        if not 0 < self.step_gamma <= 1:
            raise ValueError(f"train.step_gamma must be in (0, 1], got {self.step_gamma!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"train.amp_dtype must be 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip must be > 0 or null, got {self.grad_clip!r}")
        for name in ("val_batch_size", "max_iters"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"train.{name} must be a positive int or null, got {v!r}")


@dataclass
class TrainConfig:
    """The whole training configuration (one section per YAML block)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # output_size follows train.input_size
    targets: dict[str, Any] = field(default_factory=dict)  # TargetConfig fields except num_classes
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # validation decoding

    def __post_init__(self) -> None:
        from .targets import TargetConfig

        if "num_classes" in self.targets:
            raise ValueError(f"targets.num_classes is taken from the dataset, got {self.targets['num_classes']!r}")
        known = {f.name for f in dataclasses.fields(TargetConfig)} - {"num_classes"}
        unknown = sorted(set(self.targets) - known)
        if unknown:
            raise ValueError(f"unknown keys in section 'targets': {unknown} (known: {sorted(known)})")
        TargetConfig(num_classes=1, **self.targets)  # validates the values
        self.augment = dataclasses.replace(self.augment, output_size=self.train.input_size)


# --------------------------------------------------------------------------------------------------
# configuration loading
# --------------------------------------------------------------------------------------------------


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"section '{where}' must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown keys in section '{where}': {unknown} (known: {sorted(known)})")
    kwargs = {}
    for k, v in values.items():
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def config_from_dict(d: dict | None) -> TrainConfig:
    """Build a :class:`TrainConfig` from the parsed YAML (missing sections and keys take defaults)."""
    d = dict(d or {})
    sections = {
        "data": DataConfig,
        "model": ModelOptions,
        "train": OptimConfig,
        "augment": AugmentConfig,
        "loss": LossConfig,
        "decode": DecodeConfig,
    }
    unknown = sorted(set(d) - set(sections) - {"targets"})
    if unknown:
        raise ValueError(f"unknown config sections {unknown} (known: {sorted([*sections, 'targets'])})")
    kwargs = {name: _build(cls, d.get(name) or {}, name) for name, cls in sections.items()}
    targets = d.get("targets") or {}
    if not isinstance(targets, dict):
        raise ValueError(f"section 'targets' must be a mapping, got {targets!r}")
    return TrainConfig(targets=dict(targets), **kwargs)


def _set_nested(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"override key must be 'section.key', got {dotted!r}")
    section = d.setdefault(parts[0], {})
    if section is None:
        section = d[parts[0]] = {}
    section[parts[1]] = value


def load_config(path: str | Path | None, overrides: Sequence[tuple[str, Any]] = ()) -> TrainConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``(section.key, value)`` overrides."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ValueError(f"config file '{p}' not found") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse config file '{p}': {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config file '{p}' must hold a mapping of sections, got {type(raw).__name__}")
    for key, value in overrides:
        _set_nested(raw, key, value)
    return config_from_dict(raw)


def config_to_dict(cfg: TrainConfig) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(asdict(cfg))


# --------------------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------------------


def lr_factor(step: int, *, cfg: OptimConfig, total_iters: int, iters_per_epoch: int) -> float:
    """LR multiplier at iteration ``step`` (0-based): linear warm-up, then cosine or step decay."""
    if cfg.schedule == "cosine":
        span = max(1, total_iters - cfg.warmup_iters)
        t = min(1.0, max(0.0, (step - cfg.warmup_iters) / span))
        base = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        epoch = step // max(1, iters_per_epoch)
        base = cfg.step_gamma ** sum(epoch >= e for e in cfg.step_epochs)
    if step < cfg.warmup_iters:
        w = cfg.warmup_factor + (1 - cfg.warmup_factor) * step / cfg.warmup_iters
        base *= w
    return base


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank, world, local), device


def _datasets(cfg: DataConfig) -> tuple[DetectionDataset, DetectionDataset | None]:
    if cfg.format == "yolo":
        if cfg.root is None:
            raise ValueError("data.root (YOLO dataset root) is required for data.format 'yolo'")
        train_ds = YoloDataset(cfg.root, cfg.train_split)
        val_ds = YoloDataset(cfg.root, cfg.val_split) if cfg.val_split else None
    else:
        if cfg.train_images is None or cfg.train_json is None:
            raise ValueError("data.train_images and data.train_json are required for data.format 'coco'")
        train_ds = CocoDataset(cfg.train_images, cfg.train_json)
        val_ds = None
        if cfg.val_json is not None:
            if cfg.val_images is None:
                raise ValueError(f"data.val_json={cfg.val_json!r} needs data.val_images")
            val_ds = CocoDataset(cfg.val_images, cfg.val_json)
    if val_ds is not None and val_ds.class_names != train_ds.class_names:
        raise ValueError(f"validation classes {val_ds.class_names} differ from training classes {train_ds.class_names}")
    return train_ds, val_ds


def _resume_paths(resume: str) -> tuple[Path, Path]:
    p = Path(resume)
    if p.is_dir():
        p = p / "last.safetensors"
    if p.suffix == ".pt":
        model_path = p.with_name(p.name.removesuffix("_state.pt") + ".safetensors")
        state_path = p
    else:
        model_path, state_path = p, p.with_name(p.stem + "_state.pt")
    for f in (model_path, state_path):
        if not f.is_file():
            raise ValueError(f"cannot resume from {resume!r}: '{f}' not found")
    return model_path, state_path


def _save_torch_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class _CsvLog:
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


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(out_dir / "tb"))


def train(cfg: TrainConfig) -> dict:
    """Run training per ``cfg``. Returns ``{"best": path, "last": path, "best_ap": float | None, "steps": int}``."""
    from tqdm import tqdm

    from .losses import CenterNetLoss
    from .model import centernet_resnet18
    from .targets import TargetConfig
    from .weights import load_state_into, read_meta, save_model

    oc = cfg.train
    dist, device = _init_distributed(oc.device)
    try:
        torch.manual_seed(oc.seed)
        train_base, val_base = _datasets(cfg.data)
        names = train_base.class_names
        n_train = len(train_base) if cfg.data.limit_images is None else min(cfg.data.limit_images, len(train_base))
        if oc.batch_size % dist.world:
            raise ValueError(f"train.batch_size={oc.batch_size} is not divisible by {dist.world} processes")
        per_proc = oc.batch_size // dist.world
        if n_train < per_proc * dist.world:
            raise ValueError(f"{n_train} training images are fewer than the batch size {oc.batch_size}")
        target_cfg = TargetConfig(num_classes=len(names), **cfg.targets)
        train_set = CenterNetDataset(
            train_base, input_size=oc.input_size, train=True, augment=cfg.augment, target_cfg=target_cfg,
            indices=range(n_train), normalize=False,
        )

        resume_model = resume_state = None
        if oc.resume:
            resume_model, resume_state = _resume_paths(oc.resume)
            meta = read_meta(resume_model)
            if meta.class_names != names:
                raise ValueError(f"cannot resume: '{resume_model}' has classes {meta.class_names}, data has {names}")
        init = None if resume_model is not None else cfg.model.init_weights
        model = centernet_resnet18(
            num_classes=len(names), weights=init, head_width=cfg.model.head_width,
            pool_width=cfg.model.pool_width, cascade=cfg.model.cascade, center_pooling=cfg.model.center_pooling,
        )
        if resume_model is not None:
            load_state_into(model, resume_model)
        if dist.enabled and oc.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        cuda = device.type == "cuda"
        memory_format = torch.channels_last if (cuda and oc.channels_last) else torch.contiguous_format
        model = model.to(device, memory_format=memory_format)
        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

        optimizer = torch.optim.Adam(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
        use_amp = oc.amp and cuda
        amp_dtype = torch.bfloat16 if oc.amp_dtype == "bfloat16" else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        criterion = CenterNetLoss(cfg.loss)

        start_epoch, step, best_ap = 0, 0, None
        if resume_state is not None:
            state = torch.load(resume_state, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            best_ap = float(state["best_ap"]) if float(state["best_ap"]) >= 0 else None
            saved_step = read_meta(resume_model).extra.get("step")
            if saved_step is not None and int(saved_step) != step:
                raise ValueError(
                    f"'{resume_model}' (step {saved_step}) and '{resume_state}' (step {step}) do not match"
                )

        gen = torch.Generator().manual_seed(oc.seed * 1000 + dist.rank)
        sampler = (
            torch.utils.data.distributed.DistributedSampler(train_set, shuffle=True, seed=oc.seed, drop_last=True)
            if dist.enabled
            else None
        )
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=per_proc,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=oc.workers,
            collate_fn=collate,
            worker_init_fn=worker_init_fn,
            pin_memory=cuda,
            drop_last=True,
            persistent_workers=oc.workers > 0,
            generator=gen,
        )
        iters_per_epoch = len(loader)
        total_iters = oc.epochs * iters_per_epoch
        if oc.max_iters is not None:
            total_iters = min(total_iters, oc.max_iters)
        last_epoch = min(oc.epochs, math.ceil(total_iters / iters_per_epoch))

        out_dir = Path(oc.output_dir)
        log = tb = None
        if dist.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            log = _CsvLog(out_dir / "log.csv")
            tb = _tensorboard(out_dir)
        save_kw = dict(class_names=names, input_size=oc.input_size)
        recipe = {"config": config_to_dict(cfg), "world_size": dist.world}

        pbar = tqdm(
            total=total_iters, initial=step, unit="it", dynamic_ncols=True, file=sys.stderr,
            disable=not (dist.main and oc.progress),
        )
        model.train()
        epoch = start_epoch
        for epoch in range(start_epoch, last_epoch):
            if step >= total_iters:
                break
            if sampler is not None:
                sampler.set_epoch(epoch)
            pbar.set_description(f"epoch {epoch + 1}/{oc.epochs}")
            sums = torch.zeros(5, device=device)  # focal, pull, push, regr, total
            n_it = 0
            t0 = time.time()
            lr = oc.lr
            for batch in loader:
                if step >= total_iters:
                    break
                lr = oc.lr * lr_factor(step, cfg=oc, total_iters=total_iters, iters_per_epoch=iters_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x = batch["image"].to(device, non_blocking=True)
                x = normalize_images(x).contiguous(memory_format=memory_format)  # (B, 3, H, W)
                targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
                ctx = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with ctx:
                    outputs = net(x)
                loss, terms = criterion(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if oc.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                n_it += 1
                sums += torch.stack([terms[k].float() for k in ("focal", "pull", "push", "regr", "total")])
                pbar.update(1)
                if n_it % oc.log_every == 0 or step == total_iters:
                    keys = ("total", "focal", "pull", "push", "regr")
                    vals = torch.stack([terms[k].float() for k in keys]).tolist()  # one device sync
                    if not math.isfinite(vals[0]):
                        raise FloatingPointError(f"loss is not finite at iteration {step}: {vals[0]!r}")
                    pbar.set_postfix_str(
                        f"loss {vals[0]:.3f} focal {vals[1]:.3f} pull {vals[2]:.3f} push {vals[3]:.3f} "
                        f"regr {vals[4]:.3f} lr {lr:.2e}"
                    )
            if dist.enabled:
                torch.distributed.all_reduce(sums)
                sums /= dist.world
            means = (sums / max(1, n_it)).tolist()
            epoch_time = time.time() - t0
            finished = step >= total_iters
            do_val = (
                val_base is not None
                and oc.val_interval > 0
                and ((epoch + 1) % oc.val_interval == 0 or finished or epoch + 1 == last_epoch)
            )
            row = dict(zip(("focal", "pull", "push", "regr", "loss"), (f"{v:.5f}" for v in means)))
            row.update(epoch=epoch + 1, step=step, lr=f"{lr:.6g}", epoch_time_s=f"{epoch_time:.1f}")
            if dist.main:
                if do_val:
                    n_val = min(cfg.data.limit_images or len(val_base), len(val_base))
                    res = predict_and_evaluate(
                        model, val_base, class_names=names, input_size=oc.input_size,
                        decode_cfgs={m: dataclasses.replace(cfg.decode, mode=m) for m in ("triplet", "pairs")},
                        device=device, batch_size=oc.val_batch_size or per_proc, workers=min(oc.workers, 2),
                        amp=use_amp, indices=range(n_val), progress=oc.progress,
                        max_dets=cfg.decode.max_per_image,
                    )
                    ap = res["triplet"].ap
                    row.update(
                        val_ap=f"{ap:.5f}", val_ap50=f"{res['triplet'].ap50:.5f}", val_fd=f"{res['triplet'].fd:.5f}",
                        val_ap_pairs=f"{res['pairs'].ap:.5f}", val_ap50_pairs=f"{res['pairs'].ap50:.5f}",
                    )
                    pbar.write(
                        f"epoch {epoch + 1}: val AP {100 * ap:.1f} AP50 {100 * res['triplet'].ap50:.1f} "
                        f"FD {100 * res['triplet'].fd:.1f} (pairs AP {100 * res['pairs'].ap:.1f})"
                    )
                    if not math.isnan(ap) and (best_ap is None or ap > best_ap):
                        best_ap = ap
                        save_model(out_dir / "best.safetensors", model, **save_kw,
                                   extra={**recipe, "epoch": epoch + 1, "step": step, "val": res["triplet"].to_dict()})
                if do_val or finished or (epoch + 1) % oc.save_interval == 0 or epoch + 1 == last_epoch:
                    _save_checkpoint(out_dir, model, optimizer, scaler, epoch + 1, step, best_ap, save_kw, recipe)
                log.write(row)
                if tb is not None:
                    for k in ("loss", "focal", "pull", "push", "regr"):
                        tb.add_scalar(f"train/{k}", float(row[k]), step)
                    tb.add_scalar("train/lr", lr, step)
                    if "val_ap" in row:
                        tb.add_scalar("val/ap", float(row["val_ap"]), step)
                        tb.add_scalar("val/ap50", float(row["val_ap50"]), step)
                        tb.add_scalar("val/fd", float(row["val_fd"]), step)
            if dist.enabled:
                torch.distributed.barrier()
            if finished:
                break
        pbar.close()
        if dist.main:
            if best_ap is None:  # no validation: the final model is the one to use
                save_model(out_dir / "best.safetensors", model, **save_kw,
                           extra={**recipe, "epoch": epoch + 1, "step": step})
            if tb is not None:
                tb.close()
        return {
            "best": str(out_dir / "best.safetensors"),
            "last": str(out_dir / "last.safetensors"),
            "best_ap": best_ap,
            "steps": step,
        }
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _save_checkpoint(out_dir, model, optimizer, scaler, epoch, step, best_ap, save_kw, recipe) -> None:
    """``last_state.pt`` first, then ``last.safetensors`` (each written atomically; the step in both)."""
    from .weights import save_model

    state = {
        "epoch": torch.tensor(epoch),
        "step": torch.tensor(step),
        "best_ap": torch.tensor(-1.0 if best_ap is None else best_ap, dtype=torch.float64),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    _save_torch_atomic(state, out_dir / "last_state.pt")
    save_model(out_dir / "last.safetensors", model, **save_kw, extra={**recipe, "epoch": epoch, "step": step})


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

# flag -> (section.key, type)
_FLAGS = {
    "data_root": ("data.root", str),
    "epochs": ("train.epochs", int),
    "batch_size": ("train.batch_size", int),
    "lr": ("train.lr", float),
    "workers": ("train.workers", int),
    "device": ("train.device", str),
    "output_dir": ("train.output_dir", str),
    "resume": ("train.resume", str),
    "init_weights": ("model.init_weights", str),
    "head_width": ("model.head_width", int),
    "max_iters": ("train.max_iters", int),
    "limit_images": ("data.limit_images", int),
    "val_interval": ("train.val_interval", int),
    "seed": ("train.seed", int),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="centernet-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML config (see config/train_vehicles.yaml)")
    for flag, (key, typ) in _FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=typ, help=f"overrides {key}")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", help="overrides train.input_size (H [W])")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="mixed precision on CUDA")
    amp.add_argument("--no-amp", dest="amp", action="store_false", help="full precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (value parsed as YAML); repeatable")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    a = build_parser().parse_args(argv)
    overrides: list[tuple[str, Any]] = []
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs SECTION.KEY=VALUE, got {item!r}")
        overrides.append((key.strip(), yaml.safe_load(value)))
    for flag, (key, _) in _FLAGS.items():
        v = getattr(a, flag)
        if v is not None:
            overrides.append((key, v))
    if a.input_size:
        overrides.append(("train.input_size", list(a.input_size)))
    if a.amp is not None:
        overrides.append(("train.amp", a.amp))
    if a.no_progress:
        overrides.append(("train.progress", False))
    return load_config(a.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    from .weights import WeightsError

    try:
        cfg = config_from_args(argv)
        result = train(cfg)
    except (ValueError, OSError, WeightsError) as exc:
        print(f"centernet-train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        best = "n/a" if result["best_ap"] is None else f"{100 * result['best_ap']:.1f}"
        print(f"done: {result['steps']} iterations, best val AP {best}, model {result['best']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
