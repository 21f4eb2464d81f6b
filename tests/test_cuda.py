"""The GPU path against the CPU path: the same numbers on a CUDA device (skipped without one; CI has none).

Run on a GPU machine by bench/gpu_check.sh. float64 everywhere, so CPU and GPU agree to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from tiny_models import tiny_bn_net, tiny_lenet  # noqa: E402

from gradvis_steps.backends.torch.objective import TorchObjective  # noqa: E402
from gradvis_steps.core.lanczos import ritz_pairs  # noqa: E402
from gradvis_steps.core.slq import slq  # noqa: E402


@pytest.fixture
def pair(digits, request):
    x, y = digits.evaluation_subset(0.05, seed=3)
    model = request.param()
    cpu = TorchObjective(model, x, y, batch_size=32, dtype=torch.float64, device="cpu")
    gpu = TorchObjective(model, x, y, batch_size=32, dtype=torch.float64, device="cuda")
    return cpu, gpu


@pytest.mark.parametrize("pair", [tiny_lenet, tiny_bn_net], indirect=True, ids=["lenet", "batchnorm"])
def test_hvp_grad_and_grid_points_agree_with_cpu(pair):
    cpu, gpu = pair
    theta = cpu.initial_point()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(cpu.dim, generator=g, dtype=torch.float64)
    hv_cpu, hv_gpu = cpu.hvp(theta, v), gpu.hvp(theta.cuda(), v.cuda()).cpu()
    assert torch.linalg.vector_norm(hv_gpu - hv_cpu) <= 1e-10 * torch.linalg.vector_norm(hv_cpu)
    operator = gpu.hvp_operator(theta.cuda())  # the kept gradient graphs, on the device
    assert operator.kept_batches == len(gpu.reduction.batches())
    for _ in range(2):
        hv_kept = operator(v.cuda()).cpu()
        assert torch.linalg.vector_norm(hv_kept - hv_cpu) <= 1e-10 * torch.linalg.vector_norm(hv_cpu)
    g_cpu, g_gpu = cpu.grad(theta), gpu.grad(theta.cuda()).cpu()
    assert torch.linalg.vector_norm(g_gpu - g_cpu) <= 1e-10 * torch.linalg.vector_norm(g_cpu)
    dirs = [0.1 * torch.randn(cpu.dim, generator=g, dtype=torch.float64) for _ in range(2)]
    coeffs = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 0.25]])
    on_cpu = cpu.evaluate_many(theta, dirs, coeffs)
    on_gpu = gpu.evaluate_many(theta.cuda(), [d.cuda() for d in dirs], coeffs)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-12) and b.accuracy == a.accuracy


@pytest.mark.parametrize("pair", [tiny_lenet], indirect=True, ids=["lenet"])
def test_ritz_pairs_and_slq_agree_with_cpu(pair):
    cpu, gpu = pair
    theta_cpu = cpu.initial_point()
    theta_gpu = theta_cpu.cuda()
    v0 = torch.randn(cpu.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r_cpu = ritz_pairs(lambda v: cpu.hvp(theta_cpu, v), v0, 30, 3)
    r_gpu = ritz_pairs(lambda v: gpu.hvp(theta_gpu, v), v0.cuda(), 30, 3)
    np.testing.assert_allclose(r_gpu.values, r_cpu.values, rtol=1e-8)
    s_cpu = slq(lambda v: cpu.hvp(theta_cpu, v), cpu.dim, 2, 20, seed=0, like=theta_cpu)
    s_gpu = slq(lambda v: gpu.hvp(theta_gpu, v), gpu.dim, 2, 20, seed=0, like=theta_gpu)
    # the extreme nodes (well converged) agree; weights sum to 1 per vector on both
    np.testing.assert_allclose(s_gpu.nodes[:, [0, -1]], s_cpu.nodes[:, [0, -1]], rtol=1e-6)
    np.testing.assert_allclose(s_gpu.weights.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("pair", [tiny_lenet, tiny_bn_net], indirect=True, ids=["lenet", "batchnorm"])
def test_block_products_and_lockstep_slq_agree_with_cpu(pair):
    cpu, gpu = pair
    theta = cpu.initial_point()
    V = torch.randn(4, cpu.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.stack([cpu.hvp(theta, v) for v in V])
    for mode in ("double_backprop", "forward_over_reverse"):
        gpu.hvp_mode = mode
        got = gpu.hvp_operator(theta.cuda()).matmat(V.cuda()).cpu()
        assert torch.linalg.vector_norm(got - expected) <= 1e-10 * torch.linalg.vector_norm(expected), mode
    gpu.hvp_mode = "auto"
    record = gpu.calibrate_hvp(theta.cuda(), block=4)
    assert record["chosen_by"] == "calibration" and gpu.hvp_mode in ("double_backprop", "forward_over_reverse")
    s_cpu = slq(cpu.hvp_operator(theta), cpu.dim, 4, 20, seed=0, like=theta)
    s_gpu = slq(gpu.hvp_operator(theta.cuda()), gpu.dim, 4, 20, seed=0, like=theta.cuda(), group_size=4)
    np.testing.assert_allclose(s_gpu.nodes[:, [0, -1]], s_cpu.nodes[:, [0, -1]], rtol=1e-6)
    np.testing.assert_allclose(s_gpu.alpha1, s_cpu.alpha1, rtol=1e-10)
