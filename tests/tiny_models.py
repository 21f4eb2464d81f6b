"""Tiny float64 networks shared by the backend tests (CPU and CUDA): seconds to differentiate on 2 cores."""

from __future__ import annotations

import torch

from gradvis_steps.backends.torch.models import LeNet, ResNet


def tiny_lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return LeNet((1, 8, 8), 10, widths=(2, 3, 8, 6)).double()


def tiny_bn_net() -> torch.nn.Module:
    """ResNet-8 of width 2 with batch-norm statistics moved away from their defaults by training steps."""
    torch.manual_seed(1)
    model = ResNet((1, 8, 8), 10, depth=8, width=2).double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8, dtype=torch.float64))
    return model
