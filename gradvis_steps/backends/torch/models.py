"""Models of the paper and for tests: LeNet, a small MLP, CIFAR ResNet-20 with batch-norm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...entry_points import build_from_spec


class LeNet(nn.Module):
    """LeNet-5 as in the paper (conv6-conv16-fc120-fc84-fc10), sized from the input shape.

    Convolutions are 5x5 followed by ReLU and 2x2 max-pooling. Inputs too small for the unpadded
    network (e.g. 8x8 digits) get padding 2 so the spatial size survives both conv+pool stages; the
    first fully connected layer is sized by the resulting feature map. ``widths`` lets tests build
    the same architecture with few parameters.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 10,
                 widths: tuple[int, int, int, int] = (6, 16, 120, 84)):
        super().__init__()
        channels, height, width = input_shape
        c1, c2, f1, f2 = widths
        unpadded = min(height, width)
        unpadded = ((unpadded - 4) // 2 - 4) // 2
        padding = 0 if unpadded >= 1 else 2
        self.conv1 = nn.Conv2d(channels, c1, 5, padding=padding)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=padding)
        self.pool = nn.MaxPool2d(2)

        def side(n: int) -> int:
            return ((n + 2 * padding - 4) // 2 + 2 * padding - 4) // 2

        if side(height) < 1 or side(width) < 1:
            raise ValueError(f"LeNet: input shape {input_shape} is too small (need at least 5x5)")
        self.fc1 = nn.Linear(c2 * side(height) * side(width), f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 10, hidden: tuple[int, ...] = (64,)):
        super().__init__()
        sizes = [int(torch.tensor(input_shape).prod()), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv + batch-norm) with a 1x1 conv + BN shortcut when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2): depth 6n+2, widths (w, 2w, 4w), global pooling."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 10, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNet depth must be 6n+2 >= 8 (20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def resnet20(input_shape: tuple[int, ...], num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-20 for CIFAR (about 0.27 M parameters at width 16)."""
    return ResNet(input_shape, num_classes, depth=20, width=width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "mlp": MLP,
    "resnet20": resnet20,
    "resnet": ResNet,
}


def build_model(spec: dict[str, Any] | str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the model a config names: ``{"name": "lenet", **kwargs}`` or ``{"name": "custom",
    "entry_point": "module:function", **kwargs}`` (called as ``function(input_shape, num_classes, **kwargs)``)."""
    name, model = build_from_spec(spec, MODELS, tuple(input_shape), num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
