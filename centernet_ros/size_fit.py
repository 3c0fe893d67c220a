"""``centernet-fit-size``: refit the centre size head's read-out at test-time input sizes (ours, not in the paper).

Legend: B batch, F centre-feature channels (``ModelConfig.head_width``), N boxes.

Why. The centre size head (``ModelConfig.center_size``, output ``ct_size``) is one 1x1 convolution over
the centre head's features; the decoder's size check (``DecodeConfig.size_ratio``) compares each box with
the size it predicts. Trained on small crops (stages 11-12 of the CPU recipe: 320x320), a car larger than the crop was
always cut and its clipped size was the target, so at the 384x640 evaluation size the head under-predicts
close-up cars (the bundled model before the refit: median predicted / true width 0.41 for Open Images cars
over 320 px wide) and the check has to be loose. The features themselves are fine: refitting the read-out on
whole images at the size the model runs at fixes most of it (docs/training.md, "Refitting the size
read-out").

How. The network is frozen (eval mode; only ``ct_head.size`` changes). Each training image is letterboxed
to every input size exactly as the detector and ``centernet-eval`` feed it (``preprocess.letterbox``); the
centre head's features (the input of the size convolution) are read at the cell of each box's centre,
``floor(centre / stride)`` (the training target's cell, ``targets.build_image_targets``); the target is
the box's log width and height in map cells (the ``ct_size`` target). The read-out is the weighted ridge
regression solution (:func:`fit_readout`); each dataset's rows together weigh its sampling weight
(``DatasetSpec.weight`` of the training config), so a dataset with many small boxes does not drown one
with few large ones.

Usage::

    centernet-fit-size --weights runs/train/best.safetensors --config config/train_vehicles_cpu.yaml \\
        --out runs/train/refit.safetensors                      # at the size stored in the model
    centernet-fit-size --weights W --config C --out OUT --input-size 512 512   # another run size
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .datasets import DetectionDataset
from .detector import resolve_device
from .mixing import load_spec_dataset
from .model import CenterNetTriplet
from .preprocess import boxes_to_input, letterbox
from .targets import _keypoints
from .train_config import load_config
from .weights import WeightsError, load_model, save_model

__all__ = ["SizeFitConfig", "centre_features", "fit_readout", "readout_errors", "refit_size_head", "main"]


@dataclass
class SizeFitConfig:
    """What ``centernet-fit-size`` fits on and writes."""

    weights: str  # a .safetensors model with the centre size head (ModelConfig.center_size)
    config: str  # training config whose data.train datasets (class maps, sampling weights) are fitted on
    out: str  # the refitted model (.safetensors); everything but ct_head.size is copied unchanged
    input_sizes: tuple[tuple[int, int], ...] = ()  # (H, W) network inputs; () = the size stored in the model
    max_images: int | None = 1000  # images per dataset, evenly spaced over it (None: all)
    ridge: float = 1.0  # L2 penalty on the read-out weights (not the bias), in units of one box (mean row weight 1)
    min_box_size: float = 2.0  # boxes narrower or shorter than this (network-input pixels) are left out
    batch_size: int = 8  # images per forward pass
    device: str = "cpu"  # "cpu", "cuda", "cuda:N"
    half: bool = True  # store fp16 tensors (as the bundled model)
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        sizes = tuple(tuple(int(v) for v in s) for s in self.input_sizes)
        for s in sizes:
            if len(s) != 2 or any(v <= 0 or v % 32 for v in s):
                raise ValueError(f"input sizes must be (H, W), positive multiples of 32, got {self.input_sizes!r}")
        self.input_sizes = sizes
        if self.max_images is not None and (isinstance(self.max_images, bool) or self.max_images < 1):
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images!r}")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge!r}")
        if not self.min_box_size > 0:
            raise ValueError(f"min_box_size must be > 0, got {self.min_box_size!r}")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")


def _size_input(model: CenterNetTriplet) -> torch.nn.Module:
    """The module whose output the size convolution reads (its features), checking the model has one."""
    if not getattr(model.cfg, "center_size", False) or model.ct_head.size is None:
        raise ValueError("the model has no centre size head (ModelConfig.center_size is False): nothing to refit")
    return model.ct_head.conv


@torch.no_grad()
def centre_features(
    model: CenterNetTriplet,
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    *,
    input_size: tuple[int, int],
    min_box_size: float = 2.0,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """The size read-out's inputs and targets for the boxes of a batch of images.

    ``images``: RGB uint8 ``(h, w, 3)`` arrays of any sizes; ``boxes``: float ``(n_i, 4)`` x1, y1, x2, y2 in
    each image's pixels. The images are letterboxed to ``input_size`` (H, W) and run through ``model`` (in
    eval mode). Returns ``Tensor[N, F]`` float32 features (``ct_head.conv``'s output at each box's centre cell)
    and ``Tensor[N, 2]`` targets (log width, log height of the box in map cells, ``stride`` 4 input pixels
    per cell), on the CPU; boxes under ``min_box_size`` input pixels either way are left out. Raises
    ``ValueError`` for a model without the size head or mismatched list lengths."""
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
    feat_module = _size_input(model)
    F = model.cfg.head_width
    if len(images) == 0:
        return torch.zeros(0, F), torch.zeros(0, 2)
    grabbed: list[Tensor] = []
    was_training = model.training
    hook = feat_module.register_forward_hook(lambda _m, _i, o: grabbed.append(o))
    try:
        model.eval()
        x, lb = letterbox([np.ascontiguousarray(im) for im in images], size=input_size, bgr=False, device=device)
        model(x)
    finally:
        hook.remove()
        model.train(was_training)
    y = grabbed[0].float().cpu()  # (B, F, H/4, W/4)
    stride = input_size[0] // y.shape[2]
    feats, targets = [], []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(np.asarray(b, dtype=np.float32)).reshape(-1, 4)  # (n, 4) image pixels
        if b.shape[0] == 0:
            continue
        b = boxes_to_input(b.unsqueeze(0), lb.scale[i : i + 1].cpu(), lb.offset[i : i + 1].cpu())[0]  # (n, 4)
        wh = b[:, 2:] - b[:, :2]  # (n, 2) input pixels
        b = b[(wh >= min_box_size).all(1)] / stride  # (n', 4) map cells
        cells, _ = _keypoints((b[:, :2] + b[:, 2:]) / 2, y.shape[2], y.shape[3])  # (n', 2) the ct target's cells
        feats.append(y[i, :, cells[:, 1], cells[:, 0]].T)  # (n', F)
        targets.append((b[:, 2:] - b[:, :2]).log())  # (n', 2)
    if not feats:
        return torch.zeros(0, F), torch.zeros(0, 2)
    return torch.cat(feats), torch.cat(targets)


def fit_readout(features: Tensor, targets: Tensor, weights: Tensor | None = None, *, ridge: float = 1.0
                ) -> tuple[Tensor, Tensor]:
    """Weighted ridge regression ``targets ~ features @ W.T + b``.

    ``features`` ``Tensor[N, F]``, ``targets`` ``Tensor[N, T]``, ``weights`` ``Tensor[N]`` > 0 (None: all 1).
    Minimises ``sum_n w_n |W f_n + b - t_n|^2 + ridge * |W|^2`` (the bias is not penalised), solved in float64
    from the normal equations. Returns float32 ``W`` ``Tensor[T, F]`` and ``b`` ``Tensor[T]``. Raises
    ``ValueError`` for no rows, mismatched shapes, non-positive weights or a negative ridge; with
    ``ridge`` 0 the features must span their space (else the solve fails with ``torch.linalg.LinAlgError``)."""
    if features.dim() != 2 or targets.dim() != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"features (N, F) and targets (N, T) expected, got {tuple(features.shape)} and "
                         f"{tuple(targets.shape)}")
    n, f = features.shape
    if n == 0:
        raise ValueError("no rows to fit (no boxes?)")
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.to(torch.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights must hold {n} numbers, got shape {tuple(w.shape)}")
    if not bool((w > 0).all()):
        raise ValueError(f"weights must be > 0, got a minimum of {w.min().item()!r}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    x = torch.cat([features.to(torch.float64), torch.ones(n, 1, dtype=torch.float64)], 1)  # (N, F+1)
    xw = x * w.unsqueeze(1)  # (N, F+1)
    a = xw.T @ x  # (F+1, F+1)
    a[:f, :f] += ridge * torch.eye(f, dtype=torch.float64)
    sol = torch.linalg.solve(a, xw.T @ targets.to(torch.float64))  # (F+1, T)
    return sol[:f].T.float().contiguous(), sol[f].float().contiguous()


def readout_errors(features: Tensor, targets: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``Tensor[N, 2]`` log errors (predicted / true width and height) of a read-out on ``features``."""
    return features @ weight.T + bias - targets


def _describe(err: Tensor) -> str:
    if err.shape[0] == 0:
        return "no boxes"
    ratio = err.abs().amax(1)  # (N,) worse of width and height, log
    within = {r: (ratio <= math.log(r)).float().mean().item() for r in (1.5, 2)}
    median = err.abs().median().item()
    return f"median |log error| {median:.3f}, within x1.5 {within[1.5]:.2f}, within x2 {within[2]:.2f}"


def refit_size_head(
    model: CenterNetTriplet,
    datasets: Sequence[tuple[str, DetectionDataset, float]],
    cfg: SizeFitConfig,
    input_sizes: Sequence[tuple[int, int]],
    *,
    log=print,
) -> dict:
    """Refit ``model.ct_head.size`` in place on ``datasets`` ``[(name, dataset, sampling weight)]`` at every
    one of ``input_sizes`` (H, W); returns a summary: images and rows (boxes x sizes) per dataset, and the fit
    on those rows before and after. Raises ``ValueError`` when the model has no size head, no input size is
    given, two datasets share a name or no dataset has a box."""
    from tqdm import tqdm

    _size_input(model)
    if not input_sizes:
        raise ValueError("no input size to fit at")
    names = [name for name, _, _ in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be distinct, got {names!r}")
    device = next(model.parameters()).device
    fitted, per_set = [], {}  # fitted: (name, features, targets, share) of each dataset with boxes
    for name, ds, share in datasets:
        n_img = len(ds) if cfg.max_images is None else min(len(ds), cfg.max_images)
        idx = np.unique(np.linspace(0, len(ds) - 1, n_img).round().astype(np.int64)) if n_img else []
        f_set, t_set = [torch.zeros(0, model.cfg.head_width)], [torch.zeros(0, 2)]
        for size in input_sizes:
            for j in tqdm(range(0, len(idx), cfg.batch_size), desc=f"{name} {size[0]}x{size[1]}",
                          disable=not cfg.progress, leave=False):
                samples = [ds[int(i)] for i in idx[j : j + cfg.batch_size]]
                f, t = centre_features(model, [s.image for s in samples], [s.boxes for s in samples],
                                       input_size=size, min_box_size=cfg.min_box_size, device=device)
                f_set.append(f)
                t_set.append(t)
        f_set, t_set = torch.cat(f_set), torch.cat(t_set)  # (n, F), (n, 2)
        per_set[name] = {"images": int(len(idx)), "rows": int(f_set.shape[0])}  # rows: boxes x input sizes
        if f_set.shape[0]:
            fitted.append((name, f_set, t_set, share))
    if not fitted:
        raise ValueError("no boxes in the training datasets: nothing to fit the size read-out on")
    f_all, t_all = torch.cat([f for _, f, _, _ in fitted]), torch.cat([t for _, _, t, _ in fitted])  # (N, F), (N, 2)
    # each dataset weighs its sampling share, spread over its rows
    w_all = torch.cat([torch.full((f.shape[0],), s / f.shape[0], dtype=torch.float64) for _, f, _, s in fitted])
    w_all = w_all * (w_all.shape[0] / w_all.sum())  # mean row weight 1: ridge in units of rows
    conv = model.ct_head.size
    old_w = conv.weight.detach().float().cpu().reshape(2, -1).clone()  # (2, F): copies, not views
    old_b = conv.bias.detach().float().cpu().clone()
    new_w, new_b = fit_readout(f_all, t_all, w_all, ridge=cfg.ridge)
    with torch.no_grad():
        conv.weight.copy_(new_w.reshape_as(conv.weight).to(conv.weight))
        conv.bias.copy_(new_b.to(conv.bias))
    summary = {"datasets": per_set, "input_sizes": [list(s) for s in input_sizes], "ridge": cfg.ridge}
    for name, f_set, t_set, _ in fitted:
        before = _describe(readout_errors(f_set, t_set, old_w, old_b))
        after = _describe(readout_errors(f_set, t_set, new_w, new_b))
        summary[name] = {"before": before, "after": after}
        log(f"{name}: {f_set.shape[0]} boxes x sizes; before: {before}; after: {after}")
    return summary


_CLI_DESCRIPTION = """Refit the centre size head's 1x1 read-out of a model (everything else unchanged) on whole
training images letterboxed to the size the model runs at, by ridge regression on the frozen centre
features (docs/training.md, "Refitting the size read-out"). About 7 minutes on 2 CPU cores for the
bundled recipe's data.

examples:
  centernet-fit-size --weights runs/train/best.safetensors --config config/train_vehicles_cpu.yaml \\
      --out runs/train/refit.safetensors
  centernet-fit-size --weights W --config C --out OUT --input-size 512 512   # another run size"""


def parse_args(argv: Sequence[str] | None = None) -> SizeFitConfig:
    p = argparse.ArgumentParser(prog="centernet-fit-size", description=_CLI_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="model with the centre size head (.safetensors)")
    p.add_argument("--config", required=True, help="training config: its data.train datasets are fitted on")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--input-size", type=int, nargs=2, action="append", metavar=("H", "W"), default=[],
                   help="network input to fit at (repeat for several; default: the size stored in the model)")
    p.add_argument("--max-images", type=int, default=SizeFitConfig.max_images,
                   help="images per dataset, evenly spaced (0: all; default %(default)s)")
    p.add_argument("--ridge", type=float, default=SizeFitConfig.ridge,
                   help="L2 penalty on the read-out weights, in units of one box (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=SizeFitConfig.batch_size,
                   help="images per forward pass (default %(default)s)")
    p.add_argument("--device", default=SizeFitConfig.device, help="cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--fp32", action="store_true", help="store fp32 tensors (default: fp16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        return SizeFitConfig(weights=a.weights, config=a.config, out=a.out, input_sizes=tuple(map(tuple, a.input_size)),
                             max_images=a.max_images or None, ridge=a.ridge, batch_size=a.batch_size,
                             device=a.device, half=not a.fp32, progress=not a.no_progress)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        out = Path(cfg.out)
        if out.is_dir() or out.suffix != ".safetensors":
            raise ValueError(f"--out must name a .safetensors file, got {cfg.out!r}")
        try:
            device = resolve_device(cfg.device)
        except RuntimeError as exc:  # torch.device("foo")
            raise ValueError(f"bad --device {cfg.device!r}: {exc}") from None
        model, meta = load_model(cfg.weights, device=device)
        if not model.cfg.center_size:
            raise ValueError(f"{cfg.weights!r} has no centre size head (ModelConfig.center_size): nothing to refit")
        train_cfg = load_config(cfg.config)
        specs = train_cfg.data.train_specs()
        datasets = [(s.name or s.path, load_spec_dataset(s, meta.class_names), s.weight) for s in specs]
        sizes = cfg.input_sizes or (tuple(meta.input_size),)
        summary = refit_size_head(model, datasets, cfg, sizes)
    except (ValueError, OSError, WeightsError, torch.linalg.LinAlgError) as exc:
        print(f"centernet-fit-size: error: {exc}", file=sys.stderr)
        return 2
    extra = {k: v for k, v in meta.extra.items() if k != "val"}  # the source's validation: not this file's
    extra["size_fit"] = {**summary, "from": cfg.weights, "config": cfg.config, "max_images": cfg.max_images}
    save_model(cfg.out, model, class_names=meta.class_names, input_size=meta.input_size, half=cfg.half, extra=extra)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
