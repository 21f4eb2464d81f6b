"""PyTorch backend against independent truths: autograd's dense Hessian, finite differences,
the model's own forward pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_bn_net, tiny_lenet
from torch.func import functional_call

from gradvis_steps.backends.torch.flat import (
    buffer_layout,
    flatten_buffers,
    flatten_parameters,
    layout_of,
    load_flat_parameters,
    unflatten,
)
from gradvis_steps.backends.torch.models import ResNet, build_model
from gradvis_steps.backends.torch.objective import HVP_MODES, TorchObjective


def reference_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Mean cross-entropy over all samples in one batch, as a function of a flat vector (eval mode).

    Written independently of the backend: splits the vector by ``named_parameters`` order.
    """
    module = copy.deepcopy(model).eval()
    shapes = [(name, p.shape) for name, p in module.named_parameters()]
    buffers = dict(module.named_buffers())

    def f(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in shapes:
            count = int(np.prod(shape))
            params[name] = theta[offset:offset + count].reshape(shape)
            offset += count
        return F.cross_entropy(functional_call(module, {**params, **buffers}, (x,)), y)

    return f


@pytest.fixture
def eval_data(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net], ids=["lenet", "batchnorm"])
@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_equals_dense_hessian_times_vector(make_model, mode, eval_data):
    x, y = eval_data
    model = make_model()
    objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_mode=mode)  # 30 = 4*7 + 2
    theta = objective.initial_point()
    hessian = torch.autograd.functional.hessian(reference_loss(model, x, y), theta)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        expected = hessian @ v
        got = objective.hvp(theta, v)
        assert torch.linalg.norm(got - expected) <= 1e-10 * torch.linalg.norm(expected)
        got = objective.hvp_operator(theta)(v)  # at one point, through the kept gradient graphs
        assert torch.linalg.norm(got - expected) <= 1e-10 * torch.linalg.norm(expected)


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net], ids=["lenet", "batchnorm"])
@pytest.mark.parametrize("kept", ["all", "two", "none"])
def test_hvp_operator_is_the_hvp_bitwise_whichever_batches_keep_their_graphs(make_model, kept, eval_data):
    """The kept graphs are the very graphs hvp() builds and drops, so the products agree to the bit; a batch
    whose graph does not fit the memory budget (and every later one) is recomputed per product."""
    x, y = eval_data
    model = make_model()
    theta = flatten_parameters(model) + 0.01
    # the graph of one batch of 7 (all full batches have the same shapes, so the same size)
    one_batch = TorchObjective(model, x[:7], y[:7], batch_size=7, dtype=torch.float64).hvp_operator(theta)
    assert one_batch.kept_batches == 1 and one_batch.graph_bytes > 0
    budget_mb = {"all": 512.0, "two": 2.5 * one_batch.graph_bytes / 2**20, "none": 0.0}[kept]
    objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_memory_mb=budget_mb)
    operator = objective.hvp_operator(theta)
    assert operator.kept_batches == {"all": 5, "two": 2, "none": 0}[kept]  # 30 samples = 4 x 7 + 2
    assert operator.graph_bytes <= budget_mb * 2**20
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):  # the graphs survive each product
        v = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        assert torch.equal(operator(v), objective.hvp(theta, v))


def test_hvp_operator_is_the_hessian_at_the_point_it_was_made_at(eval_data):
    """The operator copies its point, so changing the caller's vector changes nothing; new batch-norm statistics
    would leave its kept graphs stale, so it refuses to run instead."""
    x, y = eval_data
    model = tiny_bn_net()
    objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64)
    theta = objective.initial_point()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    operator, expected = objective.hvp_operator(theta), objective.hvp(theta, v)
    theta.add_(0.5)
    assert torch.equal(operator(v), expected)
    objective.set_buffers(flatten_buffers(model) * 1.5, buffer_layout(model))
    with pytest.raises(RuntimeError, match="batch-norm statistics changed"):
        operator(v)
    assert not torch.equal(objective.hvp_operator(theta)(v), expected)


def test_hvp_operator_in_forward_over_reverse_mode_keeps_nothing(eval_data):
    x, y = eval_data
    objective = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64, hvp_mode="forward_over_reverse")
    theta = objective.initial_point()
    operator = objective.hvp_operator(theta)
    v = torch.ones_like(theta)
    assert operator.kept_batches == 0 and operator.graph_bytes == 0
    assert torch.equal(operator(v), objective.hvp(theta, v))


def test_hvp_batch_size_does_not_change_result(eval_data):
    x, y = eval_data
    model = tiny_lenet()
    theta = flatten_parameters(model)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = TorchObjective(model, x, y, batch_size=len(x), dtype=torch.float64).hvp(theta, v)
    for batch_size in (1, 4, 11):
        part = TorchObjective(model, x, y, batch_size=batch_size, dtype=torch.float64).hvp(theta, v)
        torch.testing.assert_close(part, full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net], ids=["lenet", "batchnorm"])
def test_gradient_matches_central_finite_differences(make_model, eval_data):
    x, y = eval_data
    model = make_model()
    objective = TorchObjective(model, x, y, batch_size=9, dtype=torch.float64)
    theta = objective.initial_point()
    g = objective.grad(theta)
    generator = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(4):
        d = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        d /= torch.linalg.norm(d)
        fd = (objective.loss(theta + eps * d) - objective.loss(theta - eps * d)) / (2 * eps)
        assert abs(float(g @ d) - fd) <= 1e-6 * max(1.0, abs(fd))


def test_flat_round_trip_is_exact():
    model = build_model("resnet20", (3, 32, 32), 10)
    layout = layout_of(model)
    theta = flatten_parameters(model)
    assert theta.shape == (layout.size,) == (sum(p.numel() for p in model.parameters()),)
    views = unflatten(theta, layout)
    for name, param in model.named_parameters():
        assert torch.equal(views[name], param)
        assert views[name].data_ptr() >= theta.data_ptr()  # views into theta, not copies
    other = build_model("resnet20", (3, 32, 32), 10)
    load_flat_parameters(other, theta)
    assert torch.equal(flatten_parameters(other), theta)


def test_layout_kinds_and_filter_axes():
    layout = layout_of(build_model("resnet20", (3, 32, 32), 10))
    assert layout["conv.weight"].kind == "conv" and layout["conv.weight"].filter_axis == 0
    assert layout["bn.weight"].kind == "batchnorm" and layout["bn.bias"].kind == "batchnorm"
    assert layout["fc.weight"].kind == "linear" and layout["fc.bias"].kind == "bias"
    lenet = layout_of(build_model("lenet", (1, 8, 8), 10))
    assert [s.kind for s in lenet] == ["conv", "bias", "conv", "bias"] + ["linear", "bias"] * 3


def test_loss_at_flat_vector_equals_models_own_loss(digits):
    x, y = digits.evaluation_subset(0.2, seed=0)
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 10, depth=8, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.as_tensor(digits.x_train), torch.as_tensor(digits.y_train)
    for start in range(0, 320, 64):  # a few real training steps: BN statistics and weights move
        loss = F.cross_entropy(model(xt[start:start + 64]), yt[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
        own_loss = F.cross_entropy(logits, torch.as_tensor(y)).item()
        own_acc = (logits.argmax(1) == torch.as_tensor(y)).double().mean().item()
    model.train()
    objective = TorchObjective(model, x, y, batch_size=64)
    result = objective.evaluate(flatten_parameters(model))
    assert result.loss == pytest.approx(own_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(own_acc, abs=1e-12)
    assert model.training  # the user's model was not switched to eval mode


def test_objective_never_mutates_the_users_model(eval_data):
    x, y = eval_data
    model = tiny_bn_net()
    before = flatten_parameters(model).clone(), flatten_buffers(model).copy(), model.training
    objective = TorchObjective(model, x, y, batch_size=8, dtype=torch.float64)
    theta = objective.initial_point() + 0.5
    objective.evaluate(theta)
    objective.grad(theta)
    objective.hvp(theta, torch.ones_like(theta))
    assert torch.equal(flatten_parameters(model), before[0])
    assert np.array_equal(flatten_buffers(model), before[1])
    assert model.training == before[2]


def test_bad_inputs_are_named():
    model = tiny_lenet()
    x = np.zeros((4, 1, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        TorchObjective(model, x, np.zeros(4, dtype=np.int64), batch_size=0)
    with pytest.raises(ValueError, match="hvp_mode 'bogus'"):
        TorchObjective(model, x, np.zeros(4, dtype=np.int64), hvp_mode="bogus")
    with pytest.raises(ValueError, match="hvp_memory_mb must be .auto. or a number >= 0.*got -1"):
        TorchObjective(model, x, np.zeros(4, dtype=np.int64), hvp_memory_mb=-1)
    with pytest.raises(ValueError, match="loss 'cross_entropy' needs integer class targets, got float64 targets"):
        TorchObjective(model, x, np.zeros(4))  # float labels are not cast to classes
    objective = TorchObjective(model, x, np.zeros(4, dtype=np.int64), dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"expected \({objective.dim},\)"):
        objective.loss(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 8, 8), 10)


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net], ids=["lenet", "batchnorm"])
def test_evaluate_many_equals_an_independent_forward_at_each_point(make_model, eval_data):
    """Batched grid points (formed in place in the objective's parameter buffer) against the reference loss,
    written without the backend, at center + a d1 + b d2; accuracy against the reference logits."""
    x, y = eval_data
    model = make_model()
    objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64)  # uneven last batch
    center = objective.initial_point()
    g = torch.Generator().manual_seed(0)
    dirs = [0.1 * torch.randn(objective.dim, generator=g, dtype=torch.float64) for _ in range(2)]
    coeffs = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 0.25], [0.3, 3.0]])
    results = objective.evaluate_many(center, dirs, coeffs)
    f = reference_loss(model, x, y)
    module = copy.deepcopy(model).eval()
    names = [n for n, _ in module.named_parameters()]
    for (a, b), got in zip(coeffs, results, strict=True):
        theta = center + a * dirs[0] + b * dirs[1]
        assert got.loss == pytest.approx(f(theta).item(), rel=1e-12)
        params = dict(zip(names, torch.split(theta, [p.numel() for p in module.parameters()]), strict=True))
        params = {n: t.view_as(p) for (n, p), t in zip(module.named_parameters(), params.values(), strict=True)}
        logits = functional_call(module, {**params, **dict(module.named_buffers())}, (x,))
        assert got.accuracy == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-15)
        single = objective.evaluate(theta)
        assert single.loss == pytest.approx(got.loss, rel=1e-13) and single.accuracy == got.accuracy
    # loading points never moves the objective's own starting point
    assert torch.equal(objective.initial_point(), center)
