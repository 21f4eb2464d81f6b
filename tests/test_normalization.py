"""Filter-wise / layer-wise normalization (eq. 2) and the raw directions it is applied to."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from gradvis_steps.core.directions import random_direction, random_directions
from gradvis_steps.core.layout import ParameterLayout
from gradvis_steps.core.normalization import normalize_direction, normalize_directions
from gradvis_steps.storage.directions import load_directions


def _layout() -> ParameterLayout:
    return ParameterLayout.from_shapes(
        [
            ("conv.weight", (4, 3, 3, 3), "conv", 0),  # PyTorch conv: filters along axis 0
            ("conv.bias", (4,), "bias", None),
            ("bn.weight", (4,), "batchnorm", None),
            ("bn.bias", (4,), "batchnorm", None),
            ("tfconv.kernel", (3, 3, 4, 5), "conv", -1),  # TensorFlow conv: filters along the last axis
            ("ln.weight", (5,), "norm", None),
            ("fc.weight", (6, 7), "linear", 0),
            ("fc.bias", (6,), "bias", None),
            ("scale", (2, 3), "other", None),
            ("deconv.weight", (3, 4, 2, 2), "conv", 1),  # PyTorch ConvTranspose: filters along axis 1
        ]
    )


def _filters(flat: np.ndarray, layout: ParameterLayout, name: str) -> np.ndarray:
    """Independent reference: filters as rows, by explicit indexing (no moveaxis)."""
    spec = layout[name]
    t = flat[spec.slice].reshape(spec.shape)
    axis = spec.filter_axis % len(spec.shape)
    return np.stack([np.take(t, j, axis=axis).ravel() for j in range(spec.shape[axis])])


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_filter_norms_match_weights(dtype, rtol):
    layout = _layout()
    rng = np.random.default_rng(0)
    theta = rng.normal(size=layout.size).astype(dtype) * rng.uniform(0.1, 5, size=layout.size).astype(dtype)
    d = random_direction(layout.size, seed=1, dtype=dtype)
    out = normalize_direction(d, theta, layout)
    assert out.dtype == dtype and out.shape == d.shape
    for name in ("conv.weight", "tfconv.kernel", "fc.weight", "deconv.weight"):
        got = np.linalg.norm(_filters(out, layout, name).astype(np.float64), axis=1)
        want = np.linalg.norm(_filters(theta, layout, name).astype(np.float64), axis=1)
        np.testing.assert_allclose(got, want, rtol=rtol)
        # direction of each filter preserved (positive multiple of the raw filter)
        raw = _filters(d, layout, name).astype(np.float64)
        cos = np.sum(raw * _filters(out, layout, name), axis=1) / (np.linalg.norm(raw, axis=1) * got)
        np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    for name in ("conv.bias", "bn.weight", "bn.bias", "ln.weight", "fc.bias"):
        assert np.all(out[layout[name].slice] == 0)
    # "other" without filter axis: normalized as a whole tensor
    sl = layout["scale"].slice
    np.testing.assert_allclose(
        np.linalg.norm(out[sl].astype(float)), np.linalg.norm(theta[sl].astype(float)), rtol=rtol
    )


def test_layer_normalization_and_ignore_option():
    layout = _layout()
    rng = np.random.default_rng(2)
    theta = rng.normal(size=layout.size) * 3
    d = rng.normal(size=layout.size)
    out = normalize_direction(d, theta, layout, method="layer", ignore=("batchnorm",))
    for spec in layout:
        if spec.kind == "batchnorm":
            assert np.all(out[spec.slice] == 0)
        else:  # biases and norms kept (not ignored) and scaled as one unit
            np.testing.assert_allclose(np.linalg.norm(out[spec.slice]), np.linalg.norm(theta[spec.slice]), rtol=1e-12)
            np.testing.assert_allclose(
                out[spec.slice] / d[spec.slice], np.linalg.norm(theta[spec.slice]) / np.linalg.norm(d[spec.slice])
            )
    # method none: unchanged except ignored kinds
    out = normalize_direction(d, theta, layout, method="none")
    assert np.all(out[layout["conv.weight"].slice] == d[layout["conv.weight"].slice])
    assert np.all(out[layout["bn.weight"].slice] == 0)
    assert np.array_equal(normalize_direction(d, theta, layout, method="none", ignore=()), d)
    with pytest.raises(ValueError):
        normalize_direction(d, theta, layout, method="weight")


def test_zero_filters_stay_zero_without_nan():
    layout = _layout()
    rng = np.random.default_rng(3)
    theta = rng.normal(size=layout.size)
    d = rng.normal(size=layout.size)
    spec = layout["conv.weight"]
    t = d[spec.slice].reshape(spec.shape)
    t[1] = 0.0  # one whole filter of the direction is zero
    d[spec.slice] = t.ravel()
    tf = layout["tfconv.kernel"]
    t = d[tf.slice].reshape(tf.shape)
    t[..., 2] = 0.0
    d[tf.slice] = t.ravel()
    th = theta[spec.slice].reshape(spec.shape)
    th[3] = 0.0  # a zero weight filter: its direction filter becomes 0
    theta[spec.slice] = th.ravel()
    out = normalize_direction(d, theta, layout)
    assert np.all(np.isfinite(out))
    filt = _filters(out, layout, "conv.weight")
    assert np.all(filt[1] == 0) and np.all(filt[3] == 0)
    assert np.all(_filters(out, layout, "tfconv.kernel")[2] == 0)
    np.testing.assert_allclose(np.linalg.norm(filt[0]), np.linalg.norm(_filters(theta, layout, "conv.weight")[0]))


def test_normalize_directions_stack_and_input_does_not_change():
    layout = _layout()
    theta = np.random.default_rng(4).normal(size=layout.size)
    dirs = random_directions(layout.size, seed=5, count=2, dtype=np.float64)
    before = dirs.copy()
    out = normalize_directions(dirs, theta, layout)
    assert out.shape == dirs.shape and np.array_equal(dirs, before)
    np.testing.assert_array_equal(out[1], normalize_direction(dirs[1], theta, layout))
    with pytest.raises(ValueError):
        normalize_direction(dirs[0][:-1], theta[:-1], layout)


def test_random_direction_seeded_and_signed():
    a = random_direction(10_000, seed=7, index=0)
    b = random_direction(10_000, seed=7, index=0)
    c = random_direction(10_000, seed=7, index=1)
    assert a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a < 0).mean() > 0.45 and (a > 0).mean() > 0.45  # genuinely signed, not |N(0,1)|
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05
    stack = random_directions(100, seed=7, count=3, dtype=np.float64)
    np.testing.assert_array_equal(stack[1], random_direction(100, 7, 1, np.float64))


def test_load_directions_formats_and_errors(tmp_path):
    dim = 12
    v = np.arange(dim, dtype=np.float32) - 5
    np.save(tmp_path / "d.npy", v)
    np.testing.assert_array_equal(load_directions(tmp_path / "d.npy", dim), v[None])
    np.savez(tmp_path / "d.npz", x=v, y=2 * v)
    np.testing.assert_array_equal(load_directions(tmp_path / "d.npz", dim, key="y"), 2 * v[None])
    with pytest.raises(ValueError, match="key"):
        load_directions(tmp_path / "d.npz", dim)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["stack"] = np.stack([v, -v])
        g = f.create_group("xdirection")  # Li et al. style: one dataset per tensor
        g["0"] = v[:4].reshape(2, 2)
        g["1"] = v[4:]
    np.testing.assert_array_equal(load_directions(tmp_path / "d.h5", dim, key="stack"), np.stack([v, -v]))
    np.testing.assert_array_equal(load_directions(tmp_path / "d.h5", dim, key="xdirection"), v[None])
    with pytest.raises(ValueError, match="expected"):
        load_directions(tmp_path / "d.npy", dim + 1)
    np.save(tmp_path / "bad.npy", np.array([np.nan] * dim))
    with pytest.raises(ValueError, match="NaN"):
        load_directions(tmp_path / "bad.npy", dim)
