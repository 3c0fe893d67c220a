"""Training losses of the CenterNet keypoint-triplet detector.

Letters: B batch, C classes, H/W output map height/width, M max objects (target slots), N objects.

The detector is trained with three kinds of terms (Law & Deng, CornerNet, ECCV 2018; Duan et al.,
CenterNet: Keypoint Triplets, ICCV 2019):

* a penalty-reduced focal loss on the top-left, bottom-right and center heatmaps,
* an associative-embedding "pull"/"push" loss on the top-left / bottom-right tags,
* a smooth-L1 loss on the sub-pixel offsets of the three keypoints,
* with a centre size head (``ct_size``, not in the paper): an L1 loss on the log box width and height
  at the centres, as "Objects as Points" (Zhou et al., 2019) regresses sizes (there in pixels); with
  ``size_cut_bound`` a box the training crop cut counts as a lower bound of its object's size.

Model outputs follow ``docs/architecture.md`` (``*_heat`` are logits ``Tensor[B, C, H, W]``,
``*_tag`` are ``Tensor[B, 1, H, W]``, ``*_regr`` are ``Tensor[B, 2, H, W]``); targets are the dict
returned by :func:`centernet_ros.targets.build_targets`. Every loss is computed in float32, so
fp16/bf16 outputs under autocast are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LossConfig",
    "CenterNetLoss",
    "focal_loss",
    "ae_loss",
    "regr_loss",
    "size_loss",
    "gather_feature",
]

HEADS = ("tl", "br", "ct")


@dataclass
class LossConfig:
    """Weights and hyper-parameters of :class:`CenterNetLoss`."""

    focal_alpha: float = 2.0  # exponent of (1 - p) on positives / p on negatives (CornerNet alpha)
    focal_beta: float = 4.0  # exponent of (1 - gt) reducing the penalty near a keypoint (CornerNet beta)
    pull_weight: float = 0.1  # weight of the embedding pull term
    push_weight: float = 0.1  # weight of the embedding push term
    push_margin: float = 1.0  # Delta in max(0, Delta - |e_k - e_j|)
    regr_weight: float = 1.0  # weight of the smooth-L1 offset term (sum over the three heads)
    size_weight: float = 0.1  # weight of the L1 log-size term (models with a ct_size output only)
    size_cut_bound: bool = False  # a box the crop cut is a lower bound of its size (hinge); False: plain L1 (stage 12)
    tl_heat_weight: float = 1.0  # weight of the top-left heatmap focal loss
    br_heat_weight: float = 1.0  # weight of the bottom-right heatmap focal loss
    ct_heat_weight: float = 1.0  # weight of the center heatmap focal loss

    def __post_init__(self) -> None:
        for name in (
            "focal_alpha",
            "focal_beta",
            "pull_weight",
            "push_weight",
            "regr_weight",
            "size_weight",
            "tl_heat_weight",
            "br_heat_weight",
            "ct_heat_weight",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.size_cut_bound, bool):
            raise ValueError(f"size_cut_bound must be a bool, got {self.size_cut_bound!r}")
        v = self.push_margin
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v == float("inf"):
            raise ValueError(f"push_margin must be a finite number > 0, got {v!r}")


def focal_loss(
    logits: Tensor, gt: Tensor, *, alpha: float = 2.0, beta: float = 4.0, ignore: Tensor | None = None
) -> Tensor:
    """Penalty-reduced pixel-wise focal loss of CornerNet on one heatmap head.

    With ``p = sigmoid(logits)`` and positives where ``gt == 1``::

        pos = -(1 - p)**alpha * log(p)                       at gt == 1
        neg = -(1 - gt)**beta * p**alpha * log(1 - p)        at gt < 1
        loss = (sum(pos) + sum(neg)) / num_pos               (num_pos > 0)
        loss = sum(neg)                                      (num_pos == 0)

    ``num_pos`` counts positives over the whole batch. ``log p`` and ``log(1 - p)`` are computed
    with ``logsigmoid`` so very confident logits neither overflow nor produce ``inf``. Cells marked in
    ``ignore`` (crowd regions, unmapped classes) take no negative term on any class; positives there
    still count.

    Args:
        logits: ``Tensor[B, C, H, W]`` raw heatmap logits (any float dtype).
        gt: ``Tensor[B, C, H, W]`` target heatmap in [0, 1], exactly 1 at keypoints.
        ignore: ``Tensor[B, H, W]`` bool, or None.
    Returns:
        ``Tensor[]`` float32 scalar.
    """
    if logits.shape != gt.shape:
        raise ValueError(f"logits and gt shapes differ: {tuple(logits.shape)} vs {tuple(gt.shape)}")
    x = logits.float()
    gt = gt.to(device=x.device, dtype=torch.float32)
    pos = gt.eq(1)
    log_p = F.logsigmoid(x)
    log_1mp = F.logsigmoid(-x)
    p = torch.sigmoid(x)
    pos_term = (1 - p).pow(alpha) * log_p
    neg_term = (1 - gt).pow(beta) * p.pow(alpha) * log_1mp
    pos_sum = torch.where(pos, pos_term, torch.zeros_like(pos_term)).sum()
    skip = pos if ignore is None else pos | ignore.to(device=x.device, dtype=torch.bool).unsqueeze(1)
    neg_sum = torch.where(skip, torch.zeros_like(neg_term), neg_term).sum()
    num_pos = pos.sum().float()
    # num_pos == 0 -> pos_sum == 0 and the denominator is 1: the loss is the negative term alone.
    return -(pos_sum + neg_sum) / num_pos.clamp(min=1.0)


def _head_ignore(tg: dict[str, Tensor], head: str) -> Tensor | None:
    """``Tensor[B, H, W]`` cells without negative focal term on ``head``: ``ignore`` (all heads) or-ed
    with ``<head>_ignore`` (cut corners of the training crop, ``targets.build_image_targets``)."""
    common, own = tg.get("ignore"), tg.get(f"{head}_ignore")
    if own is None:
        return common
    return own if common is None else common | own


def gather_feature(feat: Tensor, inds: Tensor) -> Tensor:
    """Pick feature vectors at flat map positions.

    Args:
        feat: ``Tensor[B, C, H, W]``.
        inds: ``Tensor[B, M]`` long, flat indices ``y * W + x``.
    Returns:
        ``Tensor[B, M, C]``.
    """
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)  # (B, C, H*W)
    idx = inds.to(device=feat.device, dtype=torch.long).unsqueeze(1).expand(b, c, inds.shape[1])  # (B, C, M)
    return flat.gather(2, idx).transpose(1, 2)  # (B, M, C)


def ae_loss(
    tl_tag: Tensor,
    br_tag: Tensor,
    tl_inds: Tensor,
    br_inds: Tensor,
    mask: Tensor,
    *,
    margin: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Associative-embedding pull and push losses of CornerNet, batched with masks.

    For image ``b`` with ``N_b`` objects, tags ``t_k`` (top-left) and ``r_k`` (bottom-right)
    and their means ``e_k = (t_k + r_k) / 2``::

        pull_b = 1 / N_b * sum_k [(t_k - e_k)**2 + (r_k - e_k)**2]               (0 if N_b == 0)
        push_b = 1 / (N_b (N_b - 1)) * sum_{k != j} max(0, margin - |e_k - e_j|) (0 if N_b < 2)

    The sum over ``k != j`` runs over ordered pairs, as in CornerNet. The per-image values are
    averaged over the B images of the batch (CornerNet sums them; averaging keeps the loss
    weights independent of the batch size).

    Args:
        tl_tag, br_tag: ``Tensor[B, 1, H, W]`` embeddings.
        tl_inds, br_inds: ``Tensor[B, M]`` long flat indices of the object corners.
        mask: ``Tensor[B, M]`` bool, valid object slots.
    Returns:
        ``(pull, push)``, two float32 ``Tensor[]``.
    """
    t = gather_feature(tl_tag.float(), tl_inds).squeeze(2)  # (B, M)
    r = gather_feature(br_tag.float(), br_inds).squeeze(2)  # (B, M)
    m = mask.to(device=t.device, dtype=torch.bool)
    mf = m.float()
    n = mf.sum(dim=1)  # (B,)
    e = (t + r) / 2
    pull_k = ((t - e) ** 2 + (r - e) ** 2) * mf  # (B, M)
    pull = (pull_k.sum(dim=1) / n.clamp(min=1.0)).mean()

    eye = torch.eye(m.shape[1], dtype=torch.bool, device=m.device)
    pair = m.unsqueeze(2) & m.unsqueeze(1) & ~eye  # (B, M, M) ordered pairs of distinct objects
    dist = (e.unsqueeze(2) - e.unsqueeze(1)).abs()  # (B, M, M)
    push_kj = torch.where(pair, F.relu(margin - dist), torch.zeros_like(dist))
    push = (push_kj.sum(dim=(1, 2)) / (n * (n - 1)).clamp(min=1.0)).mean()
    return pull, push


def regr_loss(regr: Tensor, gt_regr: Tensor, inds: Tensor, mask: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) offset loss at the object keypoints.

    Sums the loss over both coordinates and all valid slots of the batch and divides by the
    number of objects in the batch (0 when there is none).

    Args:
        regr: ``Tensor[B, 2, H, W]`` predicted offsets (x, y).
        gt_regr: ``Tensor[B, M, 2]`` target offsets (x, y).
        inds: ``Tensor[B, M]`` long flat indices.
        mask: ``Tensor[B, M]`` bool.
    Returns:
        float32 ``Tensor[]``.
    """
    pred = gather_feature(regr.float(), inds)  # (B, M, 2)
    gt = gt_regr.to(device=pred.device, dtype=torch.float32)
    mf = mask.to(device=pred.device, dtype=torch.float32).unsqueeze(2)  # (B, M, 1)
    per = F.smooth_l1_loss(pred, gt, reduction="none", beta=1.0) * mf  # (B, M, 2)
    return per.sum() / mf.sum().clamp(min=1.0)


def size_loss(
    size: Tensor, gt_size: Tensor, inds: Tensor, mask: Tensor, *, lower_bound: Tensor | None = None
) -> Tensor:
    """L1 loss on the log box size at the centres, summed over width and height and divided by the
    number of objects in the batch (0 when there is none).

    Objects flagged in ``lower_bound`` (the training crop cut their box: the object is at least that
    big) only pay for a prediction below the target: ``max(0, gt - pred)`` instead of ``|gt - pred|``.
    Without it, every close-up car larger than the crop teaches "at most crop-sized" and the head
    under-predicts such cars when the whole image is seen (but with it, measured in stage 13, every
    size drifts up: ``LossConfig.size_cut_bound`` is off by default).

    Args:
        size: ``Tensor[B, 2, H, W]`` predicted log width and height (map cells).
        gt_size: ``Tensor[B, M, 2]`` targets (``targets.build_image_targets``' ``ct_size``).
        inds: ``Tensor[B, M]`` long flat indices of the centres.
        mask: ``Tensor[B, M]`` bool.
        lower_bound: ``Tensor[B, M]`` bool or None (``size_cut`` of the targets).
    Returns:
        float32 ``Tensor[]``.
    """
    pred = gather_feature(size.float(), inds)  # (B, M, 2)
    gt = gt_size.to(device=pred.device, dtype=torch.float32)
    diff = gt - pred  # (B, M, 2)
    per = diff.abs()
    if lower_bound is not None:
        lb = lower_bound.to(device=pred.device).unsqueeze(2)  # (B, M, 1)
        per = torch.where(lb, diff.clamp(min=0.0), per)
    mf = mask.to(device=pred.device, dtype=torch.float32).unsqueeze(2)  # (B, M, 1)
    return (per * mf).sum() / mf.sum().clamp(min=1.0)


class CenterNetLoss(torch.nn.Module):
    """Total training loss of the keypoint-triplet detector.

    ``loss(outputs, targets) -> (total, terms)`` where ``terms`` has the keys ``focal``, ``pull``,
    ``push``, ``regr`` and ``total``. The terms are the *weighted* contributions (so
    ``focal + pull + push + regr == total``), detached for logging; ``total`` (first return
    value) carries the gradient:

        focal = sum_h w_h * focal_loss(outputs[h_heat], targets[h_heat])   h in tl, br, ct
        pull, push = pull_weight, push_weight * ae_loss(tl_tag, br_tag, ...)
        regr = regr_weight * sum_h regr_loss(outputs[h_regr], targets[h_regr], ...)
               + size_weight * size_loss(outputs[ct_size], targets[ct_size], ...)   (with a ct_size output)

    ``terms`` also holds ``size`` (the weighted size part of ``regr``; 0 without a ct_size output).
    Targets are moved to the outputs' device if needed.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else LossConfig()

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Args:
            outputs: model outputs (``tl_heat`` ... ``ct_regr``), see module docstring.
            targets: ``build_targets`` dict (``tl_heat`` ``Tensor[B, C, H, W]``, ``*_inds``
                ``Tensor[B, M]``, ``*_regr`` ``Tensor[B, M, 2]``, ``mask`` ``Tensor[B, M]``).
        Returns:
            ``(total: Tensor[], terms: dict[str, Tensor[]])``.
        """
        cfg = self.cfg
        device = outputs["tl_heat"].device
        tg = {k: v.to(device) for k, v in targets.items()}
        mask = tg["mask"]
        heat_w = {"tl": cfg.tl_heat_weight, "br": cfg.br_heat_weight, "ct": cfg.ct_heat_weight}

        focal = sum(
            heat_w[h]
            * focal_loss(
                outputs[f"{h}_heat"], tg[f"{h}_heat"], alpha=cfg.focal_alpha, beta=cfg.focal_beta,
                ignore=_head_ignore(tg, h),
            )
            for h in HEADS
        )
        pull, push = ae_loss(
            outputs["tl_tag"], outputs["br_tag"], tg["tl_inds"], tg["br_inds"], mask, margin=cfg.push_margin
        )
        regr = sum(regr_loss(outputs[f"{h}_regr"], tg[f"{h}_regr"], tg[f"{h}_inds"], mask) for h in HEADS)

        pull = cfg.pull_weight * pull
        push = cfg.push_weight * push
        regr = cfg.regr_weight * regr
        size = torch.zeros((), device=device)
        if "ct_size" in outputs:
            size = cfg.size_weight * size_loss(outputs["ct_size"], tg["ct_size"], tg["ct_inds"], mask,
                                               lower_bound=tg.get("size_cut") if cfg.size_cut_bound else None)
            regr = regr + size
        total = focal + pull + push + regr
        terms = {
            "focal": focal.detach(),
            "pull": pull.detach(),
            "push": push.detach(),
            "regr": regr.detach(),
            "size": size.detach(),
            "total": total.detach(),
        }
        return total, terms
