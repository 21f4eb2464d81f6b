"""Divergence is reported, not silent: training stops at the first non-finite batch loss (or keeps the checkpoints
before it), analyses skip non-finite checkpoints with a warning recorded in their output, a non-finite centre is a
one-line error, and grid points that overflow are stored as evaluated and drawn masked.

The diverging runs are real: LeNet on the digits with lr 1e6 and full batches (one step per epoch) reaches a NaN
batch loss at iteration 2 in both frameworks. Non-finite checkpoints of older trajectories are made by editing a
copy of a trained one with h5py (a NaN parameter; parameters scaled by 1e30 whose loss overflows)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from gradvis_steps import (
    cli,
    compare,
    directions,
    eigendirections,
    frames,
    interpolate,
    landscape,
    merge_spectra,
    moving_frame,
    plot_landscape,
    plot_spectra,
    spectrum,
)
from gradvis_steps import train as train_step
from gradvis_steps.core.grid import LandscapeResult
from gradvis_steps.core.training import DivergenceGuard, TrainingDiverged, TrainSettings
from gradvis_steps.render.landscape_plots import plot_contour, plot_line, plot_surface
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape, save_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory, partial_path

MODEL = ["--dataset", "digits", "--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--no-progress"]
#: one step per epoch (batch 2048 > the 1437 training digits): the NaN at iteration 2 comes after two epoch boundaries
DIVERGING = [*MODEL, "--epochs", "4", "--batch-size", "2048", "--lr", "1e6"]
EVAL = ["--eval-fraction", "0.05", "--no-progress"]
SLQ = ["--k", "2", "--m", "6", *EVAL]


def run(module, argv, capsys) -> tuple[int, str]:
    """Run a step as its command line does: (exit status, stderr)."""
    capsys.readouterr()
    status = cli.run(module.main, [str(a) for a in argv])
    return status, capsys.readouterr().err


def one_line_error(module, argv, capsys) -> str:
    """The step must exit 2 with one ``error:`` line, returned."""
    status, err = run(module, argv, capsys)
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ------------------------------------------------------------------------------------------------------ training
@pytest.fixture(params=["torch", "tensorflow"])
def framework(request) -> str:
    if request.param == "tensorflow":
        pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")
        from tf_helpers import few_tf_threads

        few_tf_threads()
    return request.param


def test_training_stops_at_the_first_non_finite_loss(framework, tmp_path, capsys):
    out = tmp_path / "t.h5"
    line = one_line_error(train_step, [*DIVERGING, "--framework", framework, "--out", out], capsys)
    assert line == ("error: training diverged at iteration 2 (epoch 3 of 4): batch loss nan (lr 1e+06); lower "
                    "train.lr (--lr), or set train.on_divergence: keep (--on-divergence keep) to keep the 2 "
                    "checkpoint(s) before it")
    assert not out.exists() and partial_path(out).exists()  # the partial run stays for --resume, never the result


def test_keep_writes_the_finite_checkpoints_and_resumes_to_the_same_file(framework, tmp_path, capsys):
    argv = [*DIVERGING, "--framework", framework, "--checkpoint-every", "2", "--on-divergence", "keep"]
    kept = tmp_path / "kept.h5"
    status, err = run(train_step, [*argv, "--out", kept], capsys)
    assert status == 0
    assert ("warning: training diverged at iteration 2 (epoch 3 of 4): batch loss nan (lr 1e+06); kept the 2 "
            "checkpoint(s) before it (iterations 0..1)") in err
    with Trajectory(kept) as traj:
        # checkpoint 0, then the last finite point (iteration 1, not a multiple of 2) as the final one
        assert list(traj.iterations) == [0, 1] and list(traj.epochs) == [0, 1]
        assert all(np.isfinite(p).all() for p in traj) and np.isfinite(traj.batch_loss).all()
        assert traj.diverged_at == {"iteration": 2, "epoch": 2, "reason": "batch loss nan", "batch_loss": "nan"}
        assert json.loads(traj.file.attrs["summary"])["diverged_at"] == traj.diverged_at
        assert "on_divergence" not in json.dumps(traj.config)  # not in the run config: resume and hashes ignore it
        params = np.stack(list(traj))
    # stopped first, then resumed with keep: the partial file's config matches, the run continues from its last
    # epoch boundary (iteration 2) and keeps the same checkpoints, bitwise
    resumed = tmp_path / "resumed.h5"
    one_line_error(train_step, [*DIVERGING, "--framework", framework, "--checkpoint-every", "2", "--out", resumed],
                   capsys)
    status, err = run(train_step, [*argv, "--resume", "--out", resumed], capsys)
    assert status == 0 and "resuming at iteration 2 (epoch 3 of 4)" in err
    with Trajectory(resumed) as traj:
        assert list(traj.iterations) == [0, 1] and traj.diverged_at["iteration"] == 2
        np.testing.assert_array_equal(np.stack(list(traj)), params)
    assert not partial_path(resumed).exists()


def test_keep_at_the_first_iteration_has_nothing_to_keep():
    settings = TrainSettings(epochs=1, lr=0.1)
    guard = DivergenceGuard(settings)
    with pytest.raises(TrainingDiverged, match=r"iteration 0 \(epoch 1 of 1\): batch loss inf .*nothing before it"):
        guard.check(np.zeros(3, np.float32), np.zeros(0), float("inf"), iteration=0, epoch=0, stored=0)
    # parameters that overflow in the last step (no loss known there) are caught too, before they are stored
    guard.check(np.zeros(3, np.float32), np.zeros(0), 1.0, iteration=0, epoch=0, stored=0)
    with pytest.raises(TrainingDiverged, match="1 of 3 parameters non-finite") as caught:
        guard.check(np.array([0, np.inf, 0], np.float32), np.zeros(0), None, iteration=1, epoch=0, stored=1)
    assert caught.value.kept == 1 and caught.value.diverged_at["batch_loss"] is None


def test_a_kept_run_names_its_divergence_when_a_later_checkpoint_is_asked_for(tmp_path, capsys):
    out = tmp_path / "kept.h5"
    assert run(train_step, [*DIVERGING, "--on-divergence", "keep", "--out", out], capsys)[0] == 0
    with Trajectory(out) as traj, pytest.raises(ValueError, match="training diverged at iteration 2 and was kept"):
        traj.index_of_iteration(3)


def test_slq_marks_chains_whose_products_overflow():
    """A point where training diverged can have a finite loss and overflowing Hessian products: SLQ gives NaN nodes
    (the spectrum step skips the point), Lanczos' eigen-solver names the cause instead of scipy's message."""
    from gradvis_steps.core.lanczos import tridiagonal_eigh
    from gradvis_steps.core.slq import slq

    matrix = np.diag([1.0, 2.0, np.inf, 4.0])
    with np.errstate(invalid="ignore", over="ignore"):
        result = slq(lambda v: matrix @ v, 4, 2, 3, seed=0)
    assert np.isnan(result.nodes).all() and np.isnan(result.weights).all()
    with pytest.raises(ValueError, match="Lanczos coefficients are not finite"):
        tridiagonal_eigh(np.array([1.0, np.nan]), np.array([0.5]))


# ---------------------------------------------------------------------------------- non-finite checkpoints
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained run (13 checkpoints), a second seed, and copies with non-finite checkpoints made by hand."""
    folder = tmp_path_factory.mktemp("divergence")
    for seed in (0, 1):
        argv = [*MODEL, "--epochs", "1", "--batch-size", "128", "--lr", "0.05", "--seed", seed,
                "--out", folder / f"run{seed}.h5"]
        assert train_step.main([str(a) for a in argv]) == 0

    def edited(name: str, row: int, change) -> str:
        path = folder / f"{name}.h5"
        shutil.copy(folder / "run0.h5", path)
        with h5py.File(path, "r+") as f:
            f["params"][row] = change(f["params"][row])
        return path

    def one_nan(p):
        p[3] = np.nan
        return p

    return {"folder": folder, "base": folder / "run0.h5", "other": folder / "run1.h5",
            "nan": edited("nan", 5, one_nan),  # iteration 5: a NaN parameter
            "huge": edited("huge", 5, lambda p: p * np.float32(1e30)),  # finite parameters, loss NaN
            "nan_last": edited("nan_last", -1, one_nan),  # the final point (the default centre)
            "huge_last": edited("huge_last", -1, lambda p: p * np.float32(1e12))}


def test_spectra_skip_non_finite_checkpoints_and_their_consumers_cope(runs, capsys):
    folder = runs["folder"]
    single = folder / "spectra_nan.h5"
    status, err = run(spectrum, ["--trajectory", runs["nan"], "--iterations", 4, 5, 6, *SLQ, "--out", single,
                                 "--plot-dir", folder / "plots"], capsys)
    reason = "1 of 988 parameters non-finite"
    assert status == 0 and f"skipped the checkpoint at iteration 5 ({reason}; the run diverged there)" in err
    spectra = load_spectra(single)
    assert sorted(spectra.entries) == [4, 6] and spectra.skipped == {5: reason}
    assert (folder / "plots" / "iter_000005.png").is_file()
    # scattered over two jobs, on finite parameters whose loss is NaN: the merged file lists what either skipped
    chunks, errs = [folder / "chunk1.h5", folder / "chunk2.h5"], []
    for index, chunk in enumerate(chunks, 1):  # iterations 4, 5 and 6
        status, err = run(spectrum, ["--trajectory", runs["huge"], "--iterations", 4, 5, 6, "--chunk", f"{index}/2",
                                     *SLQ, "--out", chunk], capsys)
        assert status == 0
        errs.append(err)
    assert "skipped the checkpoint at iteration 5 (loss evaluates to nan; the run diverged there)" in errs[0]
    merged = folder / "merged.h5"
    status, err = run(merge_spectra, ["--inputs", *chunks, "--out", merged], capsys)
    assert status == 0 and "(1 skipped as non-finite)" in err
    assert load_spectra(merged).skipped == {5: "loss evaluates to nan"} and sorted(load_spectra(merged).entries) == [
        4, 6]
    # density plots: a blank one for the skipped checkpoint
    status, err = run(plot_spectra, ["--spectra", merged, "--out-dir", folder / "densities"], capsys)
    assert status == 0 and sorted(p.name for p in (folder / "densities").iterdir()) == [
        "density_000004.png", "density_000005.png", "density_000006.png"]
    # a comparison at the skipped checkpoint names the file that skipped it instead of drawing it
    base_spectra = folder / "spectra_base.h5"
    assert run(spectrum, ["--trajectory", runs["base"], "--iterations", 5, *SLQ, "--out", base_spectra],
               capsys)[0] == 0
    comparison = compare.compare_spectra([load_spectra(base_spectra), load_spectra(single)], ["a", "b"],
                                         ["base", "diverged"], iteration=5)
    assert comparison.skipped == (None, reason) and np.isnan(comparison.densities[1]).all()
    legend = [t.get_text() for t in compare.spectra_figure(comparison).axes[0].get_legend().get_texts()]
    assert legend == ["base", f"diverged: no spectrum (skipped, {reason})"]
    assert "every file skipped iteration 5" in one_line_error(
        compare, ["--spectra", single, merged, "--iteration", 5, "--out", folder / "c.png"], capsys)
    # training frames: the skipped checkpoint keeps its frame, with a blank density panel
    directions_file = folder / "pca_nan.h5"
    assert run(directions, ["--trajectory", runs["nan"], "--method", "pca", "--out", directions_file], capsys)[0] == 0
    landscape_file = folder / "landscape_nan.h5"
    assert run(landscape, ["--trajectory", runs["nan"], "--directions", directions_file, "--resolution", 3, *EVAL,
                           "--out", landscape_file], capsys)[0] == 0
    status, err = run(frames, ["training", "--landscape", landscape_file, "--spectra", single, "--out-dir",
                               folder / "frames"], capsys)
    record = json.loads((folder / "frames" / "frames.json").read_text())
    assert status == 0 and record["keys"] == [4, 5, 6] and len(record["frames"]) == 3
    assert record["skipped"] == [{"iteration": 5, "reason": reason}]


def _without_row(source, target, row: int) -> None:
    """A copy of trajectory ``source`` without checkpoint ``row`` (what an analysis that skips it must see)."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        for name in ("params", "buffers", "iteration", "epoch", "batch_loss", "batch_loss_known"):
            values = np.delete(f[name][()], row, axis=0)
            f[name].resize(len(values), axis=0)
            f[name][...] = values


def test_pca_and_landscape_leave_non_finite_checkpoints_out(runs, capsys):
    folder = runs["folder"]
    _without_row(runs["base"], folder / "without5.h5", 5)
    pca = {}
    for name in ("nan", "without5"):
        pca[name] = folder / f"pca_{name}_out.h5"
        assert run(directions, ["--trajectory", runs.get(name, folder / f"{name}.h5"), "--method", "pca",
                                "--out", pca[name]], capsys)[0] == 0
    skipping, reference = load_directions_file(pca["nan"]), load_directions_file(pca["without5"])
    assert skipping.skipped == [{"iteration": 5, "reason": "1 of 988 parameters non-finite"}]
    np.testing.assert_array_equal(skipping.vectors, reference.vectors)  # the PCA of the other 12 checkpoints
    # the landscape evaluates every checkpoint first: one whose loss overflows is left out of the grid's range
    results, warnings = {}, {}
    for name, trajectory in (("huge", runs["huge"]), ("without5", folder / "without5.h5")):
        out = folder / f"landscape_{name}.h5"
        status, warnings[name] = run(landscape, ["--trajectory", trajectory, "--directions", pca["without5"],
                                                 "--resolution", 3, *EVAL, "--out", out], capsys)
        assert status == 0
        results[name] = load_landscape(out)
    assert "skipped the checkpoint at iteration 5 (loss evaluates to nan; the run diverged there)" in warnings["huge"]
    huge = results["huge"]
    assert huge.skipped == [{"iteration": 5, "reason": "loss evaluates to nan"}]
    assert np.isnan(huge.trajectory[5]).all() and np.isnan(huge.checkpoint_loss[5])
    for axis, expected in zip(huge.axes, results["without5"].axes, strict=True):
        np.testing.assert_allclose(axis, expected)
    np.testing.assert_allclose(np.delete(huge.checkpoint_loss, 5), results["without5"].checkpoint_loss)
    with h5py.File(folder / "landscape_huge.h5") as f:
        assert json.loads(f.attrs["skipped"]) == huge.skipped and f.attrs["non_finite_points"] == 0


def test_a_non_finite_centre_or_end_point_is_a_one_line_error(runs, capsys):
    folder, nan_last = runs["folder"], runs["nan_last"]
    expected = "the {} (checkpoint at iteration 12) is not finite (1 of 988 parameters non-finite): the run diverged"
    line = one_line_error(directions, ["--trajectory", nan_last, "--method", "random", "--out", folder / "d.h5"],
                          capsys)
    assert expected.format("centre of the directions") in line and "--center-iteration" in line
    random_file = folder / "random.h5"
    assert run(directions, ["--trajectory", runs["base"], "--method", "random", "--out", random_file], capsys)[0] == 0
    line = one_line_error(landscape, ["--trajectory", nan_last, "--directions", random_file, "--resolution", 3, *EVAL,
                                      "--out", folder / "l.h5"], capsys)
    assert expected.format("centre of the landscape") in line
    line = one_line_error(eigendirections, ["--trajectory", nan_last, "--steps", 4, *EVAL, "--out", folder / "e.h5"],
                          capsys)
    assert expected.format("point of the Hessian") in line and "--iteration" in line
    # parameters finite, loss not: found by evaluating the centre
    line = one_line_error(eigendirections, ["--trajectory", runs["huge"], "--iteration", 5, "--steps", 4, *EVAL,
                                            "--out", folder / "e.h5"], capsys)
    assert "point of the Hessian (checkpoint at iteration 5) is not finite (loss evaluates to nan)" in line
    line = one_line_error(interpolate, ["--trajectory-a", nan_last, "--trajectory-b", runs["other"], "--points", 3,
                                        *EVAL, "--out-line", folder / "line.h5"], capsys)
    assert expected.format("final point of run A") in line


def test_interpolation_points_that_overflow_are_kept_in_the_line_and_skipped_in_the_spectra(runs, capsys):
    folder = runs["folder"]
    line_file, spectra_file = folder / "line.h5", folder / "line_spectra.h5"
    status, err = run(interpolate, ["--trajectory-a", runs["huge_last"], "--trajectory-b", runs["other"],
                                    "--points", 5, *SLQ, "--out-line", line_file, "--out-spectra", spectra_file],
                      capsys)
    assert status == 0 and "4 of 5 points non-finite" in err
    line = load_landscape(line_file)
    assert np.isnan(line.loss[:4]).all() and np.isfinite(line.loss[4]) and line.non_finite_points == 4
    spectra = load_spectra(spectra_file)
    assert sorted(spectra.entries) == [4] and sorted(spectra.skipped) == [0, 1, 2, 3]
    assert "4 of 5 points non-finite (masked)" in texts(plot_line(line))
    status, _ = run(frames, ["interpolation", "--line", line_file, "--spectra", spectra_file, "--out-dir",
                             folder / "line_frames"], capsys)
    assert status == 0 and len(list((folder / "line_frames").glob("frame_*.png"))) == 5


def test_moving_frame_skips_a_non_finite_centre(runs, capsys):
    out = runs["folder"] / "moving"
    status, err = run(moving_frame, ["--trajectory", runs["nan_last"], "--every", 12, "--steps", 4, "--resolution",
                                     3, *EVAL, "--out-dir", out], capsys)
    assert status == 0 and "skipped the centre at iteration 12 (1 of 988 parameters non-finite" in err
    assert sorted(p.name for p in out.glob("centre_*.h5")) == ["centre_000000.h5"]
    assert json.loads((out / "skipped.json").read_text()) == [{"iteration": 12,
                                                                "reason": "1 of 988 parameters non-finite"}]


# ------------------------------------------------------------------------------------------------------- grids
def test_grid_points_that_overflow_are_stored_counted_and_masked(runs, capsys):
    folder = runs["folder"]
    huge_directions = folder / "random_huge.h5"
    assert run(directions, ["--trajectory", runs["base"], "--method", "random", "--out", huge_directions],
               capsys)[0] == 0
    with h5py.File(huge_directions, "r+") as f:
        f["directions"][...] = f["directions"][()] * np.float32(1e30)  # every point but the centre overflows
    out = folder / "overflow.h5"
    status, err = run(landscape, ["--trajectory", runs["base"], "--directions", huge_directions, "--resolution", 5,
                                  *EVAL, "--out", out], capsys)
    assert status == 0 and "warning: 24 of 25 grid points have a non-finite loss" in err
    result = load_landscape(out)
    assert result.filled.all() and np.isfinite(result.loss[2, 2]) and (~np.isfinite(result.loss)).sum() == 24
    with h5py.File(out) as f:
        assert f.attrs["non_finite_points"] == 24
    for fig in (plot_contour(result), plot_surface(result), plot_contour(result, log_levels=True)):
        assert "24 of 25 points non-finite (masked)" in texts(fig)
    status, _ = run(plot_landscape, ["--landscape", out, "--contour", folder / "c.png", "--surface",
                                     folder / "s.png", "--log-levels"], capsys)
    assert status == 0 and (folder / "c.png").stat().st_size > 1000


def test_injected_nan_and_inf_are_masked_in_every_landscape_plot(runs, capsys):
    folder = runs["folder"]
    x = np.linspace(-1, 1, 5)
    loss = 1 + x[:, None] ** 2 + x[None, :] ** 2
    loss[0, 0], loss[1, 3], loss[4, 4] = np.nan, np.inf, -np.inf
    result = LandscapeResult(axes=(x, x), loss=loss, filled=np.ones((5, 5), bool), trajectory=np.zeros((2, 2)),
                             trajectory_loss=np.ones(2), method="random")
    assert result.non_finite_points == 3
    path, flat = folder / "injected.h5", folder / "flat.h5"
    save_landscape(result, path)
    save_landscape(LandscapeResult(axes=(x, x), loss=np.full((5, 5), np.inf), filled=np.ones((5, 5), bool)), flat)
    fig = compare.landscapes_figure([load_landscape(path), load_landscape(flat)], ["a", "b"], ["a", "b"])
    notes = texts(fig)
    assert "3 of 25 points non-finite (masked)" in notes and "25 of 25 points non-finite (masked)" in notes
    assert "no finite loss values" in notes  # the all-overflow panel says so instead of crashing
    status, err = run(compare, ["--landscapes", path, flat, "--log-scale", "--out", folder / "both.png"], capsys)
    assert status == 0, err
    line = LandscapeResult(axes=(x,), loss=[1.0, np.nan, np.inf, 2.0, 3.0], filled=np.ones(5, bool))
    assert "2 of 5 points non-finite (masked)" in texts(plot_line(line, log_scale=True))


# ---------------------------------------------------------------------------------------------------- workflow
def test_on_divergence_is_a_setting_of_the_runs_not_a_sweep(tmp_path):
    pytest.importorskip("snakemake", reason="snakemake is not installed (pip install -e .[workflow])")
    from workflow_runner import plan_of, shell_commands

    default, keep = plan_of({}), plan_of({"train": {"on_divergence": "keep"}})
    assert sorted(keep.runs) == sorted(default.runs)  # same run ids, same folders
    assert {run["execution"]["train"]["on_divergence"] for run in default.runs.values()} == {"stop"}
    with pytest.raises(Exception, match="on_divergence"):
        plan_of({"train": {"on_divergence": ["stop", "keep"]}})
    config = tmp_path / "keep.yaml"
    config.write_text("train: {on_divergence: keep}\n")
    trains = [w for w in shell_commands("--configfile", "config/test.yaml", str(config))
              if w[0] == "gradvis_steps.train"]
    assert trains and all(w[w.index("--on-divergence") + 1] == "keep" for w in trains)
