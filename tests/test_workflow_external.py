"""Runs trained elsewhere (``external_runs:``) through the real workflow: the tiny DAG on two runs declared by
trajectory files (landscape, spectra, the training video, the interpolation between the two, summaries) with no
train job; a changed file reruns that run's jobs only; bad files stop the workflow with one line before any job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from workflow_runner import BIN, ROOT, snakemake

pytestmark = pytest.mark.skipif(shutil.which("snakemake", path=str(BIN)) is None,
                                reason="snakemake is not installed in this environment (pip install -e .[workflow])")

SMALL = {"name": "lenet", "widths": [3, 4, 16, 12]}


def train(out: Path, seed: int, *extra: str) -> Path:
    """A tiny run written by the train step: the trajectory file a user brings (13 checkpoints by default)."""
    subprocess.run([sys.executable, "-m", "gradvis_steps.train", "--dataset", "digits", "--model", "lenet",
                    "--model-option", "widths=[3, 4, 16, 12]", "--seed", str(seed), "--lr", "0.05", "--batch-size",
                    "256", "--epochs", "2", "--momentum", "0.9", "--device", "cpu", "--no-progress", *extra,
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("external_files")
    made = {"a": train(folder / "a.h5", 0), "b": train(folder / "b.h5", 1),
            "two": train(folder / "two.h5", 0, "--epochs", "1", "--checkpoint-every", "6")}
    made["text"] = folder / "notes.h5"
    made["text"].write_text("not HDF5\n")
    made["wide"] = folder / "wide.h5"  # a trajectory whose run config names a wider model than its parameters
    shutil.copy(made["a"], made["wide"])
    with h5py.File(made["wide"], "r+") as f:
        config = json.loads(f.attrs["config"])
        config["model"]["widths"] = [4, 4, 16, 12]
        f.attrs["config"] = json.dumps(config)
    return made


def config_for(results: Path, **overrides) -> dict:
    config = {"results": str(results), "device": "cpu", "datasets": {"digits": {"name": "digits"}},
              "models": {"small": SMALL}, "train": {"model": ["small"], "seed": [0], "batch_size": [256],
                                                    "epochs": [2]},
              "evaluation": {"fraction": 0.1}, "directions": {"methods": ["pca"]},
              "landscape": {"resolution": 5, "line": False},
              "spectra": {"every": 6, "k": 2, "m": 6, "chunks": 1},
              "interpolation": {"enabled": False, "points": 4, "resolution": 5},
              "frames": {"direction": "pca", "fps": 4, "dpi": 40}, "resources": {"mem_mb": 1000}}
    config.update(overrides)
    return config


BAD = [  # (id, external run, overrides, message)
    ("trajectory-missing", {"trajectory": "/nonexistent/run.h5"}, {},
     "external_runs.x: trajectory /nonexistent/run.h5 does not exist (or is not a file)"),
    ("glob-matches-nothing", {"checkpoints": "/nonexistent/model_*.pth", "model": "small", "dataset": "digits"}, {},
     "external_runs.x: checkpoints /nonexistent/model_*.pth matches no file"),
    ("not-a-trajectory", {"trajectory": "text"}, {}, "not a readable trajectory file"),
    ("layout-of-another-model", {"trajectory": "wide"}, {},
     "does not fit the model its run config names ({'name': 'lenet', 'widths': [4, 4, 16, 12]}, torch): shapes "
     "differ: conv1.weight (3, 1, 5, 5) (the model's: (4, 1, 5, 5))"),
    ("pca-with-two-checkpoints", {"trajectory": "two"}, {},
     ("directions.methods includes pca, which needs at least 3 checkpoints, but external run x (trajectory ",
      "two.h5) holds 2; accepted: a run of 3 or more checkpoints, or methods without pca")),
    ("centre-not-stored", {"trajectory": "a"}, {"landscape": {"resolution": 5, "centre": 99}},
     ("landscape.centre 99 is not a checkpoint of external run x (trajectory ",
      "a.h5): it holds iterations 0, 1, 2, 3, ..., 11, 12 (13 checkpoints); accepted: last or one of those")),
]


@pytest.fixture(scope="module")
def rejected(files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_external")

    def attempt(case):
        name, run, overrides, _ = case
        run = {key: str(files[value]) if key == "trajectory" and value in files else value
               for key, value in run.items()}
        results = folder / name / "results"
        path = folder / name / "config.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(config_for(results, external_runs={"x": run}, runs=["x"], **overrides)))
        return snakemake("--cores", "1", "--configfile", str(path), timeout=300), results

    with ThreadPoolExecutor(2) as pool:
        return dict(zip((case[0] for case in BAD), pool.map(attempt, BAD), strict=True))


@pytest.mark.parametrize(("name", "run", "overrides", "message"), BAD, ids=[case[0] for case in BAD])
def test_bad_external_run_is_rejected_before_any_job(rejected, files, name, run, overrides, message):
    result, results = rejected[name]
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("config error: ")]
    parts = message if isinstance(message, tuple) else (message,)
    assert len(errors) == 1 and all(part in errors[0] for part in parts), text[-2000:]
    if run.get("trajectory") in files:
        assert str(files[run["trajectory"]]) in errors[0]  # the path, whatever the problem
    assert not results.exists() and "Building DAG of jobs" not in text


@pytest.fixture(scope="module")
def external_run(files, tmp_path_factory):
    """The tiny DAG on two external runs: one with landscape, spectra and video, the pair's interpolation."""
    folder = tmp_path_factory.mktemp("external_workflow")
    sources = {name: shutil.copy2(files[key], folder / f"{name}.h5") for name, key in (("mine", "a"), ("theirs", "b"))}
    config = config_for(folder / "results", external_runs={
        "mine": {"trajectory": str(sources["mine"]), "description": "seed 0, recorded elsewhere"},
        "theirs": {"trajectory": str(sources["theirs"])}}, experiments={
        "along": {"runs": ["mine"]},
        "between": {"runs": ["mine", "theirs"], "directions": {"methods": []}, "spectra": {"enabled": False},
                    "interpolation": {"enabled": True, "between": ["mine", "theirs"]}}})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder, path, sources


def test_every_analysis_runs_on_external_runs_with_no_train_job(external_run):
    from gradvis_steps.render.video import count_frames
    from gradvis_steps.storage.landscape import load_landscape
    from gradvis_steps.storage.spectra import load_spectra
    from gradvis_steps.storage.trajectory import Trajectory

    folder, _, sources = external_run
    results = folder / "results"
    assert sorted(p.name for p in results.iterdir()) == ["experiments", "mine", "theirs"]
    assert not list(results.rglob("train.log"))  # nothing trained
    identity = {}
    for name, source in sources.items():
        assert (results / name / "trajectory.h5").read_bytes() == source.read_bytes()  # a copy, byte for byte
        with Trajectory(source) as traj:
            identity[name] = traj.run["digest"]
    mine = results / "mine"
    land = load_landscape(next(mine.glob("landscape/*/landscape_2d.h5")))
    assert land.loss.shape == (5, 5) and np.isfinite(land.loss).all() and land.trajectory.shape == (13, 2)
    spectra = load_spectra(next(mine.glob("spectra/*/spectra.h5")))
    assert spectra.iterations.tolist() == [0, 6, 12]
    assert count_frames(next(mine.glob("videos/*/training.mp4"))) == 3
    pair = next((mine / "interpolation" / "theirs").iterdir())
    assert load_landscape(pair / "line.h5").axes[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert count_frames(next(pair.glob("videos/*/interpolation.mp4"))) == 4
    # each result records the run it belongs to: the user's file's identity (both, A first, for the pair)
    for path in mine.rglob("*.h5"):
        if path.name != "trajectory.h5":
            with h5py.File(path) as f:
                recorded = [run["digest"] for run in json.loads(f.attrs["runs"])]
            expected = ["mine", "theirs"] if "interpolation" in path.relative_to(mine).parts else ["mine"]
            assert recorded == [identity[name] for name in expected], path
    page = (results / "experiments" / "between" / "summary.html").read_text()
    assert "theirs" in page and str(sources["theirs"]) in page
    assert "seed 0, recorded elsewhere" in (results / "experiments" / "along" / "summary.html").read_text()


def planned(path: Path) -> dict[str, int]:
    plan = snakemake("-n", "--cores", "1", "--configfile", str(path), "--quiet", "rules")
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    counts.pop("total", None)
    return counts


def test_a_changed_file_reruns_its_runs_jobs_only(external_run, files):
    folder, path, sources = external_run
    assert planned(path) == {}  # complete
    # theirs replaced by other contents with an OLDER modification time (cp -p of an old file): the fingerprint of
    # its file (path, size, mtime) reruns its copy, so the pair's jobs and that experiment's page; nothing of mine's
    shutil.copyfile(files["two"], sources["theirs"])
    os.utime(sources["theirs"], ns=(10**18, 10**18))
    assert planned(path) == {"external_trajectory": 1, "interpolate": 1, "plot_interpolation_line": 1,
                             "interpolation_plane_directions": 1, "interpolation_plane": 1,
                             "plot_interpolation_plane": 1, "interpolation_frames": 1, "interpolation_video": 1,
                             "experiment_summary": 1, "all": 1}
    # and mine's file changed in place (a newer modification time) as well: mine's jobs join them, and its page
    with h5py.File(sources["mine"], "r+") as f:
        f.attrs["note"] = "edited"
    jobs = planned(path)
    assert jobs["external_trajectory"] == 2 and jobs["experiment_summary"] == 2 and jobs["interpolate"] == 1
    assert jobs["directions"] == jobs["landscape"] == jobs["spectrum_chunk"] == jobs["training_video"] == 1


def save_checkpoints(trajectory: Path, folder: Path) -> list[Path]:
    """The trajectory's checkpoints as the torch ``state_dict`` files a user's loop saves, ``model_<iteration>.pth``
    (LeNet has no buffers: its parameters are its whole state)."""
    import torch

    from gradvis_steps.storage.trajectory import Trajectory

    folder.mkdir()
    paths = []
    with Trajectory(trajectory) as traj:
        for row, iteration in enumerate(traj.iterations):
            flat = traj.params(row)
            state = {spec.name: torch.from_numpy(flat[spec.slice].reshape(spec.shape).copy()) for spec in traj.layout}
            paths.append(folder / f"model_{iteration}.pth")
            torch.save(state, paths[-1])
    return paths


def needs_import_step() -> None:
    """Skip where this checkout has no import step (part 'import'; an editable install may find another's)."""
    module = pytest.importorskip("gradvis_steps.import_checkpoints", reason="the import step is not merged")
    if not Path(module.__file__).resolve().is_relative_to(ROOT / "gradvis_steps"):
        pytest.skip(f"the import step is not merged here (found {module.__file__})")


@pytest.mark.parametrize(("pattern", "extra", "message"), [
    ("model_*.pth", {"iterations": [1, 5]},
     "external_runs.x: iterations: gives 2 iteration(s) for 3 checkpoint file(s)"),
    ("", {}, "external_runs.x: folder {folder} holds no checkpoint"),  # the import step's words, the run's key
    ("model_[12].pth", {}, "directions.methods includes pca, which needs at least 3 checkpoints, but external run x "
                           "(checkpoints {folder}/model_[12].pth) holds 2"),
    ("", {}, "landscape.centre 3 is not a checkpoint of external run x (checkpoints {folder}/): it holds "
             "iterations 1, 2, 10 (3 checkpoints)"),
])
def test_checkpoint_runs_are_counted_as_the_import_step_lists_them(tmp_path, pattern, extra, message):
    """The pre-flight (as the workflow runs it, through check_config) lists a checkpoint run's files with the import
    step's find_checkpoints: their number for PCA, their iterations for the centre, its errors in one line."""
    needs_import_step()
    from check_config import check
    from experiments import ConfigError

    folder = tmp_path / "ckpt"
    folder.mkdir()
    if "holds no" not in message:
        for i in (1, 2, 10):
            (folder / f"model_{i}.pth").write_bytes(b"only the names are read")
    config = config_for(tmp_path / "results", external_runs={"x": {
        "checkpoints": f"{folder}/{pattern}", "model": "small", "dataset": "digits", **extra}}, runs=["x"],
        landscape={"resolution": 5, "line": False, "centre": 3})
    if "holds no" in message:  # an empty folder: it exists, and the import step finds no checkpoint in it
        config["external_runs"]["x"]["checkpoints"] = [str(folder)]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        check(path, yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    assert message.format(folder=folder) in str(error.value) and "\n" not in str(error.value)


def test_imported_runs_interpolate_and_a_changed_checkpoint_reruns_its_run_only(files, tmp_path):
    """Two folders of checkpoint files (Li et al.'s layout) imported with no train job, the interpolation between
    them; then one file of B rewritten: B's import and the pair's jobs rerun, A's import does not."""
    needs_import_step()
    import torch

    from gradvis_steps.storage.landscape import load_landscape
    from gradvis_steps.storage.trajectory import Trajectory

    made = {name: save_checkpoints(files[key], tmp_path / name) for name, key in (("li_a", "a"), ("li_b", "b"))}
    config = config_for(tmp_path / "results", external_runs={
        name: {"checkpoints": str(tmp_path / name / "model_*.pth"), "model": "small", "dataset": "digits"}
        for name in made}, runs=["li_a", "li_b"], directions={"methods": []}, spectra={"enabled": False},
        interpolation={"enabled": True, "between": ["li_a", "li_b"], "points": 4, "resolution": 5},
        frames={"interpolation": False})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    assert not list(results.rglob("train.log"))
    for name, key in (("li_a", "a"), ("li_b", "b")):
        with Trajectory(results / name / "trajectory.h5") as imported, Trajectory(files[key]) as trained:
            assert imported.iterations.tolist() == trained.iterations.tolist() == list(range(13))
            for row in range(len(trained)):
                np.testing.assert_array_equal(imported.params(row), trained.params(row))
            source = imported.config["source"]
            assert source["kind"] == "imported" and len(source["files"]) == 13
    pair = next((results / "li_a" / "interpolation" / "li_b").iterdir())
    assert np.isfinite(load_landscape(pair / "line.h5").loss).all()
    assert planned(path) == {}
    changed = made["li_b"][5]
    state = torch.load(changed, weights_only=True)
    state["fc3.bias"] = state["fc3.bias"] + 0.01
    torch.save(state, changed)
    assert planned(path) == {"import_checkpoints": 1, "interpolate": 1, "plot_interpolation_line": 1,
                             "interpolation_plane_directions": 1, "interpolation_plane": 1,
                             "plot_interpolation_plane": 1, "experiment_summary": 1, "all": 1}
