"""Every output records the training run it belongs to, and a step that combines inputs of different runs fails in
one line naming both (issue 18, item 5).

Built from two real tiny runs (seeds 0 and 1, ``step_helpers.train_tiny``: 13 checkpoints each) and, per run, the
outputs the steps derive from it; each multi-input step is then given a mixed set (exit 2, both files and both runs
named) and the matching set (it works)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from step_helpers import fails, step, train_tiny

from gradvis_steps import (
    compare,
    directions,
    eigendirections,
    frames,
    interpolate,
    landscape,
    merge_spectra,
    moving_frame,
    spectrum,
)
from gradvis_steps.storage import runs
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter

EVAL = ["--eval-fraction", "0.05", "--no-progress"]
SLQ = ["--k", "2", "--m", "4", "--dtype", "float64", *EVAL]
ITERATIONS = ["--iterations", 0, 6, 12]


def identity(path: Path) -> dict[str, str]:
    with Trajectory(path) as traj:
        return traj.run


def names_both(err: str, mixed: Path, reference: Path) -> None:
    """The error names both files, both runs by label (seed) and by digest."""
    assert str(mixed) in err and str(reference) in err, err
    assert "seed 0" in err and "seed 1" in err, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run(folder) -> dict[int, dict[str, Path]]:
    """Per seed: trajectory, eigendirections, PCA directions, landscape, spectra (and its two chunks)."""
    out = {}
    for seed in (0, 1):
        d = folder / f"s{seed}"
        files = {"trajectory": train_tiny(d / "trajectory.h5", seed)}
        files["eig"] = d / "eigendirections.h5"
        step(eigendirections, "--trajectory", files["trajectory"], "--count", 2, "--steps", 4, "--out", files["eig"],
             *EVAL)
        files["pca"] = d / "pca.h5"
        step(directions, "--trajectory", files["trajectory"], "--method", "pca", "--out", files["pca"])
        files["landscape"] = d / "landscape.h5"
        step(landscape, "--trajectory", files["trajectory"], "--directions", files["pca"], "--resolution", 3,
             "--out", files["landscape"], *EVAL)
        files["spectra"] = d / "spectra.h5"
        step(spectrum, "--trajectory", files["trajectory"], *ITERATIONS, "--out", files["spectra"], *SLQ)
        for i in (1, 2):
            files[f"chunk{i}"] = d / f"chunk_{i}of2.h5"
            step(spectrum, "--trajectory", files["trajectory"], *ITERATIONS, "--chunk", f"{i}/2",
                 "--out", files[f"chunk{i}"], *SLQ)
        out[seed] = files
    return out


@pytest.fixture(scope="module")
def pair(folder, run) -> dict[str, Path]:
    """Interpolation from seed 0 (A) to seed 1 (B): plane directions, plane landscape, line and its spectra."""
    a, b = run[0]["trajectory"], run[1]["trajectory"]
    files = {name: folder / "pair" / f"{name}.h5" for name in ("plane_directions", "plane", "line", "spectra")}
    step(directions, "--trajectory", a, "--trajectory-b", b, "--method", "interpolation",
         "--out", files["plane_directions"])
    step(landscape, "--trajectory", a, "--directions", files["plane_directions"], "--range", -0.5, 1.5, -0.5, 1.5,
         "--resolution", 3, "--out", files["plane"], *EVAL)
    step(interpolate, "--trajectory-a", a, "--trajectory-b", b, "--points", 3, "--out-line", files["line"],
         "--out-spectra", files["spectra"], *SLQ)
    return files


# ------------------------------------------------------------------------------------------------------ identity
def test_seeds_have_different_identities(run):
    first, second = identity(run[0]["trajectory"]), identity(run[1]["trajectory"])
    assert first["digest"] != second["digest"] and len(first["digest"]) == runs.DIGEST_CHARS
    assert first["label"] == "digits/lenet seed 0 lr 0.05 bs 128 epochs 1", first
    assert second["label"] == "digits/lenet seed 1 lr 0.05 bs 128 epochs 1", second
    # the digest is a function of the stored config and checkpoint 0 alone: recomputed from the file by hand
    with h5py.File(run[0]["trajectory"]) as f:
        config, params0, buffers0 = json.loads(f.attrs["config"]), f["params"][0], f["buffers"][0]
    assert runs.identity(config, params0, buffers0) == first


def test_identity_is_stable_across_resume(folder, monkeypatch):
    """A run killed in its second epoch and resumed has the identity of the same run trained in one go."""
    whole = train_tiny(folder / "resume" / "whole.h5", 0, "--epochs", 2)
    resumed = folder / "resume" / "resumed.h5"
    original, calls = TrajectoryWriter.append, [0]

    def dies_in_epoch_2(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 16:  # 13 rows per epoch
            raise KeyboardInterrupt
        original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(TrajectoryWriter, "append", dies_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_tiny(resumed, 0, "--epochs", 2)
    assert Path(f"{resumed}.partial").is_file() and not resumed.exists()
    train_tiny(resumed, 0, "--epochs", 2, "--resume")
    assert identity(resumed) == identity(whole)
    with Trajectory(resumed) as a, Trajectory(whole) as b:
        assert len(a) == len(b) == 25


def test_every_output_records_its_run(run, pair):
    for seed, files in run.items():
        mine = [identity(files["trajectory"])]
        assert load_directions_file(files["eig"]).runs == mine
        assert load_directions_file(files["pca"]).runs == mine
        assert load_landscape(files["landscape"]).runs == mine
        for name in ("spectra", "chunk1", "chunk2"):
            assert load_spectra(files[name]).runs == mine, (seed, name)
    both = [identity(run[0]["trajectory"]), identity(run[1]["trajectory"])]
    assert load_directions_file(pair["plane_directions"]).runs == both
    assert load_landscape(pair["plane"]).runs == both
    assert load_landscape(pair["line"]).runs == both
    assert load_spectra(pair["spectra"]).runs == both
    with h5py.File(run[0]["landscape"]) as f:  # plain JSON, readable without gradvis
        assert json.loads(f.attrs["runs"]) == [identity(run[0]["trajectory"])]


# --------------------------------------------------------------------------------------------- the steps' checks
def test_directions_hessian_rejects_eigendirections_of_another_run(folder, run, capsys):
    argv = ["--trajectory", run[0]["trajectory"], "--method", "hessian", "--out", folder / "hessian.h5"]
    err = fails(directions, [*argv, "--eigendirections", run[1]["eig"]], capsys)
    names_both(err, run[1]["eig"], run[0]["trajectory"])
    assert f"eigendirections file {run[1]['eig']} belongs to run digits/lenet seed 1" in err, err
    assert f"but trajectory {run[0]['trajectory']} is run digits/lenet seed 0" in err, err
    assert not (folder / "hessian.h5").exists()
    step(directions, *argv, "--eigendirections", run[0]["eig"])
    assert load_directions_file(folder / "hessian.h5").runs == [identity(run[0]["trajectory"])]


def test_directions_custom_file_recording_another_run(folder, run, capsys):
    """A gradvis directions file (one dataset: random directions) given as custom directions must be of the run."""
    random = {}
    for seed in (0, 1):
        random[seed] = folder / f"random_s{seed}.h5"
        step(directions, "--trajectory", run[seed]["trajectory"], "--method", "random", "--out", random[seed])
    argv = ["--trajectory", run[0]["trajectory"], "--method", "custom", "--out", folder / "custom.h5"]
    err = fails(directions, [*argv, "--custom", random[1]], capsys)
    names_both(err, random[1], run[0]["trajectory"])
    assert "save the vectors as .npy" in err
    step(directions, *argv, "--custom", random[0])  # its own run's
    plain = folder / "custom.npy"  # a file that records no run is the user's business
    np.save(plain, load_directions_file(random[1]).vectors)
    step(directions, *argv, "--custom", plain)


def test_landscape_rejects_directions_of_another_run(folder, run, capsys):
    out = folder / "mixed_landscape.h5"
    err = fails(landscape, ["--trajectory", run[0]["trajectory"], "--directions", run[1]["pca"], "--resolution", 3,
                            "--out", out, *EVAL], capsys)
    names_both(err, run[1]["pca"], run[0]["trajectory"])
    assert not out.exists() and not list(folder.glob(f".{out.name}.partial-*"))


def test_interpolation_plane_belongs_to_its_first_run(folder, run, pair, capsys):
    """The plane through both minima is centred on A's final point: it is drawn with A's trajectory, not B's."""
    err = fails(landscape, ["--trajectory", run[1]["trajectory"], "--directions", pair["plane_directions"],
                            "--resolution", 3, "--out", folder / "plane_on_b.h5", *EVAL], capsys)
    assert f"directions file {pair['plane_directions']} belongs to runs digits/lenet seed 0" in err, err
    assert "→ digits/lenet seed 1" in err and str(run[1]["trajectory"]) in err, err


def test_training_frames_reject_mixed_runs(folder, run, capsys):
    out = folder / "frames"
    err = fails(frames, ["training", "--landscape", run[0]["landscape"], "--spectra", run[1]["spectra"],
                         "--out-dir", out], capsys)
    names_both(err, run[1]["spectra"], run[0]["landscape"])
    err = fails(frames, ["training", "--landscape", run[0]["landscape"], run[1]["landscape"],
                         "--spectra", run[0]["spectra"], "--out-dir", out], capsys)
    names_both(err, run[1]["landscape"], run[0]["landscape"])
    assert not out.exists()
    step(frames, "training", "--landscape", run[0]["landscape"], "--spectra", run[0]["spectra"], "--out-dir", out)
    record = json.loads((out / "frames.json").read_text())
    assert record["runs"] == [identity(run[0]["trajectory"])]


def test_interpolation_frames_reject_spectra_of_one_run(folder, run, pair, capsys):
    out = folder / "interpolation_frames"
    err = fails(frames, ["interpolation", "--line", pair["line"], "--plane", pair["plane"],
                         "--spectra", run[0]["spectra"], "--out-dir", out], capsys)
    assert f"spectra file {run[0]['spectra']} belongs to run digits/lenet seed 0" in err, err
    assert f"interpolation line {pair['line']} belongs to runs digits/lenet seed 0" in err, err
    err = fails(frames, ["interpolation", "--line", pair["line"], "--plane", run[0]["landscape"],
                         "--spectra", pair["spectra"], "--out-dir", out], capsys)
    assert f"interpolation plane {run[0]['landscape']}" in err, err
    step(frames, "interpolation", "--line", pair["line"], "--plane", pair["plane"], "--spectra", pair["spectra"],
         "--out-dir", out)
    assert len(json.loads((out / "frames.json").read_text())["runs"]) == 2


def test_merge_spectra_takes_chunks_of_one_run_and_one_setting(folder, run, capsys):
    out = folder / "merged.h5"
    err = fails(merge_spectra, ["--inputs", run[0]["chunk1"], run[1]["chunk2"], "--out", out], capsys)
    names_both(err, run[1]["chunk2"], run[0]["chunk1"])
    assert err.startswith(f"error: spectra chunk {run[1]['chunk2']} belongs to run"), err
    other_m = folder / "chunk_2of2_m5.h5"
    step(spectrum, "--trajectory", run[0]["trajectory"], *ITERATIONS, "--chunk", "2/2", "--out", other_m,
         *SLQ, "--m", 5)
    err = fails(merge_spectra, ["--inputs", run[0]["chunk1"], other_m, "--out", out], capsys)
    assert f"spectra chunk {other_m} was computed with m=5, but {run[0]['chunk1']} with m=4" in err, err
    assert not out.exists()
    step(merge_spectra, "--inputs", run[0]["chunk1"], run[0]["chunk2"], "--out", out)
    merged, whole = load_spectra(out), load_spectra(run[0]["spectra"])
    assert merged.runs == whole.runs and sorted(merged.entries) == sorted(whole.entries)


def test_compare_one_run_unless_across_runs(folder, run, capsys):
    out = folder / "compare.png"
    err = fails(compare, ["--spectra", run[0]["spectra"], run[1]["spectra"], "--out", out], capsys)
    names_both(err, run[1]["spectra"], run[0]["spectra"])
    err = fails(compare, ["--landscapes", run[0]["landscape"], run[1]["landscape"], "--out", out], capsys)
    names_both(err, run[1]["landscape"], run[0]["landscape"])
    assert not out.exists()
    step(compare, "--spectra", run[0]["spectra"], run[0]["chunk2"], "--out", out)  # one run: fine
    step(compare, "--spectra", run[0]["spectra"], run[1]["spectra"], "--labels", "seed 0", "seed 1", "--across-runs",
         "--out", out)
    assert out.is_file()


def test_spectrum_does_not_resume_from_another_runs_partial(folder, run, capsys):
    out = folder / "resume_spectra.h5"
    shutil.copy(run[1]["spectra"], f"{out}.partial")
    capsys.readouterr()
    step(spectrum, "--trajectory", run[0]["trajectory"], *ITERATIONS, "--out", out, *SLQ)
    err = capsys.readouterr().err
    assert "belongs to run digits/lenet seed 1" in err and "starting over" in err and "resuming" not in err, err
    fresh, truth = load_spectra(out), load_spectra(run[0]["spectra"])
    assert fresh.runs == truth.runs
    for iteration, entry in truth.entries.items():
        assert np.array_equal(fresh.entries[iteration].nodes, entry.nodes)


def test_moving_frame_records_its_run(folder, run, capsys):
    out = folder / "moving"
    step(moving_frame, "--trajectory", run[0]["trajectory"], "--every", 100, "--out-dir", out, "--count", 2,
         "--steps", 4, "--resolution", 3, *EVAL)
    mine = [identity(run[0]["trajectory"])]
    manifest = json.loads((out / moving_frame.MANIFEST).read_text())
    assert manifest["runs"] == mine
    centres = sorted(out.glob("centre_*.h5"))
    assert len(centres) == 2 and all(load_landscape(path).runs == mine for path in centres)
    assert all(load_directions_file(path).runs == mine for path in (out / "directions").glob("centre_*.h5"))
    # a manifest from before runs were recorded still lets the finished folder be reused; another run's does not
    old = {key: value for key, value in manifest.items() if key != "runs"}
    assert moving_frame.same_manifest(old, manifest)
    assert not moving_frame.same_manifest({**manifest, "runs": [identity(run[1]["trajectory"])]}, manifest)
    err = fails(frames, ["training", "--landscape", out, "--spectra", run[1]["spectra"],
                         "--out-dir", folder / "moving_frames"], capsys)
    names_both(err, run[1]["spectra"], centres[0])


def test_files_without_a_run_are_accepted_with_a_warning(folder, run, capsys):
    """Results written before runs were recorded stay usable: the step warns, naming the file, and goes on."""
    old = folder / "old_pca.h5"
    shutil.copy(run[0]["pca"], old)
    with h5py.File(old, "r+") as f:
        del f.attrs["runs"]
    capsys.readouterr()
    step(landscape, "--trajectory", run[0]["trajectory"], "--directions", old, "--resolution", 3,
         "--out", folder / "old_landscape.h5", *EVAL)
    err = capsys.readouterr().err
    assert f"warning: directions file {old} records no run" in err, err
    assert load_landscape(folder / "old_landscape.h5").runs == [identity(run[0]["trajectory"])]
