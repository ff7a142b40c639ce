"""ResNet-18 and ResNet-50, defined here so the trainer runs where torchvision does not import.

Same architecture as torchvision's (v1.5: stride on the 3x3 conv of a bottleneck), with two
recipe details: the last BatchNorm of every residual block starts with gamma = 0, so each
block starts as the identity and large-batch training is stable from the first step (Goyal et
al., "Accurate, Large Minibatch SGD"); and `width` / `stem` knobs so that the same network,
narrower and with a 3x3 stem, trains on 32-pixel images on a CPU in a test.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .config import ModelConfig


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


Block = type[BasicBlock] | type[Bottleneck]
LAYOUTS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """Stem, four stages (stride 1, 2, 2, 2), global average pool, linear classifier."""

    def __init__(self, block: Block, depths: tuple[int, int, int, int], num_classes: int,
                 width: int = 64, stem: Literal["imagenet", "small"] = "imagenet") -> None:
        super().__init__()
        self.stem = _stem(width, stem)
        stages, cin = [], width
        for i, depth in enumerate(depths):
            planes = width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def _stem(width: int, kind: str) -> nn.Sequential:
    if kind == "small":
        return nn.Sequential(*_conv_bn(3, width, 3), nn.ReLU(inplace=True))
    return nn.Sequential(*_conv_bn(3, width, 7, 2), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1))


def init_weights(model: nn.Module) -> None:
    """He init for convolutions, BN gamma 1 / beta 0, and gamma 0 on each block's last BN."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            nn.init.zeros_(m.last_bn.weight)


def build_model(cfg: ModelConfig) -> ResNet:
    block, depths = LAYOUTS[cfg.arch]
    return ResNet(block, depths, cfg.num_classes, cfg.width, cfg.stem)
