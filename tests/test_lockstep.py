"""Lockstep Lanczos (a block of chains, one block product per step) and grouped SLQ, against exact spectra (eigh),
against one-chain-at-a-time runs, and for the reproducibility of whole groups."""

from __future__ import annotations

import numpy as np
import pytest

from gradvis_steps.core.lanczos import lanczos, reference_only
from gradvis_steps.core.slq import SLQResult, groups_of, slq, starting_vector

torch = pytest.importorskip("torch")

N = 400


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(31)
    lam = np.concatenate([rng.uniform(-1.0, 2.0, N - 5), [9.0, 14.0, 30.0, -4.0, -7.0]])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * lam) @ Q.T
    return {"A": 0.5 * (A + A.T), "ev": np.sort(lam)}


class CountingMatmat:
    """``A @ V.T`` by rows, counting calls: lockstep must take one block product per step."""

    def __init__(self, A):
        self.A, self.calls = A, 0

    def __call__(self, v):
        return self.A @ v

    def matmat(self, V):
        self.calls += 1
        return V @ self.A  # A is symmetric: rows of V A are A v_i


def lanczos_lockstep(matmat, V0, m):
    """``lanczos`` on the block ``V0`` with the block product ``matmat``: alpha, beta, bases as numpy arrays."""

    def op(v):
        raise AssertionError("a block run multiplies by matmat")

    op.matmat = matmat
    res = lanczos(op, V0, m, return_basis=True)
    return res.alpha, res.beta, np.asarray(res.basis)


def _orth_error(basis: np.ndarray) -> float:
    return float(np.abs(basis @ basis.T - np.eye(basis.shape[0])).max())


@pytest.mark.parametrize("chains", [1, 4])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_each_chain_is_a_lanczos_run_of_its_own(problem, backend, chains):
    A = problem["A"]
    V0 = np.stack([starting_vector(N, 3, i) for i in range(chains)])
    op = CountingMatmat(A if backend == "numpy" else torch.from_numpy(A))
    block = V0 if backend == "numpy" else torch.from_numpy(V0)
    res = lanczos(op, block, 60, return_basis=True)
    assert op.calls == 60
    alpha, beta, basis = res.alpha, res.beta, np.asarray(res.basis)
    assert alpha.shape == (chains, 60) and beta.shape == (chains, 59) and basis.shape == (chains, 60, N)
    for c in range(chains):
        single = lanczos(lambda v: A @ v, V0[c], 60)
        np.testing.assert_allclose(alpha[c], single.alpha, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(beta[c], single.beta, rtol=1e-8, atol=1e-9)
        assert _orth_error(basis[c]) < 1e-10
        # the extreme Ritz values are the extreme eigenvalues (independent truth: the construction)
        T = np.diag(alpha[c]) + np.diag(beta[c], 1) + np.diag(beta[c], -1)
        ritz = np.linalg.eigvalsh(T)
        np.testing.assert_allclose([ritz[0], ritz[-1]], [problem["ev"][0], problem["ev"][-1]], rtol=1e-10)


def test_breakdown_is_per_chain_and_restarts_only_that_chain():
    values = np.array([-2.0, -0.5, 0.0, 1.0, 2.5, 4.0, 9.0])
    d = np.repeat(values, 40)
    rng = np.random.default_rng(7)
    generic = rng.standard_normal(d.size)
    few = np.zeros(d.size)
    few[d == 1.0] = 1.0
    few[d == 9.0] = 2.0  # a start inside a 2-dimensional invariant subspace: breaks down after 2 steps
    alpha, beta, basis = lanczos_lockstep(lambda V: V * d, np.stack([generic, few]), 21)
    assert beta[1, 1] == 0.0 and beta[0, 6] == 0.0 and np.count_nonzero(beta[0] == 0.0) == 2
    for c in range(2):
        assert _orth_error(basis[c]) < 1e-10
        T = np.diag(alpha[c]) + np.diag(beta[c], 1) + np.diag(beta[c], -1)
        lam, U = np.linalg.eigh(T)
        w = U[0] ** 2
        carried = lam[w > 1e-12]
        assert np.abs(carried[:, None] - values[None, :]).min(axis=1).max() < 1e-10
    lam, U = np.linalg.eigh(np.diag(alpha[1]) + np.diag(beta[1], 1) + np.diag(beta[1], -1))
    np.testing.assert_allclose(sorted(lam[U[0] ** 2 > 1e-12]), [1.0, 9.0], atol=1e-12)


def test_zero_start_row_takes_the_pseudo_random_start():
    d = np.linspace(1.0, 2.0, 100)
    alpha, beta, basis = lanczos_lockstep(lambda V: V * d, np.zeros((2, 100)), 10)
    assert np.all(np.isfinite(alpha)) and _orth_error(basis[0]) < 1e-10
    np.testing.assert_array_equal(alpha[0], alpha[1])


def test_bad_block_is_named():
    with pytest.raises(ValueError, match=r"V0 must be a vector \(n,\) or a block of g >= 1 vectors \(g, n\), got "
                                         r"shape \(2, 2, 5\)"):
        lanczos(lambda v: v, np.ones((2, 2, 5)), 3)
    with pytest.raises(ValueError, match=r"got shape \(0, 5\)"):
        lanczos(lambda v: v, np.ones((0, 5)), 3)
    with pytest.raises(ValueError, match="need m >= 1 and a non-empty vector, got m=0"):
        lanczos(lambda v: v, np.ones((2, 5)), 0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_full_run_finds_every_eigenvalue_for_a_chain_and_for_blocks(backend):
    """m = n steps (more asked: capped): T's eigenvalues are A's (np.linalg.eigh of the dense matrix), for one
    vector on its kernel and on the reference, a block of one, and a block of three."""
    rng = np.random.default_rng(5)
    n = 50
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([rng.uniform(-1.0, 1.0, n - 3), [6.0, 4.0, -3.0]])) @ Q.T
    A = 0.5 * (A + A.T)
    exact = np.linalg.eigh(A)[0]
    M = A if backend == "numpy" else torch.from_numpy(A)
    V0 = rng.standard_normal((3, n))
    V0 = V0 if backend == "numpy" else torch.from_numpy(V0)
    runs = [lanczos(lambda v: M @ v, V0[0], 80)]
    with reference_only():
        runs.append(lanczos(lambda v: M @ v, V0[0], 80))
    blocks = [lanczos(CountingMatmat(M), V0[:g], 80) for g in (1, 3)]
    runs += [type(b)(alpha=b.alpha[c], beta=b.beta[c]) for b in blocks for c in range(b.alpha.shape[0])]
    assert len(runs) == 6
    for res in runs:
        assert res.m == n
        np.testing.assert_allclose(res.eigh()[0], exact, rtol=0, atol=1e-11)


def test_groups_follow_the_index_not_the_caller():
    assert [g.tolist() for g in groups_of(np.arange(10), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [g.tolist() for g in groups_of(np.array([4, 5, 6, 7, 8, 9]), 4)] == [[4, 5, 6, 7], [8, 9]]
    assert groups_of(np.array([], dtype=np.int64), 3) == []


@pytest.mark.parametrize("group_size", [3, 4, 10])
def test_grouped_slq_reproduces_itself_bitwise_by_whole_groups_and_the_serial_run_to_tolerance(problem, group_size):
    A = problem["A"]
    op = CountingMatmat(A)
    full = slq(op, N, 10, 40, seed=2, group_size=group_size)
    assert op.calls == 40 * -(-10 // group_size)  # one block product per step and group
    # a rank or chunk that takes whole groups gets the same bits
    parts = [slq(op, N, 10, 40, seed=2, group_size=group_size, indices=g) for g in groups_of(np.arange(10), group_size)]
    merged = SLQResult.concatenate(parts)
    np.testing.assert_array_equal(merged.nodes, full.nodes)
    np.testing.assert_array_equal(merged.weights, full.weights)
    # one chain at a time: the same quadratures to float tolerance
    serial = slq(lambda v: A @ v, N, 10, 40, seed=2)
    np.testing.assert_allclose(full.nodes, serial.nodes, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(full.weights, serial.weights, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(full.alpha1, serial.alpha1, rtol=1e-12)


def test_grouped_slq_without_matmat_multiplies_row_by_row(problem):
    A = problem["A"]
    via_rows = slq(lambda v: A @ v, N, 4, 20, seed=1, group_size=4)
    via_block = slq(CountingMatmat(A), N, 4, 20, seed=1, group_size=4)
    np.testing.assert_allclose(via_rows.nodes, via_block.nodes, rtol=1e-10, atol=1e-12)


def test_grouped_slq_on_torch_float32_matches_float64(problem):
    A = torch.from_numpy(problem["A"]).float()
    like = torch.zeros(1, dtype=torch.float32)
    got = slq(CountingMatmat(A), N, 6, 30, seed=4, like=like, group_size=3)
    exact = slq(lambda v: problem["A"] @ v, N, 6, 30, seed=4)
    np.testing.assert_allclose(got.nodes[:, -1], exact.nodes[:, -1], rtol=1e-5)
    np.testing.assert_allclose(got.nodes[:, 0], exact.nodes[:, 0], rtol=1e-5)


def test_bad_group_size_is_named(problem):
    with pytest.raises(ValueError, match="group_size must be >= 1, got 0"):
        slq(lambda v: v, N, 2, 3, group_size=0)
