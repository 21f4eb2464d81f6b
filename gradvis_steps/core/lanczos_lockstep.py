"""Lanczos on a block of starting vectors in lockstep: all chains advance together, one block product per step.

SLQ (paper Algorithm 2) runs k independent Lanczos chains. Run one after another, each step multiplies the Hessian
by one vector, which leaves a GPU mostly idle for small models; here the g chains of a group advance together, so
each step is one product with a (g, n) block (:meth:`PointHVP.matmat`: one batched backward pass per evaluation
batch) and one batched reorthogonalization. Each chain is still its own Lanczos process (eq. 6) with its own basis:
classical Gram-Schmidt against that basis done twice ("twice is enough"), ``alpha_j`` the summed coefficients of
``q_j``, ``beta_j`` the norm of the remainder, and a breakdown (``beta_j <= tol * max_i ||A q_i||``, per chain)
recorded as ``beta_j = 0`` with the chain continued from an orthogonalized pseudo-random direction, chosen with
``where`` (no host branch, no device sync). Written once against the array API, for numpy and any backend tensor.
With g = 1 it is the generic device loop of :mod:`.lanczos`.
"""

from __future__ import annotations

from collections.abc import Callable

from array_api_compat import array_namespace
from array_api_compat import device as array_device

from .lanczos import Array, _eps, _hash_vector, _plain

__all__ = ["lanczos_lockstep", "rows_matmat"]

MatMat = Callable[[Array], Array]  # (g, n) block of row vectors -> their products, (g, n)


def rows_matmat(matvec: Callable[[Array], Array]) -> MatMat:
    """A block product from a one-vector product, row by row, for operators without a ``matmat`` of their own."""

    def matmat(V: Array) -> Array:
        xp = array_namespace(V)
        return xp.stack([_plain(matvec(V[i, ...])) for i in range(V.shape[0])])

    return matmat


def lanczos_lockstep(
    matmat: MatMat, V0: Array, m: int, breakdown_tol: float | None = None
) -> tuple[Array, Array, Array]:
    """m Lanczos steps for each row of ``V0`` (g, n), all chains in lockstep with full reorthogonalization.

    Returns ``alpha`` (g, m), ``beta`` (g, m-1) and the bases (g, m, n) as arrays of ``V0``'s kind, on its device,
    without a host sync. ``m`` is clamped to n; ``breakdown_tol`` as in :func:`.lanczos.lanczos`. A zero row starts
    from a pseudo-random vector.
    """
    xp = array_namespace(V0)
    if V0.ndim != 2:
        raise ValueError(f"V0 must be a (g, n) block of starting vectors, got shape {tuple(V0.shape)}")
    g, n = (int(s) for s in V0.shape)
    m = min(int(m), n)
    if m < 1 or g < 1:
        raise ValueError("need m >= 1 and a non-empty block of non-empty vectors")
    dtype, dev = V0.dtype, array_device(V0)
    tol = _eps(xp, dtype) ** 0.75 if breakdown_tol is None else float(breakdown_tol)

    basis = xp.zeros((g, m, n), dtype=dtype, device=dev)
    V0 = _plain(V0)
    norms = xp.linalg.vector_norm(V0, axis=1)
    ok = norms > 0
    r0 = _hash_vector(xp, n, 0x5EED, dtype, dev)
    basis[:, 0, :] = xp.where(ok[:, None], V0 / xp.where(ok, norms, 1.0)[:, None], (r0 / xp.linalg.vector_norm(r0)))
    # Restart directions: cyclic shifts of one on-device pseudo-random vector (roll(r, j + 1) at step j), shared by
    # the chains: each orthogonalizes it against its own basis.
    r_base = _hash_vector(xp, n, 0xB10C, dtype, dev)
    scale = xp.zeros((g,), dtype=dtype, device=dev)  # per chain: running max of ||A q_j||, a lower bound of ||A||
    alphas: list[Array] = []
    betas: list[Array] = []
    for j in range(m):
        W = _plain(matmat(basis[:, j, :]))
        if j == m - 1:  # last step: only the diagonal entries are needed
            alphas.append(xp.sum(basis[:, j, :] * W, axis=1))
            break
        scale = xp.maximum(scale, xp.linalg.vector_norm(W, axis=1))
        # per chain the block [A q_j; r]: r is the restart direction, used only where A q_j lies in the chain's span
        X = xp.stack([W, xp.broadcast_to(xp.roll(r_base, shift=j + 1), (g, n))], axis=1)  # (g, 2, n)
        head = basis[:, : j + 1, :]  # (g, j+1, n)
        head_t = xp.permute_dims(head, (0, 2, 1))
        c1 = X @ head_t  # (g, 2, j+1): pass 1 ...
        X = X - c1 @ head
        c2 = X @ head_t  # ... and pass 2
        X = X - c2 @ head
        alphas.append(c1[:, 0, j] + c2[:, 0, j])
        beta = xp.linalg.vector_norm(X[:, 0, :], axis=1)
        broke = beta <= tol * scale  # invariant subspace: this chain's T splits here
        restart = X[:, 1, :] / xp.linalg.vector_norm(X[:, 1, :], axis=1)[:, None]
        basis[:, j + 1, :] = xp.where(broke[:, None], restart, X[:, 0, :] / xp.where(broke, 1.0, beta)[:, None])
        betas.append(xp.where(broke, 0.0, beta))
    alpha = xp.stack(alphas, axis=1)
    beta = xp.stack(betas, axis=1) if betas else xp.zeros((g, 0), dtype=dtype, device=dev)
    return alpha, beta, basis
