"""Bitwise record of every Lanczos path on fixed operators: save the outputs before a change, compare after.

Runs ``lanczos`` (plain chain and a block of chains), ``ritz_pairs`` and ``slq`` (group sizes 1 and 3, with and
without a block product) on numpy and torch CPU arrays, float64 and float32, including a breakdown operator and a
zero start, plus the torch CUDA-graph loop run eagerly on the CPU; every array goes into one ``.npz``.
``compare`` reruns the same calls and checks each array with ``np.array_equal`` (NaNs equal)::

    python bench/lanczos_bitwise.py save /tmp/before.npz     # on the old code
    python bench/lanczos_bitwise.py compare /tmp/before.npz  # on the new code: prints each differing array
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import gradvis_steps.backends.torch  # noqa: F401  (registers the torch loops)
from gradvis_steps.backends.torch import lanczos_graphs
from gradvis_steps.core import lanczos as L
from gradvis_steps.core.slq import slq


def _block(matmat, V0, m):
    """alpha, beta, basis of a lockstep block run, through whichever API the code under test has."""
    try:
        from gradvis_steps.core.lanczos_lockstep import lanczos_lockstep
    except ImportError:  # one lanczos for vectors and blocks
        def op(v):
            raise AssertionError("a block run multiplies by matmat")

        op.matmat = matmat
        res = L.lanczos(op, V0, m, return_basis=True)
        return res.alpha, res.beta, L.to_numpy(res.basis)
    alpha, beta, basis = lanczos_lockstep(matmat, V0, m)
    return L.to_numpy(alpha), L.to_numpy(beta), L.to_numpy(basis)


def _operators(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = 300
    lam = np.concatenate([rng.uniform(-1.0, 3.0, n - 4), [50.0, 20.0, -8.0, -5.0]])
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * lam) @ Q.T
    dense = 0.5 * (A + A.T)
    repeated = np.diag(np.repeat(np.arange(7.0), 30))  # 7 distinct values: breaks down at step 7
    return {"dense": (dense, rng.standard_normal(n)), "breakdown": (repeated, np.ones(210)),
            "zero_start": (dense, np.zeros(n))}


def record() -> dict[str, np.ndarray]:
    """Every output of every path, by name."""
    rng = np.random.default_rng(7)
    out: dict[str, np.ndarray] = {}
    for name, (A, v0) in _operators(rng).items():
        for dtype in ("float64", "float32"):
            for kind in ("numpy", "torch"):
                M = A.astype(dtype)
                if kind == "torch":
                    Mt = torch.from_numpy(M)

                    def matvec(v, Mt=Mt):
                        return Mt @ v

                    def matmat(V, Mt=Mt):
                        return V @ Mt

                    start = torch.from_numpy(v0.astype(dtype))
                else:

                    def matvec(v, M=M):
                        return M @ v

                    def matmat(V, M=M):
                        return V @ M

                    start = v0.astype(dtype)
                key = f"{name}/{dtype}/{kind}"
                for m in (40, 400):
                    res = L.lanczos(matvec, start, m, return_basis=True)
                    out[f"{key}/lanczos{m}/alpha"], out[f"{key}/lanczos{m}/beta"] = res.alpha, res.beta
                    out[f"{key}/lanczos{m}/basis"] = L.to_numpy(res.basis)
                    plain = L.lanczos(matvec, start, m)  # kept workspace path
                    out[f"{key}/lanczos{m}/alpha_nobasis"], out[f"{key}/lanczos{m}/beta_nobasis"] = (plain.alpha,
                                                                                                   plain.beta)
                for which in ("largest", "smallest", "nearest"):
                    ritz = L.ritz_pairs(matvec, start, 40, 3, which, target=1.0)
                    out[f"{key}/ritz_{which}/values"] = ritz.values
                    out[f"{key}/ritz_{which}/vectors"] = L.to_numpy(ritz.vectors)
                    out[f"{key}/ritz_{which}/residuals"] = ritz.residuals
                xp_stack = torch.stack if kind == "torch" else np.stack
                shifted = start * 0.5 + 1.0
                block = xp_stack([start, shifted, start * 0.0])
                for m in (30,):
                    alpha, beta, basis = _block(matmat, block, m)
                    out[f"{key}/block{m}/alpha"], out[f"{key}/block{m}/beta"] = alpha, beta
                    out[f"{key}/block{m}/basis"] = basis
                like = start if kind == "torch" else np.zeros(1, dtype=dtype)
                for g in (1, 3):
                    for with_matmat in (True, False):
                        op = matvec
                        if with_matmat:
                            def op(v, matvec=matvec):
                                return matvec(v)

                            op.matmat = matmat
                        res = slq(op, A.shape[0], 5, 25, seed=3, like=like, group_size=g)
                        tag = f"{key}/slq_g{g}_{'matmat' if with_matmat else 'rows'}"
                        out[f"{tag}/nodes"], out[f"{tag}/weights"], out[f"{tag}/alpha1"] = (res.nodes, res.weights,
                                                                                            res.alpha1)
                if kind == "torch":  # the CUDA-graph loop, eager on the CPU
                    lanczos_graphs.clear_lanczos_graphs()
                    alpha, beta, basis = lanczos_graphs.graph_lanczos(matvec, start, 40, keep_basis=True)
                    out[f"{key}/graph/alpha"], out[f"{key}/graph/beta"] = L.to_numpy(alpha), L.to_numpy(beta)
                    out[f"{key}/graph/basis"] = L.to_numpy(basis)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    now = record()
    if args.action == "save":
        np.savez(args.path, **now)
        print(f"saved {len(now)} arrays to {args.path}")
        return 0
    before = dict(np.load(args.path))
    bad = sorted(set(before) ^ set(now))
    for name in sorted(set(before) & set(now)):
        a, b = before[name], now[name]
        if a.dtype != b.dtype:  # float32 -> float64 is exact: the values must still be equal bitwise
            print(f"dtype {a.dtype} -> {b.dtype}: {name}")
            a, b = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(a, b, equal_nan=True):
            bad.append(name)
    for name in bad:
        print("differs:", name)
    print(f"{len(before)} arrays compared, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
