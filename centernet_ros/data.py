"""Training and evaluation batches: :class:`CenterNetDataset` (network inputs and targets from a
``datasets.DetectionDataset``), :func:`collate` / :func:`collate_samples`, and the DataLoader helpers.

Letters: N objects, K ignore regions, H/W network input height/width, B batch.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .augment import AugmentConfig, augment, letterbox_sample, mosaic
from .datasets import DetectionDataset, Sample

__all__ = [
    "CenterNetDataset",
    "collate",
    "collate_samples",
    "normalize_images",
    "worker_init_fn",
]


def _to_chw(image: np.ndarray) -> Tensor:
    """``uint8 (H, W, 3)`` -> contiguous ``Tensor[3, H, W]`` uint8 (``cv2.split`` into planes: ~10x faster
    than a strided permute copy)."""
    h, w = image.shape[:2]
    out = np.empty((3, h, w), dtype=np.uint8)
    cv2.split(np.ascontiguousarray(image), [out[0], out[1], out[2]])
    return torch.from_numpy(out)


def _normalise(image: np.ndarray) -> Tensor:
    """``uint8 (H, W, 3)`` RGB -> ``Tensor[3, H, W]`` float32 ``(x / 255 - MEAN) / STD``."""
    from .preprocess import MEAN, STD

    x = _to_chw(image).float()  # (3, H, W)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


class CenterNetDataset(torch.utils.data.Dataset):
    """Network inputs and training targets from a :class:`DetectionDataset`.

    ``train=True``: :func:`augment` with ``augment`` (default :class:`AugmentConfig`, its ``output_size`` set
    to ``input_size``); ``train=False``: :func:`letterbox_sample`. Each item is a dict:

    * ``image``: ``Tensor[3, H, W]`` float32, normalised RGB (``preprocess.MEAN`` / ``STD``); with
      ``normalize=False`` the uint8 RGB pixels instead (4x less to pass between processes and to copy to
      the GPU; normalise there with :func:`normalize_images`),
    * ``boxes``: ``Tensor[N, 4]`` input pixels, ``labels``: ``Tensor[N]`` long, ``ignore``: ``Tensor[K, 4]``
      ignore regions in input pixels (:class:`Sample`), ``cut``: ``Tensor[N, 2]`` bool, boxes the training
      crop cut at their top-left / bottom-right corner (:func:`augment`; all False for ``train=False``),
    * ``targets``: :func:`targets.build_image_targets` of the image (when ``target_cfg`` is given),
    * ``scale``: ``Tensor[]``, ``offset``: ``Tensor[2]`` (x, y), ``orig_size``: ``Tensor[2]`` (h, w) — the
      letterbox mapping (scale 1, offset 0 for augmented images: their boxes are not mapped back),
    * ``image_id``, ``path``.

    Batch with :func:`collate`. Random numbers come from a per-worker ``numpy`` generator seeded from
    the DataLoader worker seed (so ``torch.manual_seed`` makes runs repeatable).
    """

    def __init__(
        self,
        base: DetectionDataset,
        *,
        input_size: tuple[int, int] = (512, 512),
        train: bool,
        augment: AugmentConfig | None = None,
        target_cfg=None,
        indices: Sequence[int] | None = None,
        normalize: bool = True,
        cache_images: bool = False,
    ) -> None:
        from dataclasses import replace

        size = tuple(input_size) if isinstance(input_size, (list, tuple)) else (input_size, input_size)
        if len(size) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in size):
            raise ValueError(f"input_size must be (H, W), positive multiples of 32, got {input_size!r}")
        self.base = base
        self.input_size = (int(size[0]), int(size[1]))
        self.train = bool(train)
        self.augment = replace(augment or AugmentConfig(), output_size=self.input_size) if train else None
        self.target_cfg = target_cfg
        if target_cfg is not None and target_cfg.num_classes != base.num_classes:
            raise ValueError(
                f"target_cfg.num_classes={target_cfg.num_classes!r} but the dataset has {base.num_classes} classes"
            )
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]
        self.normalize = bool(normalize)
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None
        self._cache: dict[int, Sample] | None = {} if cache_images else None
        self._pools: tuple[np.ndarray, dict[int, np.ndarray]] | None = None  # see _mosaic_pool

    @property
    def caches_images(self) -> bool:
        """Whether decoded images are kept in memory (``cache_images``)."""
        return self._cache is not None

    def fill_cache(self, progress: bool = False) -> None:
        """Decode every image once now (before DataLoader workers fork, so they share the pixels).

        Holds all decoded images in memory (e.g. 2,634 frames of 640x360: 1.8 GB); JPEG decoding then
        leaves the training loop.
        """
        if self._cache is None:
            raise ValueError("fill_cache needs cache_images=True")
        from tqdm import tqdm

        for i in tqdm(sorted(set(self.indices)), desc="decode images", unit="img", disable=not progress,
                      leave=False):
            if i not in self._cache:
                self._cache[i] = self.base[i]

    def _sample(self, index: int) -> Sample:
        if self._cache is None:
            return self.base[index]
        s = self._cache.get(index)
        if s is None:
            s = self._cache[index] = self.base[index]
        return s

    def __len__(self) -> int:
        return len(self.indices)

    def _mosaic_pool(self, position: int) -> np.ndarray:
        """Positions whose images come from the same dataset as ``position``'s (a
        :class:`mixing.MixedDataset` part; the whole dataset otherwise): a mosaic's other three cells."""
        if self._pools is None:
            from .mixing import MixedDataset

            idx = np.asarray(self.indices, dtype=np.int64)
            group = (np.searchsorted(self.base.offsets, idx, side="right") - 1 if isinstance(self.base, MixedDataset)
                     else np.zeros(len(idx), np.int64))
            self._pools = (group, {int(g): np.flatnonzero(group == g) for g in np.unique(group)})
        group, pools = self._pools
        return pools[int(group[position])]

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a position in ``indices``, or ``(position, seed)`` (``mixing.EpochSampler``): the
        augmentation then draws from ``numpy.random.default_rng(seed)`` alone."""
        if isinstance(key, (tuple, list)):
            index, rng = int(key[0]), np.random.default_rng(int(key[1]))
        else:
            index, rng = int(key), None
        sample = self._sample(self.indices[index])
        ih, iw = sample.image.shape[:2]
        all_boxes, all_labels = _with_ignore(sample)
        if self.train:
            rng = rng if rng is not None else self._generator()
            if self.augment.mosaic_prob > 0 and rng.random() < self.augment.mosaic_prob:
                pool = self._mosaic_pool(index)
                parts = [self._sample(self.indices[int(p)]) for p in pool[rng.integers(len(pool), size=3)]]
                pairs = [(all_boxes, all_labels)] + [_with_ignore(p) for p in parts]
                parts = [sample] + parts
                img, all_boxes, all_labels, all_cut = mosaic(
                    [p.image for p in parts], [b for b, _ in pairs], [lab for _, lab in pairs], cfg=self.augment,
                    rng=rng)
            else:
                img, all_boxes, all_labels, all_cut = augment(sample.image, all_boxes, all_labels,
                                                              cfg=self.augment, rng=rng)
            scale, ox, oy = 1.0, 0.0, 0.0
        else:
            img, all_boxes, scale_off = letterbox_sample(sample.image, all_boxes, size=self.input_size)
            all_cut = np.zeros((len(all_boxes), 2), dtype=bool)
            scale, ox, oy = scale_off
        obj = all_labels >= 0
        boxes, labels, ignore, cut = all_boxes[obj], all_labels[obj], all_boxes[~obj], all_cut[obj]
        item = {
            "image": _normalise(img) if self.normalize else _to_chw(img),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
            "ignore": torch.from_numpy(np.ascontiguousarray(ignore, dtype=np.float32)).reshape(-1, 4),
            "cut": torch.from_numpy(np.ascontiguousarray(cut, dtype=bool)).reshape(-1, 2),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "offset": torch.tensor([ox, oy], dtype=torch.float32),
            "orig_size": torch.tensor([ih, iw], dtype=torch.float32),
            "image_id": sample.image_id,
            "path": sample.path,
        }
        if self.target_cfg is not None:
            from .targets import build_image_targets

            s = self.target_cfg.stride
            item["targets"] = build_image_targets(
                item["boxes"], item["labels"], output_size=(self.input_size[0] // s, self.input_size[1] // s),
                cfg=self.target_cfg, ignore_boxes=item["ignore"], cut=item["cut"],
            )
        return item


def _with_ignore(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes float32 (N + K, 4), labels int64 (N + K,))`` of a sample with its ignore regions riding
    along as boxes of label -1 (same geometry, same clipping)."""
    ign = np.zeros((0, 4), np.float32) if sample.ignore is None else np.asarray(sample.ignore, np.float32)
    boxes = np.concatenate([np.asarray(sample.boxes, np.float32).reshape(-1, 4), ign.reshape(-1, 4)])
    labels = np.concatenate([np.asarray(sample.labels, np.int64).reshape(-1), np.full(len(ign), -1, np.int64)])
    return boxes, labels


def normalize_images(images: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[B, 3, H, W]`` uint8 RGB -> normalised ``dtype`` on the same device (``preprocess.MEAN`` / ``STD``)."""
    from .preprocess import MEAN, STD

    std = torch.tensor(STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() * (1.0 / (255.0 * std)) - mean / std).to(dtype)


def collate(items: Sequence[dict]) -> dict:
    """Batch :class:`CenterNetDataset` items: ``image`` Tensor[B, 3, H, W], ``targets`` batched
    (``targets.collate_targets``), ``scale`` Tensor[B], ``offset`` Tensor[B, 2], ``orig_size`` Tensor[B, 2];
    ``boxes`` / ``labels`` / ``ignore`` / ``cut`` / ``image_id`` / ``path`` as lists."""
    if not items:
        raise ValueError("collate needs at least one item, got 0")
    out = {
        "image": torch.stack([it["image"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "labels": [it["labels"] for it in items],
        "ignore": [it["ignore"] for it in items],
        "cut": [it["cut"] for it in items],
        "scale": torch.stack([it["scale"] for it in items]),
        "offset": torch.stack([it["offset"] for it in items]),
        "orig_size": torch.stack([it["orig_size"] for it in items]),
        "image_id": [it["image_id"] for it in items],
        "path": [it["path"] for it in items],
    }
    if "targets" in items[0]:
        from .targets import collate_targets

        out["targets"] = collate_targets([it["targets"] for it in items])
    return out


def collate_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Keep raw :class:`Sample` s as a list (evaluation letterboxes whole batches on the device)."""
    return list(samples)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV thread per worker (the workers already run in parallel)."""
    cv2.setNumThreads(1)
