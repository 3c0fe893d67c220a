"""Batched CenterNet (Keypoint Triplets) decoding: heatmaps -> boxes, on the outputs' device.

Legend: B batch, C classes, H/W map height/width, K top-k keypoints, N candidate pairs
(``min(num_dets, K*K)``), D detections per image (``max_per_image``), F columns of the packed
keypoints copied to the host (plan "copy").

Test procedure of "CenterNet: Keypoint Triplets for Object Detection" (Duan et al., ICCV 2019):

1. sigmoid, keep only 3x3 local maxima (max-pool), top-K over all classes and positions, separately
   for top-left (tl), bottom-right (br) and centre (ct) heatmaps; add the sub-pixel offsets;
2. all K x K tl/br pairs; reject different classes, |tl_tag - br_tag| > ae_threshold and br left of
   or above tl; pair score = mean of the two corner scores; keep the best ``num_dets`` pairs;
3. boxes in network-input pixels (map coords * stride); central region with n = ``n_small``
   (area <= ``small_area``) or ``n_large``; keep a box only if a top-K centre keypoint of the same
   class lies strictly inside; score = (tl + br + best matching centre) / 3  (mode "triplet");
   with ``exclusive_centres`` (ours, not in the paper) a centre keypoint does not confirm a box when it
   also confirms a better-scoring box nested inside it; with ``size_ratio`` and a model that has the
   centre size head (``ct_size``, ours) a centre confirms only a box of about its predicted size (see
   :class:`DecodeConfig`);
4. score threshold, per-class soft / hard / no NMS, best ``max_per_image``; with ``group_score_ratio``
   (ours) NMS keeps what scores above ``score_threshold x min(ratio, 1)``, a box that encloses two distinct
   detections of its class is dropped (:mod:`.group_boxes`), then the threshold applies;
5. undo the letterbox (``orig = (input_px - offset) / scale``) and clip to the original image.

Flip test (``DecodeConfig.flip_test``; the paper's single-scale test feeds "both the original and
horizontally flipped images", as CornerNet's and CenterNet's test code do): the outputs hold 2B images,
B originals then the same B flipped left-right; each is decoded by steps 1-3, the flipped one's boxes
are mirrored back (``x -> W_in - x``) and step 4 runs on the union of both.  The centre check uses each
view's own centre keypoints (the reference code pools both views' centres first).

Two implementations with bit-identical results on the CPU (``test_decode.py`` compares them):

- batched tensor code on the outputs' device (``host_sync=False``, or the plan "device").  It is
  sync-free with ``host_sync=False`` (CUDA graphs, async pipelines); the plan "device" reads two sizes
  (the number of valid pairs, the number of NMS candidates) back to the host to skip empty work;
- numpy per image on the host (``pairing._pairs_to_detections_numpy``, ``box_ops.soft_nms_numpy``):
  after the top-k keypoints everything is small, and a numpy call costs about a microsecond against
  several for a torch op (and tens of microseconds for a handful of small CUDA kernel launches).  With
  ``host_sync`` (default) this is where a decode ends: on the CPU the heatmap passes (sigmoid, peak
  test, block maxima) are tensor ops and the top-k selection is numpy too
  (``keypoints._peak_topk_numpy``, ``keypoints._assemble_keypoints_numpy``: plan "host"); on a GPU the
  heatmap passes and the top-k run there and the keypoints come to the host in one copy (plan "copy",
  ``keypoints._keypoints_to_host``).  ``_HOST_SYNC_PLAN`` holds the plan per device type.

``reference_decode.py`` is a straightforward per-image numpy version for tests and the benchmark.

Speed notes (CPU, where one op costs microseconds and element-wise passes are memory-bound): the
keypoint extraction runs on cache-sized chunks with a separable max filter and in-place arithmetic
instead of comparisons/``where``; the top-k is two-level and exact; only valid pairs go on to the
centre check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .box_ops import soft_nms
from .keypoints import _keypoints_to_host, _topk_keypoints
from .pairing import (_NMS_METHOD, _drop_group_boxes, _groups_on, _nms_threshold, _pairs_to_detections_numpy,
                      _pairs_to_detections_torch)
from .preprocess import boxes_to_original

__all__ = ["NMS_CHOICES", "MODES", "DecodeConfig", "Detections", "decode", "flip_test_batch"]

NMS_CHOICES = ("soft", "soft_linear", "hard", "none")
MODES = ("triplet", "pairs")


@dataclass
class DecodeConfig:
    """Decoding hyper-parameters.  The defaults follow the paper's test setting, except
    ``exclusive_centres`` (ours).

    ``exclusive_centres``: the paper keeps a box when any centre keypoint of its class lies in its
    central region.  In a queue of traffic that centre is often another car's: a pair of one car's
    top-left corner and a farther car's bottom-right corner holds a third car's centre in the
    middle, and the "group box" passes.  With ``exclusive_centres`` a centre keypoint that also lies
    in the central region of a confirmed box *nested inside* this one (inclusive coordinates, same
    class, higher triplet score as the paper's rule gives it) belongs to that box and does not count
    here; the box is kept only if another centre remains, and its score uses the best remaining
    centre.  Measured on the bundled model (models/README.md): boxes wider than half the demo frame
    7 % -> 4.4 % of all boxes, COCO AP up on both valid splits.  Set False for the paper's rule.
    """

    topk: int = 70  # K keypoints kept per heatmap (tl, br and ct separately), over all classes
    ae_threshold: float = 0.5  # reject a pair when |tl_tag - br_tag| > this
    num_dets: int = 1000  # best pairs kept (by pair score) before the centre check
    kernel: int = 3  # max-pool window for the local-maximum (peak) test; odd
    stride: int = 4  # network-input pixels per map cell
    mode: str = "triplet"  # "triplet" (centre check) or "pairs" (CornerNet: no centre check)
    small_area: float = 150.0**2  # box area (network-input px^2) up to which n_small applies
    n_small: int = 3  # central-region scale n for small boxes
    n_large: int = 5  # central-region scale n for large boxes
    exclusive_centres: bool = True  # a centre confirming a better nested box does not confirm this one (not in the paper)
    size_ratio: float = 2.0  # box w, h within this factor of the centre's predicted size (ct_size models); 0 = off
    # drop a box that encloses two distinct detections of its class, each scoring >= this x its score, after NMS
    # (ours, group_boxes.py; triplet mode); 0 = off
    group_score_ratio: float = 0.5
    score_threshold: float = 0.0  # detections need score > this (the ROS node applies its own)
    nms: str = "soft"  # "soft" (Gaussian soft-NMS), "soft_linear", "hard" or "none"
    nms_sigma: float = 0.5  # Gaussian soft-NMS: score *= exp(-iou^2 / sigma)
    nms_iou: float = 0.5  # IoU threshold of hard and linear soft NMS
    max_per_image: int = 100  # D, detections returned per image
    host_sync: bool = True  # allow device->host reads (pair count, NMS candidates): faster, same results
    # Outputs hold 2B images: B originals, then the same B flipped left-right (the paper's single-scale test;
    # twice the forward-pass work). Both are decoded and NMS runs on the union. False: one view.
    flip_test: bool = False

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
        if isinstance(self.size_ratio, bool) or not (self.size_ratio == 0 or self.size_ratio >= 1):
            raise ValueError(f"size_ratio must be 0 (off) or >= 1, got {self.size_ratio!r}")
        if isinstance(self.group_score_ratio, bool) or not 0.0 <= self.group_score_ratio < float("inf"):
            raise ValueError(f"group_score_ratio must be 0 (off) or a finite number > 0, got {self.group_score_ratio!r}")
        if not isinstance(self.exclusive_centres, bool):
            raise ValueError(f"exclusive_centres must be a bool, got {self.exclusive_centres!r}")
        if not isinstance(self.flip_test, bool):
            raise ValueError(f"flip_test must be a bool, got {self.flip_test!r}")
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


def _empty(B: int, D: int, device: torch.device) -> Detections:
    return Detections(
        torch.zeros(B, D, 4, device=device),
        torch.zeros(B, D, device=device),
        torch.full((B, D), -1, dtype=torch.long, device=device),
        torch.zeros(B, dtype=torch.long, device=device),
    )


# Where a decode with host_sync runs, by device type (all plans give bit-identical results):
#   "host":   CPU only: the heatmap passes as tensor ops, the top-k selection and everything after it in numpy;
#   "copy":   heatmap passes and top-k keypoints on the device, one copy of the keypoints (a few KB) to the
#             host, pairs / centre check / NMS / letterbox undo in numpy (one sync instead of the tensor
#             path's two, and none of its hundreds of small kernel launches at small batches);
#   "device": the batched tensor path on the device (two syncs: pair count, NMS candidates).
# Tests and benchmarks switch plans here (bench_decode.py --decode-plan).
HOST_SYNC_PLANS = ("host", "copy", "device")
_HOST_SYNC_PLAN = {"cpu": "host", "cuda": "copy"}


def _finish_numpy(
    dets: tuple[np.ndarray, np.ndarray, np.ndarray], scale: np.ndarray | None, offset: np.ndarray | None,
    orig_size: np.ndarray | None,
) -> Detections:
    """Boxes ``ndarray[B, D, 4]``, scores, labels of ``pairing._pairs_to_detections_numpy`` -> CPU
    :class:`Detections`, the letterbox undone as ``preprocess.boxes_to_original`` does it."""
    boxes, scores, labels = dets
    valid = labels >= 0  # (B, D)
    if offset is not None or scale is not None or orig_size is not None:
        if offset is not None:
            boxes = boxes - np.tile(offset, 2)[:, None, :]
        if scale is not None:
            boxes = boxes / scale[:, None, None]
        if orig_size is not None:
            upper = np.stack([orig_size[:, 1], orig_size[:, 0], orig_size[:, 1], orig_size[:, 0]], 1)[:, None, :]
            boxes = np.minimum(np.maximum(boxes, np.float32(0)), upper)  # (B, D, 4) clipped to (w, h)
        boxes[~valid] = 0.0
    return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                      torch.from_numpy(valid.sum(1)))


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
    host_ok: bool = False,
) -> Detections:
    """Decode CenterNet-triplet head outputs into per-image detections.

    Args:
        outputs: ``tl_heat``, ``br_heat`` ``Tensor[B, C, H, W]`` logits, ``tl_tag``, ``br_tag``
            ``Tensor[B, 1, H, W]``, ``tl_regr``, ``br_regr`` ``Tensor[B, 2, H, W]`` (x, y); for
            mode "triplet" also ``ct_heat`` and ``ct_regr``, and optionally ``ct_size`` ``Tensor[B, 2, H, W]``
            (log width, height in map cells; used by ``cfg.size_ratio``).  Any float dtype (cast to float32).
            With ``cfg.flip_test`` the batch is ``2B``: B images, then the same B flipped left-right.
        cfg: :class:`DecodeConfig` (default: paper settings).
        scale: ``Tensor[B]`` letterbox scale; offset: ``Tensor[B, 2]`` (x, y) letterbox padding;
            orig_size: ``Tensor[B, 2]`` (h, w) to clip to (B images: the originals under ``flip_test``).
            Without them boxes stay in network-input pixels.
        host_ok: the caller takes CPU tensors: a decode that finishes on the host (``host_sync`` on a
            GPU, see ``_HOST_SYNC_PLAN``) returns them there instead of copying them back.

    Returns:
        :class:`Detections` with ``D = cfg.max_per_image`` rows per image, on the outputs' device
        (or on the CPU, with ``host_ok``).

    Raises:
        ValueError: a missing output or a wrong shape, an odd batch under ``flip_test``.
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
    use_size = cfg.mode == "triplet" and cfg.size_ratio > 0 and "ct_size" in outputs
    if use_size:
        keys.append("ct_size")
    want = {"heat": (B, C, H, W), "tag": (B, 1, H, W), "regr": (B, 2, H, W), "size": (B, 2, H, W)}
    for key in keys:
        if tuple(outputs[key].shape) != want[key.split("_")[1]]:
            raise ValueError(f"{key} must have shape {want[key.split('_')[1]]}, got {tuple(outputs[key].shape)}")
    if cfg.flip_test:
        return _decode_flip_test(outputs, cfg, scale, offset, orig_size, host_ok)
    scale = _as_batch(scale, B, (), "scale", dev)
    offset = _as_batch(offset, B, (2,), "offset", dev)
    orig_size = _as_batch(orig_size, B, (2,), "orig_size", dev)
    if B == 0 or C * H * W == 0:
        return _empty(B, D, dev)

    K = min(cfg.topk, C * H * W)
    triplet = cfg.mode == "triplet"
    kinds = ("tl", "br", "ct") if triplet else ("tl", "br")
    plan = _HOST_SYNC_PLAN.get(dev.type, "copy") if cfg.host_sync else "device"
    if plan == "host" and dev.type != "cpu":
        raise ValueError(f"decode plan 'host' needs CPU outputs, got {dev}")
    heats, regrs = [outputs[f"{t}_heat"] for t in kinds], [outputs[f"{t}_regr"] for t in kinds]
    kps = _topk_keypoints(heats, regrs, K, cfg.kernel, host=plan == "host")
    tl, br = kps[0], kps[1]
    ct_range = _size_ranges(outputs["ct_size"], kps[2].pix, cfg) if use_size else None  # (B, K, 4)
    if plan == "host":
        rows = np.arange(B)[:, None]  # (B, 1)
        tl_tag = outputs["tl_tag"].float().numpy().reshape(B, H * W)[rows, tl.pix]  # (B, K)
        br_tag = outputs["br_tag"].float().numpy().reshape(B, H * W)[rows, br.pix]
        host_params = [None if t is None else t.numpy() for t in (scale, offset, orig_size)]
        ct_range = None if ct_range is None else ct_range.numpy()
    elif plan == "copy":
        kps, tl_tag, br_tag, ct_range, host_params = _keypoints_to_host(kps, outputs, ct_range, scale, offset,
                                                                        orig_size)
    if plan != "device":
        det = _finish_numpy(_pairs_to_detections_numpy(kps, tl_tag, br_tag, cfg, ct_range), *host_params)
        return det if host_ok or dev.type == "cpu" else Detections(*(t.to(dev) for t in det))
    else:
        tl_tag = outputs["tl_tag"].reshape(B, H * W).gather(1, tl.pix)  # (B, K)
        br_tag = outputs["br_tag"].reshape(B, H * W).gather(1, br.pix)
        if tl_tag.dtype != torch.float32:
            tl_tag, br_tag = tl_tag.float(), br_tag.float()
        res = _pairs_to_detections_torch(kps, tl_tag, br_tag, cfg, C, ct_range)
        if res is None:
            return _empty(B, D, dev)
        out_boxes, out_scores, out_labels = res
    return _to_original(out_boxes, out_scores, out_labels, scale, offset, orig_size)


def _size_ranges(ct_size: Tensor, pix: Tensor | np.ndarray, cfg: DecodeConfig) -> Tensor:
    """``DecodeConfig.size_ratio``: the box sizes each centre keypoint may confirm.

    ``ct_size`` ``Tensor[B, 2, H, W]`` (log width, height in map cells), ``pix`` ``Tensor[B, K]`` (or
    numpy) flat indices of the centre keypoints -> float32 ``Tensor[B, K, 4]`` (w_min, w_max, h_min,
    h_max) in network-input pixels, on ``ct_size``'s device.  Computed once here for every decode plan,
    so the tensor and numpy pairing compare the same numbers."""
    B, _, H, W = ct_size.shape
    pix = torch.as_tensor(pix, device=ct_size.device)
    K = pix.shape[1]
    log_wh = ct_size.reshape(B, 2, H * W).gather(2, pix.unsqueeze(1).expand(B, 2, K)).float()  # (B, 2, K)
    wh = log_wh.transpose(1, 2).exp() * float(cfg.stride)  # (B, K, 2) predicted w, h, input pixels
    r = float(cfg.size_ratio)
    lo, hi = wh / r, wh * r  # (B, K, 2) each
    return torch.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], -1)  # (B, K, 4)


def flip_test_batch(x: Tensor) -> Tensor:
    """Network input ``Tensor[B, 3, H, W]`` -> ``Tensor[2B, 3, H, W]``: the images, then the same images
    flipped left-right (the batch :func:`decode` expects under ``DecodeConfig.flip_test``)."""
    return torch.cat([x, x.flip(-1)])


def _to_original(boxes: Tensor, scores: Tensor, labels: Tensor, scale: Tensor | None, offset: Tensor | None,
                 orig_size: Tensor | None) -> Detections:
    """Boxes ``Tensor[B, D, 4]`` in network-input pixels -> :class:`Detections` in original pixels."""
    valid = labels >= 0  # (B, D)
    boxes = boxes_to_original(boxes, scale, offset, orig_size)
    boxes = torch.where(valid.unsqueeze(-1), boxes, 0.0)
    return Detections(boxes, scores, labels, valid.sum(1))


def _decode_flip_test(
    outputs: Mapping[str, Tensor], cfg: DecodeConfig, scale: Tensor | None, offset: Tensor | None,
    orig_size: Tensor | None, host_ok: bool,
) -> Detections:
    """``DecodeConfig.flip_test``: decode the ``2B`` views without NMS (every confirmed box, up to
    ``num_dets`` per view), mirror the flipped views' boxes, then NMS and the best ``max_per_image``
    over the union of each image's two views (CornerNet / CenterNet test code: concatenate the
    detections of both views, soft-NMS, top 100)."""
    B2, _, _, W = outputs["tl_heat"].shape
    if B2 % 2:
        raise ValueError(f"flip_test needs an even batch (B images, then the same B flipped), got {B2}")
    B, D, dev = B2 // 2, cfg.max_per_image, outputs["tl_heat"].device
    # the originals' letterbox numbers, checked now and left where they are until the merge's device is known
    lb = [_as_batch(t, B, shape, name, t.device if isinstance(t, Tensor) else torch.device("cpu"))
          for t, shape, name in ((scale, (), "scale"), (offset, (2,), "offset"), (orig_size, (2,), "orig_size"))]
    if B == 0:
        return _empty(0, D, dev)
    views = decode(outputs, replace(cfg, flip_test=False, nms="none", score_threshold=0.0, group_score_ratio=0.0,
                                    max_per_image=cfg.num_dets), host_ok=True)  # (2B, N[, 4]) input px
    w_in = float(W * cfg.stride)
    fb = views.boxes[B:]  # (B, N, 4) boxes of the flipped views, in their own coordinates
    mirrored = torch.stack([w_in - fb[..., 2], fb[..., 1], w_in - fb[..., 0], fb[..., 3]], -1)  # (B, N, 4)
    boxes = torch.cat([views.boxes[:B], mirrored], 1)  # (B, 2N, 4)
    scores = torch.cat([views.scores[:B], views.scores[B:]], 1)  # (B, 2N)
    labels = torch.cat([views.labels[:B], views.labels[B:]], 1)
    if cfg.nms == "none":
        M = min(D, scores.shape[1])
        top, order = scores.masked_fill(labels < 0, -1.0).sort(dim=1, descending=True, stable=True)
        top, order = top[:, :M], order[:, :M]  # (B, M)
        keep = top > _nms_threshold(cfg)
        out_boxes = boxes.new_zeros(B, D, 4)
        out_scores = scores.new_zeros(B, D)
        out_labels = labels.new_full((B, D), -1)
        out_boxes[:, :M] = torch.where(keep.unsqueeze(-1), boxes.gather(1, order.unsqueeze(-1).expand(B, M, 4)), 0.0)
        out_scores[:, :M] = torch.where(keep, top, 0.0)
        out_labels[:, :M] = torch.where(keep, labels.gather(1, order), -1)
    else:
        res = soft_nms(boxes, scores, labels, max_out=D, method=_NMS_METHOD[cfg.nms], sigma=cfg.nms_sigma,
                       iou_threshold=cfg.nms_iou, score_threshold=_nms_threshold(cfg), host_sync=cfg.host_sync)
        out_boxes, out_scores, out_labels = res.boxes, res.scores, res.labels
    if _groups_on(cfg):  # on the union of both views' boxes, as in a single view
        out_boxes, out_scores, out_labels = _drop_group_boxes(out_boxes, out_scores, out_labels, cfg)
    on = out_boxes.device
    det = _to_original(out_boxes, out_scores, out_labels, *(None if t is None else t.to(on) for t in lb))
    return det if host_ok or on == dev else Detections(*(t.to(dev) for t in det))
