"""Stochastic Lanczos quadrature against exact spectra (eigh / construction) and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, wasserstein_distance

from gradvis_steps.core.lanczos import lanczos, tridiagonal_eigh
from gradvis_steps.core.slq import (
    SLQResult,
    default_density_grid,
    default_sigma,
    gaussian_density,
    slq,
    spectral_density,
    spectrum_summary,
    starting_vector,
)

try:  # torch is an optional backend
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

N = 2000
K, M = 10, 80  # the paper's settings for its density plots (section 4)
SEED = 11
W1_THRESHOLD = 1e-3  # relative to the spectral width


@pytest.fixture(scope="module")
def problem():
    """Dense A = Q diag(lam) Q^T: bulk uniform in [-1, 3], outliers 20..120, negatives -5, -8, -12."""
    rng = np.random.default_rng(2024)
    extra = np.array([20.0, 35.0, 50.0, 80.0, 120.0, -5.0, -8.0, -12.0])
    lam = np.concatenate([rng.uniform(-1.0, 3.0, N - extra.size), extra])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    ev = np.linalg.eigvalsh(A)
    return {"A": A, "lam": lam, "ev": ev, "width": ev[-1] - ev[0]}


@pytest.fixture(scope="module")
def runs(problem):
    A = problem["A"]
    return {kind: slq(lambda v: A @ v, N, K, M, seed=SEED, kind=kind) for kind in ("gaussian", "rademacher")}


def _w1_ratio(nodes, weights, problem):
    d = wasserstein_distance(np.ravel(nodes), problem["ev"], u_weights=np.ravel(weights))
    return d / problem["width"]


# ------------------------------------------------------------------------------------------------
# starting vectors
# ------------------------------------------------------------------------------------------------


def test_starting_vector_stream():
    a = starting_vector(500, 3, 4)
    assert a.dtype == np.float64 and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-14)
    assert np.array_equal(a, starting_vector(500, 3, 4))
    assert not np.array_equal(a, starting_vector(500, 3, 5))
    assert not np.array_equal(a, starting_vector(500, 4, 4))
    r = starting_vector(500, 3, 4, kind="rademacher")
    np.testing.assert_array_equal(np.abs(r), np.full(500, 1 / np.sqrt(500)))
    with pytest.raises(ValueError):
        starting_vector(10, 0, 0, kind="uniform")


@needs_torch
def test_starting_vector_like_torch():
    like = torch.zeros(1, dtype=torch.float64)
    t = starting_vector(300, 1, 2, like=like)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert np.array_equal(t.numpy(), starting_vector(300, 1, 2))  # same float64 stream, bitwise
    t32 = starting_vector(300, 1, 2, like=like.float())
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), starting_vector(300, 1, 2), rtol=1e-7)


# ------------------------------------------------------------------------------------------------
# quadrature vs exact spectrum
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_result_shape_and_weights(runs, kind):
    r = runs[kind]
    assert r.nodes.shape == r.weights.shape == (K, M) and r.alpha1.shape == (K,)
    assert r.dim == N and r.seed == SEED and r.kind == kind and list(r.indices) == list(range(K))
    np.testing.assert_allclose(r.weights.sum(axis=1), 1.0, atol=1e-12)  # eq. 7: rows sum to 1
    assert np.all(r.weights >= 0) and np.all(np.diff(r.nodes, axis=1) >= 0)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_wasserstein_to_exact_spectrum(runs, problem, kind):
    r = runs[kind]
    ratio = _w1_ratio(r.nodes, r.weights, problem)
    assert ratio < W1_THRESHOLD, ratio


def test_wasserstein_test_can_fail(runs, problem):
    """Weights from the LAST row of U (a plausible indexing bug) or uniform weights fail the test."""
    A, r = problem["A"], runs["gaussian"]
    wrong = np.empty_like(r.weights)
    for row, i in enumerate(r.indices):
        res = lanczos(lambda v: A @ v, starting_vector(N, SEED, int(i)), M)
        lam, U = tridiagonal_eigh(res.alpha, res.beta)
        np.testing.assert_allclose(lam, r.nodes[row], rtol=0, atol=1e-12)
        wrong[row] = U[-1, :] ** 2
    assert _w1_ratio(r.nodes, wrong, problem) > W1_THRESHOLD
    assert _w1_ratio(r.nodes, np.full_like(r.weights, 1.0 / M), problem) > W1_THRESHOLD


def test_quadrature_error_without_sampling_error(problem):
    """Isolate eq. 6-7: compare with the exact spectral measure of the SAME vectors (weights q_i^2).

    With a diagonal operator the measure of v is sum_i v_i^2 delta(lam_i) exactly, so the vector
    sampling error (which dominates the comparison with the uniform measure on eigenvalues at k=10)
    drops out and only the Gauss-quadrature error of m nodes remains; it must shrink with m.
    """
    lam = problem["lam"]
    width = problem["width"]
    q2 = np.array([starting_vector(N, SEED, i) ** 2 for i in range(K)])
    ratios = {}
    for m in (80, 200):
        r = slq(lambda v: lam * v, N, K, m, seed=SEED)
        d = wasserstein_distance(r.nodes.ravel(), np.tile(lam, K), r.weights.ravel(), q2.ravel())
        ratios[m] = d / width
    assert ratios[80] < 2e-4 and ratios[200] < 0.5 * ratios[80], ratios


def test_invariant_subspace_weights_exact():
    """Diag with 7 distinct values: SLQ weight on each value = squared mass of v_i there (exact)."""
    values = np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 6.0, 10.0])
    d = np.repeat(values, [10, 30, 200, 40, 60, 20, 40])
    r = slq(lambda v: d * v, d.size, 4, 20, seed=5)
    assert np.all(np.isfinite(r.nodes)) and np.all(np.isfinite(r.weights))
    np.testing.assert_allclose(r.weights.sum(axis=1), 1.0, atol=1e-12)
    for row, i in enumerate(r.indices):
        q2 = starting_vector(d.size, 5, int(i)) ** 2
        for val in values:
            got = r.weights[row][np.abs(r.nodes[row] - val) < 1e-8].sum()
            assert got == pytest.approx(q2[d == val].sum(), abs=1e-10)


# ------------------------------------------------------------------------------------------------
# Hutchinson trace, extremes, negative mass
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_trace(runs, problem, kind):
    r = runs[kind]
    s = spectrum_summary(r)
    exact = float(np.trace(problem["A"]))
    assert exact == pytest.approx(problem["lam"].sum(), rel=1e-10)
    assert s["trace_stderr"] > 0
    assert abs(s["trace_estimate"] - exact) < 3 * s["trace_stderr"]
    # alpha1 is the Rayleigh quotient of each starting vector
    v = starting_vector(N, SEED, 3, kind)
    assert r.alpha1[3] == pytest.approx(v @ problem["A"] @ v, rel=1e-12)


def test_summary_extremes_and_negative_mass(runs, problem):
    s = spectrum_summary(runs["gaussian"])
    ev = problem["ev"]
    assert s["lambda_max"] == pytest.approx(ev[-1], rel=1e-10)
    assert s["lambda_min"] == pytest.approx(ev[0], rel=1e-10)
    assert s["top_eigenvalue"] == pytest.approx(120.0, rel=1e-10)
    assert s["spectral_range"] == pytest.approx(ev[-1] - ev[0], rel=1e-10)
    exact_neg = np.mean(ev < 0)
    # statistical estimate: standard deviation ~ sqrt(p(1-p)/(k N)) ~ 0.003 here
    assert s["negative_mass"] == pytest.approx(exact_neg, abs=0.02)


def test_negative_mass_tolerance_ignores_numerical_zeros():
    nodes = np.array([[-1e-12, 0.5, 1.0]])
    weights = np.array([[0.5, 0.25, 0.25]])
    r = SLQResult(nodes, weights, np.array([0.5]), dim=3, seed=0, indices=np.array([0]))
    assert spectrum_summary(r)["negative_mass"] == pytest.approx(0.5)
    assert spectrum_summary(r, negative_tol=1e-8)["negative_mass"] == 0.0


# ------------------------------------------------------------------------------------------------
# parallel split (Algorithm 5) and backends
# ------------------------------------------------------------------------------------------------


def test_indices_reproduce_full_run_bitwise(runs, problem):
    A, full = problem["A"], runs["gaussian"]
    part = slq(lambda v: A @ v, N, K, M, seed=SEED, indices=[7, 3])
    assert list(part.indices) == [7, 3]
    for row, i in enumerate(part.indices):
        assert np.array_equal(part.nodes[row], full.nodes[i])
        assert np.array_equal(part.weights[row], full.weights[i])
        assert part.alpha1[row] == full.alpha1[i]
    # gather: rank shares in any order -> the serial result, ordered by index
    rest = [i for i in range(K) if i not in (3, 7)]
    other = SLQResult(
        full.nodes[rest], full.weights[rest], full.alpha1[rest], N, SEED, np.array(rest), "gaussian"
    )
    merged = SLQResult.concatenate([part, other])
    assert np.array_equal(merged.indices, np.arange(K))
    assert np.array_equal(merged.nodes, full.nodes) and np.array_equal(merged.weights, full.weights)
    assert np.array_equal(merged.alpha1, full.alpha1)
    with pytest.raises(ValueError):
        SLQResult.concatenate([part, part])
    with pytest.raises(ValueError):
        slq(lambda v: A @ v, N, K, M, indices=[K])


@needs_torch
def test_torch_backend_matches_numpy(runs, problem):
    At = torch.from_numpy(problem["A"])
    like = torch.zeros(1, dtype=torch.float64)
    r = slq(lambda v: At @ v, N, K, M, seed=SEED, like=like, indices=[0, 1])
    ref = runs["gaussian"]
    np.testing.assert_allclose(r.nodes, ref.nodes[:2], atol=1e-9)
    np.testing.assert_allclose(r.weights, ref.weights[:2], atol=1e-9)
    np.testing.assert_allclose(r.alpha1, ref.alpha1[:2], rtol=1e-12)


def test_m_clamped_to_dim():
    d = np.arange(1.0, 13.0)
    r = slq(lambda v: d * v, 12, 2, 50)
    assert r.nodes.shape == (2, 12)
    np.testing.assert_allclose(r.nodes[0], d, atol=1e-10)  # full Krylov space: exact spectrum


# ------------------------------------------------------------------------------------------------
# density (eq. 4-8)
# ------------------------------------------------------------------------------------------------


def test_density_matches_direct_sum():
    rng = np.random.default_rng(3)
    nodes = rng.normal(size=(3, 5))
    weights = rng.dirichlet(np.ones(5), size=3)
    grid = np.linspace(-4, 4, 37)
    sigma = 0.3
    direct = np.zeros_like(grid)
    for i in range(3):
        for j in range(5):
            direct += weights[i, j] * norm.pdf(grid, loc=nodes[i, j], scale=sigma)
    np.testing.assert_allclose(gaussian_density(nodes, weights, grid, sigma), direct / 3, rtol=1e-12)
    # one vector given as 1-D arrays
    np.testing.assert_allclose(
        gaussian_density(nodes[0], weights[0], grid, sigma),
        sum(weights[0, j] * norm.pdf(grid, nodes[0, j], sigma) for j in range(5)),
        rtol=1e-12,
    )


def test_windowed_density_equals_the_dense_sum_everywhere():
    """The windowed sum skips only Gaussians that underflow to 0: on a Hessian-like spectrum (a bulk near 0, a few
    outliers) it matches the dense grid x nodes sum to rounding, deep tails and a shuffled 2-D grid included."""
    rng = np.random.default_rng(11)
    nodes = np.sort(np.concatenate([rng.normal(0, 0.01, (10, 70)), rng.uniform(0.05, 0.33, (10, 10))], axis=1), axis=1)
    weights = rng.dirichlet(np.ones(80), size=10)
    sigma = default_sigma(nodes)

    def dense(grid):
        z = (np.ravel(grid)[:, None] - nodes.ravel()[None, :]) / sigma
        values = np.exp(-0.5 * z * z) @ (weights.ravel() / 10) / (sigma * np.sqrt(2 * np.pi))
        return values.reshape(np.shape(grid))

    grid = np.concatenate([default_density_grid(nodes, sigma=sigma), np.linspace(0.3, 0.45, 997)])  # + far tail
    expected, got = dense(grid), gaussian_density(nodes, weights, grid, sigma)
    positive = expected > 0
    np.testing.assert_allclose(got[positive], expected[positive], rtol=1e-12)
    assert np.array_equal(got[~positive], expected[~positive]) and (~positive).sum() > 100  # exact zeros far out
    assert expected[positive].min() < 1e-200  # the comparison reaches the deepest tails
    # one point at a time (a block of one: its window is exactly the cut), across the upper tail
    tail = grid[(grid > nodes.max() + 25 * sigma) & (grid < nodes.max() + 45 * sigma)]
    single = np.array([gaussian_density(nodes, weights, tail[i : i + 1], sigma)[0] for i in range(tail.size)])
    np.testing.assert_array_equal(single > 0, dense(tail) > 0)
    np.testing.assert_allclose(single, dense(tail), rtol=1e-12)
    shuffled = rng.permutation(grid)[:1000].reshape(20, 50)
    np.testing.assert_allclose(gaussian_density(nodes, weights, shuffled, sigma), dense(shuffled), rtol=1e-12)
    assert gaussian_density(nodes, weights, np.zeros(0), sigma).shape == (0,)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_density_integrates_to_one(runs, kind):
    r = runs[kind]
    grid, dens = spectral_density(r)
    sigma = default_sigma(r.nodes)
    assert sigma == pytest.approx((r.nodes.max() - r.nodes.min()) / 500)
    assert grid[0] < r.nodes.min() - 5 * sigma and grid[-1] > r.nodes.max() + 5 * sigma
    assert np.all(dens >= 0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    # also with a wider sigma on its own default grid
    g2 = default_density_grid(r.nodes, sigma=10 * sigma)
    assert np.trapezoid(gaussian_density(r.nodes, r.weights, g2, 10 * sigma), g2) == pytest.approx(1.0, abs=1e-6)


def test_density_two_clusters_peaks_and_masses():
    rng = np.random.default_rng(4)
    d = np.concatenate([rng.uniform(0.9, 1.1, 1500), rng.uniform(4.9, 5.1, 500)])
    r = slq(lambda v: d * v, d.size, 10, 40, seed=1)
    grid, dens = spectral_density(r, sigma=0.1)
    left, right = grid < 3, grid >= 3
    assert grid[left][np.argmax(dens[left])] == pytest.approx(1.0, abs=0.05)
    assert grid[right][np.argmax(dens[right])] == pytest.approx(5.0, abs=0.05)
    mass_left = np.trapezoid(dens[left], grid[left])
    assert mass_left == pytest.approx(0.75, abs=0.03)
    assert dens[left].max() / dens[right].max() == pytest.approx(3.0, rel=0.15)
    # the density between the clusters vanishes
    assert dens[np.abs(grid - 3.0) < 0.5].max() < 1e-6 * dens.max()
