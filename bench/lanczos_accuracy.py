"""Accuracy figures of the Lanczos/SLQ core on the tests' known spectrum (not a timing bench).

The 2000 x 2000 symmetric matrix of tests/test_lanczos.py (uniform bulk in [-1, 3], outliers 120 ... 20 and
-12, -8, -5), the three Lanczos loops (the host kernel, the sync-free reference algorithm, and the torch backend's
CUDA-graph loop, the latter two forced on the CPU, where the graph loop runs its captured step eagerly): relative
errors of the top-5 and bottom-3 Ritz values against numpy.linalg.eigvalsh, largest true residual, basis
orthogonality; then SLQ (k=10, m=80) Wasserstein-1 distance to the exact spectrum over the spectral width.
Run: ``python bench/lanczos_accuracy.py``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradvis_steps.core.lanczos as L  # noqa: E402
from gradvis_steps.core.slq import slq  # noqa: E402

N, TOP, BOTTOM = 2000, np.array([120.0, 80.0, 50.0, 35.0, 20.0]), np.array([-12.0, -8.0, -5.0])


def main() -> int:
    rng = np.random.default_rng(1234)
    lam = np.concatenate([rng.uniform(-1.0, 3.0, N - TOP.size - BOTTOM.size), TOP, BOTTOM])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    ev = np.linalg.eigvalsh(A)
    v0 = rng.standard_normal(N)

    def matvec(v: np.ndarray) -> np.ndarray:
        return A @ v

    import torch

    from gradvis_steps.backends.torch.lanczos_graphs import graph_lanczos
    from gradvis_steps.core.lanczos import register_kernel

    At = torch.from_numpy(A)
    for loop in ("host", "reference", "graph"):
        # numpy arrays take the host kernel; torch tensors on the CPU the graph loop's step, run eagerly
        remove = register_kernel(lambda v: isinstance(v, torch.Tensor), graph_lanczos) if loop == "graph" else None
        op, start = ((lambda v: At @ v), torch.from_numpy(v0)) if loop == "graph" else (matvec, v0)
        with L.reference_only() if loop == "reference" else contextlib.nullcontext():
            top = L.ritz_pairs(op, start, 120, 5, "largest")
            bottom = L.ritz_pairs(op, start, 120, 3, "smallest")
            V = L.to_numpy(L.lanczos(op, start, 120, return_basis=True).basis)
        if remove is not None:
            remove()
        print(f"{loop:9s} loop, m=120: top-5 rel. error {np.max(np.abs(top.values / ev[::-1][:5] - 1)):.1e}, "
              f"bottom-3 {np.max(np.abs(bottom.values / ev[:3] - 1)):.1e}, "
              f"max residual {max(top.residuals.max(), bottom.residuals.max()):.1e}, "
              f"orthogonality {np.abs(V @ V.T - np.eye(V.shape[0])).max():.1e}")
    res = slq(matvec, N, 10, 80, seed=0)
    w1 = wasserstein_distance(res.nodes.ravel(), ev, u_weights=res.weights.ravel()) / (ev[-1] - ev[0])
    print(f"SLQ k=10 m=80: W1 / spectral width {w1:.1e} (issue bound 1e-3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
