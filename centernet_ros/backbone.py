"""ResNet-18 backbone written without torchvision, with torchvision-compatible state_dict keys.

Legend: B batch, C channels, H/W spatial size.

The module tree mirrors ``torchvision.models.resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
``layer4.1.downsample.0``) so an ImageNet checkpoint saved by torchvision loads with
``load_torchvision_checkpoint``. The classifier (``avgpool``/``fc``) is not built: its keys are ignored.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18", "resnet18", "load_torchvision_checkpoint"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor.

    ``forward(x: Tensor[B, 3, H, W]) -> [C2, C3, C4, C5]`` with strides 4, 8, 16, 32 and
    64, 128, 256, 512 channels.
    """

    channels = (64, 128, 256, 512)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block: every block starts as identity (trains better from scratch).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def load_torchvision_checkpoint(model: ResNet18, path: str | Path) -> list[str]:
    """Load a torchvision ``resnet18`` state_dict (``.pth``/``.pt`` or ``.safetensors``) into ``model``.

    Loading never unpickles code (``weights_only=True`` / safetensors). ``fc.*`` keys are ignored.
    Returns the list of ignored keys. Raises ``ValueError`` naming the file when keys or shapes do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-18 checkpoint not found: '{path}'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, wrong format, pickled code
        raise ValueError(f"cannot read ResNet-18 checkpoint '{path}': {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not hold a state_dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = [k for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"'{path}' is not a torchvision resnet18 checkpoint: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"'{path}': shape mismatch for {bad[:5]}")
    model.load_state_dict(state)
    return ignored


def resnet18(*, weights: str | Path | None = None) -> ResNet18:
    """Build a ResNet-18; ``weights`` is an optional local torchvision-format checkpoint path."""
    model = ResNet18()
    if weights is not None:
        load_torchvision_checkpoint(model, weights)
    return model
