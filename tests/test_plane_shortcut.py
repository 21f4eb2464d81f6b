"""The input-layer shortcut of grid points (backends/torch/plane.py) against the layer run as written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_bn_net, tiny_lenet
from torch import nn

from gradvis_steps.backends.torch import plane as plane_module
from gradvis_steps.backends.torch.flat import layout_of
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.backends.torch.plane import find_input_layers


class InplaceReluNet(nn.Module):
    """A Linear on the raw image's last axis (bias included), then an in-place ReLU that overwrites its output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.rows = nn.Linear(8, 5)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8 * 5, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.relu(self.rows(x)), 1))


class Preprocessed(nn.Module):
    """The first convolution sees a rescaled input, not the batch itself: no shortcut."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.head = nn.Linear(2 * 64, 10)

    def forward(self, x):
        return self.head(torch.flatten(torch.tanh(self.conv(2.0 * x - 1.0)), 1))


class ReflectNet(nn.Module):
    """A reflect-padded convolution with bias straight on the batch (the padding is part of the layer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect")
        self.head = nn.Linear(3 * 64, 10)

    def forward(self, x):
        return self.head(torch.flatten(torch.tanh(self.conv(x)), 1))


class Reused(nn.Module):
    """The same convolution runs twice per forward pass (once on the batch): no shortcut."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.flatten(torch.tanh(self.conv(torch.tanh(self.conv(x)))), 1))


@pytest.fixture
def eval_data(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)


@pytest.mark.parametrize(
    ("make_model", "expected"),
    [(tiny_lenet, ["conv1"]), (tiny_bn_net, ["conv"]), (InplaceReluNet, ["rows"]), (ReflectNet, ["conv"]),
     (Preprocessed, []), (Reused, [])],
    ids=["lenet", "resnet", "linear", "reflect", "preprocessed", "reused"],
)
def test_input_layers_are_the_affine_layers_that_see_the_batch_itself(make_model, expected, eval_data):
    model = make_model().double().eval()
    found = find_input_layers(model, layout_of(model), eval_data[0])
    assert [layer.name for layer in found] == expected


def _plane(objective):
    dim = objective.dim
    g = torch.Generator().manual_seed(0)
    dirs = [0.3 * torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2)]
    coeffs = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 0.25], [0.3, 3.0], [-1.5, -1.5]])
    return objective.initial_point(), dirs, coeffs


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net, InplaceReluNet, ReflectNet],
                         ids=["lenet", "resnet", "linear", "reflect"])
def test_shortcut_points_equal_the_layer_run_as_written(make_model, eval_data, monkeypatch):
    """Same grid points with the shortcut and without it (element budget 0), over uneven batches; the layer's
    real forward pass runs only to make the 1 + K pieces, once for several calls with the same plane."""
    x, y = eval_data
    model = make_model().double()
    with_shortcut = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, grid_batching="per_point")
    without = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, grid_batching="per_point")
    center, dirs, coeffs = _plane(with_shortcut)
    monkeypatch.setattr(plane_module, "PLANE_BUFFER_ELEMENTS", 0)
    reference = without.evaluate_many(center, dirs, coeffs)
    assert without._plane.layers and not without._plane.prepare(center, dirs)  # over budget: layer as written
    monkeypatch.undo()

    with_shortcut.evaluate_many(center, dirs, coeffs[:1])  # builds the shortcut
    layer = with_shortcut._plane.layers[0].layer
    real_calls = []
    layer.register_forward_hook(lambda m, args, out: real_calls.append(1))  # hooks run for the replacement too
    own = type(layer).forward

    def counted(self, *args):
        if self is layer:
            real_calls.append("real")
        return own(self, *args)

    monkeypatch.setattr(type(layer), "forward", counted)
    got = with_shortcut.evaluate_many(center, dirs, coeffs[:2]) + with_shortcut.evaluate_many(center, dirs, coeffs[2:])
    assert "real" not in real_calls and len(real_calls) == len(coeffs) * 5  # 5 batches per point, all shortcut
    assert "forward" not in vars(layer)  # the layer's own forward is back
    for a, b in zip(got, reference, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-13) and a.accuracy == b.accuracy

    dirs[1].mul_(2.0)  # the same tensors, modified: the pieces are made again
    again = with_shortcut.evaluate_many(center, dirs, coeffs)
    fresh = without.evaluate_many(center, dirs, coeffs)
    for a, b in zip(again, fresh, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-13) and a.accuracy == b.accuracy
    assert abs(again[1].loss - got[1].loss) > 1e-6


def test_a_failing_forward_pass_restores_the_layer(eval_data, monkeypatch):
    x, y = eval_data
    objective = TorchObjective(tiny_lenet(), x, y, dtype=torch.float64, grid_batching="per_point")
    center, dirs, coeffs = _plane(objective)
    objective.evaluate_many(center, dirs, coeffs[:1])

    def broken(self, logits_out=None):
        raise FloatingPointError("mid-grid")

    monkeypatch.setattr(TorchObjective, "_evaluate_point", broken)
    with pytest.raises(FloatingPointError):
        objective.evaluate_many(center, dirs, coeffs)
    assert "forward" not in vars(objective._plane.layers[0].layer)
