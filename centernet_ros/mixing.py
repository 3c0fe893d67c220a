"""Several detection datasets in one run: class maps, weighted mixing and a resumable sample order.

Letters: N objects of one image, K ignore regions of one image, S datasets.

* :class:`DatasetSpec` names one dataset (YOLO txt or COCO JSON, path, split, sampling weight) and its
  *class map*: source class name -> model class name, or ``None``. A source class mapped to ``None`` is not
  background: its boxes become ignore regions (:class:`datasets.Sample` ``ignore``), the mechanism COCO
  ``iscrowd`` regions use (no heatmap loss inside them in training; matched-and-ignored by pycocotools in
  evaluation).
* :class:`ClassMappedDataset` applies a class map to any :class:`datasets.DetectionDataset`.
* :class:`MixedDataset` concatenates datasets; :class:`EpochSampler` draws each epoch's order from
  ``(seed, epoch)`` alone, each dataset in proportion to its weight, and gives every draw its own
  augmentation seed. Order and augmentation therefore do not depend on worker count or on where a run
  was stopped: a run resumed at ``(epoch, position)`` sees exactly the samples an uninterrupted run sees.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from .coco_dataset import CocoDataset
from .datasets import DatasetError, DetectionDataset, Sample, YoloDataset

__all__ = [
    "DatasetSpec",
    "read_class_map",
    "resolve_class_map",
    "ClassMappedDataset",
    "MixedDataset",
    "EpochSampler",
    "load_spec_dataset",
    "FirstImages",
]


@dataclass
class DatasetSpec:
    """One dataset of a (multi-dataset) training or evaluation run."""

    path: str  # YOLO: dataset root (data.yaml, <split>/images, <split>/labels); COCO: annotation JSON
    format: str = "yolo"  # "yolo" or "coco"
    split: str = "train"  # YOLO split folder / data.yaml key; ignored for COCO
    images: str | None = None  # COCO image folder (default: the JSON's folder)
    weight: float = 1.0  # share of the draws of an epoch, relative to the other datasets (> 0)
    # source class name -> model class name, or null (boxes become ignore regions), or the path of a YAML
    # file holding that mapping. None: identity (the source classes must then be the model's classes, in
    # order). Every source class must be listed.
    class_map: dict[str, str | None] | str | None = None
    name: str | None = None  # label in logs and reports (default: the folder / file name)
    limit_images: int | None = None  # use only the first N images (smoke tests, quick validation)

    def __post_init__(self) -> None:
        if self.format not in ("yolo", "coco"):
            raise ValueError(f"dataset format must be 'yolo' or 'coco', got {self.format!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"dataset path must be a non-empty string, got {self.path!r}")
        if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) or not self.weight > 0:
            raise ValueError(f"dataset weight must be a number > 0, got {self.weight!r}")
        self.weight = float(self.weight)
        if isinstance(self.class_map, (str, Path)):
            self.class_map = read_class_map(self.class_map)
        if self.class_map is not None:
            if not isinstance(self.class_map, Mapping):
                raise ValueError(f"class_map must be a mapping source -> model class (or null), got {self.class_map!r}")
            for k, v in self.class_map.items():
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"class_map[{k!r}] must be a model class name or null, got {v!r}")
            self.class_map = {str(k): v for k, v in self.class_map.items()}
        if self.limit_images is not None and (not isinstance(self.limit_images, int) or self.limit_images < 1):
            raise ValueError(f"limit_images must be a positive int or null, got {self.limit_images!r}")
        if self.name is None:
            p = Path(self.path)
            self.name = p.stem if self.format == "coco" else p.name
        self.name = str(self.name)


def read_class_map(path: str | Path) -> dict[str, str | None]:
    """Read a class map YAML file (``source class: model class`` or ``null`` per line).

    Raises ``ValueError`` naming the file when it is missing or not a mapping of names.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"class map file '{p}' not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read class map file '{p}': {exc}") from None
    if not isinstance(data, dict) or any(v is not None and not isinstance(v, str) for v in data.values()):
        raise ValueError(f"class map file '{p}' must map source class names to model class names or null")
    return {str(k): v for k, v in data.items()}


def resolve_class_map(
    source_names: Sequence[str], target_names: Sequence[str], class_map: Mapping[str, str | None] | None
) -> np.ndarray:
    """Source label -> model label lookup table (``-1``: ignore region).

    Args:
        source_names: the dataset's class names (index = source label).
        target_names: the model's class names (index = model label).
        class_map: source name -> target name or None; None means identity (names must be equal).
    Returns:
        ``int64 (len(source_names),)`` array.
    Raises:
        ValueError naming the class when a source class is missing from the map, a key is not a source
        class, or a value is not a model class.
    """
    src, tgt = [str(n) for n in source_names], [str(n) for n in target_names]
    if class_map is None:
        if src != tgt:
            raise ValueError(
                f"dataset classes {src} differ from the model classes {tgt}: give a class_map "
                "(source class -> model class or null)"
            )
        return np.arange(len(src), dtype=np.int64)
    unknown = sorted(set(class_map) - set(src))
    if unknown:
        raise ValueError(f"class_map keys {unknown} are not classes of the dataset (its classes: {src})")
    missing = [n for n in src if n not in class_map]
    if missing:
        raise ValueError(
            f"class_map does not say what to do with dataset classes {missing}: map each to a model class "
            f"{tgt} or to null (ignore regions)"
        )
    bad = sorted({v for v in class_map.values() if v is not None and v not in tgt})
    if bad:
        raise ValueError(f"class_map values {bad} are not model classes {tgt}")
    return np.array([-1 if class_map[n] is None else tgt.index(class_map[n]) for n in src], dtype=np.int64)


class ClassMappedDataset(DetectionDataset):
    """A dataset seen through a class map: labels become model labels; boxes of classes mapped to None
    join the ignore regions. ``class_names`` are the model's."""

    def __init__(
        self, base: DetectionDataset, class_names: Sequence[str], class_map: Mapping[str, str | None] | None
    ) -> None:
        self.base = base
        self.class_names = [str(n) for n in class_names]
        self.lookup = resolve_class_map(base.class_names, self.class_names, class_map)
        self.image_paths = base.image_paths
        self.image_ids = base.image_ids

    def __len__(self) -> int:
        return len(self.base)

    def remap(self, sample: Sample) -> Sample:
        """Apply the class map to one sample of ``base``."""
        new = self.lookup[sample.labels] if len(sample.labels) else sample.labels  # (N,)
        keep = new >= 0
        ignore = sample.ignore
        if not keep.all():
            dropped = sample.boxes[~keep].reshape(-1, 4)  # (N - N', 4)
            ignore = dropped if ignore is None else np.concatenate([ignore.reshape(-1, 4), dropped])  # (K, 4)
        return sample._replace(boxes=sample.boxes[keep], labels=new[keep].astype(np.int64), ignore=ignore)

    def __getitem__(self, index: int) -> Sample:
        return self.remap(self.base[index])


class FirstImages(DetectionDataset):
    """The first ``n`` images of a dataset (``DatasetSpec.limit_images``)."""

    def __init__(self, base: DetectionDataset, n: int) -> None:
        self.base, self.n = base, min(int(n), len(base))
        self.class_names = base.class_names
        self.image_paths = base.image_paths[: self.n]
        self.image_ids = base.image_ids[: self.n]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} images")
        return self.base[index]


def load_spec_dataset(spec: DatasetSpec, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """Open the dataset a spec names; with ``class_names`` (the model's) apply the spec's class map.

    ``spec.limit_images`` keeps the first images only. Raises :class:`datasets.DatasetError` / ``ValueError``
    naming the file or the class.
    """
    if spec.format == "yolo":
        base: DetectionDataset = YoloDataset(spec.path, spec.split)
    else:
        js = Path(spec.path)
        base = CocoDataset(spec.images if spec.images is not None else js.parent, js)
    ds = base if class_names is None else ClassMappedDataset(base, class_names, spec.class_map)
    return ds if spec.limit_images is None else FirstImages(ds, spec.limit_images)


class MixedDataset(DetectionDataset):
    """Datasets end to end: global index ``i`` -> ``(dataset, local index)``; all share ``class_names``."""

    def __init__(self, parts: Sequence[DetectionDataset], names: Sequence[str] | None = None) -> None:
        if not parts:
            raise ValueError("MixedDataset needs at least one dataset, got 0")
        self.parts = list(parts)
        self.names = [f"dataset{i}" for i in range(len(parts))] if names is None else [str(n) for n in names]
        self.class_names = list(parts[0].class_names)
        for p, n in zip(self.parts, self.names):
            if list(p.class_names) != self.class_names:
                raise DatasetError(f"dataset {n!r} has classes {p.class_names}, expected {self.class_names}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).tolist()  # (S + 1,)
        self.image_paths = [q for p in self.parts for q in p.image_paths]
        self.image_ids = [q for p in self.parts for q in p.image_ids]

    @property
    def sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset number, local index)`` of global ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        d = bisect.bisect_right(self.offsets, index) - 1
        return d, index - self.offsets[d]

    def __getitem__(self, index: int) -> Sample:
        d, i = self.locate(index)
        return self.parts[d][i]


@dataclass
class EpochSampler:
    """Deterministic, resumable order of ``(global index, augmentation seed)`` draws.

    Epoch ``e`` holds ``epoch_size`` draws; dataset ``d`` gets ``round(epoch_size * w_d / sum(w))`` of them
    (the last one takes the remainder), taken from a random permutation of its images, repeated as often
    as needed (so no image is drawn twice before every image was drawn once), then all draws are
    shuffled together. Everything comes from ``numpy.random.default_rng((seed, e))``. Iterating yields the
    draws from ``start`` (set with :meth:`set_position`) to the end of the epoch (every ``world``-th one,
    from ``rank``, under DDP).
    """

    sizes: Sequence[int]  # images per dataset
    weights: Sequence[float]  # sampling weight per dataset
    epoch_size: int  # draws per epoch
    seed: int = 0
    epoch: int = 0
    start: int = 0
    rank: int = 0  # with DistributedDataParallel: process rank r takes draws r, r + world, ... after start
    world: int = 1
    offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.weights) or not self.sizes:
            raise ValueError(f"sizes {list(self.sizes)} and weights {list(self.weights)} must be equal, non-empty")
        if any(int(n) < 1 for n in self.sizes):
            raise ValueError(f"every dataset needs at least one image, got sizes {list(self.sizes)}")
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"weights must be > 0, got {list(self.weights)}")
        if self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {self.epoch_size!r}")
        self.offsets = np.cumsum([0] + [int(n) for n in self.sizes]).tolist()

    def counts(self) -> list[int]:
        """Draws per dataset in one epoch."""
        w = np.asarray(self.weights, dtype=np.float64)
        c = np.floor(self.epoch_size * w / w.sum() + 0.5).astype(np.int64)
        c[-1] = self.epoch_size - c[:-1].sum()
        if c[-1] < 0:  # rounding took too many: take them back from the largest share
            c[int(np.argmax(c[:-1]))] += c[-1]
            c[-1] = 0
        return c.tolist()

    def order(self, epoch: int) -> np.ndarray:
        """``int64 (epoch_size, 2)``: global index and augmentation seed of every draw of ``epoch``."""
        rng = np.random.default_rng((int(self.seed), int(epoch)))
        picks = []
        for d, (n, c) in enumerate(zip(self.sizes, self.counts())):
            reps = -(-c // n) if c else 0
            perm = np.concatenate([rng.permutation(n) for _ in range(reps)]) if reps else np.zeros(0, np.int64)
            picks.append(perm[:c] + self.offsets[d])
        idx = rng.permutation(np.concatenate(picks).astype(np.int64))
        seeds = rng.integers(0, 2**62, size=idx.shape[0], dtype=np.int64)
        return np.stack([idx, seeds], axis=1)  # (epoch_size, 2)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Continue at draw ``start`` of ``epoch`` (a resumed run)."""
        if not 0 <= start <= self.epoch_size:
            raise ValueError(f"start must be in [0, {self.epoch_size}], got {start!r}")
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.epoch_size, self.world))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, s in self.order(self.epoch)[self.start + self.rank :: self.world]:
            yield int(i), int(s)
