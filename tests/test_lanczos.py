"""Lanczos / Ritz pairs against independent truths: matrices Q diag(lambda) Q^T with known spectra."""

from __future__ import annotations

import numpy as np
import pytest

from gradvis_steps.core.lanczos import (
    breakdown_tolerance,
    lanczos,
    reference_lanczos,
    reference_only,
    ritz_pairs,
    tridiagonal_eigh,
)

try:  # torch is an optional backend: the numpy tests run without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

N = 2000
TOP = np.array([120.0, 80.0, 50.0, 35.0, 20.0])  # outliers, descending
BOTTOM = np.array([-12.0, -8.0, -5.0])  # clearly negative, ascending


@pytest.fixture(autouse=True, params=["host", "reference"])
def loop(request):
    """Every test runs against both Lanczos loops: the host kernel that host arrays normally take and the
    sync-free reference algorithm (forced here on the CPU), so both are held to the same accuracy."""
    if request.param == "reference":
        with reference_only():
            yield request.param
    else:
        yield request.param


def _orth_error(V: np.ndarray) -> float:
    return float(np.abs(V @ V.T - np.eye(V.shape[0])).max())


@pytest.fixture(scope="module")
def problem():
    """Dense symmetric A with bulk uniform in [-1, 3] plus the outliers above; eigvals from eigh."""
    rng = np.random.default_rng(1234)
    lam = np.concatenate([rng.uniform(-1.0, 3.0, N - TOP.size - BOTTOM.size), TOP, BOTTOM])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    ev = np.linalg.eigvalsh(A)
    v0 = rng.standard_normal(N)
    return {"A": A, "Q": Q, "lam": lam, "ev": ev, "v0": v0}


def test_extreme_ritz_values_match_eigh(problem):
    A, ev, v0 = problem["A"], problem["ev"], problem["v0"]

    def mv(v):
        return A @ v

    top = ritz_pairs(mv, v0, 80, 5, which="largest")
    bot = ritz_pairs(mv, v0, 80, 3, which="smallest")
    np.testing.assert_allclose(top.values, ev[::-1][:5], rtol=1e-8, atol=0)
    np.testing.assert_allclose(bot.values, ev[:3], rtol=1e-8, atol=0)
    assert np.all(np.diff(top.values) < 0) and np.all(np.diff(bot.values) > 0)
    assert top.residuals.max() < 1e-6 and bot.residuals.max() < 1e-6
    # residuals are true residuals: recompute them independently
    for vals, vecs, res in ((top.values, top.vectors, top.residuals), (bot.values, bot.vectors, bot.residuals)):
        direct = np.linalg.norm(vecs @ A - vals[:, None] * vecs, axis=1)
        np.testing.assert_allclose(res, direct, rtol=1e-6, atol=1e-13)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-12)


def test_ritz_vectors_match_true_eigenvectors(problem):
    Q, lam, v0 = problem["Q"], problem["lam"], problem["v0"]
    A = problem["A"]
    top = ritz_pairs(lambda v: A @ v, v0, 80, 3, which="largest")
    for value, y in zip(top.values, top.vectors, strict=True):
        q_true = Q[:, np.argmin(np.abs(lam - value))]
        assert abs(float(y @ q_true)) > 1 - 1e-10


def test_nearest_ordering(problem):
    A, v0 = problem["A"], problem["v0"]
    near = ritz_pairs(lambda v: A @ v, v0, 80, 3, which="nearest", target=45.0)
    np.testing.assert_allclose(near.values, [50.0, 35.0, 20.0], rtol=1e-8)
    d = np.abs(near.values - 45.0)
    assert np.all(np.diff(d) >= 0)
    with pytest.raises(ValueError):
        ritz_pairs(lambda v: A @ v, v0, 10, 11)


def test_basis_orthonormal_and_unnormalized_start(problem):
    A, v0 = problem["A"], problem["v0"]
    res = lanczos(lambda v: A @ v, v0, 80, return_basis=True)
    assert res.alpha.shape == (80,) and res.beta.shape == (79,) and res.basis.shape == (80, N)
    assert _orth_error(res.basis) < 1e-10
    # first diagonal entry is the Rayleigh quotient of the start vector
    q = v0 / np.linalg.norm(v0)
    assert res.alpha[0] == pytest.approx(q @ A @ q, rel=1e-12)
    # A V^T = V^T T (Lanczos relation) up to the last column
    V = res.basis
    T = np.diag(res.alpha) + np.diag(res.beta, 1) + np.diag(res.beta, -1)
    assert np.abs((V @ A @ V.T) - T).max() < 1e-10
    # scaling the start vector changes nothing
    res3 = lanczos(lambda v: A @ v, 3.0 * v0, 80)
    np.testing.assert_allclose(res3.alpha, res.alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res3.beta, res.beta, rtol=1e-10, atol=1e-12)


@needs_torch
def test_torch_float64_same_results(problem):
    A, ev, v0 = problem["A"], problem["ev"], problem["v0"]
    At = torch.from_numpy(A)
    v0t = torch.from_numpy(v0)

    def mv(v):
        return At @ v

    top = ritz_pairs(mv, v0t, 80, 5)
    bot = ritz_pairs(mv, v0t, 80, 3, which="smallest")
    assert isinstance(top.vectors, torch.Tensor) and top.vectors.dtype == torch.float64
    np.testing.assert_allclose(top.values, ev[::-1][:5], rtol=1e-8, atol=0)
    np.testing.assert_allclose(bot.values, ev[:3], rtol=1e-8, atol=0)
    assert top.residuals.max() < 1e-6 and bot.residuals.max() < 1e-6
    ref = ritz_pairs(lambda v: A @ v, v0, 80, 5)
    np.testing.assert_allclose(top.values, ref.values, rtol=1e-12)
    overlap = np.abs(np.sum(top.vectors.numpy() * ref.vectors, axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-10)
    res = lanczos(mv, v0t, 80, return_basis=True)
    assert isinstance(res.basis, torch.Tensor) and _orth_error(res.basis.numpy()) < 1e-10
    res_np = lanczos(lambda v: A @ v, v0, 80)
    np.testing.assert_allclose(res.alpha, res_np.alpha, rtol=1e-9, atol=1e-9)


@needs_torch
def test_torch_float32(problem):
    A, ev, v0 = problem["A"], problem["ev"], problem["v0"]
    At = torch.from_numpy(A).float()
    top = ritz_pairs(lambda v: At @ v, torch.from_numpy(v0).float(), 80, 5)
    assert top.vectors.dtype == torch.float32
    np.testing.assert_allclose(top.values, ev[::-1][:5], rtol=1e-5)
    res = lanczos(lambda v: At @ v, torch.from_numpy(v0).float(), 80, return_basis=True)
    assert not np.any(res.beta == 0)  # no spurious breakdown in single precision
    assert _orth_error(res.basis.double().numpy()) < 1e-5


def test_m_larger_than_dim_clamps_and_recovers_full_spectrum():
    rng = np.random.default_rng(5)
    n = 50
    lam = np.linspace(-3.0, 7.0, n)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * lam) @ Q.T
    res = lanczos(lambda v: A @ v, rng.standard_normal(n), 80, return_basis=True)
    assert res.m == n and res.beta.shape == (n - 1,)
    vals, _ = res.eigh()
    np.testing.assert_allclose(vals, lam, atol=1e-10)
    assert _orth_error(res.basis) < 1e-10


# ---------------------------------------------------------------------------------------------
# invariant subspaces (breakdown): operators whose Krylov spaces are smaller than m
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_breakdown_diag_with_seven_values(backend):
    rng = np.random.default_rng(7)
    values = np.array([-2.0, -0.5, 0.0, 1.0, 2.5, 4.0, 9.0])
    d = np.repeat(values, 40)
    v0 = rng.standard_normal(d.size)
    if backend == "torch":
        dt, v0x = torch.from_numpy(d), torch.from_numpy(v0)
    else:
        dt, v0x = d, v0
    for m in (21, 20):  # three complete blocks / the last block incomplete
        res = lanczos(lambda v, dt=dt: dt * v, v0x, m, return_basis=True)
        basis = res.basis.numpy() if backend == "torch" else res.basis
        assert np.all(np.isfinite(res.alpha)) and np.all(np.isfinite(res.beta))
        assert np.all(np.isfinite(basis))
        # breakdown after each 7-dim Krylov space, recorded as beta = 0 (the `where` restart)
        assert res.beta[6] == 0.0 and np.count_nonzero(res.beta == 0.0) == (m - 1) // 7
        assert _orth_error(basis) < 1e-10
        lam, U = res.eigh()
        w = U[0] ** 2
        np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)
        # nodes carrying weight are exact eigenvalues; weight on each = squared mass of v0 there
        carried = lam[w > 1e-12]
        assert np.abs(carried[:, None] - values[None, :]).min(axis=1).max() < 1e-10
        q2 = (v0 / np.linalg.norm(v0)) ** 2
        for val in values:
            np.testing.assert_allclose(w[np.abs(lam - val) < 1e-8].sum(), q2[d == val].sum(), atol=1e-10)
        if m == 21:  # complete blocks: every eigenvalue of T is an eigenvalue of A
            assert np.abs(lam[:, None] - values[None, :]).min(axis=1).max() < 1e-10


def test_breakdown_exact_zero_only_keeps_noise_path_safe():
    """breakdown_tol=0: a ~1e-12 rounding residual is normalized instead; still finite/orthonormal."""
    rng = np.random.default_rng(7)
    values = np.array([-2.0, -0.5, 0.0, 1.0, 2.5, 4.0, 9.0])
    d = np.repeat(values, 40)
    v0 = rng.standard_normal(d.size)
    res = lanczos(lambda v: d * v, v0, 21, return_basis=True, breakdown_tol=0.0)
    assert 0.0 < res.beta[6] < 1e-10 * np.abs(values).max()
    assert np.all(np.isfinite(res.alpha)) and _orth_error(res.basis) < 1e-10
    lam, U = res.eigh()
    w = U[0] ** 2
    carried = lam[w > 1e-12]
    assert np.abs(carried[:, None] - values[None, :]).min(axis=1).max() < 1e-10


def test_breakdown_projector_rank5():
    rng = np.random.default_rng(8)
    n = 300
    P, _ = np.linalg.qr(rng.standard_normal((n, 5)))
    v0 = rng.standard_normal(n)
    res = lanczos(lambda v: P @ (P.T @ v), v0, 20, return_basis=True)
    assert np.all(np.isfinite(res.alpha)) and np.all(np.isfinite(res.beta))
    assert np.count_nonzero(res.beta == 0.0) >= 5
    assert _orth_error(res.basis) < 1e-10
    lam, U = res.eigh()
    assert np.abs(lam[:, None] - np.array([0.0, 1.0])[None, :]).min(axis=1).max() < 1e-10
    w = U[0] ** 2
    q = v0 / np.linalg.norm(v0)
    np.testing.assert_allclose(w[lam > 0.5].sum(), np.linalg.norm(P.T @ q) ** 2, atol=1e-12)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)


def test_zero_operator_and_zero_start():
    rng = np.random.default_rng(9)
    res = lanczos(lambda v: 0.0 * v, rng.standard_normal(100), 10, return_basis=True)
    assert np.all(res.alpha == 0) and np.all(res.beta == 0)
    assert _orth_error(res.basis) < 1e-10
    d = np.linspace(1.0, 2.0, 100)
    res = lanczos(lambda v: d * v, np.zeros(100), 10, return_basis=True)  # zero v0: pseudo-random start
    assert np.all(np.isfinite(res.alpha)) and _orth_error(res.basis) < 1e-10
    assert np.all((res.alpha >= 1.0) & (res.alpha <= 2.0))


def test_tridiagonal_eigh_single_entry():
    vals, U = tridiagonal_eigh(np.array([3.0]), np.array([]))
    assert vals.tolist() == [3.0] and U.tolist() == [[1.0]]


@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loop_has_no_host_sync(problem):
    A, ev, v0 = problem["A"], problem["ev"], problem["v0"]
    At = torch.from_numpy(A).cuda()
    v0t = torch.from_numpy(v0).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync inside the loop raises
    try:
        tol = breakdown_tolerance(torch, At.dtype, None)
        alpha, beta, V = reference_lanczos(lambda V: V @ At, v0t[None], 80, tol)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert V.is_cuda and alpha.is_cuda
    top = ritz_pairs(lambda v: At @ v, v0t, 80, 5)
    assert top.vectors.is_cuda
    np.testing.assert_allclose(top.values, ev[::-1][:5], rtol=1e-8)
    assert top.residuals.max() < 1e-6
    # breakdown path on the device too
    d = torch.from_numpy(np.repeat(np.arange(7.0), 30)).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        alpha, beta, V = reference_lanczos(lambda V: V * d, torch.ones_like(d)[None], 20, tol)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    Vn = V[0].cpu().numpy()
    assert np.all(np.isfinite(Vn)) and _orth_error(Vn) < 1e-10
