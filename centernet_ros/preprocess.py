"""Letterbox resize + ImageNet normalisation on device tensors, and the inverse box mapping.

Legend: B batch, H/W image (or network-input) height/width, N boxes.

A letterboxed image is the original resized by ``scale`` (aspect kept) and placed at
``offset`` = (x, y) in a ``size`` canvas, so ``input_px = orig_px * scale + offset`` and
``orig_px = (input_px - offset) / scale`` (what ``decode`` applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MEAN",
    "STD",
    "LetterboxParams",
    "boxes_to_input",
    "boxes_to_original",
    "letterbox",
    "letterbox_params",
]

# ImageNet statistics, RGB order, for images scaled to [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class LetterboxParams(NamedTuple):
    """scale ``Tensor[B]``, offset ``Tensor[B, 2]`` (x, y) in input pixels, orig_size ``Tensor[B, 2]`` (h, w)."""

    scale: Tensor
    offset: Tensor
    orig_size: Tensor


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _fit(h: int, w: int, H: int, W: int) -> tuple[float, int, int, int, int]:
    """Scale, resized (nh, nw) and padding offset (ox, oy) of an h x w image in an H x W canvas."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {(h, w)!r}")
    scale = min(H / h, W / w)
    nh = min(H, max(1, int(h * scale + 0.5)))
    nw = min(W, max(1, int(w * scale + 0.5)))
    return scale, nh, nw, (W - nw) // 2, (H - nh) // 2


def letterbox_params(
    orig_sizes: Tensor | Sequence[Sequence[int]],
    size: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> LetterboxParams:
    """Letterbox parameters for images of sizes ``orig_sizes`` (``Tensor[B, 2]`` or list of (h, w))
    in a ``size`` = (H, W) canvas, without touching pixels (same numbers as :func:`letterbox`)."""
    H, W = _check_size(size)
    sizes = [(int(h), int(w)) for h, w in (orig_sizes.tolist() if isinstance(orig_sizes, Tensor) else orig_sizes)]
    fits = [_fit(h, w, H, W) for h, w in sizes]
    scale = torch.tensor([f[0] for f in fits], dtype=torch.float32, device=device)
    offset = torch.tensor([[f[3], f[4]] for f in fits], dtype=torch.float32, device=device).reshape(-1, 2)
    orig = torch.tensor(sizes, dtype=torch.float32, device=device).reshape(-1, 2)
    return LetterboxParams(scale, offset, orig)


def letterbox(
    images: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    *,
    size: Sequence[int],
    bgr: bool,
    pad_value: float | Sequence[float] = 0.0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    device: torch.device | str | None = None,
) -> tuple[Tensor, LetterboxParams]:
    """Resize (aspect kept, bilinear), centre-pad and normalise a batch of HWC uint8 images.

    On the CPU the bilinear resize runs on the uint8 pixels (torch's vectorised channels-last uint8
    kernel) and only the resized image is converted to float: the resized pixels are whole grey
    levels, at most 1 level from a float32 resize (like OpenCV's ``INTER_LINEAR``), at a fraction of
    the cost for camera frames much larger than the network input.  On CUDA the resize is float32.

    Args:
        images: ``Tensor[B, H, W, 3]`` uint8, or a list of ``Tensor[H, W, 3]`` uint8 of any sizes
            (numpy arrays are accepted too).  All on one device.
        size: network input (H, W).
        bgr: True when the input channels are BGR (OpenCV / ROS ``bgr8``); output is always RGB.
        pad_value: padding colour in 0-255 pixel units (scalar or RGB triple), before normalisation.
        dtype: output dtype (e.g. ``torch.float16``); normalisation is done in float32.
        channels_last: return a channels-last (NHWC memory) tensor.
        device: move the uint8 images there first (cheaper than moving floats); default: their device.

    Returns:
        ``Tensor[B, 3, H, W]`` normalised RGB ((x / 255 - MEAN) / STD) and the
        :class:`LetterboxParams`.  One ``interpolate`` call per distinct input size (per image on
        the CPU, which saves stacking the full-size frames).
    """
    H, W = _check_size(size)
    groups: dict[tuple[int, int], list[int]] = {}  # image size -> indices into the batch
    if isinstance(images, (Tensor, np.ndarray)):
        batch = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if batch.dim() != 4:
            raise ValueError(f"images tensor must be (B, H, W, 3), got shape {tuple(batch.shape)}")
        imgs = [batch]  # one group, already stacked
        if batch.shape[0] > 0:
            groups[tuple(batch.shape[1:3])] = list(range(batch.shape[0]))
        sizes = [tuple(batch.shape[1:3])] * batch.shape[0]
        stacked = True
    else:
        imgs = [torch.from_numpy(np.ascontiguousarray(im)) if isinstance(im, np.ndarray) else im for im in images]
        sizes = [tuple(im.shape[:2]) for im in imgs]
        for i, hw in enumerate(sizes):
            groups.setdefault(hw, []).append(i)
        stacked = False
    for im in imgs:
        if im.shape[-1] != 3 or im.dim() not in (3, 4):
            raise ValueError(f"images must be (H, W, 3) / (B, H, W, 3), got shape {tuple(im.shape)}")
        if im.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {im.dtype}")
    if device is None:
        device = imgs[0].device if imgs else torch.device("cpu")
    device = torch.device(device)
    B = len(sizes)

    pad = torch.as_tensor(pad_value, dtype=torch.float32).flatten()
    if pad.numel() not in (1, 3):
        raise ValueError(f"pad_value must be a scalar or an RGB triple, got {pad_value!r}")
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    pad_norm = ((pad.expand(3) / 255.0 - mean) / std).tolist()  # (3,) float32 values
    # x_norm = x * mul + add per RGB channel, with x in 0-255 (float32 values as python floats)
    mul = (1.0 / (255.0 * std)).tolist()
    add = (-mean / std).tolist()
    out = torch.empty(B, 3, H, W, device=device)  # (B, 3, H, W) float32
    whole = len(groups) == 1 and B > 0  # one image size: only the border needs the pad colour
    if not whole:
        for c in range(3):
            out[:, c].fill_(pad_norm[c])

    fits = {hw: _fit(hw[0], hw[1], H, W) for hw in groups}
    for hw, idx in groups.items():
        _, nh, nw, ox, oy = fits[hw]
        if device.type == "cpu":  # one image at a time: no stacked copy of the full-size frames
            pieces = [(i, imgs[0][i : i + 1] if stacked else imgs[i].unsqueeze(0)) for i in idx]
        elif stacked:
            pieces = [(None, imgs[0])]  # (B, h, w, 3)
        else:
            pieces = [(None, torch.stack([imgs[i] for i in idx]))]  # (n, h, w, 3)
        for row, x in pieces:
            x = x.to(device, non_blocking=True).permute(0, 3, 1, 2)  # (n, 3, h, w) uint8, channels-last view
            if (nh, nw) != hw:
                if x.device.type == "cpu":
                    # Resize the uint8 pixels first (torch's vectorised channels-last uint8 kernel),
                    # then convert only the small image: the result is rounded to whole grey levels
                    # (at most 1 level from the float path, like OpenCV's INTER_LINEAR) and many
                    # times cheaper than converting the full-resolution frame to float first.
                    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
                else:  # no uint8 bilinear kernel on CUDA; floats are cheap there
                    x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
            if row is not None:
                dst = out[row : row + 1, :, oy : oy + nh, ox : ox + nw]
            elif len(idx) == B:
                dst = out[:, :, oy : oy + nh, ox : ox + nw]
            else:
                dst = torch.empty(len(idx), 3, nh, nw, device=device)
            for c in range(3):  # normalise straight into the canvas; BGR -> RGB by picking the channel
                torch.mul(x[:, 2 - c if bgr else c], mul[c], out=dst[:, c]).add_(add[c])
            if row is None and len(idx) != B:
                out[torch.tensor(idx, device=device), :, oy : oy + nh, ox : ox + nw] = dst
        if whole:  # one image size for the batch: pad colour around the image
            for c in range(3):
                for region in (out[:, c, :oy], out[:, c, oy + nh :], out[:, c, oy : oy + nh, :ox],
                               out[:, c, oy : oy + nh, ox + nw :]):
                    if region.numel():
                        region.fill_(pad_norm[c])
    out = out.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    params = letterbox_params(sizes, (H, W), device=device)
    return out, params


def boxes_to_input(boxes: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """Map ``Tensor[B, N, 4]`` boxes from original to network-input pixels: ``x * scale + offset``."""
    off = offset.to(boxes.dtype).repeat(1, 2).unsqueeze(1)  # (B, 1, 4)
    return boxes * scale.to(boxes.dtype).view(-1, 1, 1) + off


def boxes_to_original(
    boxes: Tensor,
    scale: Tensor | None = None,
    offset: Tensor | None = None,
    orig_size: Tensor | None = None,
) -> Tensor:
    """Map ``Tensor[B, N, 4]`` boxes from network-input to original pixels, ``(x - offset) / scale``,
    and clip to ``[0, w] x [0, h]`` when ``orig_size`` (``Tensor[B, 2]``, (h, w)) is given."""
    if offset is not None:
        boxes = boxes - offset.to(boxes.dtype).repeat(1, 2).unsqueeze(1)  # (B, N, 4)
    if scale is not None:
        boxes = boxes / scale.to(boxes.dtype).view(-1, 1, 1)
    if orig_size is not None:
        hw = orig_size.to(boxes.dtype)
        upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1).unsqueeze(1)  # (B, 1, 4)
        boxes = torch.minimum(boxes.clamp_min(0), upper)
    return boxes
