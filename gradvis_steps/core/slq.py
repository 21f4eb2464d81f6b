"""Stochastic Lanczos quadrature (paper section 2.2, eq. 3-8, Algorithm 2; Algorithm 5 for MPI).

For each of k random unit starting vectors ``v_i`` run m Lanczos steps, diagonalize ``T = U L U^T``
(eq. 6) and keep the nodes ``l_j = L_jj`` and weights ``w_j = U_{1j}^2`` (eq. 7): a Gauss quadrature
of the spectral measure of ``A`` seen from ``v_i``. Averaging over the k vectors (eq. 8) and smoothing
each node with a Gaussian of width sigma (eq. 4-5) estimates the eigenvalue density (eq. 3).

The raw per-vector nodes/weights are kept (:class:`SLQResult`) so that densities with any sigma,
the Hutchinson trace and the spectral extremes are derived afterwards without new matvecs. Starting
vector ``i`` depends only on ``(seed, i)``, so Algorithm 5 (each MPI rank runs its share, selected
with ``indices``, then :meth:`SLQResult.concatenate`) reproduces the serial result exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace

from .arrays import Array, from_numpy
from .lanczos import MatVec, lanczos, lanczos_steps, tridiagonal_eigh

__all__ = [
    "SLQResult",
    "starting_vector",
    "slq",
    "groups_of",
    "gaussian_density",
    "default_sigma",
    "SIGMA_REL",
    "resolve_sigma",
    "default_density_grid",
    "spectral_density",
    "spectrum_summary",
]

VectorKind = Literal["gaussian", "rademacher"]


def starting_vector(
    dim: int, seed: int, index: int, kind: VectorKind = "gaussian", like: Array | None = None
) -> Array:
    """Unit random vector number ``index`` of stream ``seed`` (Algorithm 2, "initialize v_1..v_k").

    The stream is ``Generator(PCG64(SeedSequence([seed, index])))`` in float64 on the host, normalized
    there and converted once to the type/dtype/device of ``like`` (numpy float64 if None). It depends on
    (seed, index) only, so any rank that computes vector i gets the serial run's vector bitwise.
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))
    if kind == "gaussian":
        v = rng.standard_normal(dim)
    elif kind == "rademacher":
        v = rng.integers(0, 2, size=dim).astype(np.float64) * 2.0 - 1.0
    else:
        raise ValueError(f"kind must be 'gaussian' or 'rademacher', got {kind!r}")
    # Not np.linalg.norm: that is a threaded BLAS ddot, whose idle threads then spin for a while and slow down the
    # torch work that follows on a machine with few cores (figures in bench/README.md).
    v /= np.sqrt(np.einsum("i,i->", v, v))
    return from_numpy(v, like)


@dataclass(frozen=True, eq=False)
class SLQResult:
    """Raw SLQ quadratures, one row per starting vector (eq. 7), plus v_i^T A v_i for the trace."""

    nodes: np.ndarray  # (k, m) Ritz values l_j of each T, ascending per row
    weights: np.ndarray  # (k, m) squared first components U_{1j}^2; each row sums to 1
    alpha1: np.ndarray  # (k,) v_i^T A v_i (= T_11), for the Hutchinson trace estimate
    dim: int  # dimension N of the operator
    seed: int
    indices: np.ndarray  # (k,) index of each row's starting vector in the stream
    kind: str = "gaussian"

    @property
    def k(self) -> int:
        """Number of starting vectors in this result."""
        return int(self.nodes.shape[0])

    @property
    def m(self) -> int:
        """Number of Lanczos steps (quadrature nodes) per starting vector."""
        return int(self.nodes.shape[1])

    @classmethod
    def concatenate(cls, parts: Iterable[SLQResult]) -> SLQResult:
        """Merge results of disjoint index sets (e.g. gathered from MPI ranks), ordered by index."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        p0 = parts[0]
        for p in parts[1:]:
            if (p.dim, p.seed, p.kind, p.m) != (p0.dim, p0.seed, p0.kind, p0.m):
                raise ValueError("cannot concatenate SLQ results with different dim/seed/kind/m")
        idx = np.concatenate([p.indices for p in parts])
        if np.unique(idx).size != idx.size:
            raise ValueError("duplicate starting-vector indices in the parts")
        order = np.argsort(idx, kind="stable")
        return cls(
            nodes=np.concatenate([p.nodes for p in parts])[order],
            weights=np.concatenate([p.weights for p in parts])[order],
            alpha1=np.concatenate([p.alpha1 for p in parts])[order],
            dim=p0.dim,
            seed=p0.seed,
            indices=idx[order],
            kind=p0.kind,
        )


def slq(
    matvec: MatVec,
    dim: int,
    k: int,
    m: int,
    *,
    seed: int = 0,
    kind: VectorKind = "gaussian",
    like: Array | None = None,
    indices: Sequence[int] | None = None,
    breakdown_tol: float | None = None,
    group_size: int = 1,
) -> SLQResult:
    """Algorithm 2: k Lanczos runs of m steps; returns raw nodes/weights (density via eq. 8 later). A chain whose
    Hessian-vector products are not finite gets NaN nodes and weights.

    ``like`` fixes the vectors' array type/dtype/device (e.g. a torch tensor on the GPU); ``indices``
    (a subset of ``range(k)``) computes only those starting vectors, for Algorithm 5's split over ranks.
    ``m`` is clamped to ``dim``.

    ``group_size`` g > 1 runs the chains in lockstep (:func:`.lanczos.lanczos` on a block), one block product per
    step (``matvec.matmat`` if the operator has one, else row by row): starting vectors ``i`` with the same
    ``i // g`` form a group. A group's results depend only on its members, so runs that take whole groups (ranks,
    chunks: :func:`groups_of`) reproduce the serial run bitwise for the same g; different g agree to float
    tolerance (the batched products and reorthogonalization round differently).
    """
    idx = np.arange(k) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"indices must lie in range(k={k})")
    if int(group_size) < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    m_eff = lanczos_steps(m, dim)
    nodes = np.empty((idx.size, m_eff))
    weights = np.empty((idx.size, m_eff))
    alpha1 = np.empty(idx.size)
    row = 0
    for group in groups_of(idx, int(group_size)):
        vectors = [starting_vector(dim, seed, int(i), kind, like) for i in group]
        # g = 1: one vector, a plain chain (a kernel may take it); else a block, even of one trailing member
        start = vectors[0] if int(group_size) == 1 else array_namespace(vectors[0]).stack(vectors)
        res = lanczos(matvec, start, m_eff, breakdown_tol=breakdown_tol)
        alphas, betas = (res.alpha[None, :], res.beta[None, :]) if start.ndim == 1 else (res.alpha, res.beta)
        for alpha, beta in zip(alphas, betas, strict=True):
            if np.isfinite(alpha).all() and np.isfinite(beta).all():
                lam, U = tridiagonal_eigh(alpha, beta)  # eq. 6: T = U L U^T
                nodes[row] = lam  # l_j = L_jj
                weights[row] = U[0, :] ** 2  # eq. 7: omega_j = U_{1j}^2
            else:  # the products overflowed (a point where training diverged): NaN nodes tell the caller
                nodes[row] = weights[row] = np.nan
            alpha1[row] = alpha[0]  # v^T A v with ||v|| = 1
            row += 1
    return SLQResult(
        nodes=nodes, weights=weights, alpha1=alpha1, dim=int(dim), seed=int(seed), indices=idx, kind=kind
    )


def groups_of(indices: np.ndarray, group_size: int) -> list[np.ndarray]:
    """Starting-vector indices split into their lockstep groups (``i // group_size``), in order of appearance."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx // group_size) != 0) + 1
    return np.split(idx, breaks)


# --------------------------------------------------------------------------------------------------
# density (eq. 4-5, 7-8)
# --------------------------------------------------------------------------------------------------


def _as_rows(nodes: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    return nodes, weights


# exp(-z^2 / 2) is exactly 0.0 in float64 beyond |z| = sqrt(2 * 745.13) = 38.60 (below the smallest subnormal):
# terms past this cut add nothing, so skipping them changes no value beyond summation-order rounding.
_Z_CUT = 38.61
_GRID_BLOCK = 64  # grid points per block of the windowed sum


def gaussian_density(nodes: Any, weights: Any, grid: Any, sigma: float) -> np.ndarray:
    """Smoothed spectral density on ``grid``: (1/k) sum_i sum_j w_ij N(t; l_ij, sigma^2) (eq. 5, 7, 8).

    ``nodes``/``weights`` are (k, m) (or (m,) for one vector); ``grid`` any shape. Exact in float64 but
    windowed: the nodes are sorted, and each block of sorted grid points sums only the nodes within
    ``38.61 sigma`` of it (farther Gaussians underflow to exactly 0), so a spectrum whose nodes spread over
    many sigmas (the default sigma is a 500th of the range) costs a fraction of the dense grid x nodes sum.
    """
    nodes, weights = _as_rows(nodes, weights)
    if not sigma > 0:
        raise ValueError("sigma must be positive")
    k = nodes.shape[0]
    order = np.argsort(nodes, axis=None, kind="stable")
    lam = nodes.ravel()[order]
    w = weights.ravel()[order] / k  # eq. 8: average over the k starting vectors
    t = np.asarray(grid, dtype=np.float64)
    flat_t = t.ravel()
    grid_order = np.argsort(flat_t, kind="stable")
    sorted_t = flat_t[grid_order]
    reach = _Z_CUT * sigma
    starts = np.searchsorted(lam, sorted_t[::_GRID_BLOCK] - reach, side="left")
    ends = np.searchsorted(lam, sorted_t[_GRID_BLOCK - 1 :: _GRID_BLOCK] + reach, side="right")
    ends = np.append(ends, lam.size)[: starts.size]  # the last (short) block reaches the end
    out_sorted = np.zeros(sorted_t.shape[0])
    for b, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        if hi <= lo:
            continue  # no node within reach: the density is exactly 0 here
        block = slice(b * _GRID_BLOCK, (b + 1) * _GRID_BLOCK)
        z = (sorted_t[block, None] - lam[None, lo:hi]) * (1.0 / sigma)
        out_sorted[block] = np.exp(-0.5 * z * z) @ w[lo:hi]
    out = np.empty_like(out_sorted)
    out[grid_order] = out_sorted * (1.0 / (sigma * np.sqrt(2.0 * np.pi)))  # eq. 5
    return out.reshape(t.shape)


#: The automatic Gaussian width of a density, as a fraction of the spectral range of the nodes shown together:
#: range/500, not range/200, because the paper's densities (Figures 1, 7, 8) are read for a few outliers beside
#: a bulk near zero, and at range/200 eigenvalues within about 1% of the range apart merge into one bump (an
#: outlier swallowed by the bulk's shoulder); range/500 keeps them apart while the default grid (2000 points,
#: spacing about sigma/4) still integrates the density to 1. The one rule for every step that smooths nodes.
SIGMA_REL = 1.0 / 500.0


def default_sigma(nodes: Any, rel: float = SIGMA_REL) -> float:
    """Default Gaussian width: ``rel`` times the spectral range of the nodes (range/500 by default)."""
    nodes = np.asarray(nodes, dtype=np.float64)
    lo, hi = float(nodes.min()), float(nodes.max())
    width = hi - lo
    if width <= 0:  # a single point (or a multiple of the identity): use the magnitude instead
        width = max(abs(lo), 1.0)
    return rel * width


def resolve_sigma(nodes: Any | Sequence[Any], sigma: float | None = None) -> tuple[float, str]:
    """The Gaussian width for densities shown together and the rule that gave it, for the output's record.

    An explicit ``sigma`` (absolute, > 0) is used as given; otherwise :data:`SIGMA_REL` times the range of all
    ``nodes`` together (one array, or a sequence of arrays such as every checkpoint of a frame sequence), so the
    densities drawn side by side share one width and stay comparable.
    """
    if sigma is not None:
        value = float(sigma)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        return value, "explicit"
    if isinstance(nodes, np.ndarray):
        flat = nodes.ravel()
    else:
        parts = [np.asarray(part, dtype=np.float64).ravel() for part in nodes]
        flat = np.concatenate(parts) if parts else np.empty(0)
    if flat.size == 0:
        raise ValueError("no eigenvalue nodes to choose a density width from")
    return default_sigma(flat), f"range/{round(1 / SIGMA_REL)}"


def default_density_grid(
    nodes: Any, n_points: int = 2000, sigma: float | None = None, pad: float = 6.0
) -> np.ndarray:
    """Evaluation grid ``[min - pad*sigma, max + pad*sigma]`` with ``n_points`` points.

    With the default sigma (range/500) the spacing is about sigma/4, so the trapezoid rule integrates the
    density to 1 up to the tail mass beyond ``pad`` sigmas (2e-9 at pad=6).
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    s = default_sigma(nodes) if sigma is None else float(sigma)
    return np.linspace(float(nodes.min()) - pad * s, float(nodes.max()) + pad * s, int(n_points))


def spectral_density(
    result: SLQResult, grid: Any | None = None, sigma: float | None = None, n_points: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(grid, density)`` for an SLQ result, with the defaults above where not given."""
    s = default_sigma(result.nodes) if sigma is None else float(sigma)
    t = default_density_grid(result.nodes, n_points=n_points, sigma=s) if grid is None else np.asarray(grid)
    return t, gaussian_density(result.nodes, result.weights, t, s)


# --------------------------------------------------------------------------------------------------
# derived figures
# --------------------------------------------------------------------------------------------------


def spectrum_summary(result: SLQResult, negative_tol: float = 0.0) -> dict[str, float]:
    """Scalar figures of one SLQ run: Hutchinson trace (+ standard error), extremes, negative mass.

    ``trace_estimate = dim * mean(v_i^T A v_i)`` is unbiased for unit Rademacher and for normalized
    Gaussian vectors (both have E[v v^T] = I/dim). ``lambda_min``/``lambda_max`` are the extreme Ritz
    values over all runs (they lie inside the true spectrum and converge to its ends first).
    ``negative_mass`` is the estimated fraction of eigenvalues below ``-negative_tol * max|l|`` (set
    ``negative_tol`` to e.g. 1e-6 so numerically-zero nodes do not count). ``top_eigenvalue`` is the
    Ritz value of largest magnitude (signed), the dominant curvature.
    """
    k = result.k
    nodes, weights = result.nodes, result.weights
    dim = result.dim
    trace = dim * float(np.mean(result.alpha1))
    stderr = dim * float(np.std(result.alpha1, ddof=1)) / float(np.sqrt(k)) if k > 1 else float("nan")
    lo, hi = float(nodes.min()), float(nodes.max())
    thresh = -negative_tol * float(np.abs(nodes).max())
    neg = float(weights[nodes < thresh].sum()) / k
    top = float(nodes.ravel()[np.argmax(np.abs(nodes.ravel()))])
    return {
        "trace_estimate": trace,
        "trace_stderr": stderr,
        "lambda_min": lo,
        "lambda_max": hi,
        "spectral_range": hi - lo,
        "negative_mass": neg,
        "top_eigenvalue": top,
        "n_vectors": float(k),
        "lanczos_steps": float(result.m),
    }
