"""Batched CenterNet (Keypoint Triplets) decoding: heatmaps -> boxes, on the outputs' device.

Legend: B batch, C classes, H/W map height/width, K top-k keypoints, N candidate pairs
(``min(num_dets, K*K)``), D detections per image (``max_per_image``).

Test procedure of "CenterNet: Keypoint Triplets for Object Detection" (Duan et al., ICCV 2019):

1. sigmoid, keep only 3x3 local maxima (max-pool), top-K over all classes and positions, separately
   for top-left (tl), bottom-right (br) and centre (ct) heatmaps; add the sub-pixel offsets;
2. all K x K tl/br pairs; reject different classes, |tl_tag - br_tag| > ae_threshold and br left of
   or above tl; pair score = mean of the two corner scores; keep the best ``num_dets`` pairs;
3. boxes in network-input pixels (map coords * stride); central region with n = ``n_small``
   (area <= ``small_area``) or ``n_large``; keep a box only if a top-K centre keypoint of the same
   class lies strictly inside; score = (tl + br + best matching centre) / 3  (mode "triplet");
4. score threshold, per-class soft / hard / no NMS, best ``max_per_image``;
5. undo the letterbox (``orig = (input_px - offset) / scale``) and clip to the original image.

Everything is batched tensor code; the only host sync is an optional one inside soft-NMS
(``DecodeConfig.host_sync``).  ``reference_decode.py`` is a per-image numpy version for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .box_ops import soft_nms
from .preprocess import boxes_to_original

__all__ = ["NMS_CHOICES", "MODES", "DecodeConfig", "Detections", "decode"]

NMS_CHOICES = ("soft", "soft_linear", "hard", "none")
MODES = ("triplet", "pairs")
_NMS_METHOD = {"soft": "gaussian", "soft_linear": "linear", "hard": "hard"}


@dataclass
class DecodeConfig:
    """Decoding hyper-parameters (defaults follow the paper's test setting)."""

    topk: int = 70  # K keypoints kept per heatmap (tl, br and ct separately), over all classes
    ae_threshold: float = 0.5  # reject a pair when |tl_tag - br_tag| > this
    num_dets: int = 1000  # best pairs kept (by pair score) before the centre check
    kernel: int = 3  # max-pool window for the local-maximum (peak) test; odd
    stride: int = 4  # network-input pixels per map cell
    mode: str = "triplet"  # "triplet" (centre check) or "pairs" (CornerNet: no centre check)
    small_area: float = 150.0**2  # box area (network-input px^2) up to which n_small applies
    n_small: int = 3  # central-region scale n for small boxes
    n_large: int = 5  # central-region scale n for large boxes
    score_threshold: float = 0.0  # detections need score > this (the ROS node applies its own)
    nms: str = "soft"  # "soft" (Gaussian soft-NMS), "soft_linear", "hard" or "none"
    nms_sigma: float = 0.5  # Gaussian soft-NMS: score *= exp(-iou^2 / sigma)
    nms_iou: float = 0.5  # IoU threshold of hard and linear soft NMS
    max_per_image: int = 100  # D, detections returned per image
    host_sync: bool = True  # allow one device->host sync in NMS to skip empty slots (faster)

    def __post_init__(self) -> None:
        for name in ("topk", "num_dets", "kernel", "stride", "n_small", "n_large", "max_per_image"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {self.kernel!r}")
        if not self.ae_threshold > 0:
            raise ValueError(f"ae_threshold must be > 0, got {self.ae_threshold!r}")
        if not self.small_area >= 0:
            raise ValueError(f"small_area must be >= 0, got {self.small_area!r}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.nms not in NMS_CHOICES:
            raise ValueError(f"nms must be one of {NMS_CHOICES}, got {self.nms!r}")
        if not self.nms_sigma > 0:
            raise ValueError(f"nms_sigma must be > 0, got {self.nms_sigma!r}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou!r}")


class Detections(NamedTuple):
    """boxes ``Tensor[B, D, 4]`` (x1, y1, x2, y2), scores ``Tensor[B, D]``, labels ``Tensor[B, D]``
    long, num ``Tensor[B]`` long.  Rows sorted by score; invalid rows: score 0, label -1, box 0."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num: Tensor


class _Keypoints(NamedTuple):
    scores: Tensor  # (B, K), 0 for a non-peak filler
    labels: Tensor  # (B, K) long
    xs: Tensor  # (B, K) map coords incl. offset
    ys: Tensor  # (B, K)
    pix: Tensor  # (B, K) flat index y * W + x


def _empty(B: int, D: int, device: torch.device) -> Detections:
    return Detections(
        torch.zeros(B, D, 4, device=device),
        torch.zeros(B, D, device=device),
        torch.full((B, D), -1, dtype=torch.long, device=device),
        torch.zeros(B, dtype=torch.long, device=device),
    )


def _max_filter(heat: Tensor, kernel: int, *, separable: bool | None = None) -> Tensor:
    """Max over each ``kernel`` x ``kernel`` window (stride 1, -inf padding) of ``Tensor[B, C, H, W]``.

    ``F.max_pool2d`` on CUDA; on CPU a separable max of shifted views, which is exact and much
    faster there than the CPU max-pool kernel for stride 1.
    """
    if separable is None:
        separable = heat.device.type == "cpu"
    r = (kernel - 1) // 2
    if not separable or r == 0:
        return F.max_pool2d(heat, kernel, stride=1, padding=r)
    H, W = heat.shape[-2:]
    p = F.pad(heat, (r, r, r, r), value=float("-inf"))  # (B, C, H + 2r, W + 2r)
    rows = p[..., :, 0:W]
    for d in range(1, kernel):
        rows = torch.maximum(rows, p[..., :, d : d + W])  # (B, C, H + 2r, W)
    out = rows[..., 0:H, :]
    for d in range(1, kernel):
        out = torch.maximum(out, rows[..., d : d + H, :])  # (B, C, H, W)
    return out


def _topk_keypoints(heat: Tensor, regr: Tensor, k: int, kernel: int) -> _Keypoints:
    """Peaks of ``Tensor[B, C, H, W]`` logits -> top-k keypoints with offsets from ``regr[B, 2, H, W]``."""
    B, C, H, W = heat.shape
    heat = torch.sigmoid(heat.float())
    hmax = _max_filter(heat, kernel)
    heat = heat.masked_fill(hmax != heat, 0.0)  # keep local maxima only
    scores, inds = heat.reshape(B, C * H * W).topk(k, dim=1)  # (B, K)
    # Deterministic order on every device: score descending, then flat index ascending.
    inds, perm = inds.sort(dim=1)
    scores = scores.gather(1, perm)
    scores, perm = scores.sort(dim=1, descending=True, stable=True)
    inds = inds.gather(1, perm)  # (B, K)
    labels = torch.div(inds, H * W, rounding_mode="floor")  # (B, K)
    pix = inds - labels * (H * W)  # (B, K)
    ys = torch.div(pix, W, rounding_mode="floor")
    xs = pix - ys * W
    off = regr.float().reshape(B, 2, H * W).gather(2, pix.unsqueeze(1).expand(B, 2, k))  # (B, 2, K)
    return _Keypoints(scores, labels, xs.float() + off[:, 0], ys.float() + off[:, 1], pix)


def _as_batch(t: Tensor | None, B: int, shape: tuple[int, ...], name: str, device: torch.device) -> Tensor | None:
    if t is None:
        return None
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if tuple(t.shape) != (B, *shape):
        raise ValueError(f"{name} must have shape {(B, *shape)}, got {tuple(t.shape)}")
    return t


@torch.no_grad()
def decode(
    outputs: Mapping[str, Tensor],
    cfg: DecodeConfig | None = None,
    *,
    scale: Tensor | None = None,
    offset: Tensor | None = None,
    orig_size: Tensor | None = None,
) -> Detections:
    """Decode CenterNet-triplet head outputs into per-image detections.

    Args:
        outputs: ``tl_heat``, ``br_heat`` ``Tensor[B, C, H, W]`` logits, ``tl_tag``, ``br_tag``
            ``Tensor[B, 1, H, W]``, ``tl_regr``, ``br_regr`` ``Tensor[B, 2, H, W]`` (x, y); for
            mode "triplet" also ``ct_heat`` and ``ct_regr``.  Any float dtype (cast to float32).
        cfg: :class:`DecodeConfig` (default: paper settings).
        scale: ``Tensor[B]`` letterbox scale; offset: ``Tensor[B, 2]`` (x, y) letterbox padding;
            orig_size: ``Tensor[B, 2]`` (h, w) to clip to.  Without them boxes stay in
            network-input pixels.

    Returns:
        :class:`Detections` with ``D = cfg.max_per_image`` rows per image, on the outputs' device.
    """
    cfg = DecodeConfig() if cfg is None else cfg
    keys = ["tl_heat", "br_heat", "tl_tag", "br_tag", "tl_regr", "br_regr"]
    if cfg.mode == "triplet":
        keys += ["ct_heat", "ct_regr"]
    for key in keys:
        if key not in outputs:
            raise ValueError(f"outputs lack {key!r} (have {sorted(outputs)})")
    tl_heat = outputs["tl_heat"]
    if tl_heat.dim() != 4:
        raise ValueError(f"tl_heat must be (B, C, H, W), got {tuple(tl_heat.shape)}")
    B, C, H, W = tl_heat.shape
    dev = tl_heat.device
    D = cfg.max_per_image
    want = {"heat": (B, C, H, W), "tag": (B, 1, H, W), "regr": (B, 2, H, W)}
    for key in keys:
        if tuple(outputs[key].shape) != want[key.split("_")[1]]:
            raise ValueError(f"{key} must have shape {want[key.split('_')[1]]}, got {tuple(outputs[key].shape)}")
    scale = _as_batch(scale, B, (), "scale", dev)
    offset = _as_batch(offset, B, (2,), "offset", dev)
    orig_size = _as_batch(orig_size, B, (2,), "orig_size", dev)
    if B == 0 or C * H * W == 0:
        return _empty(B, D, dev)

    K = min(cfg.topk, C * H * W)
    tl = _topk_keypoints(outputs["tl_heat"], outputs["tl_regr"], K, cfg.kernel)
    br = _topk_keypoints(outputs["br_heat"], outputs["br_regr"], K, cfg.kernel)
    tl_tag = outputs["tl_tag"].float().reshape(B, H * W).gather(1, tl.pix)  # (B, K)
    br_tag = outputs["br_tag"].float().reshape(B, H * W).gather(1, br.pix)  # (B, K)

    # All K x K pairs: rows index tl, columns index br.
    pair = (tl.scores.unsqueeze(2) + br.scores.unsqueeze(1)) / 2  # (B, K, K)
    bad = tl.labels.unsqueeze(2) != br.labels.unsqueeze(1)
    bad |= (tl_tag.unsqueeze(2) - br_tag.unsqueeze(1)).abs() > cfg.ae_threshold
    bad |= br.xs.unsqueeze(1) < tl.xs.unsqueeze(2)
    bad |= br.ys.unsqueeze(1) < tl.ys.unsqueeze(2)
    bad |= (tl.scores.unsqueeze(2) <= 0) | (br.scores.unsqueeze(1) <= 0)  # non-peak fillers
    pair = pair.masked_fill(bad, -1.0).reshape(B, K * K)  # (B, K*K)
    N = min(cfg.num_dets, K * K)
    score, pidx = pair.sort(dim=1, descending=True, stable=True)  # ties: lower pair index first
    score, pidx = score[:, :N], pidx[:, :N]  # (B, N)
    ti = torch.div(pidx, K, rounding_mode="floor")  # (B, N) tl index
    bi = pidx - ti * K  # (B, N) br index
    boxes = torch.stack(
        [tl.xs.gather(1, ti), tl.ys.gather(1, ti), br.xs.gather(1, bi), br.ys.gather(1, bi)], dim=2
    ) * float(cfg.stride)  # (B, N, 4) network-input pixels
    labels = tl.labels.gather(1, ti)  # (B, N)
    ok = score > 0  # (B, N) pair passed all tests

    if cfg.mode == "triplet":
        ct = _topk_keypoints(outputs["ct_heat"], outputs["ct_regr"], K, cfg.kernel)
        cx = ct.xs * float(cfg.stride)  # (B, K)
        cy = ct.ys * float(cfg.stride)
        x1, y1, x2, y2 = boxes.unbind(2)  # (B, N) each
        area = (x2 - x1) * (y2 - y1)
        n = torch.where(area <= cfg.small_area, float(cfg.n_small), float(cfg.n_large))  # (B, N)
        ctlx = ((n + 1) * x1 + (n - 1) * x2) / (2 * n)
        ctly = ((n + 1) * y1 + (n - 1) * y2) / (2 * n)
        cbrx = ((n - 1) * x1 + (n + 1) * x2) / (2 * n)
        cbry = ((n - 1) * y1 + (n + 1) * y2) / (2 * n)
        inside = (cx.unsqueeze(1) > ctlx.unsqueeze(2)) & (cx.unsqueeze(1) < cbrx.unsqueeze(2))  # (B, N, K)
        inside &= (cy.unsqueeze(1) > ctly.unsqueeze(2)) & (cy.unsqueeze(1) < cbry.unsqueeze(2))
        inside &= ct.labels.unsqueeze(1) == labels.unsqueeze(2)
        inside &= (ct.scores > 0).unsqueeze(1)
        best_ct = torch.where(inside, ct.scores.unsqueeze(1), -1.0).amax(2)  # (B, N)
        tls = tl.scores.gather(1, ti)
        brs = br.scores.gather(1, bi)
        ok &= best_ct >= 0
        score = (tls + brs + best_ct) / 3

    score = torch.where(ok, score, -1.0)  # (B, N); -1 = rejected
    labels = torch.where(ok, labels, -1)
    if cfg.nms == "none":
        M = min(D, N)
        top, order = score.sort(dim=1, descending=True, stable=True)
        top, order = top[:, :M], order[:, :M]  # (B, M)
        keep = top > cfg.score_threshold
        out_boxes = torch.zeros(B, D, 4, device=dev)
        out_scores = torch.zeros(B, D, device=dev)
        out_labels = torch.full((B, D), -1, dtype=torch.long, device=dev)
        out_boxes[:, :M] = boxes.gather(1, order.unsqueeze(-1).expand(B, M, 4))
        out_scores[:, :M] = torch.where(keep, top, 0.0)
        out_labels[:, :M] = torch.where(keep, labels.gather(1, order), -1)
    else:
        res = soft_nms(
            boxes,
            score,
            labels,
            max_out=D,
            method=_NMS_METHOD[cfg.nms],
            sigma=cfg.nms_sigma,
            iou_threshold=cfg.nms_iou,
            score_threshold=cfg.score_threshold,
            host_sync=cfg.host_sync,
        )
        out_boxes, out_scores, out_labels = res.boxes, res.scores, res.labels
    valid = out_labels >= 0  # (B, D)
    out_boxes = boxes_to_original(out_boxes, scale, offset, orig_size)
    out_boxes = torch.where(valid.unsqueeze(-1), out_boxes, 0.0)
    return Detections(out_boxes, out_scores, out_labels, valid.sum(1))
