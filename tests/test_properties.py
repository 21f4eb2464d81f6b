"""Property-based tests (hypothesis) of the geometry and the config schema.

Every property is checked against an independent truth, never against the code's own output: eq. 2 of the paper
written out per filter by explicit indexing (``np.take``, not the module's ``moveaxis``), planes built from known
coefficients and ``numpy.linalg.lstsq``, ``np.linspace``'s definition and ``itertools.product`` for the grid, a
count of how often each point/sample is handed out for the chunkings, and the schema's own declared bounds for the
config. The number of examples is kept small so the whole file runs in well under a minute on 2 cores; the
"gradvis" hypothesis profile (tests/conftest.py) keeps no example database and no deadline.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradvis_steps.core.grid import Grid, PointValues, axis_range, evaluate_points
from gradvis_steps.core.layout import KINDS, ParameterLayout
from gradvis_steps.core.normalization import DEFAULT_IGNORE, normalize_direction
from gradvis_steps.core.objective import Evaluation
from gradvis_steps.core.parallel import (
    chunk_counts,
    chunk_indices,
    distributed_values,
    group_chunk_counts,
    shard_bounds,
)
from gradvis_steps.core.projection import project_trajectory, project_vector

ROOT = Path(__file__).resolve().parents[1]
FEW = settings(max_examples=40, deadline=None)
SOME = settings(max_examples=80, deadline=None)
seeds = st.integers(0, 2**32 - 1)


# ====================================================================================== filter-wise normalization
@st.composite
def layouts(draw) -> ParameterLayout:
    """1-6 tensors of every kind: conv weights (PyTorch: filters on axis 0, TensorFlow: on the last axis,
    ConvTranspose: axis 1), dense weights (either orientation), biases, batch-norm and other norm parameters (1-D),
    and ``other`` tensors with or without a filter axis."""
    entries = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(KINDS))
        if kind == "conv":
            shape = tuple(draw(st.lists(st.integers(1, 4), min_size=3, max_size=4)))
            axis = draw(st.sampled_from([0, 1, -1]))
        elif kind == "linear":
            shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=2)))
            axis = draw(st.sampled_from([0, 1, -1]))
        elif kind == "other":
            shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
            axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
        else:  # bias, batchnorm, norm: one value per channel
            shape, axis = (draw(st.integers(1, 6)),), None
        entries.append((f"p{i}.{kind}", shape, kind, axis))
    return ParameterLayout.from_shapes(entries)


def units(flat: np.ndarray, spec, per_filter: bool = True) -> list[np.ndarray]:
    """The filters of one tensor by explicit indexing (filter j = ``np.take(t, j, axis)``), or the whole tensor."""
    t = np.asarray(flat[spec.slice], dtype=np.float64).reshape(spec.shape)
    if not per_filter or spec.filter_axis is None:
        return [t.ravel()]
    return [np.take(t, j, axis=spec.filter_axis).ravel() for j in range(spec.shape[spec.filter_axis])]


@st.composite
def normalization_cases(draw):
    """A layout, weights ``theta`` whose tensors have scales from 1e-3 to 1e3, and a Gaussian direction; some
    filters of the direction and of the weights are zero."""
    layout = draw(layouts())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(seeds))
    theta = np.empty(layout.size)
    direction = rng.standard_normal(layout.size)
    for spec in layout:
        theta[spec.slice] = rng.standard_normal(spec.numel) * 10.0 ** draw(st.floats(-3, 3))
        for target in (direction, theta):
            if spec.filter_axis is not None and draw(st.booleans()):  # zero one filter
                t = target[spec.slice].reshape(spec.shape)
                j = draw(st.integers(0, spec.shape[spec.filter_axis] - 1))
                index = [slice(None)] * len(spec.shape)
                index[spec.filter_axis] = j
                t[tuple(index)] = 0
                target[spec.slice] = t.ravel()
    return layout, theta.astype(dtype), direction.astype(dtype)


def rtol_of(dtype) -> float:
    return 2e-6 if np.dtype(dtype) == np.float32 else 1e-12


def check_scaled(out: np.ndarray, d: np.ndarray, theta: np.ndarray, layout, per_filter: bool, ignore, rtol):
    """Eq. 2 written out: every unit (filter, or tensor) of ``out`` is ``d_j / ||d_j|| * ||theta_j||`` (0 where
    ``d_j`` is 0), so its norm is that of the matching unit of the weights; ignored kinds are 0."""
    for spec in layout:
        if spec.kind in ignore:
            assert not np.any(out[spec.slice]), spec.name
            continue
        for o, dj, tj in zip(units(out, spec, per_filter), units(d, spec, per_filter), units(theta, spec, per_filter),
                             strict=True):
            dn, tn = np.linalg.norm(dj), np.linalg.norm(tj)
            if dn == 0:
                assert not np.any(o), spec.name  # a zero filter has no direction to scale: stays 0
                continue
            np.testing.assert_allclose(o, dj * (tn / dn), rtol=rtol, atol=rtol * tn / math.sqrt(dj.size))
            np.testing.assert_allclose(np.linalg.norm(o), tn, rtol=10 * rtol, atol=1e-300)


@SOME
@given(normalization_cases())
def test_filter_normalization_gives_each_filter_the_norm_of_the_weights_filter(case):
    """Section 2.1 / eq. 2 (Li et al. 2018): filter j of the normalized direction is the direction's filter j
    rescaled to ||theta_j||; biases, batch-norm and norm parameters (DEFAULT_IGNORE) are zeroed; no NaN anywhere,
    also for zero filters; the dtype is the direction's."""
    layout, theta, d = case
    out = normalize_direction(d, theta, layout, method="filter")
    assert out.dtype == d.dtype and out.shape == d.shape
    assert np.all(np.isfinite(out))
    check_scaled(out, d, theta, layout, True, DEFAULT_IGNORE, rtol_of(d.dtype))


@FEW
@given(normalization_cases())
def test_without_ignored_kinds_biases_and_norm_parameters_are_normalized_as_one_tensor(case):
    """``ignore=()`` keeps every kind: a parameter without a filter axis is one unit (tensor-wise)."""
    layout, theta, d = case
    out = normalize_direction(d, theta, layout, method="filter", ignore=())
    check_scaled(out, d, theta, layout, True, (), rtol_of(d.dtype))


@FEW
@given(normalization_cases())
def test_layer_normalization_rescales_each_tensor_to_the_weights_tensor_norm(case):
    """``layer``: the same as eq. 2 with the whole tensor as the unit (||d_i|| -> ||theta_i||)."""
    layout, theta, d = case
    out = normalize_direction(d, theta, layout, method="layer")
    assert np.all(np.isfinite(out))
    check_scaled(out, d, theta, layout, False, DEFAULT_IGNORE, rtol_of(d.dtype))


@FEW
@given(normalization_cases(), st.sampled_from([(), DEFAULT_IGNORE, ("bias",)]))
def test_no_normalization_keeps_the_direction_but_zeroes_ignored_kinds(case, ignore):
    layout, theta, d = case
    out = normalize_direction(d, theta, layout, method="none", ignore=ignore)
    expected = d.copy()
    for spec in layout:
        if spec.kind in ignore:
            expected[spec.slice] = 0
    np.testing.assert_array_equal(out, expected)


@SOME
@given(normalization_cases(), st.sampled_from(["filter", "layer"]),
       st.floats(1e-3, 1e3), st.sampled_from([1.0, -1.0]))
def test_normalization_is_invariant_to_positive_scaling_and_odd_in_the_direction(case, method, c, sign):
    """Eq. 2 depends on d only through d_j / ||d_j||: N(c d) = N(d) for c > 0, and N(-d) = -N(d)."""
    layout, theta, d = case
    d = d.astype(np.float64)  # c * d exactly representable up to one rounding: compare in float64
    out = normalize_direction(d, theta, layout, method=method)
    scaled = normalize_direction(sign * c * d, theta, layout, method=method)
    np.testing.assert_allclose(scaled, sign * out, rtol=1e-12, atol=1e-12 * np.max(np.abs(out), initial=0))


@FEW
@given(normalization_cases(), st.sampled_from(["filter", "layer", "none"]))
def test_normalization_leaves_its_inputs_alone(case, method):
    layout, theta, d = case
    d0, t0 = d.copy(), theta.copy()
    normalize_direction(d, theta, layout, method=method)
    np.testing.assert_array_equal(d, d0)
    np.testing.assert_array_equal(theta, t0)


# ============================================================================================== projection
@st.composite
def planes(draw):
    """k = 1..3 directions in R^dim, ``D = diag(scales) B``, neither orthogonal (the rows of B are mixed by a unit
    lower-triangular matrix) nor unit (scales 1e-2..1e2), the reference point, known coefficients and noise
    orthogonal to the plane."""
    k = draw(st.integers(1, 3))
    dim = draw(st.integers(k + 1, 40))
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(seeds))
    mix = np.eye(k) + np.tril(rng.uniform(-2, 2, (k, k)), -1)
    B = mix @ rng.standard_normal((k, dim))
    assume(np.linalg.cond(B) < 1e4)  # the property is about the geometry, not about nearly parallel directions
    scales = 10.0 ** rng.uniform(-2, 2, k)
    D = B * scales[:, None]
    centre = rng.standard_normal(dim) * 10.0 ** draw(st.floats(-1, 1))
    C = rng.standard_normal((n, k)) * 10.0 ** draw(st.floats(-2, 2))
    Q, _ = np.linalg.qr(D.T)  # orthonormal basis of the plane, for the orthogonal noise
    noise = rng.standard_normal((n, dim)) * 10.0 ** draw(st.floats(-3, 1))
    noise -= (noise @ Q) @ Q.T
    return D, B, scales, centre, C, noise


def coefficient_tolerance(D: np.ndarray, B: np.ndarray, scales: np.ndarray, size: float, on_plane: bool) -> np.ndarray:
    """Rounding bound per coefficient for a right-hand side of norm ``size``: ``eps cond(B) size / smin(B)`` in the
    frame of the unscaled directions B for a point on the plane, one more factor cond(D) for any vector (the normal
    equations square D's condition number, the refinement step takes one factor back), then back into D's frame.
    The largest ratio of the error to this bound seen in 3000 random cases was 4; the check allows 100."""
    eps = np.finfo(np.float64).eps
    bound = eps * np.linalg.cond(B) * size / np.linalg.svd(B, compute_uv=False).min()
    if not on_plane:
        bound *= np.linalg.cond(D)
    return 100 * bound / scales


@SOME
@given(planes())
def test_points_built_on_the_plane_project_to_their_coefficients(plane):
    """Algorithm 1: theta_i = theta_n + sum_k c_ik phi_k + (noise orthogonal to the plane) projects to c_i, its
    residual is the noise's norm and its distance ||theta_i - theta_n||."""
    D, B, scales, centre, C, noise = plane
    points = centre + C @ D + noise
    result = project_trajectory(lambda i: points[i], len(points), D, centre)
    for i in range(len(points)):
        size = np.linalg.norm(points[i] - centre) + np.linalg.norm(centre)  # (theta_i - theta_n rounds at |theta|)
        tol = coefficient_tolerance(D, B, scales, size, on_plane=True)
        assert np.all(np.abs(result.coefficients[i] - C[i]) <= tol), (result.coefficients[i], C[i], tol)
        np.testing.assert_allclose(result.residuals[i], np.linalg.norm(noise[i]), rtol=1e-6, atol=1e-9 * size)
        np.testing.assert_allclose(result.distances[i], np.linalg.norm(C[i] @ D + noise[i]), rtol=1e-9,
                                   atol=1e-12 * size)


@SOME
@given(planes(), seeds)
def test_projection_agrees_with_numpy_lstsq_and_is_linear(plane, seed):
    """Any vector: the coefficients are numpy's least-squares solution of D^T c = d (and the residual its
    distance); projecting is linear: P(a x + b y) = a P(x) + b P(y)."""
    D, B, scales, *_ = plane
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, D.shape[1])) * 10.0 ** rng.uniform(-2, 2, (2, 1))
    a, b = rng.uniform(-3, 3, 2)
    cx, rx = project_vector(x, D)
    reference, *_ = np.linalg.lstsq(D.T, x, rcond=None)
    tol = coefficient_tolerance(D, B, scales, np.linalg.norm(x), on_plane=False)
    assert np.all(np.abs(cx - reference) <= tol), (cx, reference, tol)
    np.testing.assert_allclose(rx, np.linalg.norm(x - D.T @ reference), rtol=1e-6, atol=1e-9 * np.linalg.norm(x))
    cy, _ = project_vector(y, D)
    cxy, _ = project_vector(a * x + b * y, D)
    tol = coefficient_tolerance(D, B, scales, abs(a) * np.linalg.norm(x) + abs(b) * np.linalg.norm(y), on_plane=False)
    assert np.all(np.abs(cxy - (a * cx + b * cy)) <= tol), (cxy, a * cx + b * cy, tol)


# ==================================================================================================== grids
finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def ranges(draw):
    lo = draw(st.floats(-1e3, 1e3, **finite))
    width = draw(st.floats(1e-3, 1e3, **finite))
    return lo, lo + width


@SOME
@given(st.lists(ranges(), min_size=1, max_size=3), st.data())
def test_grid_axes_are_linspace_over_the_ranges_and_points_in_c_order(axes_ranges, data):
    """Module docstring: axes are ``np.linspace(lo, hi, N)`` (N points, both ends included, evenly spaced,
    increasing); flat point p of the grid is the C-order (``itertools.product``) enumeration of the axes."""
    ns = [data.draw(st.integers(2, 12)) for _ in axes_ranges]
    grid = Grid.from_ranges(axes_ranges, ns)
    assert grid.shape == tuple(ns) and grid.n_points == math.prod(ns) and grid.ndim == len(ns)
    for axis, (lo, hi), n in zip(grid.axes, axes_ranges, ns, strict=True):
        assert axis.size == n
        assert axis[0] == lo and axis[-1] == hi  # the endpoints are the range exactly
        assert np.all(np.diff(axis) > 0)
        np.testing.assert_allclose(np.diff(axis), (hi - lo) / (n - 1), rtol=1e-9, atol=1e-9 * (abs(lo) + abs(hi)))
    expected = np.array(list(itertools.product(*grid.axes)))
    np.testing.assert_array_equal(grid.points(), expected)
    some = np.array(data.draw(st.lists(st.integers(0, grid.n_points - 1), max_size=10)), dtype=np.int64)
    np.testing.assert_array_equal(grid.points(some), expected[some].reshape(len(some), grid.ndim))


@SOME
@given(st.lists(st.floats(-1e3, 1e3, **finite), max_size=8), st.floats(0, 2), st.floats(1e-3, 10),
       st.booleans())
def test_axis_range_is_the_widened_bordered_trajectory_box(values, border, min_extent, include_origin):
    """Module docstring of core/grid.py: the box [min, max] of the values (with 0 if ``include_origin``; [0, 0] for
    no values) widened symmetrically to at least ``min_extent``, then ``border * extent`` added per side: the range
    holds the box (and the centre 0), is centred on the box, and is (1 + 2 border) * max(extent, min_extent) wide."""
    box = list(values) + ([0.0] if include_origin or not values else [])
    box_lo, box_hi = min(box), max(box)
    lo, hi = axis_range(values, border=border, min_extent=min_extent, include_origin=include_origin)
    scale = 1e-9 * (1 + abs(box_lo) + abs(box_hi))
    assert lo <= box_lo + scale and hi >= box_hi - scale
    if include_origin:
        assert lo <= 0 <= hi
    assert math.isclose(0.5 * (lo + hi), 0.5 * (box_lo + box_hi), abs_tol=scale)
    assert math.isclose(hi - lo, (1 + 2 * border) * max(box_hi - box_lo, min_extent), rel_tol=1e-9, abs_tol=scale)


@FEW
@given(st.lists(st.lists(st.floats(-50, 50, **finite), min_size=2, max_size=2), min_size=1, max_size=6),
       st.integers(2, 30), st.floats(0, 1))
def test_trajectory_grid_spans_the_trajectory_and_the_centre(coefficients, n, border):
    """Grid.from_trajectory: every checkpoint's coefficients and the centre (0, 0) lie inside the grid's box,
    with ``n`` points per axis."""
    c = np.array(coefficients)
    grid = Grid.from_trajectory(c, n, border=border)
    assert grid.shape == (n, n)
    for a, axis in enumerate(grid.axes):
        tol = 1e-9 * (1 + np.abs(c[:, a]).max())
        assert axis[0] <= min(c[:, a].min(), 0) + tol and axis[-1] >= max(c[:, a].max(), 0) - tol


@SOME
@given(st.integers(0, 500), st.integers(1, 40))
def test_chunks_cover_every_point_exactly_once_balanced(n_points, n_chunks):
    """Algorithm 3's split: the chunks of all ranks, in rank order, are 0..n-1 exactly once; sizes differ by at
    most one, the first n % P chunks holding the extra point; counts/displacements are what Gatherv needs."""
    counts, displs = chunk_counts(n_points, n_chunks)
    chunks = [chunk_indices(n_points, n_chunks, r) for r in range(n_chunks)]
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(n_points))
    sizes = [len(c) for c in chunks]
    assert sizes == list(counts) and list(displs) == [sum(sizes[:r]) for r in range(n_chunks)]
    assert sizes == [n_points // n_chunks + (r < n_points % n_chunks) for r in range(n_chunks)]


@SOME
@given(st.integers(0, 300), st.integers(1, 12), st.integers(1, 10))
def test_group_chunks_take_whole_groups_and_cover_every_item_once(n_items, n_chunks, group_size):
    """Lockstep groups of ``group_size`` consecutive items (the last one shorter) are never split between
    chunks, every item is in exactly one chunk, and the chunks' numbers of groups differ by at most one."""
    counts, displs = group_chunk_counts(n_items, n_chunks, group_size)
    owner = np.full(n_items, -1)
    for r, (count, start) in enumerate(zip(counts, displs, strict=True)):
        assert np.all(owner[start:start + count] == -1)
        owner[start:start + count] = r
    assert np.all(owner >= 0)
    groups = [owner[g:g + group_size] for g in range(0, n_items, group_size)]
    assert all(len(set(g)) == 1 for g in groups)  # a group in one chunk
    per_chunk = np.bincount([g[0] for g in groups], minlength=n_chunks)
    assert per_chunk.max() - per_chunk.min() <= 1


class RecordingComm:
    """Rank ``rank`` of ``size``: records what it would send to the Gatherv (the root's gathered array is not
    needed for coverage, so every rank answers None as a non-root rank does)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.sent = rank, size, None

    def gatherv(self, values: np.ndarray, counts: np.ndarray) -> None:
        self.sent = (np.asarray(values).copy(), np.asarray(counts).copy())
        return None


@SOME
@given(st.integers(0, 120), st.integers(1, 9), st.data())
def test_distributed_values_each_item_computed_by_one_rank_group_and_sent_once(n_items, size, data):
    """Algorithms 3 and 5 and the hybrid scheme, simulated rank by rank: the rank groups' chunks cover every item
    exactly once, in order; every rank of a group computes the group's chunk (data parallel inside); only the group's
    first rank sends, and the counts it declares are what each rank sends."""
    per_group = data.draw(st.integers(1, size))
    group_size = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(1, 3))
    computed = {}
    comms = []
    for rank in range(size):
        comm = RecordingComm(rank, size)

        def compute(indices, rank=rank):
            computed[rank] = np.asarray(indices).copy()
            return np.repeat(np.asarray(indices, dtype=np.float64)[:, None], width, axis=1)

        distributed_values(comm, n_items, width, compute, group_size=group_size, ranks_per_group=per_group)
        comms.append(comm)
    leaders = range(0, size, per_group)
    order = np.concatenate([computed[r] for r in leaders])
    np.testing.assert_array_equal(order, np.arange(n_items))
    for rank in range(size):
        leader = rank - rank % per_group
        np.testing.assert_array_equal(computed[rank], computed[leader])
        values, counts = comms[rank].sent
        assert values.size == counts[rank] == (len(computed[rank]) * width if rank == leader else 0)
        if rank == leader:
            np.testing.assert_array_equal(values.reshape(-1, width)[:, 0], computed[rank])
    assert counts.sum() == n_items * width


@SOME
@given(st.integers(1, 2000), st.integers(1, 300), st.integers(1, 16))
def test_shards_are_whole_batches_covering_every_sample_once(n_samples, batch_size, n_shards):
    """Algorithm 4's data split: the shards of a group are contiguous runs of whole evaluation batches (the batches a
    serial run makes) covering the samples once, balanced by batch count; fewer batches than shards is an error."""
    n_batches = math.ceil(n_samples / batch_size)
    if n_batches < n_shards:
        with pytest.raises(ValueError, match="fewer than the"):
            shard_bounds(n_samples, batch_size, n_shards, 0)
        return
    bounds = [shard_bounds(n_samples, batch_size, n_shards, i) for i in range(n_shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n_samples
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, no overlap, no gap
    assert all(start % batch_size == 0 and start < stop for start, stop in bounds)
    batches = [math.ceil((stop - start) / batch_size) for start, stop in bounds]
    assert sum(batches) == n_batches and max(batches) - min(batches) <= 1


class LinearObjective:
    """Loss ``w . theta`` (accuracy ``-w . theta``); records every point it is asked to evaluate. With ``many`` it
    has the batched-evaluation capability, and records the batch sizes."""

    def __init__(self, dim: int, many: bool):
        self.w = np.arange(1.0, dim + 1)
        self.evaluated: list[np.ndarray] = []
        self.batches: list[int] = []
        if many:
            self.evaluate_many = self._evaluate_many

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64)

    def evaluate(self, theta: np.ndarray) -> Evaluation:
        self.evaluated.append(np.asarray(theta).copy())
        value = float(self.w @ theta)
        return Evaluation(value, -value)

    def _evaluate_many(self, center, directions, coeffs):
        self.batches.append(len(coeffs))
        return [self.evaluate(center + sum(c * d for c, d in zip(row, directions, strict=True))) for row in coeffs]


@SOME
@given(st.integers(1, 60), st.integers(1, 2), st.integers(1, 70), st.booleans(), st.data())
def test_evaluation_batches_visit_each_requested_point_once(n_points, k, batch_size, many, data):
    """evaluate_points in batches of ``batch_size`` (a rank's chunk ``indices``, some already ``filled`` by an
    interrupted run): every requested, unfilled point is evaluated exactly once at center + points[p] @ D, nothing
    else is touched, and no batch is larger than asked."""
    dim = 3
    rng = np.random.default_rng(data.draw(seeds))
    center, D = rng.standard_normal(dim), rng.standard_normal((k, dim))
    points = rng.standard_normal((n_points, k))
    indices = np.array(sorted(data.draw(st.sets(st.integers(0, n_points - 1)))), dtype=np.int64)
    prefilled = data.draw(st.sets(st.integers(0, n_points - 1)))
    out = PointValues.empty(n_points)
    for p in prefilled:
        out.loss[p], out.accuracy[p], out.filled[p] = -1.0, 1.0, True
    objective = LinearObjective(dim, many)
    evaluate_points(objective, center, D, points, indices=indices, out=out, progress=False, batch_size=batch_size)
    todo = [p for p in indices if p not in prefilled]
    assert len(objective.evaluated) == len(todo)
    expected = {p: float(objective.w @ (center + points[p] @ D)) for p in todo}
    for p in range(n_points):
        if p in expected:
            assert out.filled[p] and math.isclose(out.loss[p], expected[p], rel_tol=1e-12, abs_tol=1e-12)
            assert out.accuracy[p] == -out.loss[p]
        elif p in prefilled:
            assert out.filled[p] and out.loss[p] == -1.0
        else:
            assert not out.filled[p] and np.isnan(out.loss[p])
    if many:
        assert sum(objective.batches) == len(todo) and all(1 <= b <= batch_size for b in objective.batches)


# ============================================================================================== config schema
try:  # the workflow extra; without it only the config properties skip
    import snakemake.utils as snakemake_utils
except ImportError:
    snakemake_utils = None
needs_snakemake = pytest.mark.skipif(snakemake_utils is None, reason="snakemake is not installed (pip install -e "
                                     ".[workflow])")
from experiments import ConfigError, resolve_ref  # noqa: E402 - pure Python (tests/conftest.py puts workflow/ on the path)
from workflow_runner import DEFAULT_CONFIG as DEFAULT  # noqa: E402
from workflow_runner import SCHEMA_PATH, plan_of  # noqa: E402

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def all_ids(plan) -> dict[str, list[str]]:
    return {kind: plan.ids(kind) for kind in plan.jobs} | {"runs": sorted(plan.runs)}


def floats(lo: float, hi: float, *, exclude_min: bool = False, exclude_max: bool = False):
    return st.floats(lo, hi, exclude_min=exclude_min, exclude_max=exclude_max, **finite)


names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
ints = st.integers(0, 10**6)


@st.composite
def valid_configs(draw) -> dict:
    """Random values within the schema's bounds for keys of every section, consistent with the cross-key rules of
    experiments._check_variant (frames.direction among the methods, a pick below count <= steps, hybrid with its
    ranks_per_group, interpolation seeds among the training seeds)."""
    seeds_ = draw(st.lists(st.integers(0, 50), min_size=1, max_size=2, unique=True))
    train = {
        "seed": seeds_,
        "lr": draw(st.lists(floats(0, 10, exclude_min=True), min_size=1, max_size=2, unique=True)),
        "batch_size": draw(st.lists(st.integers(1, 4096), min_size=1, max_size=1)),
        "epochs": [draw(st.integers(1, 1000))],
        "momentum": [draw(floats(0, 1, exclude_max=True))],
        "checkpoint_every": draw(st.integers(1, 100)),
        "framework": draw(st.sampled_from([["torch"], ["tensorflow"], ["torch", "tensorflow"]])),
        "loss": draw(st.lists(st.sampled_from(["cross_entropy", "mse", "bce_with_logits"]), min_size=1, max_size=2,
                              unique=True)),
    }
    methods = draw(st.lists(st.sampled_from(["random", "pca", "hessian"]), unique=True, max_size=3))
    count = draw(st.integers(2, 6))
    hessian = {"which": draw(st.sampled_from(["largest", "smallest", "nearest"])), "target": draw(floats(-1e3, 1e3)),
               "count": count, "steps": draw(st.integers(count, 100)),
               "pick": draw(st.lists(st.integers(0, count - 1), min_size=2, max_size=2, unique=True)),
               "mpi_tasks": draw(st.integers(1, 4096))}
    directions = {"methods": methods, "seed": draw(ints), "hessian": hessian,
                  "normalization": draw(st.sampled_from(["auto", "filter", "layer", "none"]))}
    tasks = draw(st.integers(1, 64))
    parallel = draw(st.sampled_from(["iteration", "data", "hybrid"]))
    spectra = {"enabled": draw(st.booleans()), "every": draw(st.integers(1, 50)), "k": draw(st.integers(1, 100)),
               "m": draw(st.integers(2, 200)), "vector": draw(st.sampled_from(["gaussian", "rademacher"])),
               "seed": draw(ints), "sigma": draw(st.one_of(st.none(), floats(0, 10, exclude_min=True))),
               "chunks": draw(st.integers(1, 10000)),
               "group_size": draw(st.one_of(st.just("auto"), st.integers(1, 64))), "mpi_tasks": tasks,
               "parallel": parallel,
               "ranks_per_group": draw(st.integers(1, tasks)) if parallel == "hybrid" else None}
    landscape = {"resolution": draw(st.integers(2, 2000)), "border": draw(floats(0, 10)),
                 "centre": draw(st.one_of(st.just("last"), ints)), "line": draw(st.booleans()),
                 "log_levels": draw(st.booleans()),
                 "grid_batching": draw(st.sampled_from(["auto", "vmap", "per_point"])),
                 "mpi_tasks": draw(st.integers(1, 4096))}
    direction = draw(st.sampled_from(methods)) if methods else draw(st.sampled_from(["random", "pca", "hessian"]))
    frames = {"training": draw(st.booleans()), "interpolation": draw(st.booleans()), "direction": direction,
              "moving_every": draw(st.integers(0, 20)) if direction == "hessian" else 0,
              "log_scale": draw(st.booleans()), "fps": draw(floats(0, 120, exclude_min=True)),
              "dpi": draw(st.integers(20, 600))}
    interpolation = {"enabled": len(seeds_) == 2 and draw(st.booleans()), "seeds": draw(st.permutations([0, 1])),
                     "points": draw(st.integers(2, 200)), "resolution": draw(st.integers(2, 2000)),
                     "plane_border": draw(floats(0, 10))}
    if interpolation["enabled"]:
        interpolation["seeds"] = draw(st.permutations(seeds_))
    evaluation = {"fraction": draw(floats(0, 1, exclude_min=True)), "seed": draw(ints),
                  "batch_size": draw(st.integers(1, 10**5)), "dtype": draw(st.sampled_from(["float32", "float64"])),
                  "hvp_memory_mb": draw(floats(0, 1e5)),
                  "hvp_mode": draw(st.sampled_from(["auto", "double_backprop", "forward_over_reverse"]))}
    resources = {"gpu": draw(st.integers(0, 8)), "ranks_per_gpu": draw(st.integers(1, 8)),
                 "threads": draw(st.integers(1, 128)), "mem_mb": draw(st.integers(100, 10**6)),
                 "runtime": draw(st.integers(1, 10**4))}
    config = {"train": train, "directions": directions, "spectra": spectra, "landscape": landscape, "frames": frames,
              "interpolation": interpolation, "evaluation": evaluation, "resources": resources,
              "device": draw(st.sampled_from(["auto", "cpu", "cuda"]) | st.integers(0, 16).map(lambda i: f"cuda:{i}")),
              "results": draw(names)}
    # every key is set or left to its default, independently
    for section in ("train", "directions", "spectra", "landscape", "frames", "interpolation", "evaluation"):
        for key in list(config[section]):
            if draw(st.booleans()) and key not in ("methods", "direction", "parallel", "ranks_per_group", "seeds",
                                                   "enabled", "seed", "count", "steps", "pick", "mpi_tasks",
                                                   "moving_every"):
                del config[section][key]
    return config


def shuffled(value, rng: np.random.Generator):
    """The same mapping with every dict's keys in another order (the order of a YAML file's keys means nothing)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    return copy.deepcopy(value)


ID = re.compile(r"^[A-Za-z0-9_.-]+-[0-9a-f]{8}$")


@needs_snakemake
@FEW
@given(valid_configs(), seeds)
def test_valid_configs_plan_with_stable_ids(config, seed):
    """A config within the schema's bounds is accepted and planned; the same config (keys in any order, planned
    again) gives the same ids; every job id is ``<readable>-<first 8 hex digits of the SHA-256 of its settings'
    canonical JSON>`` (config/README.md), so its settings.yaml determines it."""
    first = plan_of(copy.deepcopy(config))
    again = plan_of(shuffled(config, np.random.default_rng(seed)))
    assert all_ids(first) == all_ids(again)
    for jobs in first.jobs.values():
        for job_id, job in jobs.items():
            canonical = json.dumps(job.settings, sort_keys=True, default=str).encode()
            assert ID.match(job_id) and job_id.endswith("-" + hashlib.sha256(canonical).hexdigest()[:8])
    n_runs = math.prod(len(config["train"].get(axis, DEFAULT["train"].get(axis, [None])))
                       for axis in ("seed", "lr", "batch_size", "epochs", "momentum", "framework", "loss"))
    assert len(first.runs) == n_runs  # one run per combination of the training lists, none merged


HYPHENATED = ["a", "b", "a-b", "b-a", "a-a", "b-b", "a-b-a"]  # dataset and model names, often running together


@needs_snakemake
@FEW
@given(st.lists(st.sampled_from(HYPHENATED), min_size=1, max_size=3, unique=True),
       st.lists(st.sampled_from(HYPHENATED), min_size=1, max_size=3, unique=True))
def test_different_runs_never_share_a_folder(datasets, models):
    """Runs are named ``<dataset>-<model>-lr...``: when two (dataset, model) pairs run together into one name
    (``a-b`` + ``b`` and ``a`` + ``b-b``) the plan is refused; otherwise every combination is its own run."""
    config = {"datasets": {d: {"name": "digits"} for d in datasets}, "models": {m: {"name": "lenet"} for m in models},
              "train": {"dataset": datasets, "model": models, "seed": [0]}, "interpolation": {"enabled": False}}
    pairs = list(itertools.product(datasets, models))
    if len({f"{d}-{m}" for d, m in pairs}) < len(pairs):
        with pytest.raises(ConfigError, match="would share the folder"):
            plan_of(config)
    else:
        assert len(plan_of(config).runs) == len(pairs)


# "what" keys (config/README.md: they define an output, so they are in its folder's id), the values to draw, and
# the job kinds whose ids they must change; and "how" keys, which must change no id
WHAT = [
    ("landscape", "resolution", st.integers(2, 2000), ("landscape",)),
    ("landscape", "border", floats(0, 10), ("landscape",)),
    ("spectra", "m", st.integers(2, 500), ("spectra", "interpolation")),
    ("spectra", "k", st.integers(1, 100), ("spectra", "interpolation")),
    ("spectra", "sigma", floats(0, 10, exclude_min=True), ("spectra", "interpolation")),
    ("evaluation", "fraction", floats(0, 1, exclude_min=True), ("spectra", "landscape", "eigendirections")),
    ("evaluation", "seed", ints, ("spectra", "landscape", "interpolation")),
    ("directions", "seed", ints, ("directions", "landscape")),
    ("directions", "normalization", st.sampled_from(["auto", "filter", "layer", "none"]), ("directions",)),
    ("interpolation", "points", st.integers(2, 500), ("interpolation", "interpolation_video")),
    ("frames", "fps", floats(0, 120, exclude_min=True), ("video", "interpolation_video")),
]
HOW = [
    ("spectra", "chunks", st.integers(1, 10000)),
    ("spectra", "mpi_tasks", st.integers(1, 4096)),
    ("spectra", "group_size", st.one_of(st.just("auto"), st.integers(1, 64))),
    ("landscape", "grid_batching", st.sampled_from(["auto", "vmap", "per_point"])),
    ("landscape", "mpi_tasks", st.integers(1, 4096)),
    ("evaluation", "hvp_mode", st.sampled_from(["auto", "double_backprop", "forward_over_reverse"])),
    ("evaluation", "hvp_memory_mb", floats(0, 1e5)),
    ("directions", "hessian", st.integers(1, 4096).map(lambda n: {"mpi_tasks": n})),
    ("resources", "mem_mb", st.integers(100, 10**6)),
    ("resources", "gpu", st.integers(0, 8)),
]


def second_value(a, values, data):
    """A value other than ``a``: any other one of ``values``, or for a positive float often one that differs from
    ``a`` only in the 7th or a later significant digit (where ``%g`` formatting stops)."""
    if isinstance(a, float) and a > 0 and data.draw(st.booleans()):
        f = data.draw(st.floats(1e-15, 1e-6) | st.floats(1e-6, 0.1))
        b = a * (1 + f) if a * (1 + f) < 1 else a * (1 - f)  # (every float key here allows values up to 1)
        if b != a:
            return b
    return data.draw(values.filter(lambda v: v != a))


@needs_snakemake
@FEW
@given(st.sampled_from([("lr", floats(0, 1, exclude_min=True)), ("momentum", floats(0, 1, exclude_max=True))]),
       st.data())
def test_different_training_values_give_different_runs(entry, data):
    """Two values of a training key (also two that agree to 6 significant digits) are two runs with two folders."""
    key, values = entry
    a = data.draw(values)
    b = second_value(a, values, data)
    plan = plan_of({"train": {key: [a, b], "seed": [0]}, "interpolation": {"enabled": False}})
    assert len(plan.runs) == 2, (a, b, sorted(plan.runs))
    assert sorted(run["settings"][key] for run in plan.runs.values()) == sorted([a, b])


@needs_snakemake
@FEW
@given(st.sampled_from(WHAT), st.data())
def test_different_what_settings_give_different_ids(entry, data):
    """Two different values of a key that defines an output give different folders of every kind that depends on
    it, and sweeping both in one experiment plans exactly the union of the two single-value plans' jobs: what agrees
    is shared, nothing is merged or lost."""
    section, key, values, kinds = entry
    a = data.draw(values)
    b = second_value(a, values, data)
    one, other, both = ({section: {key: v}} for v in (a, b, [a, b]))
    ids_a, ids_b, ids_both = (all_ids(plan_of(c)) for c in (one, other, both))
    for kind in kinds:
        assert ids_a[kind] and set(ids_a[kind]) != set(ids_b[kind]), (kind, a, b)
    for kind in ids_both:
        assert set(ids_both[kind]) == set(ids_a[kind]) | set(ids_b[kind]), (kind, a, b)


@needs_snakemake
@FEW
@given(st.sampled_from(HOW), st.data())
def test_how_settings_change_no_id(entry, data):
    """Execution settings (config/README.md: device, mpi_tasks, chunks, group_size, hvp_mode, hvp_memory_mb,
    grid_batching, resources) change how a result is computed, not what it is: the same ids as the default."""
    section, key, values = entry
    assert all_ids(plan_of({section: {key: data.draw(values)}})) == all_ids(plan_of({}))


# -------------------------------------------------------------------------------------------- invalid values
def resolve(node: dict) -> dict:
    return resolve_ref(SCHEMA, node)


def constrained_keys(node: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """Every key of the schema with its resolved schema, and every mapping (for an unknown key in it), walking the
    sections and nested mappings (``experiments``, free-form ``description``, the dataset/model specs and the
    external runs' declarations aside)."""
    node = resolve(node)
    if node.get("type") != "object" or "properties" not in node:
        return [(path, node)]
    found = [(path, node)]
    for key, child in node["properties"].items():
        if path or key not in ("experiments", "description", "datasets", "models", "losses", "external_runs"):
            found += constrained_keys(child, (*path, key))
    return found


KEYS = constrained_keys(SCHEMA)


def bad_scalars(node: dict):
    """Values that break ``node``'s own constraints: beyond its bounds, of the wrong type, outside its enum or
    pattern, too short, or matching none of its ``oneOf`` branches."""
    options = []
    if "enum" in node:
        options.append(names.filter(lambda v: v not in node["enum"]))
    kind = node.get("type")
    if kind in ("integer", "number"):
        if "minimum" in node:
            options.append(st.integers(node["minimum"] - 10**6, node["minimum"] - 1))
            if kind == "number":
                options.append(floats(node["minimum"] - 1e6, node["minimum"], exclude_max=True))
        if "exclusiveMinimum" in node:
            options.append(floats(node["exclusiveMinimum"] - 1e6, node["exclusiveMinimum"]))
        if "maximum" in node:
            options.append(st.integers(node["maximum"] + 1, node["maximum"] + 10**6))
        if "exclusiveMaximum" in node:
            options.append(floats(node["exclusiveMaximum"], node["exclusiveMaximum"] + 1e6))
        options.append(names | st.just(math.nan))  # a string for a number; NaN (YAML's .nan), which no bound sees
        if kind == "integer":  # (a float with an integral value counts as an integer in JSON Schema)
            options.append(floats(-1e6, 1e6).filter(lambda v: v != int(v)))
    elif kind == "boolean":
        options.append(names | st.integers(0, 1))
    elif kind == "string":
        options.append(st.integers() | st.booleans())
        if "pattern" in node:
            options.append(names.filter(lambda v: not re.search(node["pattern"], v)))
        if node.get("minLength"):
            options.append(st.just(""))
    elif kind == ["string", "null"]:
        options.append(st.integers())
    elif kind == ["integer", "null"]:  # (train.step_every: an iteration count, or null)
        if "minimum" in node:
            options.append(st.integers(node["minimum"] - 10**6, node["minimum"] - 1))
        options.append(names | floats(-1e6, 1e6).filter(lambda v: v != int(v)))
    elif "oneOf" in node:  # centre, sigma, group_size, ranks_per_group: a negative number or another word
        options.append(st.integers(-10**6, -1) | names.filter(lambda v: v not in ("last", "auto")))
    assert options, f"no bad value for {node}"
    return st.one_of(options)


def bad_values(path: tuple[str, ...], node: dict):
    """``(path, value)`` pairs where ``value`` breaks the schema's constraint on ``path``."""
    if node.get("type") == "object":  # an unknown key in this mapping
        known = set(node["properties"])
        return names.filter(lambda v: v not in known).map(lambda key: ((*path, key), 1))
    if node.get("type") in ("array", ["array", "null"]):  # (interpolation.between: two names, or null)
        options = [bad_scalars(resolve(node["items"])).map(lambda v: [v]), st.integers()]  # a bad item; no list
        if node.get("minItems", 0) >= 1 and path[0] == "train":  # (an empty analysis list is a sweep of nothing)
            options.append(st.just([]))
        if node.get("minItems", 0) > 1:
            options.append(st.just([0]))
        if node.get("uniqueItems") and path[0] == "train":  # (repeated analysis values are a sweep)
            options.append(st.just([1, 1]))
        return st.one_of(options).map(lambda v: (path, v))
    return bad_scalars(node).map(lambda v: (path, v))


def parent_properties(path: tuple[str, ...]) -> dict:
    node = SCHEMA
    for part in path[:-1]:
        node = resolve(resolve(node)["properties"][part])
    return resolve(node)["properties"]


@needs_snakemake
@SOME
@given(st.sampled_from(KEYS).flatmap(lambda key: bad_values(*key)), st.booleans())
def test_invalid_values_are_rejected_naming_the_key_and_value(bad, in_experiment):
    """One value that breaks the schema's declared constraint for its key (below a minimum, above a maximum, the
    wrong type, not in the enum or pattern, a list too short or with repeats, an unknown key), anywhere in the
    config, also inside a named experiment: build_plan raises ConfigError whose message names the key (its path in
    the config) and shows the value."""
    path, value = bad
    config: dict = {}
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    in_experiment = in_experiment and path[0] in SCHEMA["properties"] and path[0] not in (
        "results", "device", "mpi_launcher")
    if in_experiment:
        config = {"experiments": {"mine": config}}
    with pytest.raises(ConfigError) as error:
        plan_of(config)
    message = str(error.value)
    shown = repr(value[0]) if isinstance(value, list) and len(value) == 1 else repr(value)
    if path[-1] not in parent_properties(path):  # an unknown key: named, with the mapping it is in
        assert repr(path[-1]) in message and "unexpected" in message, message
        if len(path) > 1:
            assert f"{'.'.join(path[:-1])}: " in message, message
    else:
        assert shown in message, message
        assert f"{'.'.join(path)}: " in message or f"{'.'.join(path)}[0]: " in message, message
    if in_experiment:
        assert message.startswith("experiments.mine: "), message


NUMBER_KEYS = [path for path, node in KEYS if node.get("type") == "number"
               or any(branch.get("type") == "number" for branch in node.get("oneOf", []))
               or (node.get("type") == "array" and resolve(node["items"]).get("type") == "number")]


@needs_snakemake
@FEW
@given(st.sampled_from(NUMBER_KEYS), st.booleans())
def test_nan_is_rejected_wherever_a_number_goes(path, as_sweep):
    """YAML's ``.nan`` for any number (every schema bound compares false with it, so the schema alone lets it
    through), given alone or as one value of a sweep, is a ConfigError that names the key."""
    assert NUMBER_KEYS
    value = [math.nan] if path[0] == "train" else [0.5, math.nan] if as_sweep else math.nan
    config: dict = {}
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError) as error:
        plan_of(config)
    assert ".".join(path) in str(error.value) and "nan" in str(error.value), str(error.value)
