"""The step modules end to end on one tiny trajectory (LeNet of widths 3, 4, 16, 12 on the digits, 2 epochs of
batch 128: 25 checkpoints, 988 parameters): directions, eigendirections, landscape (resume, MPI), spectrum
(chunks, resume, MPI) and plot_landscape.

Numbers are checked against independent computations from the HDF5 files: scikit-learn's PCA, numpy least
squares, a plain torch model loaded with ``vector_to_parameters`` and evaluated in float64, dense moments of
the Hessian from HVPs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import trapezoid
from step_helpers import fails, step, train_tiny, without_memory
from threadpoolctl import threadpool_limits

from gradvis_steps import directions, eigendirections, landscape, plot_landscape, spectrum
from gradvis_steps.backends.torch import objective_for_trajectory
from gradvis_steps.backends.torch.models import build_model
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.backends.torch.point_hvp import TorchHessianOperator
from gradvis_steps.core.grid import Grid, evaluate_grid
from gradvis_steps.core.slq import starting_vector
from gradvis_steps.data import load_dataset
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra, merge_spectra
from gradvis_steps.storage.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
EVAL_FRACTION = 0.05  # 90 of the 1797 digits: every evaluation takes about a millisecond
EVAL = ["--eval-fraction", str(EVAL_FRACTION), "--no-progress"]
SPECTRUM = ["--k", "3", "--m", "12", "--dtype", "float64", *EVAL]
RESOLUTION = 5


# ------------------------------------------------------------------------------------------------ helpers
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """Tiny tensors: one thread (torch and BLAS) is fastest, and results do not depend on the host (module
    fixtures too)."""
    previous = _one_thread()
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_thread_test():
    previous = _one_thread()
    yield
    torch.set_num_threads(previous)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def filters(flat: np.ndarray, spec) -> np.ndarray:
    """A conv/linear weight's slice as (n_filters, filter_size)."""
    return np.moveaxis(flat[spec.slice].reshape(spec.shape), spec.filter_axis, 0).reshape(spec.n_filters, -1)


class Reference:
    """Independent loss: a fresh torch model in float64 loaded with ``vector_to_parameters``, one batch."""

    def __init__(self, trajectory: Path):
        with Trajectory(trajectory) as traj:
            config = traj.config
        dataset = load_dataset(config["dataset"])
        self.model = build_model(config["model"], dataset.input_shape, dataset.num_classes).double().eval()
        x, y = dataset.evaluation_subset(EVAL_FRACTION, 0)
        self.x, self.y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)

    def __call__(self, theta: np.ndarray) -> tuple[float, float]:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.as_tensor(np.asarray(theta, dtype=np.float64)),
                                                self.model.parameters())
            logits = self.model(self.x)
            loss = float(F.cross_entropy(logits, self.y))
            accuracy = float((logits.argmax(1) == self.y).double().mean())
        return loss, accuracy


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("steps")


@pytest.fixture(scope="module")
def trained(folder):
    path = folder / "trajectory.h5"
    train_tiny(path, 0, "--epochs", 2)
    with Trajectory(path) as traj:
        assert len(traj) == 25 and traj.dim == 988
    return {"path": path, "sha256": sha256(path)}  # digest taken before any other step reads the file


@pytest.fixture(scope="module")
def trajectory(trained):
    return trained["path"]


@pytest.fixture(scope="module")
def params(trajectory) -> np.ndarray:
    with h5py.File(trajectory) as f:
        return f["params"][()].astype(np.float64)


@pytest.fixture(scope="module")
def layout(trajectory):
    with Trajectory(trajectory) as traj:
        return traj.layout


@pytest.fixture(scope="module")
def reference(trajectory):
    return Reference(trajectory)


@pytest.fixture(scope="module")
def hvp64(trajectory):
    """Float64 HVP at the final checkpoint on the evaluation subset, as numpy -> numpy."""
    with Trajectory(trajectory) as traj:
        objective = objective_for_trajectory(traj, fraction=EVAL_FRACTION, device="cpu", dtype="float64")
        theta = objective.from_numpy(traj.params(-1))
    return lambda v: objective.to_numpy(objective.hvp(theta, objective.from_numpy(np.asarray(v, np.float64))))


@pytest.fixture(scope="module")
def eig_file(folder, trajectory):
    path = folder / "eigendirections.h5"
    step(eigendirections, "--trajectory", trajectory, "--out", path, "--count", 2, "--steps", 40,
         "--dtype", "float64", *EVAL)
    return path


@pytest.fixture(scope="module")
def pca_file(folder, trajectory):
    path = folder / "pca.h5"
    step(directions, "--trajectory", trajectory, "--method", "pca", "--out", path)
    return path


@pytest.fixture(scope="module")
def random_file(folder, trajectory):
    path = folder / "random.h5"
    step(directions, "--trajectory", trajectory, "--method", "random", "--seed", 3, "--out", path)
    return path


@pytest.fixture(scope="module")
def landscape_2d(folder, trajectory, pca_file):
    path = folder / "landscape_pca.h5"
    # one fixed evaluation path (not --grid-batching auto, which times both): the bitwise comparisons below (the
    # centre, a resumed run) hold for results of the same path; the vectorized one agrees to rounding
    step(landscape, "--trajectory", trajectory, "--directions", pca_file, "--resolution", RESOLUTION,
         "--grid-batching", "per_point", "--out", path, *EVAL)
    return path


@pytest.fixture(scope="module")
def landscape_1d(folder, trajectory, random_file):
    path = folder / "landscape_1d.h5"
    step(landscape, "--trajectory", trajectory, "--directions", random_file, "--dims", 1, "--resolution", 7,
         "--border", 0.25, "--min-extent", 1e-3, "--out", path, *EVAL)
    return path


@pytest.fixture(scope="module")
def spectra_every5(folder, trajectory):
    path = folder / "spectra.h5"
    step(spectrum, "--trajectory", trajectory, "--every", 5, "--out", path, "--plot-dir", folder / "spectra",
         *SPECTRUM)
    return path


# ---------------------------------------------------------------------------------------------- directions
def test_random_directions_are_filter_normalized(random_file, params, layout):
    d = load_directions_file(random_file)
    assert d.vectors.shape == (2, 988) and d.vectors.dtype == np.float32
    assert d.method == "random" and d.normalization == "filter" and d.center_iteration == 24
    center = params[-1]
    for row, vector in enumerate(d.vectors.astype(np.float64)):
        # the raw direction: stream (seed, row) of PCG64, standard normal float32 (core.directions)
        raw = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, row]))).standard_normal(
            988, dtype=np.float32).astype(np.float64)
        n_filters = 0
        for spec in layout:
            if spec.kind in ("conv", "linear"):
                got, theta, r = filters(vector, spec), filters(center, spec), filters(raw, spec)
                np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(theta, axis=1), rtol=1e-5)
                cosine = np.sum(got * r, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(r, axis=1))
                np.testing.assert_allclose(cosine, 1.0, atol=1e-6)  # each filter is the raw one, rescaled
                n_filters += spec.n_filters
            else:
                assert spec.kind == "bias" and np.all(vector[spec.slice] == 0), spec.name
        assert n_filters == 3 + 4 + 16 + 12 + 10
    assert not np.allclose(d.vectors[0], d.vectors[1])


def test_pca_directions_equal_sklearn(pca_file, params):
    from sklearn.decomposition import PCA

    d = load_directions_file(pca_file)
    differences = params - params[-1]  # theta_i - theta_last, the last row zero (kept, as Li et al.)
    pca = PCA(n_components=2, svd_solver="full").fit(differences)
    assert d.method == "pca" and d.normalization == "none" and d.center_iteration == 24
    for got, expected in zip(d.vectors.astype(np.float64), pca.components_, strict=True):
        sign = np.sign(got @ expected)
        np.testing.assert_allclose(sign * got, expected, atol=1e-6)
    np.testing.assert_allclose(d.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-7)
    np.testing.assert_allclose(d.explained_variance, pca.explained_variance_, rtol=1e-7)
    assert d.explained_variance_ratio[0] > d.explained_variance_ratio[1] > 0
    assert f"{100 * pca.explained_variance_ratio_[0]:.1f}% var" in d.labels[0]


def test_hessian_directions_are_the_eigenvectors(folder, trajectory, eig_file, hvp64):
    eig = load_directions_file(eig_file)
    assert eig.vectors.shape == (2, 988) and eig.center_iteration == 24
    assert eig.eigenvalues[0] > eig.eigenvalues[1] > 0  # --which largest: descending
    out = folder / "hessian.h5"
    step(directions, "--trajectory", trajectory, "--method", "hessian", "--eigendirections", eig_file, "--out", out)
    d = load_directions_file(out)
    assert d.method == "eigenvector" and d.normalization == "none"
    assert np.array_equal(d.vectors, eig.vectors)  # not normalized: the stored vectors are the eigenvectors
    np.testing.assert_array_equal(d.eigenvalues, eig.eigenvalues)
    for v, value, residual in zip(d.vectors.astype(np.float64), d.eigenvalues, d.residuals, strict=True):
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
        hv = hvp64(v)
        assert (v @ hv) / (v @ v) == pytest.approx(value, rel=1e-5)  # Rayleigh quotient, independent HVP
        assert residual <= 1e-6 * abs(value)  # converged Ritz pair...
        assert np.linalg.norm(hv - value * v) <= 1e-5 * abs(value)  # ...and an eigenvector (up to float32)

    picked = folder / "hessian_picked.h5"
    step(directions, "--trajectory", trajectory, "--method", "hessian", "--eigendirections", eig_file,
         "--pick", 1, 0, "--out", picked)
    p = load_directions_file(picked)
    assert np.array_equal(p.vectors, eig.vectors[::-1]) and np.array_equal(p.eigenvalues, eig.eigenvalues[::-1])


def test_custom_directions(folder, trajectory, params, layout):
    raw = np.random.default_rng(5).standard_normal((2, 988))
    path = folder / "custom.npy"
    np.save(path, raw)
    out = folder / "custom.h5"
    step(directions, "--trajectory", trajectory, "--method", "custom", "--custom", path, "--out", out)
    d = load_directions_file(out)
    assert d.method == "custom" and d.normalization == "filter"
    for got, r in zip(d.vectors.astype(np.float64), raw, strict=True):
        for spec in layout:
            if spec.kind == "bias":
                assert np.all(got[spec.slice] == 0)
                continue
            g, f = filters(got, spec), filters(r, spec)
            np.testing.assert_allclose(np.linalg.norm(g, axis=1), np.linalg.norm(filters(params[-1], spec), axis=1),
                                       rtol=1e-5)
            cosine = np.sum(g * f, axis=1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(f, axis=1))
            np.testing.assert_allclose(cosine, 1.0, atol=1e-6)

    as_is = folder / "custom_none.h5"
    step(directions, "--trajectory", trajectory, "--method", "custom", "--custom", path, "--normalization", "none",
         "--out", as_is)
    assert np.array_equal(load_directions_file(as_is).vectors, raw.astype(np.float32))


def test_directions_bad_input_exits_2(folder, trajectory, eig_file, capsys):
    wrong = folder / "wrong_length.npy"
    np.save(wrong, np.ones((2, 10)))
    out = folder / "never.h5"
    base = ["--trajectory", trajectory, "--out", out]
    err = fails(directions, [*base, "--method", "hessian", "--eigendirections", eig_file, "--pick", 5], capsys)
    assert "[5]" in err and "out of range" in err and "holds 2" in err
    err = fails(directions, [*base, "--method", "hessian"], capsys)
    assert "--eigendirections" in err
    err = fails(directions, [*base, "--method", "custom", "--custom", wrong], capsys)
    assert "(2, 10)" in err and "988" in err
    err = fails(directions, [*base, "--method", "custom"], capsys)
    assert "--custom" in err
    err = fails(directions, ["--trajectory", folder / "missing.h5", "--out", out, "--method", "random"], capsys)
    assert "missing.h5" in err and "does not exist" in err
    err = fails(directions, [*base, "--method", "pca", "--center-iteration", 99], capsys)
    assert "iteration 99" in err
    # eigenvectors of the final point's Hessian cannot span a plane centred at the initial point
    err = fails(directions, [*base, "--method", "hessian", "--eigendirections", eig_file, "--center-iteration", 0],
                capsys)
    assert "Hessian at iteration 24" in err and "centred at iteration 0" in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------- eigendirections
def test_eigendirections_smallest(folder, trajectory, eig_file, hvp64):
    out = folder / "smallest.h5"
    step(eigendirections, "--trajectory", trajectory, "--out", out, "--which", "smallest", "--count", 3,
         "--steps", 40, "--dtype", "float64", *EVAL)
    small = load_directions_file(out)
    values = small.eigenvalues
    assert np.all(np.diff(values) > 0)  # ascending: most negative first
    assert values[0] < 0  # a trained network's Hessian is indefinite
    assert values[-1] < load_directions_file(eig_file).eigenvalues[-1]
    rng = np.random.default_rng(0)
    for v, value in zip(small.vectors.astype(np.float64), values, strict=True):
        assert (v @ hvp64(v)) / (v @ v) == pytest.approx(value, rel=1e-5, abs=1e-7)
    for _ in range(3):  # lambda_min <= any Rayleigh quotient
        u = rng.standard_normal(988)
        assert values[0] < (u @ hvp64(u)) / (u @ u)


def test_eigendirections_count_above_steps_exits_2(folder, trajectory, capsys):
    out = folder / "never_eig.h5"
    err = fails(eigendirections, ["--trajectory", trajectory, "--out", out, "--count", 5, "--steps", 3, *EVAL],
                capsys)
    assert "--count 5" in err and "--steps 3" in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- landscape
def test_landscape_2d(landscape_2d, pca_file, params, reference):
    result = load_landscape(landscape_2d)
    vectors = load_directions_file(pca_file).vectors.astype(np.float64)
    assert result.shape == (RESOLUTION, RESOLUTION) and result.ndim == 2 and result.filled.all()
    assert result.method == "pca" and list(result.iterations) == list(range(25))

    # projection: least squares of theta_i - theta_last on the directions (numpy), the centre at (0, 0)
    differences = params - params[-1]
    coefficients = np.linalg.lstsq(vectors.T, differences.T, rcond=None)[0].T
    np.testing.assert_allclose(result.trajectory, coefficients, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(result.residuals, np.linalg.norm(differences - coefficients @ vectors, axis=1),
                               rtol=1e-6, atol=1e-7)
    assert np.all(result.trajectory[-1] == 0) and result.residuals[-1] == 0

    # axes: the projected trajectory (and the centre) plus a 40% border on each side; an interval shorter
    # than --min-extent (default 1) is first widened to it about its middle
    for axis, c in zip(result.axes, result.trajectory.T, strict=True):
        lo, hi = min(c.min(), 0.0), max(c.max(), 0.0)
        assert axis[0] <= lo - 0.4 * (hi - lo) and axis[-1] >= hi + 0.4 * (hi - lo)
        if hi - lo < 1.0:
            lo, hi = (lo + hi) / 2 - 0.5, (lo + hi) / 2 + 0.5
        extent = hi - lo
        np.testing.assert_allclose([axis[0], axis[-1]], [lo - 0.4 * extent, hi + 0.4 * extent], rtol=1e-12)
        np.testing.assert_allclose(np.diff(axis), (axis[-1] - axis[0]) / (RESOLUTION - 1), rtol=1e-9)

    # the last checkpoint is the centre: its projection is the checkpoint itself
    assert result.trajectory_loss[-1] == result.checkpoint_loss[-1]
    assert result.trajectory_accuracy[-1] == result.checkpoint_accuracy[-1]
    # values against the independent float64 model (the step evaluates in float32)
    for i in (0, 12, 24):
        loss, accuracy = reference(params[i])
        assert result.checkpoint_loss[i] == pytest.approx(loss, rel=2e-5)
        assert result.checkpoint_accuracy[i] == pytest.approx(accuracy, abs=1.5 / len(reference.y))
        projected = params[-1] + result.trajectory[i] @ vectors
        assert result.trajectory_loss[i] == pytest.approx(reference(projected)[0], rel=2e-5)
    x, y = result.axes
    for i, j in ((0, 0), (1, 3), (4, 2)):
        theta = params[-1] + x[i] * vectors[0] + y[j] * vectors[1]
        assert result.loss[i, j] == pytest.approx(reference(theta)[0], rel=2e-5)
    zero_x, zero_y = np.flatnonzero(x == 0), np.flatnonzero(y == 0)
    if zero_x.size and zero_y.size:  # the centre happens to be a grid point
        assert result.loss[zero_x[0], zero_y[0]] == result.checkpoint_loss[-1]


def test_landscape_explicit_range_centre_on_grid(folder, trajectory, pca_file, params, reference, capsys):
    out = folder / "landscape_range.h5"
    step(landscape, "--trajectory", trajectory, "--directions", pca_file, "--range", -1, 1, -0.5, 0.5,
         "--resolution", RESOLUTION, "--grid-batching", "per_point", "--out", out, *EVAL)
    result = load_landscape(out)
    np.testing.assert_array_equal(result.axes[0], np.linspace(-1, 1, RESOLUTION))
    np.testing.assert_array_equal(result.axes[1], np.linspace(-0.5, 0.5, RESOLUTION))
    centre = result.loss[RESOLUTION // 2, RESOLUTION // 2]
    assert result.axes[0][RESOLUTION // 2] == 0 and result.axes[1][RESOLUTION // 2] == 0
    assert centre == result.checkpoint_loss[-1]
    assert centre == pytest.approx(reference(params[-1])[0], rel=2e-5)

    base = ["--trajectory", trajectory, "--directions", pca_file, "--out", folder / "never.h5", *EVAL]
    err = fails(landscape, [*base, "--range", -1, 1, 2], capsys)
    assert "--range needs 4 numbers" in err and "[-1.0, 1.0, 2.0]" in err
    err = fails(landscape, [*base, "--range", 1, -1, 0, 1], capsys)
    assert "(1.0, -1.0)" in err
    one = folder / "one_direction.h5"
    step(directions, "--trajectory", trajectory, "--method", "random", "--count", 1, "--out", one)
    err = fails(landscape, [*base, "--dims", 2, "--directions", one], capsys)
    assert "one_direction.h5 holds 1 direction(s); --dims 2" in err
    err = fails(landscape, [*base, "--directions", folder / "missing_directions.h5"], capsys)
    assert "missing_directions.h5" in err and "does not exist" in err
    assert not (folder / "never.h5").exists()


def test_landscape_1d(landscape_1d, random_file, params, reference):
    result = load_landscape(landscape_1d)
    v = load_directions_file(random_file).vectors[0].astype(np.float64)
    assert result.ndim == 1 and result.shape == (7,) and result.trajectory.shape == (25, 1)
    coefficients = (params - params[-1]) @ v / (v @ v)
    np.testing.assert_allclose(result.trajectory[:, 0], coefficients, rtol=1e-7, atol=1e-10)
    # --grid-batching auto: the projections may run vectorized, equal to the per-point checkpoint to rounding
    assert result.provenance["grid_batching"]["requested"] == "auto"
    assert result.trajectory[-1, 0] == 0
    assert result.trajectory_loss[-1] == pytest.approx(result.checkpoint_loss[-1], rel=1e-6)
    x = result.axes[0]
    lo, hi = min(coefficients.min(), 0.0), max(coefficients.max(), 0.0)
    assert hi - lo > 1e-3  # --min-extent does not act: the range is the trajectory's plus the 25% border
    np.testing.assert_allclose([x[0], x[-1]], [lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)], rtol=1e-7)
    for i in (0, 3, 6):
        assert result.loss[i] == pytest.approx(reference(params[-1] + x[i] * v)[0], rel=2e-5)


def test_grid_evaluation_leaves_model_untouched(trajectory, params, digits):
    with Trajectory(trajectory) as traj:
        config = traj.config
    torch.manual_seed(0)
    model = build_model(config["model"], digits.input_shape, digits.num_classes)
    model.train()
    torch.nn.utils.vector_to_parameters(torch.as_tensor(params[12], dtype=torch.float32), model.parameters())
    before = {name: t.clone() for name, t in model.state_dict().items()}
    grads_before = [p.requires_grad for p in model.parameters()]
    x, y = digits.evaluation_subset(EVAL_FRACTION, 0)
    objective = TorchObjective(model, x, y, batch_size=32)
    center = params[-1].astype(np.float32)
    dirs = np.random.default_rng(1).standard_normal((2, 988)).astype(np.float32)
    values = evaluate_grid(objective, center, dirs, Grid.from_ranges([(-1, 1), (-1, 1)], 3), progress=False)
    assert values.filled.all() and np.isfinite(values.loss).all()
    objective.hvp(objective.from_numpy(center), objective.from_numpy(dirs[0]))
    objective.grad(objective.from_numpy(center))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert model.training and [p.requires_grad for p in model.parameters()] == grads_before
    assert all(p.grad is None for p in model.parameters())


class Interrupted(Exception):
    pass


def test_landscape_resume_evaluates_only_missing_points(folder, trajectory, pca_file, landscape_2d, monkeypatch,
                                                        capsys):
    out = folder / "resumed" / "landscape.h5"
    argv = ["--trajectory", trajectory, "--directions", pca_file, "--resolution", RESOLUTION, "--out", out,
            "--grid-batching", "per_point", *EVAL]
    # Every loss evaluation, single (evaluate) or batched (evaluate_many), runs _evaluate_point once per point; the
    # 25 checkpoints are evaluated first (a non-finite one must not span the grid), then the grid.
    original = TorchObjective._evaluate_point
    n_points, n_done, n_checkpoints = RESOLUTION**2, 9, 25
    calls = [0]

    def failing(self, *args):
        calls[0] += 1
        if calls[0] > n_checkpoints + n_done:
            raise Interrupted
        return original(self, *args)

    monkeypatch.setattr(landscape, "FLUSH_SECONDS", 0.0)  # flush after every point
    monkeypatch.setattr(landscape, "POINTS_PER_CALL", 1)  # results of a batch arrive at its end: one per batch
    monkeypatch.setattr(TorchObjective, "_evaluate_point", failing)
    with pytest.raises(Interrupted):
        landscape.main([str(a) for a in argv])
    partials = sorted(out.parent.glob(".landscape.h5.partial-*.npz"))
    assert len(partials) == 1 and not out.exists()
    with np.load(partials[0]) as data:
        assert sorted(data["indices"]) == list(range(n_done))

    # a stale partial file of other settings lies beside it: it must be ignored, not merged
    np.savez(out.parent / ".landscape.h5.partial-7.npz", signature="another run", indices=np.arange(n_points),
             loss=np.zeros(n_points), accuracy=np.zeros(n_points))
    calls[0] = 0

    def counting(self, *args):
        calls[0] += 1
        return original(self, *args)

    monkeypatch.setattr(TorchObjective, "_evaluate_point", counting)
    capsys.readouterr()
    step(landscape, *argv)
    assert calls[0] == (n_points - n_done) + 25 + n_checkpoints  # missing grid points, projections, checkpoints
    assert f"resuming: {n_done} of {n_points} grid points restored" in capsys.readouterr().err  # --no-progress too
    resumed, full = load_landscape(out), load_landscape(landscape_2d)
    for name in ("loss", "accuracy", "trajectory", "trajectory_loss", "checkpoint_loss", "residuals"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name), err_msg=name)
    for axis_resumed, axis_full in zip(resumed.axes, full.axes, strict=True):
        np.testing.assert_array_equal(axis_resumed, axis_full)
    assert not list(out.parent.glob(".landscape.h5.partial-*"))


# --------------------------------------------------------------------------------------------------- MPI
MPI_DRIVER = """
import sys
from gradvis_steps import landscape, spectrum
trajectory, directions, out = sys.argv[1:4]
evaluation = ["--eval-fraction", "0.05", "--no-progress"]
landscape.main(["--trajectory", trajectory, "--directions", directions, "--resolution", "5", "--grid-batching",
                "per_point",  # bitwise equality needs one fixed path on every rank (auto times both)
                "--out", out + "/landscape.h5", *evaluation])
spectrum.main(["--trajectory", trajectory, "--iterations", "0", "24", "--k", "3", "--m", "8",
               "--out", out + "/spectra.h5", *evaluation])
spectrum.main(["--trajectory", trajectory, "--iterations", "24", "--k", "3", "--m", "8", "--group-size", "2",
               "--hvp-mode", "double_backprop",  # auto would time blocks of 2 (once per run, not once for both)
               "--out", out + "/spectra_groups.h5", *evaluation])
"""


def test_mpi_runs_equal_serial_bitwise(folder, trajectory, pca_file):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        print("skipping: mpiexec not found next to the interpreter or on PATH")
        pytest.skip("mpiexec not found")
    pytest.importorskip("mpi4py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK"):
        env.pop(name, None)
    outputs = {}
    for name, launcher in (("serial", []), ("mpi", [mpiexec, "-n", "2"])):
        out = folder / f"mpi_{name}"
        out.mkdir()
        result = subprocess.run([*launcher, sys.executable, "-c", MPI_DRIVER, str(trajectory), str(pca_file),
                                 str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = out
    serial = load_landscape(outputs["serial"] / "landscape.h5")
    parallel = load_landscape(outputs["mpi"] / "landscape.h5")
    assert serial.provenance["ranks"] == 1 and parallel.provenance["ranks"] == 2
    for name in ("loss", "accuracy", "trajectory_loss", "trajectory_accuracy", "checkpoint_loss",
                 "checkpoint_accuracy", "trajectory"):
        np.testing.assert_array_equal(getattr(parallel, name), getattr(serial, name), err_msg=name)
    serial_spectra = load_spectra(outputs["serial"] / "spectra.h5")
    parallel_spectra = load_spectra(outputs["mpi"] / "spectra.h5")
    assert parallel_spectra.attrs["provenance"]["ranks"] == 2
    assert sorted(parallel_spectra.entries) == sorted(serial_spectra.entries) == [0, 24]
    for iteration, entry in serial_spectra.entries.items():
        other = parallel_spectra.entries[iteration]
        for name in ("nodes", "weights", "alpha1", "grid", "density"):
            np.testing.assert_array_equal(getattr(other, name), getattr(entry, name), err_msg=f"{iteration} {name}")
    # lockstep groups of 2 (vectors 0-1 and 2): each rank takes a whole group, so the bits are the serial run's,
    # and the grouped quadratures equal one-chain-at-a-time ones to float tolerance
    grouped = {name: load_spectra(outputs[name] / "spectra_groups.h5") for name in ("serial", "mpi")}
    assert grouped["mpi"].attrs["group_size"] == grouped["serial"].attrs["group_size"] == 2
    for name in ("nodes", "weights", "alpha1"):
        np.testing.assert_array_equal(getattr(grouped["mpi"].entries[24], name),
                                      getattr(grouped["serial"].entries[24], name), err_msg=name)
    one_by_one = serial_spectra.entries[24]
    np.testing.assert_allclose(grouped["serial"].entries[24].alpha1, one_by_one.alpha1, rtol=1e-4)
    np.testing.assert_allclose(grouped["serial"].entries[24].nodes[:, -1], one_by_one.nodes[:, -1], rtol=1e-4)
    expected_hvp = {"mode": "double_backprop", "chosen_by": "config", "block": 2}
    assert without_memory(grouped["serial"].attrs["provenance"]["hvp"]) == expected_hvp
    assert not list(outputs["mpi"].glob(".*partial*"))


#: Algorithm 4 and the hybrid: the step modules (spectrum one vector and blocks of 2, interpolate, eigendirections)
#: and the objective's reductions (loss, accuracy, gradient, HVP, kept-graph matvec and matmat) under the modes given,
#: on the 75 evaluation samples in batches of 32 (32 + 32 + 11: uneven shards over 2 and 3 ranks)
DATA_DRIVER = """
import sys
import numpy as np
import torch
from gradvis_steps import eigendirections, interpolate, spectrum
from gradvis_steps.backends.torch import objective_for_trajectory
from gradvis_steps.core.parallel import parallel_layout, world
from gradvis_steps.storage.trajectory import Trajectory

trajectory, out, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
common = ["--eval-fraction", "0.05", "--batch-size", "32", "--dtype", "float64", "--hvp-mode", "double_backprop",
          "--no-progress"]
slq = ["--k", "3", "--m", "8", *common]
for mode in modes:  # iteration | data | hybrid:D
    name, _, d = mode.partition(":")
    how = ["--parallel", name, *(["--ranks-per-group", d] if d else [])]
    for group in ("1", "2"):
        assert spectrum.main(["--trajectory", trajectory, "--iterations", "24", *slq, "--group-size", group, *how,
                              "--out", f"{out}/spectra_{name}_g{group}.h5"]) == 0
    assert interpolate.main(["--trajectory-a", trajectory, "--trajectory-b", trajectory, "--points", "2",
                             "--margin", "0.5", *slq, *how, "--out-line", f"{out}/line_{name}.h5",
                             "--out-spectra", f"{out}/line_spectra_{name}.h5"]) == 0
assert eigendirections.main(["--trajectory", trajectory, "--count", "2", "--steps", "20", *common,
                             "--out", f"{out}/eig.h5"]) == 0
comm = world()
with Trajectory(trajectory) as traj:
    objective = objective_for_trajectory(traj, fraction=0.05, batch_size=32, device="cpu", dtype="float64",
                                         data_comm=parallel_layout(comm, "data").data)
    theta = objective.from_numpy(traj.params(13))
V = torch.randn(2, objective.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
operator, evaluation = objective.hvp_operator(theta), objective.evaluate(theta)
arrays = {"grad": objective.grad(theta), "hvp": objective.hvp(theta, V[0]), "matvec": operator(V[0]),
          "matmat": operator.matmat(V), "loss": evaluation.loss, "accuracy": evaluation.accuracy,
          "n_samples": objective.n_samples, "shard": len(objective.y), "block_size": min(operator.block_size, 99)}
np.savez(f"{out}/functions_{comm.rank}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
"""


def _run_driver(driver: str, ranks: int | None, *args: object) -> subprocess.CompletedProcess:
    """``python -c driver args`` under ``mpiexec -n ranks`` (None: serial) in a clean environment; must succeed."""
    launcher = []
    if ranks is not None:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        if mpiexec is None:
            print("skipping: mpiexec not found next to the interpreter or on PATH")
            pytest.skip("mpiexec not found")
        pytest.importorskip("mpi4py")
        launcher = [mpiexec, "-n", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK"):
        env.pop(name, None)
    result = subprocess.run([*launcher, sys.executable, "-c", driver, *map(str, args)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data_serial(folder, trajectory) -> Path:
    """The data-parallel driver run serially: the independent truth of the MPI runs."""
    out = folder / "data_serial"
    out.mkdir()
    _run_driver(DATA_DRIVER, None, trajectory, out, "iteration")
    return out


def _assert_spectra_close(path: Path, truth: Path, *, bitwise: bool, ranks: int, mode: str, d: int) -> None:
    mine, serial = load_spectra(path), load_spectra(truth)
    provenance = mine.attrs["provenance"]
    assert (provenance["ranks"], provenance["parallel"], provenance["ranks_per_group"]) == (ranks, mode, d), path
    assert sorted(mine.entries) == sorted(serial.entries), path
    for key, entry in serial.entries.items():
        for name in ("nodes", "weights", "alpha1"):
            got, want = getattr(mine.entries[key], name), getattr(entry, name)
            if bitwise:
                np.testing.assert_array_equal(got, want, err_msg=f"{path.name} {key} {name}")
            else:  # the shards' sums meet in another order: float64 rounding, grown a little by 8 Lanczos steps
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(),
                                           err_msg=f"{path.name} {key} {name}")


@pytest.mark.parametrize("ranks, modes", [(2, ("iteration", "data")), (3, ("iteration", "data", "hybrid:2"))])
def test_mpi_data_parallel_and_hybrid_equal_serial(folder, trajectory, data_serial, ranks, modes):
    """Under ``mpiexec -n 2`` and ``-n 3`` (shards of 64 + 11 and 32 + 32 + 11 samples; at 3 ranks the hybrid
    groups are ranks {0, 1} and {2}): iteration parallel equals the serial run bitwise, data parallel and hybrid to
    float tolerance, for the spectrum (one vector and lockstep blocks of 2), interpolate and eigendirections steps
    and for the objective's loss, accuracy, gradient and Hessian products."""
    out = folder / f"data_mpi_{ranks}"
    out.mkdir()
    result = _run_driver(DATA_DRIVER, ranks, trajectory, out, *modes)
    for mode in modes:
        name, _, d = mode.partition(":")
        d = ranks if name == "data" else int(d or 1)
        for group in ("1", "2"):
            _assert_spectra_close(out / f"spectra_{name}_g{group}.h5", data_serial / f"spectra_iteration_g{group}.h5",
                                  bitwise=name == "iteration", ranks=ranks, mode=name, d=d)
        _assert_spectra_close(out / f"line_spectra_{name}.h5", data_serial / "line_spectra_iteration.h5",
                              bitwise=name == "iteration", ranks=ranks, mode=name, d=d)
        line, serial_line = load_landscape(out / f"line_{name}.h5"), load_landscape(data_serial / "line_iteration.h5")
        np.testing.assert_allclose(line.loss, serial_line.loss, rtol=1e-12, err_msg=name)
        np.testing.assert_array_equal(line.accuracy, serial_line.accuracy, err_msg=name)
    if "hybrid:2" in modes:
        assert "does not divide the 3 MPI ranks" in result.stderr
    eig, serial_eig = load_directions_file(out / "eig.h5"), load_directions_file(data_serial / "eig.h5")
    assert eig.provenance["parallel"] == "data" and eig.provenance["ranks_per_group"] == ranks
    np.testing.assert_allclose(eig.eigenvalues, serial_eig.eigenvalues, rtol=1e-9)
    np.testing.assert_allclose(eig.vectors, serial_eig.vectors, atol=1e-5)  # float32 on disk
    serial = np.load(data_serial / "functions_0.npz")
    shards = []
    for rank in range(ranks):
        got = np.load(out / f"functions_{rank}.npz")
        shards.append(int(got["shard"]))
        assert int(got["n_samples"]) == int(serial["n_samples"]) == 75
        assert int(got["block_size"]) == int(serial["block_size"])
        for name in ("grad", "hvp", "matvec", "matmat", "loss"):
            np.testing.assert_allclose(got[name], serial[name], rtol=1e-12, atol=1e-14, err_msg=f"{rank} {name}")
        assert float(got["accuracy"]) == float(serial["accuracy"])
    assert shards == ([64, 11] if ranks == 2 else [32, 32, 11])


# ------------------------------------------------------------------------------------------------ spectrum
def test_spectrum_every_summaries_and_plots(folder, trajectory, spectra_every5, params):
    spectra = load_spectra(spectra_every5)
    assert sorted(spectra.entries) == [0, 5, 10, 15, 20, 24]
    assert spectra.attrs["k"] == 3 and spectra.attrs["m"] == 12 and spectra.attrs["dim"] == 988
    for iteration, entry in spectra.entries.items():
        assert entry.iteration == iteration and entry.nodes.shape == entry.weights.shape == (3, 12)
        np.testing.assert_allclose(entry.weights.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(np.diff(entry.nodes, axis=1) >= 0)
        assert trapezoid(entry.density, entry.grid) == pytest.approx(1.0, abs=1e-6)
        s = entry.summary
        assert s["lambda_max"] == entry.nodes.max() and s["lambda_min"] == entry.nodes.min()
        assert s["trace_estimate"] == pytest.approx(988 * entry.alpha1.mean(), rel=1e-12)
        # the first moment of each quadrature is v^T H v = alpha1 (Gauss quadrature is exact there)
        np.testing.assert_allclose(np.sum(entry.weights * entry.nodes, axis=1), entry.alpha1, rtol=1e-9,
                                   atol=1e-12 * np.abs(entry.nodes).max())
        png = folder / "spectra" / f"iter_{iteration:06d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with h5py.File(spectra_every5) as f:
        np.testing.assert_array_equal(f["iterations"][()], [0, 5, 10, 15, 20, 24])
        np.testing.assert_array_equal(f["summary/lambda_max"][()],
                                      [spectra.entries[i].summary["lambda_max"] for i in (0, 5, 10, 15, 20, 24)])


def test_spectrum_against_hvp_at_last_checkpoint(spectra_every5, hvp64):
    """alpha1_i = v_i^T H v_i and sum_j w_ij l_ij^2 = ||H v_i||^2 for the documented starting vectors."""
    entry = load_spectra(spectra_every5).entries[24]
    for i in range(3):
        v = starting_vector(988, 0, i)
        hv = hvp64(v)
        assert entry.alpha1[i] == pytest.approx(v @ hv, rel=1e-9, abs=1e-12)
        assert np.sum(entry.weights[i] * entry.nodes[i] ** 2) == pytest.approx(hv @ hv, rel=1e-8)


def test_spectrum_in_lockstep_groups_against_hvp(folder, trajectory, hvp64):
    """The same identities for chains run in lockstep groups (here all three vectors in one group, float64)."""
    out = folder / "spectra_lockstep.h5"
    step(spectrum, "--trajectory", trajectory, "--iterations", 24, "--out", out, "--group-size", 3,
         "--hvp-mode", "forward_over_reverse", *SPECTRUM)
    spectra = load_spectra(out)
    assert spectra.attrs["group_size"] == 3
    assert without_memory(spectra.attrs["provenance"]["hvp"]) == {"mode": "forward_over_reverse", "chosen_by": "config",
                                                                  "block": 3}
    entry = spectra.entries[24]
    for i in range(3):
        v = starting_vector(988, 0, i)
        hv = hvp64(v)
        assert entry.alpha1[i] == pytest.approx(v @ hv, rel=1e-9, abs=1e-12)
        assert np.sum(entry.weights[i] * entry.nodes[i] ** 2) == pytest.approx(hv @ hv, rel=1e-8)


def test_spectrum_iterations_and_chunks_equal_full_run(folder, trajectory, spectra_every5, capsys):
    full = load_spectra(spectra_every5).entries
    chosen = folder / "spectra_chosen.h5"
    step(spectrum, "--trajectory", trajectory, "--iterations", 5, 24, "--out", chosen, *SPECTRUM)
    parts = [folder / "spectra_part1.h5", folder / "spectra_part2.h5"]
    for i, part in enumerate(parts, start=1):
        step(spectrum, "--trajectory", trajectory, "--every", 5, "--chunk", f"{i}/2", "--out", part, *SPECTRUM)
    assert sorted(load_spectra(parts[0]).entries) == [0, 5, 10]
    merged = merge_spectra(parts).entries
    assert sorted(load_spectra(chosen).entries) == [5, 24] and sorted(merged) == sorted(full)
    for entries in (load_spectra(chosen).entries, merged):
        for iteration, entry in entries.items():
            for name in ("nodes", "weights", "alpha1", "grid", "density"):
                np.testing.assert_array_equal(getattr(entry, name), getattr(full[iteration], name))
            assert entry.summary == full[iteration].summary

    base = ["--trajectory", trajectory, "--out", folder / "never_spectra.h5", *SPECTRUM]
    assert "'3/2'" in fails(spectrum, [*base, "--chunk", "3/2"], capsys)
    assert "[99]" in fails(spectrum, [*base, "--iterations", 99], capsys)
    assert "--sigma must be > 0, got -1.0" in fails(spectrum, [*base, "--sigma", -1], capsys)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error: usage, then the named value
        spectrum.main([str(a) for a in [*base, "--hvp-memory-mb", -1]])
    assert exit_info.value.code == 2
    assert "--hvp-memory-mb: must be 'auto' or a number >= 0, got -1" in capsys.readouterr().err


def test_spectrum_resume_reuses_partial_entries(folder, trajectory, spectra_every5, monkeypatch, capsys):
    full = load_spectra(spectra_every5).entries
    out = folder / "resume" / "spectra.h5"
    argv = ["--trajectory", trajectory, "--iterations", 0, 5, 24, "--out", out, *SPECTRUM]
    original = TorchHessianOperator.__call__  # the Hessian operator SLQ calls
    per_checkpoint = 3 * 12  # k * m HVPs
    calls = [0]

    def failing(self, v):
        calls[0] += 1
        if calls[0] > per_checkpoint + 5:  # dies inside the second checkpoint
            raise Interrupted
        return original(self, v)

    monkeypatch.setattr(TorchHessianOperator, "__call__", failing)
    with pytest.raises(Interrupted):
        spectrum.main([str(a) for a in argv])
    partial = out.with_name("spectra.h5.partial")
    assert not out.exists() and sorted(load_spectra(partial).entries) == [0]

    calls[0] = 0

    def counting(self, v):
        calls[0] += 1
        return original(self, v)

    monkeypatch.setattr(TorchHessianOperator, "__call__", counting)
    capsys.readouterr()
    step(spectrum, *argv)
    assert calls[0] == 2 * per_checkpoint  # checkpoint 0 came from the partial file
    assert "resuming: 1 of 3 checkpoint(s) restored" in capsys.readouterr().err  # logged under --no-progress
    resumed = load_spectra(out).entries
    assert sorted(resumed) == [0, 5, 24] and not partial.exists()
    for iteration, entry in resumed.items():
        for name in ("nodes", "weights", "alpha1", "density"):
            np.testing.assert_array_equal(getattr(entry, name), getattr(full[iteration], name))


# ------------------------------------------------------------------------------------------ plot_landscape
def test_plot_landscape_2d_files(folder, landscape_2d):
    paths = {kind: folder / "plots" / f"pca_{kind}.{ext}"
             for kind, ext in (("contour", "png"), ("surface", "png"), ("vtk", "vtk"))}
    step(plot_landscape, "--landscape", landscape_2d, "--contour", paths["contour"], "--surface", paths["surface"],
         "--vtk", paths["vtk"], "--log-levels")
    for kind in ("contour", "surface"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = paths["vtk"].read_text().splitlines()
    assert lines[0].startswith("# vtk DataFile") and f"DIMENSIONS {RESOLUTION} {RESOLUTION} 1" in lines
    n = RESOLUTION**2
    start = lines.index(f"POINTS {n} double") + 1
    points = np.loadtxt(lines[start:start + n])
    result = load_landscape(landscape_2d)
    np.testing.assert_allclose(points[:, 2], result.loss.T.ravel(), rtol=1e-9)  # x fastest
    np.testing.assert_allclose(points[:RESOLUTION, 0], result.axes[0], rtol=1e-9, atol=1e-12)


def test_plot_landscape_1d_line(folder, landscape_1d, capsys):
    line = folder / "plots" / "line.png"
    step(plot_landscape, "--landscape", landscape_1d, "--line", line)
    assert line.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = fails(plot_landscape, ["--landscape", landscape_1d, "--contour", folder / "plots" / "no.png"], capsys)
    assert "1D landscape" in err and "--contour" in err
    assert not (folder / "plots" / "no.png").exists()


def test_plot_landscape_line_on_2d_exits_2(folder, landscape_2d):
    target = folder / "plots" / "never_line.png"
    result = subprocess.run([sys.executable, "-m", "gradvis_steps.plot_landscape", "--landscape", str(landscape_2d),
                             "--line", str(target)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert err.startswith(f"error: {landscape_2d}") and "\n" not in err, err
    assert "2D landscape" in err and "--line needs a 1D one" in err
    assert not target.exists()


# -------------------------------------------------------------------------------------------------- last
def test_trajectory_file_unchanged_by_the_steps(trained, landscape_2d, landscape_1d, spectra_every5, eig_file):
    assert sha256(trained["path"]) == trained["sha256"]


# ------------------------------------------------------------------------------------------ unreadable inputs
def _unreadable_copies(folder: Path, source: Path, name: str) -> list[Path]:
    """An empty file and a copy of ``source`` cut in half, named like it."""
    empty, cut = folder / f"empty_{name}", folder / f"truncated_{name}"
    empty.write_bytes(b"")
    data = Path(source).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return [empty, cut]


def test_every_step_names_an_empty_or_truncated_input_in_one_line(folder, trajectory, pca_file, landscape_2d,
                                                                   spectra_every5, capsys):
    from gradvis_steps import frames, interpolate
    from gradvis_steps import merge_spectra as merge_step

    bad = folder / "unreadable"
    bad.mkdir()
    out = bad / "out.h5"
    for traj in _unreadable_copies(bad, trajectory, "trajectory.h5"):
        for module, argv in ((landscape, ["--trajectory", traj, "--directions", pca_file, "--out", out]),
                             (spectrum, ["--trajectory", traj, "--out", out]),
                             (directions, ["--trajectory", traj, "--method", "pca", "--out", out]),
                             (eigendirections, ["--trajectory", traj, "--out", out]),
                             (interpolate, ["--trajectory-a", traj, "--trajectory-b", trajectory, "--out-line", out])):
            assert str(traj) in fails(module, argv, capsys), (module.__name__, traj.name)
    for directions_file in _unreadable_copies(bad, pca_file, "pca.h5"):
        argv = ["--trajectory", trajectory, "--directions", directions_file, "--out", out]
        assert str(directions_file) in fails(landscape, argv, capsys)
    for landscape_file in _unreadable_copies(bad, landscape_2d, "landscape.h5"):
        argv = ["--landscape", landscape_file, "--contour", bad / "c.png"]
        assert str(landscape_file) in fails(plot_landscape, argv, capsys)
        argv = ["training", "--landscape", landscape_file, "--spectra", spectra_every5, "--out-dir", bad]
        assert str(landscape_file) in fails(frames, argv, capsys)
    for spectra_file in _unreadable_copies(bad, spectra_every5, "spectra.h5"):
        assert str(spectra_file) in fails(merge_step, ["--inputs", spectra_file, "--out", out], capsys)
    # train --resume from a partial file that was cut short starts over, with a warning (issue 27):
    # test_filesystem_faults.test_training_starts_over_on_an_unreadable_partial_file
