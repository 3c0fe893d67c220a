"""Baseline for the speed comparison: plain "Objects as Points" CenterNet (ctdet) on ResNet-18.

Legend: B batch, C classes, H/W output map size (input / 4), K top-k detections.

Zhou et al., "Objects as Points" (2019), ResNet-18 variant without deformable convolutions:

    ResNet-18 C5 (stride 32, 512 ch)
    -> 3 x [ConvTranspose2d 4x4 stride 2 -> BN -> ReLU], 256 channels each   (stride 32 -> 4)
    -> heads, each 3x3 conv 256->64 + ReLU + 1x1 conv: hm (C), wh (2), reg (2)

Only used by the benchmarks as the reference point for issue 3 ("our forward at 512 no slower than
the plain ResNet-18 CenterNet"); it is not trained here. ``ctdet_decode`` is the matching batched
decoder (sigmoid, 3x3 max-pool peak extraction, top-K over all classes, size + offset gather) so the
"total" time of both models includes a decode step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from centernet_ros.backbone import ResNet18  # noqa: E402

__all__ = ["BaselineConfig", "CtdetResNet18", "ctdet_resnet18", "ctdet_decode"]

HEAT_BIAS = -2.19  # focal-loss prior used by the paper for the hm head


@dataclass
class BaselineConfig:
    num_classes: int = 80  # center heatmap channels C (COCO)
    deconv_width: int = 256  # channels of each of the three deconvolution stages
    head_width: int = 64  # hidden channels of each head (3x3 conv)
    num_deconv: int = 3  # stride 32 -> 4

    def __post_init__(self) -> None:
        for name in ("num_classes", "deconv_width", "head_width", "num_deconv"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _head(in_ch: int, width: int, out_ch: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out_ch, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CtdetResNet18(nn.Module):
    """``forward(x: Tensor[B, 3, Hin, Win]) -> {"hm": Tensor[B, C, H, W], "wh": Tensor[B, 2, H, W],
    "reg": Tensor[B, 2, H, W]}`` with H = Hin / 4, W = Win / 4 (Hin, Win multiples of 32)."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet18()
        layers: list[nn.Module] = []
        in_ch = ResNet18.channels[-1]
        for _ in range(cfg.num_deconv):
            layers += [
                nn.ConvTranspose2d(in_ch, cfg.deconv_width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cfg.deconv_width),
                nn.ReLU(inplace=True),
            ]
            in_ch = cfg.deconv_width
        self.deconv = nn.Sequential(*layers)
        self.hm = _head(in_ch, cfg.head_width, cfg.num_classes, HEAT_BIAS)
        self.wh = _head(in_ch, cfg.head_width, 2)
        self.reg = _head(in_ch, cfg.head_width, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.deconv(self.backbone(x)[-1])  # (B, 256, Hin/4, Win/4)
        return {"hm": self.hm(f), "wh": self.wh(f), "reg": self.reg(f)}


def ctdet_resnet18(*, num_classes: int = 80, deconv_width: int = 256, head_width: int = 64) -> CtdetResNet18:
    """Build the baseline (random init; only its speed matters here)."""
    return CtdetResNet18(BaselineConfig(num_classes=num_classes, deconv_width=deconv_width, head_width=head_width))


def _max3x3(x: Tensor) -> Tensor:
    """3x3 max filter (stride 1, -inf padding) of Tensor[B, C, H, W]. ``F.max_pool2d`` on CUDA; on CPU
    two separable passes over shifted views (the CPU stride-1 max-pool kernel is ~10x slower), so the
    baseline's decode is as fast as ours there and the "total" columns compare fairly."""
    if x.device.type != "cpu":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    H, W = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))  # (B, C, H + 2, W + 2)
    rows = torch.maximum(torch.maximum(p[..., :, 0:W], p[..., :, 1 : W + 1]), p[..., :, 2 : W + 2])  # (B, C, H + 2, W)
    return torch.maximum(torch.maximum(rows[..., 0:H, :], rows[..., 1 : H + 1, :]), rows[..., 2 : H + 2, :])


def ctdet_decode(outputs: dict[str, Tensor], *, k: int = 100, stride: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Batched ctdet decode.

    ``outputs``: ``hm`` Tensor[B, C, H, W] logits, ``wh`` / ``reg`` Tensor[B, 2, H, W].
    Returns ``boxes`` Tensor[B, K, 4] (x1, y1, x2, y2 in input pixels), ``scores`` Tensor[B, K],
    ``labels`` Tensor[B, K] (long).
    """
    hm = outputs["hm"].float().sigmoid()
    b, c, h, w = hm.shape
    k = min(k, c * h * w)
    keep = _max3x3(hm) == hm  # 3x3 local maxima
    hm = hm * keep
    scores, idx = hm.reshape(b, -1).topk(k)  # (B, K)
    labels = idx // (h * w)
    pix = idx % (h * w)  # (B, K) flat y * W + x
    ys = (pix // w).float()
    xs = (pix % w).float()
    wh = outputs["wh"].float().reshape(b, 2, h * w).gather(2, pix[:, None].expand(b, 2, k))  # (B, 2, K)
    reg = outputs["reg"].float().reshape(b, 2, h * w).gather(2, pix[:, None].expand(b, 2, k))  # (B, 2, K)
    cx, cy = xs + reg[:, 0], ys + reg[:, 1]
    boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], dim=-1)
    return boxes * stride, scores, labels  # (B, K, 4), (B, K), (B, K)
