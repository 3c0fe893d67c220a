"""Configuration of ``centernet-train``: one dataclass per YAML section, loading, overrides, LR schedule.

The YAML file has the sections ``data`` (:class:`DataConfig`), ``model`` (:class:`ModelOptions`), ``train``
(:class:`OptimConfig`), ``augment`` (:class:`augment.AugmentConfig`), ``targets`` (:class:`targets.TargetConfig`
without ``num_classes``), ``loss`` (:class:`losses.LossConfig`) and ``decode`` (:class:`decode.DecodeConfig`,
used for validation); every key is optional and an unknown key is an error that names it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .augment import AugmentConfig
from .decode import DecodeConfig
from .losses import LossConfig
from .mixing import DatasetSpec

__all__ = [
    "DataConfig",
    "ModelOptions",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "lr_factor",
]


def _spec(entry: Any, where: str, default_split: str) -> DatasetSpec:
    if isinstance(entry, DatasetSpec):
        return entry
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping (path, format, split, weight, class_map), got {entry!r}")
    known = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {unknown} (known: {sorted(known)})")
    kw = dict(entry)
    kw.setdefault("split", default_split)
    try:
        return DatasetSpec(**kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass
class DataConfig:
    """Training and validation data: a list of datasets with class maps, or one YOLO / COCO dataset.

    ``train``: datasets mixed for training (each a :class:`mixing.DatasetSpec` mapping: path, format, split,
    weight, class_map, ...). ``val``: datasets validated one by one (and their mean). When ``train`` is empty
    the single-dataset keys below describe the data (the older form of this section).
    """

    train: tuple = ()  # DatasetSpec entries mixed for training
    val: tuple = ()  # DatasetSpec entries validated separately; the mean of their triplet AP picks "best"
    class_names: tuple[str, ...] | None = None  # the model's classes (None: the first training dataset's)
    epoch_size: int | None = None  # draws per epoch (None: the number of training images of all datasets)
    cache_images: bool = False  # decode every training image once and keep it in memory (RAM for speed)
    format: str = "yolo"  # single dataset: "yolo" (root + split folders) or "coco" (image folder + json)
    root: str | None = None  # single YOLO dataset root with data.yaml
    train_split: str = "train"  # YOLO split used for training
    val_split: str | None = "valid"  # YOLO split used for validation (None: no validation)
    train_images: str | None = None  # COCO training image folder
    train_json: str | None = None  # COCO training annotations
    val_images: str | None = None  # COCO validation image folder
    val_json: str | None = None  # COCO validation annotations (None: no validation)
    limit_images: int | None = None  # use only the first N images of each dataset (smoke tests)

    def __post_init__(self) -> None:
        if self.format not in ("yolo", "coco"):
            raise ValueError(f"data.format must be 'yolo' or 'coco', got {self.format!r}")
        if self.limit_images is not None and (not isinstance(self.limit_images, int) or self.limit_images < 1):
            raise ValueError(f"data.limit_images must be a positive int or null, got {self.limit_images!r}")
        if self.epoch_size is not None and (not isinstance(self.epoch_size, int) or self.epoch_size < 1):
            raise ValueError(f"data.epoch_size must be a positive int or null, got {self.epoch_size!r}")
        for name in ("train", "val"):
            v = getattr(self, name)
            if v is None:
                v = ()
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"data.{name} must be a list of datasets, got {v!r}")
            split = "train" if name == "train" else "valid"
            setattr(self, name, tuple(_spec(e, f"data.{name}[{i}]", split) for i, e in enumerate(v)))
        if self.class_names is not None:
            names = tuple(self.class_names)
            if not names or any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"data.class_names must be distinct non-empty names, got {self.class_names!r}")
            self.class_names = names

    def _limited(self, spec: DatasetSpec) -> DatasetSpec:
        if self.limit_images is None:
            return spec
        lim = self.limit_images if spec.limit_images is None else min(spec.limit_images, self.limit_images)
        return dataclasses.replace(spec, limit_images=lim)

    def train_specs(self) -> list[DatasetSpec]:
        """The training datasets (the single-dataset keys turned into one spec when ``train`` is empty)."""
        if self.train:
            return [self._limited(s) for s in self.train]
        if self.format == "yolo":
            if self.root is None:
                raise ValueError("no training data: give data.train (a list of datasets) or data.root")
            return [self._limited(DatasetSpec(path=self.root, split=self.train_split))]
        if self.train_images is None or self.train_json is None:
            raise ValueError("data.train_images and data.train_json are required for data.format 'coco'")
        return [self._limited(DatasetSpec(path=self.train_json, format="coco", images=self.train_images))]

    def val_specs(self) -> list[DatasetSpec]:
        """The validation datasets (possibly none)."""
        if self.train:
            return [self._limited(s) for s in self.val]
        if self.format == "yolo":
            if self.root is None or not self.val_split:
                return []
            return [self._limited(DatasetSpec(path=self.root, split=self.val_split))]
        if self.val_json is None:
            return []
        if self.val_images is None:
            raise ValueError(f"data.val_json={self.val_json!r} needs data.val_images")
        return [self._limited(DatasetSpec(path=self.val_json, format="coco", images=self.val_images))]


@dataclass
class ModelOptions:
    """Architecture and initialisation (see ``model.centernet_resnet18``)."""

    head_width: int = 64  # neck / head feature width
    pool_width: int = 32  # width of the pooling-module branches
    cascade: bool = True  # cascade corner pooling (paper); False: CornerNet corner pooling
    center_pooling: bool = True  # center pooling before the center head (paper)
    center_size: bool = False  # centre size head (ct_size) for the decoder's size check (not in the paper)
    init_weights: str | None = None  # torchvision resnet18 .pth (backbone only) or a .safetensors model

    def __post_init__(self) -> None:
        for name in ("head_width", "pool_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"model.{name} must be a positive int, got {v!r}")


@dataclass
class OptimConfig:
    """Training loop settings (the ``train`` section)."""

    input_size: tuple[int, int] = (512, 512)  # (H, W) network input of training (crops), multiples of 32
    # (H, W) input for validation, stored in the model file as the size to run it at (None: input_size).
    # Training on crops smaller than this keeps the objects' test-time size with augment.reference_size.
    eval_size: tuple[int, int] | None = None
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
    amp: bool = True  # mixed precision: autocast on CUDA; bf16 autocast on a CPU with bf16 support (else fp32)
    amp_dtype: str = "bfloat16"  # "bfloat16" or "float16" (float16 adds a GradScaler)
    channels_last: bool = False  # channels-last memory format (CUDA, and CPU where oneDNN likes it)
    compile: bool = False  # torch.compile the training forward and backward (inductor; a C++ compiler on the CPU):
    #                        1.6x the CPU recipe's whole loop on 2 cores; the first iterations compile for minutes.
    #                        Validation and the saved weights use the plain model
    grad_clip: float | None = 35.0  # max global gradient norm (None: no clipping)
    val_interval: int = 5  # validate every N epochs and after the last (0: never)
    save_interval: int = 1  # write last.* every N epochs (and after the last epoch and every validation)
    val_batch_size: int | None = None  # validation batch (None: the per-process training batch)
    ema: bool = True  # keep an exponential moving average of the weights; validate and ship the average
    ema_decay: float = 0.9998  # EMA decay d_max; at update u the decay is d_max * (1 - exp(-u / ema_tau))
    ema_tau: int = 2000  # EMA warm-up in updates (YOLOv5's ramp: early averages follow the weights closely)
    checkpoint_minutes: float = 10.0  # also write the resumable checkpoint every N minutes of training (0: off)
    checkpoint_iters: int | None = None  # also write it every N iterations (None: off)
    stop_after_iters: int | None = None  # leave after this many iterations of this process, checkpointed, with
    #                                      the schedule unchanged (continue with --resume)
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
        if self.eval_size is not None:
            e = tuple(self.eval_size) if isinstance(self.eval_size, (list, tuple)) else (self.eval_size,) * 2
            if len(e) != 2 or any(not isinstance(v, int) or v <= 0 or v % 32 for v in e):
                raise ValueError(f"train.eval_size must be (H, W), positive multiples of 32, got {self.eval_size!r}")
            self.eval_size = (int(e[0]), int(e[1]))
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
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if not isinstance(self.ema_tau, int) or self.ema_tau < 1:
            raise ValueError(f"train.ema_tau must be a positive int, got {self.ema_tau!r}")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"train.checkpoint_minutes must be >= 0, got {self.checkpoint_minutes!r}")
        for name in ("val_batch_size", "max_iters", "checkpoint_iters", "stop_after_iters"):
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
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"section '{where}': {exc}") from None


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


def _read_config_file(p: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Parse one YAML config, resolving its ``base:`` chain (a file name relative to ``p``'s folder).

    The file's sections are merged into its base's one key at a time (a key given here replaces the
    base's value whole: a list such as ``data.train`` is replaced, not extended); a section that is
    not a mapping replaces the base's section. Raises ``ValueError`` naming the file on a missing or
    unparsable file, a non-mapping top level, a bad ``base`` value or a cycle of bases.
    """
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"config file '{p}' not found") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse config file '{p}': {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file '{p}' must hold a mapping of sections, got {type(raw).__name__}")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"config file '{p}': 'base' must be a config file name, got {base!r}")
    base_path = p.parent / base
    here = p.resolve()
    if base_path.resolve() in (*chain, here):
        names = " -> ".join(str(c) for c in (*chain, here, base_path.resolve()))
        raise ValueError(f"config file '{p}': 'base: {base}' makes a cycle ({names})")
    merged = _read_config_file(base_path, (*chain, here))
    for name, section in raw.items():
        if isinstance(section, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **section}
        else:
            merged[name] = section
    return merged


def load_config(path: str | Path | None, overrides: Sequence[tuple[str, Any]] = ()) -> TrainConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``(section.key, value)`` overrides.

    A top-level ``base: other.yaml`` (relative to the file's folder) makes the file a set of changes to
    that config (chains allowed); see :func:`_read_config_file` for the merge rule.
    """
    raw: dict = _read_config_file(Path(path)) if path is not None else {}
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


