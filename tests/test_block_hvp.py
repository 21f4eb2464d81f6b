"""Block Hessian products ``TorchHessianOperator.matmat`` and the automatic HVP mode, against autograd's dense
Hessian in float64 and against one-by-one products."""

from __future__ import annotations

import pytest
import torch
from test_torch_backend import reference_loss
from tiny_models import tiny_bn_net, tiny_lenet

from gradvis_steps.backends.torch.objective import HVP_MODES, TorchObjective, choose_hvp_mode


@pytest.fixture
def eval_data(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples: batches of 7 leave an uneven last one
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)


def _block(dim: int, rows: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("make_model", [tiny_lenet, tiny_bn_net], ids=["lenet", "batchnorm"])
def test_matmat_equals_dense_hessian_times_block(make_model, eval_data):
    x, y = eval_data
    model = make_model()
    theta = TorchObjective(model, x, y, dtype=torch.float64).initial_point()
    hessian = torch.autograd.functional.hessian(reference_loss(model, x, y), theta)  # the independent truth
    V = _block(theta.numel(), 5)
    for mode in HVP_MODES:
        for memory_mb in (512.0, 0.0):  # graphs kept, or rebuilt for each block
            objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_mode=mode,
                                       hvp_memory_mb=memory_mb)
            got = objective.hvp_operator(theta).matmat(V)
            torch.testing.assert_close(got, V @ hessian, rtol=1e-9, atol=1e-11, msg=f"{mode}, {memory_mb} MB")


@pytest.mark.parametrize("mode", HVP_MODES)
def test_matmat_agrees_with_one_by_one_products_in_float32(mode, eval_data):
    x, y = eval_data
    objective = TorchObjective(tiny_bn_net(), x.float(), y, batch_size=7, hvp_mode=mode)
    theta = objective.initial_point()
    operator = objective.hvp_operator(theta)
    V = _block(objective.dim, 4).float()
    rows = torch.stack([operator(v) for v in V])
    torch.testing.assert_close(operator.matmat(V), rows, rtol=2e-5, atol=1e-6)


def test_matmat_splits_the_block_to_fit_the_memory_budget_with_the_same_values(eval_data):
    x, y = eval_data
    model = tiny_lenet()
    roomy = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64)
    theta = roomy.initial_point()
    whole = roomy.hvp_operator(theta)
    graph_mb = whole.graph_bytes / whole.kept_batches / 2**20
    # room for all five graphs plus the working memory of two vectors: blocks of 2, 2 and 1
    tight = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_memory_mb=7.5 * graph_mb)
    operator = tight.hvp_operator(theta)
    assert operator.kept_batches == 5 and operator.block_size == 2
    partly = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_memory_mb=3.5 * graph_mb)
    partial_operator = partly.hvp_operator(theta)  # graphs that do not all fit leave no room for a block
    assert partial_operator.kept_batches == 3 and partial_operator.block_size == 1
    assert whole.block_size >= 5
    unlimited = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, hvp_memory_mb=float("inf"))
    assert unlimited.hvp_operator(theta).block_size >= 2**31  # an unlimited budget never splits a block
    V = _block(roomy.dim, 5)
    torch.testing.assert_close(operator.matmat(V), whole.matmat(V), rtol=1e-12, atol=1e-14)
    assert torch.equal(operator.matmat(V), operator.matmat(V))  # same inputs, same bits


def test_matmat_of_one_row_is_the_hvp_bitwise(eval_data):
    x, y = eval_data
    objective = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64)
    theta = objective.initial_point()
    V = _block(objective.dim, 1)
    assert torch.equal(objective.hvp_operator(theta).matmat(V)[0], objective.hvp(theta, V[0]))


def test_matmat_rejects_a_block_of_the_wrong_shape(eval_data):
    x, y = eval_data
    objective = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64)
    operator = objective.hvp_operator(objective.initial_point())
    with pytest.raises(ValueError, match=rf"\(g, {objective.dim}\) block"):
        operator.matmat(torch.zeros(objective.dim))


def test_auto_mode_is_resolved_by_timing_both_and_recorded(eval_data):
    x, y = eval_data
    objective = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64, hvp_mode="auto")
    theta = objective.initial_point()
    untimed = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64, hvp_mode="auto")
    # one vector at a time on a CPU: double backprop, untimed (the same bits every run)
    untimed_record = untimed.calibrate_hvp(theta, block=1)
    assert untimed_record.pop("memory_mb") == pytest.approx(untimed.hvp_budget_bytes() / 2**20, rel=0.5)
    assert untimed_record == {"mode": "double_backprop", "chosen_by": "auto on a CPU (untimed)"}
    record = objective.calibrate_hvp(theta, block=3)
    assert record["chosen_by"] == "calibration" and record["block"] == 3
    assert set(record["seconds_per_vector"]) == set(HVP_MODES)
    assert objective.hvp_mode == record["mode"] in HVP_MODES
    assert objective.hvp_operator(theta).mode == record["mode"]
    fixed = TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64, hvp_mode="forward_over_reverse")
    fixed_record = fixed.calibrate_hvp(theta)
    assert fixed_record.pop("memory_mb") > 0  # the automatic budget taken, in MiB
    assert fixed_record == {"mode": "forward_over_reverse", "chosen_by": "config"}


def test_auto_mode_takes_forward_over_reverse_only_by_a_clear_margin():
    assert choose_hvp_mode({"double_backprop": 1.0, "forward_over_reverse": 0.5}) == "forward_over_reverse"
    assert choose_hvp_mode({"double_backprop": 1.0, "forward_over_reverse": 0.95}) == "double_backprop"
    assert choose_hvp_mode({"double_backprop": 1.0, "forward_over_reverse": 1.5}) == "double_backprop"


def test_bad_hvp_mode_is_named(eval_data):
    x, y = eval_data
    with pytest.raises(ValueError, match="hvp_mode 'fastest' is not one of .*auto"):
        TorchObjective(tiny_lenet(), x, y, hvp_mode="fastest")
