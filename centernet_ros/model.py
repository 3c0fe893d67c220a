"""CenterNet keypoint-triplet network (Duan et al., ICCV 2019) on a ResNet-18 backbone.

Legend: B batch, C classes, W_ feature width, H/W output map size (input / 4).

Layout (all at output stride 4 after the neck):

    ResNet-18 -> [C2, C3, C4, C5] -> top-down neck (1x1 laterals, x2 upsampling, 3x3 smoothing) -> F
    F -> cascade corner pooling (top+left)     -> tl head -> tl_heat, tl_tag, tl_regr
    F -> cascade corner pooling (bottom+right) -> br head -> br_heat, br_tag, br_regr
    F -> center pooling (row max + column max) -> ct head -> ct_heat, ct_regr[, ct_size]

``ct_size`` (``ModelConfig.center_size``, not in the paper): the centre head also regresses the log of
its object's width and height, as "Objects as Points" (Zhou et al., 2019) does at centres. The decoder
uses it to check that a centre keypoint confirms only a box of its object's size
(``DecodeConfig.size_ratio``): a pair of one car's top-left and another's bottom-right corner (a "group
box") no longer passes on the centre of a third car between them.

Why the default widths (``head_width=64``, ``pool_width=32``): at 512x512 the maps are 128x128, where
one 3x3 convolution of width w costs 128*128*9*w*w MACs. The paper's 256-wide modules (128-wide pool
branches) at this resolution cost about 25 GMAC per corner module alone — several times the
ResNet-18 (9.5 GMAC at 512). With 64-wide features and 32-wide pool branches the three pooling modules
and heads cost about 6 GMAC together, so the whole network is cheaper than a plain "Objects as
Points" ResNet-18 (three 256-channel deconvolutions plus 64-wide heads, ~23 GMAC).
``benchmarks/bench_model.py`` measures both side by side.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import ResNet18, load_torchvision_checkpoint
from .corner_pool import bottom_pool, col_max, left_pool, right_pool, row_max, top_pool

__all__ = ["ModelConfig", "CenterNetTriplet", "centernet_resnet18", "OUTPUT_NAMES", "SIZE_NAME", "HEAT_BIAS"]

# Order of the heads when the model returns a tuple (ONNX / TorchScript export).
OUTPUT_NAMES = ("tl_heat", "br_heat", "ct_heat", "tl_tag", "br_tag", "tl_regr", "br_regr", "ct_regr")
# The ninth output of a model with ``ModelConfig.center_size`` (after OUTPUT_NAMES).
SIZE_NAME = "ct_size"
# Initial bias of the size head: log(8) map cells (32 input px), a middling object.
SIZE_BIAS = 2.08
# Focal-loss prior: sigmoid(-2.19) ~= 0.1, so training starts with few confident false positives.
HEAT_BIAS = -2.19


@dataclass
class ModelConfig:
    num_classes: int  # number of object classes C (heatmap channels)
    head_width: int = 64  # channels of the neck output and of the pooling-module / head features
    pool_width: int = 32  # channels of the branches inside the corner / center pooling modules
    cascade: bool = True  # cascade corner pooling (paper); False = plain CornerNet corner pooling
    center_pooling: bool = True  # center pooling module before the center head (paper)
    stride: int = 4  # output stride; fixed by the neck (informational, validated)
    center_size: bool = False  # centre head also outputs ct_size (log box w, h in map cells); not in the paper

    def __post_init__(self) -> None:
        for name in ("num_classes", "head_width", "pool_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("cascade", "center_pooling", "center_size"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.stride != 4:
            raise ValueError(f"stride must be 4 (the neck upsamples to stride 4), got {self.stride!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {text!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**data)


def conv_bn(in_ch: int, out_ch: int, k: int = 3, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Neck(nn.Module):
    """Top-down feature pyramid to stride 4: [C2..C5] -> Tensor[B, W_, H, W]."""

    def __init__(self, in_channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(c, width, 1, relu=False) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn(width, width, 3) for _ in in_channels[:-1])

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = F.interpolate(x, size=lat.shape[-2:], mode="nearest") + lat
            x = self.smooth[i](x)
        return x


class CascadeCornerPool(nn.Module):
    """Cascade corner pooling (paper Fig. 5).

    For a top-left corner (``first="top", second="left"``): the branch that is finally pooled upward
    first adds a ``left`` pool of a "look" branch (find the max along the boundary, then look inside
    from there), and vice versa. Both pooled maps are summed, projected, added to a 1x1 shortcut of
    the input and refined by a 3x3 convolution. ``cascade=False`` gives CornerNet's plain corner pooling.

    Tensor[B, W_, H, W] -> Tensor[B, W_, H, W].
    """

    def __init__(self, width: int, pool_width: int, first, second, *, cascade: bool = True) -> None:
        super().__init__()
        self.first, self.second, self.cascade = first, second, cascade
        n_branches = 4 if cascade else 2
        self.pool_width = pool_width
        self.branches = conv_bn(width, n_branches * pool_width, 3)  # p1, p2 (+ look1, look2) in one conv
        if cascade:
            self.look1 = nn.Conv2d(pool_width, pool_width, 3, padding=1, bias=False)
            self.look2 = nn.Conv2d(pool_width, pool_width, 3, padding=1, bias=False)
        self.merge = conv_bn(pool_width, width, 3, relu=False)
        self.shortcut = conv_bn(width, width, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.out = conv_bn(width, width, 3)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(self.branches(x), self.pool_width, dim=1)
        if self.cascade:
            p1, p2, look1, look2 = parts
            pooled1 = self.first(self.look1(p1 + self.second(look1)))
            pooled2 = self.second(self.look2(p2 + self.first(look2)))
        else:
            p1, p2 = parts
            pooled1, pooled2 = self.first(p1), self.second(p2)
        y = self.relu(self.merge(pooled1 + pooled2) + self.shortcut(x))
        return self.out(y)


class CenterPool(nn.Module):
    """Center pooling: max over the whole column plus max over the whole row. Tensor[B, W_, H, W] -> same."""

    def __init__(self, width: int, pool_width: int) -> None:
        super().__init__()
        self.pool_width = pool_width
        self.branches = conv_bn(width, 2 * pool_width, 3)
        self.merge = conv_bn(pool_width, width, 3, relu=False)
        self.shortcut = conv_bn(width, width, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.out = conv_bn(width, width, 3)

    def forward(self, x: Tensor) -> Tensor:
        p1, p2 = torch.split(self.branches(x), self.pool_width, dim=1)
        y = self.relu(self.merge(col_max(p1) + row_max(p2)) + self.shortcut(x))
        return self.out(y)


class KeypointHead(nn.Module):
    """Shared 3x3 conv, then 1x1 outputs: heat (C, bias -2.19), optional tag (1), regr (2) and
    optional size (2: log w, log h in map cells, bias log 8)."""

    def __init__(self, width: int, num_classes: int, *, with_tag: bool, with_size: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.heat = nn.Conv2d(width, num_classes, 1)
        self.tag = nn.Conv2d(width, 1, 1) if with_tag else None
        self.regr = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heat.bias, HEAT_BIAS)
        self.size = nn.Conv2d(width, 2, 1) if with_size else None
        if self.size is not None:
            nn.init.constant_(self.size.bias, SIZE_BIAS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        y = self.conv(x)
        tag = self.tag(y) if self.tag is not None else None
        size = self.size(y) if self.size is not None else None
        return self.heat(y), tag, self.regr(y), size


class CenterNetTriplet(nn.Module):
    """Keypoint-triplet CenterNet.

    ``forward(x: Tensor[B, 3, Hin, Win]) -> dict`` with ``tl_heat``/``br_heat``/``ct_heat``
    Tensor[B, C, H, W] logits, ``tl_tag``/``br_tag`` Tensor[B, 1, H, W], ``tl_regr``/``br_regr``/``ct_regr``
    Tensor[B, 2, H, W] where H = Hin / 4, W = Win / 4, and with ``cfg.center_size`` also ``ct_size``
    Tensor[B, 2, H, W] (log of the box width and height in map cells, at the centre). Hin and Win must be
    multiples of 32. Set ``return_tuple = True`` to get the heads as a tuple in ``output_names`` order (export).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, pw = cfg.head_width, cfg.pool_width
        self.backbone = ResNet18()
        self.neck = Neck(ResNet18.channels, w)
        self.tl_pool = CascadeCornerPool(w, pw, top_pool, left_pool, cascade=cfg.cascade)
        self.br_pool = CascadeCornerPool(w, pw, bottom_pool, right_pool, cascade=cfg.cascade)
        self.ct_pool = CenterPool(w, pw) if cfg.center_pooling else nn.Identity()
        self.tl_head = KeypointHead(w, cfg.num_classes, with_tag=True)
        self.br_head = KeypointHead(w, cfg.num_classes, with_tag=True)
        self.ct_head = KeypointHead(w, cfg.num_classes, with_tag=False, with_size=cfg.center_size)
        self.return_tuple = False

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def output_names(self) -> tuple[str, ...]:
        """The heads in tuple order: ``OUTPUT_NAMES``, then ``SIZE_NAME`` with ``cfg.center_size``."""
        return OUTPUT_NAMES + ((SIZE_NAME,) if self.cfg.center_size else ())

    def forward(self, x: Tensor):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input Tensor[B, 3, H, W], got shape {tuple(x.shape)}")
        if not torch.jit.is_tracing() and (x.shape[2] % 32 or x.shape[3] % 32):
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[2:])}")
        f = self.neck(self.backbone(x))
        tl_heat, tl_tag, tl_regr, _ = self.tl_head(self.tl_pool(f))
        br_heat, br_tag, br_regr, _ = self.br_head(self.br_pool(f))
        ct_heat, _, ct_regr, ct_size = self.ct_head(self.ct_pool(f))
        out = (tl_heat, br_heat, ct_heat, tl_tag, br_tag, tl_regr, br_regr, ct_regr)
        if ct_size is not None:
            out += (ct_size,)
        if self.return_tuple:
            return out
        return dict(zip(self.output_names, out))


def centernet_resnet18(
    *,
    num_classes: int,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    head_width: int = 64,
    pool_width: int = 32,
    cascade: bool = True,
    center_pooling: bool = True,
    center_size: bool = False,
) -> CenterNetTriplet:
    """Build the triplet CenterNet.

    ``weights``: a full-model checkpoint: a ``.safetensors`` file written by ``weights.save_model`` (its
    stored config must match ``num_classes``), or a torchvision ``resnet18`` checkpoint (``.pth``), which
    initialises the backbone only. ``backbone_weights``: explicitly a torchvision ``resnet18`` checkpoint.
    ``center_size``: add the centre size head (``ModelConfig.center_size``); a ``weights`` file without it
    initialises everything else and the size head starts fresh (fine-tuning an older model).
    """
    model = CenterNetTriplet(
        ModelConfig(
            num_classes=num_classes,
            head_width=head_width,
            pool_width=pool_width,
            cascade=cascade,
            center_pooling=center_pooling,
            center_size=center_size,
        )
    )
    if backbone_weights is not None:
        load_torchvision_checkpoint(model.backbone, backbone_weights)
    if weights is not None:
        path = Path(weights)
        if path.suffix == ".safetensors":
            from .weights import load_state_into

            load_state_into(model, path, allow_missing=("ct_head.size.",) if center_size else ())
        else:
            load_torchvision_checkpoint(model.backbone, path)
    return model
