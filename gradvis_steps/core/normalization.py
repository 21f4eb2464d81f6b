"""Filter-wise normalization of a direction (eq. 2 of the GradVis paper, after Li et al. 2018).

Weights of ReLU / batch-norm networks are scale invariant, so a raw direction would move small-norm
filters far more (relatively) than large ones. Eq. 2 rescales each filter ``d_ij`` of the direction to
the Frobenius norm of the matching filter ``theta_ij`` of the weights:

    d*_ij = d_ij / ||d_ij|| * ||theta_ij||                                              (eq. 2)

A *filter* is one slice of a conv/linear weight along its ``filter_axis`` (output channel / unit).
Parameters of the ignored kinds (bias, batch-norm, other norms: "All batch-norm parameters are set to
zero") are zeroed, as Li et al.'s ``ignore='biasbn'``. Parameters without a filter axis that are not
ignored are normalized as one unit (tensor-wise). Filters whose direction norm is 0 stay 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .layout import ParameterLayout, ParamSpec

__all__ = ["METHODS", "DEFAULT_IGNORE", "is_normalized", "normalize_direction", "normalize_directions", "unit_norms"]

#: ``filter``: eq. 2 per filter; ``layer``: the same per parameter tensor (||d_i|| -> ||theta_i||);
#: ``none``: the direction is kept as is (ignored kinds are still zeroed; pass ``ignore=()`` to keep them).
METHODS = ("filter", "layer", "none")
DEFAULT_IGNORE = ("bias", "batchnorm", "norm")


def unit_norms(x: np.ndarray, spec: ParamSpec, per_filter: bool) -> np.ndarray:
    """Frobenius norms (float64) of the units of ``x`` (one tensor's flat slice): one per filter along
    ``spec.filter_axis`` if ``per_filter`` and the tensor has a filter axis, else a single norm."""
    u = _units(x, spec, per_filter).astype(np.float64, copy=False)
    return np.sqrt(np.einsum("ij,ij->i", u, u))


def _units(x: np.ndarray, spec: ParamSpec, per_filter: bool) -> np.ndarray:
    """View/copy of a tensor's flat slice as ``(n_units, unit_size)``, filters first."""
    t = x.reshape(spec.shape)
    if per_filter and spec.filter_axis is not None:
        return np.moveaxis(t, spec.filter_axis, 0).reshape(spec.n_filters, -1)
    return t.reshape(1, -1)


def normalize_direction(
    direction: np.ndarray,
    theta: np.ndarray,
    layout: ParameterLayout,
    *,
    method: str = "filter",
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> np.ndarray:
    """Return a normalized copy of the flat ``direction`` for weights ``theta`` (same length, eq. 2).

    ``method`` is one of :data:`METHODS`; ``ignore`` lists parameter kinds set to zero. The result has
    the direction's dtype (float32/float64); norms are computed in float64.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    direction = np.asarray(direction)
    theta = np.asarray(theta)
    if direction.ndim != 1 or direction.shape != theta.shape or direction.shape[0] != layout.size:
        raise ValueError(
            f"direction {direction.shape} and theta {theta.shape} must both be flat of length {layout.size}"
        )
    if not np.issubdtype(direction.dtype, np.floating):
        direction = direction.astype(np.float64)
    ignore = tuple(ignore)
    out = direction.copy()
    if method == "none":
        for spec in layout:
            if spec.kind in ignore:
                out[spec.slice] = 0
        return out

    per_filter = method == "filter"
    for spec in layout:
        sl = spec.slice
        if spec.kind in ignore:
            out[sl] = 0
            continue
        d = _units(direction[sl], spec, per_filter).astype(np.float64, copy=False)
        dn = np.sqrt(np.einsum("ij,ij->i", d, d))
        tn = unit_norms(theta[sl], spec, per_filter)
        # eq. 2, vectorized over filters; a zero direction filter has no direction to scale -> stays 0.
        scale = np.divide(tn, dn, out=np.zeros_like(dn), where=dn > 0)
        scaled = d * scale[:, None]
        if per_filter and spec.filter_axis is not None:
            moved = (spec.shape[spec.filter_axis],) + tuple(
                s for k, s in enumerate(spec.shape) if k != spec.filter_axis % len(spec.shape)
            )
            scaled = np.moveaxis(scaled.reshape(moved), 0, spec.filter_axis)
        out[sl] = scaled.reshape(-1)  # C-order flatten of the tensor in its original axis order
    return out


def normalize_directions(
    directions: np.ndarray,
    theta: np.ndarray,
    layout: ParameterLayout,
    *,
    method: str = "filter",
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> np.ndarray:
    """:func:`normalize_direction` applied to each row of a ``(k, dim)`` stack."""
    directions = np.asarray(directions)
    if directions.ndim == 1:
        directions = directions[None, :]
    return np.stack([normalize_direction(d, theta, layout, method=method, ignore=ignore) for d in directions])


def is_normalized(
    direction: np.ndarray,
    theta: np.ndarray,
    layout: ParameterLayout,
    *,
    method: str = "filter",
    ignore: Sequence[str] = DEFAULT_IGNORE,
    rtol: float = 1e-5,
) -> bool:
    """Whether ``direction`` already satisfies eq. 2 at ``theta``: every unit (filter, or tensor for ``layer``) of a
    kind not ignored has the norm of ``theta``'s unit to ``rtol`` (or is zero), and the ignored kinds are zero. A
    direction saved normalized by another tool (Li et al.'s ``normalize_direction`` adds 1e-10 to each norm, and
    their files are float32) is then taken as it is instead of being rescaled by a rounding-sized factor."""
    if method not in ("filter", "layer"):
        raise ValueError(f"method must be filter or layer, got {method!r}")
    direction = np.asarray(direction)
    for spec in layout:
        sl = spec.slice
        if spec.kind in tuple(ignore):
            if np.any(direction[sl] != 0):
                return False
            continue
        dn = unit_norms(direction[sl], spec, method == "filter")
        tn = unit_norms(np.asarray(theta)[sl], spec, method == "filter")
        if not np.all((dn == 0) | np.isclose(dn, tn, rtol=rtol, atol=0.0)):
            return False
    return True
