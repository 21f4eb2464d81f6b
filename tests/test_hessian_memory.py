"""The fast path of the Hessian products: evaluation-mode batch norm as an affine map, the automatic memory budget
of the kept gradient graphs (and the cgroup / node-rank arithmetic behind it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_bn_net

from gradvis_steps.backends.torch import objective as objective_module
from gradvis_steps.backends.torch.affine_norm import batch_norm_as_affine
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.core import memory


@pytest.fixture
def eval_data(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples: batches of 7 leave an uneven last one
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)


def _warmed(norm: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """A batch-norm module with running statistics (and affine parameters) away from their defaults."""
    torch.manual_seed(0)
    norm = norm.double()
    with torch.no_grad():
        for _ in range(3):
            norm(torch.randn(shape, dtype=torch.float64) * 3 + 1)
        for p in norm.parameters():
            p.add_(torch.randn_like(p))
    return norm.eval()


@pytest.mark.parametrize(("norm", "shape"), [
    (torch.nn.BatchNorm1d(3), (5, 3)),
    (torch.nn.BatchNorm1d(3), (5, 3, 4)),
    (torch.nn.BatchNorm2d(3), (5, 3, 4, 4)),
    (torch.nn.BatchNorm3d(3), (5, 3, 2, 3, 2)),
    (torch.nn.BatchNorm2d(3, affine=False), (5, 3, 4, 4)),
], ids=["1d", "1d-length", "2d", "3d", "no-affine"])
def test_evaluation_batch_norm_is_rewritten_as_its_affine_map(norm, shape):
    """The same function (values and first and second derivatives, float64, against the native kernel), built
    from an add-multiply instead of the batch-norm node."""
    norm = _warmed(norm, shape)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = list(norm.parameters())

    def outputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = norm(x)
        loss = (torch.tanh(y) ** 2).sum()
        grads = torch.autograd.grad(loss, [x, *params], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), [x, *params])
        return y, [*grads, *second]

    native_y, native = outputs()
    with batch_norm_as_affine():
        affine_y, affine = outputs()
    assert "BatchNorm" in type(native_y.grad_fn).__name__ and "Addcmul" in type(affine_y.grad_fn).__name__
    torch.testing.assert_close(affine_y, native_y, rtol=1e-13, atol=1e-13)
    for a, n in zip(affine, native, strict=True):
        torch.testing.assert_close(a, n, rtol=1e-11, atol=1e-12)


def test_batch_norm_by_its_own_statistics_is_left_to_torch():
    """Training mode and track_running_stats=False normalize by the batch: a different function, not rewritten;
    direct functional calls (keyword or positional) in evaluation mode are."""
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    untracked = torch.nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    training = _warmed(torch.nn.BatchNorm2d(3), (6, 3, 4, 4)).train()
    with batch_norm_as_affine():
        for module in (untracked, training):
            y = module(x.requires_grad_(True))
            assert "BatchNorm" in type(y.grad_fn).__name__
        mean, var = torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
        weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        by_keyword = F.batch_norm(x, mean, var, weight=weight, bias=bias, training=False, eps=1e-3)
        positional = torch.batch_norm(x, weight, bias, mean, var, False, 0.1, 1e-3, True)
    expected = F.batch_norm(x, mean, var, weight=weight, bias=bias, training=False, eps=1e-3)
    for got in (by_keyword, positional):
        assert "Addcmul" in type(got.grad_fn).__name__
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


def test_automatic_budget_keeps_what_fits_and_never_changes_a_product(eval_data, monkeypatch):
    """Under "auto", the graphs kept follow the memory available, and no product's bits do: single products equal
    :meth:`hvp`, and a block's split is fixed, so blocks agree bitwise whether every batch, some or none kept its
    graph (a batch without one gets a graph for the block)."""
    x, y = eval_data
    model = tiny_bn_net()
    theta = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64).initial_point() + 0.01
    one_graph = TorchObjective(model, x[:7], y[:7], batch_size=7, dtype=torch.float64,
                               hvp_memory_mb=1e6).hvp_operator(theta).graph_bytes
    V = torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    blocks, kept = [], []
    for graphs in (10, 2.5, 0.5):  # the budget is half of the memory available: room for 5 (all), 2 and 0 graphs
        monkeypatch.setattr(objective_module, "host_available_bytes", lambda g=graphs: int(2 * g * one_graph))
        objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64)
        assert objective.hvp_memory_mb == "auto"
        operator = objective.hvp_operator(theta)
        kept.append(operator.kept_batches)
        assert operator.block_size >= 3  # fixed block memory, whatever the graphs took
        assert torch.equal(operator(V[0]), objective.hvp(theta, V[0]))
        blocks.append(operator.matmat(V))
    assert kept == [5, 2, 0]
    assert torch.equal(blocks[1], blocks[0]) and torch.equal(blocks[2], blocks[0])
    for row in range(3):  # and a block is the Hessian: each row equals the single product to float tolerance
        torch.testing.assert_close(blocks[0][row], objective.hvp(theta, V[row]), rtol=1e-10, atol=1e-12)


def test_automatic_budget_is_half_the_available_memory_over_the_node_ranks(monkeypatch):
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE", "PMIX_LOCAL_SIZE",
                 "SLURM_TASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    assert memory.ranks_on_this_node() == 1
    assert memory.budget_bytes("auto", 8 << 30) == 4 << 30
    assert memory.budget_bytes(256, 8 << 30) == 256 << 20  # a number is MiB, whatever is available
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x2),3")
    assert memory.ranks_on_this_node() == 4
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # the launcher's own count comes first
    assert memory.ranks_on_this_node() == 2 and memory.budget_bytes("auto", 8 << 30) == 2 << 30


def test_memory_cgroup_limits_the_available_memory(tmp_path):
    """The tightest of the process's memory cgroup and its parents, v2 and v1 layouts; no limit: None."""
    v2 = tmp_path / "v2"
    (v2 / "slurm" / "job_7").mkdir(parents=True)
    (v2 / "slurm" / "memory.max").write_text("8589934592\n")  # 8 GiB, 1 GiB used
    (v2 / "slurm" / "memory.current").write_text("1073741824\n")
    (v2 / "slurm" / "job_7" / "memory.max").write_text("4294967296\n")  # 4 GiB, 3 GiB used: the tightest
    (v2 / "slurm" / "job_7" / "memory.current").write_text("3221225472\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/slurm/job_7\n")
    assert memory.cgroup_room_bytes(str(v2), str(membership)) == 1 << 30
    (v2 / "slurm" / "job_7" / "memory.max").write_text("max\n")
    assert memory.cgroup_room_bytes(str(v2), str(membership)) == 7 << 30
    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker").mkdir(parents=True)
    (v1 / "memory" / "docker" / "memory.limit_in_bytes").write_text(str(2 << 30))
    (v1 / "memory" / "docker" / "memory.usage_in_bytes").write_text(str(512 << 20))
    membership.write_text("5:cpu,cpuacct:/docker\n4:memory:/docker\n")
    assert memory.cgroup_room_bytes(str(v1), str(membership)) == (2 << 30) - (512 << 20)
    (v1 / "memory" / "docker" / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    assert memory.cgroup_room_bytes(str(v1), str(membership)) is None
    assert memory.cgroup_room_bytes(str(v1), str(tmp_path / "no such file")) is None


@pytest.mark.parametrize("value", [-1, "lots", float("nan"), None])
def test_memory_budget_names_a_bad_value(value):
    with pytest.raises(ValueError, match=r"hvp_memory_mb must be 'auto' or a number >= 0 .*got"):
        memory.check_memory_budget(value)
    assert memory.check_memory_budget("auto") == "auto" and memory.check_memory_budget(float("inf")) == float("inf")
