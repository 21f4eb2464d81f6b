"""The Snakemake workflow: lint, dry runs of every config, config validation, and the whole DAG on the tiny
test config (real jobs, real videos, the HTML report), plus incremental sweeps."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from workflow_runner import BIN, ROOT, config_copy, snakemake

pytestmark = pytest.mark.skipif(shutil.which("snakemake", path=str(BIN)) is None,
                                reason="snakemake is not installed in this environment (pip install -e .[workflow])")


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_every_config_dry_runs(config, tmp_path):
    result = snakemake("-n", "--cores", "1", "--configfile", str(config_copy(config, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole DAG of config/test.yaml (two experiments, a sweep over spectra.m), under a temporary folder."""
    folder = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results"] = str(folder / "results")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = snakemake("--cores", "1", "--configfile", str(path), "--report", str(folder / "report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    return folder, path, config


def settings_of(folder: Path) -> dict:
    return yaml.safe_load((folder / "settings.yaml").read_text())


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_whole_dag_produces_every_result(tiny_run):
    from gradvis_steps.render.video import count_frames
    from gradvis_steps.storage.landscape import load_landscape
    from gradvis_steps.storage.spectra import load_spectra
    from gradvis_steps.storage.trajectory import Trajectory

    folder, _, config = tiny_run
    results = folder / "results"
    runs = sorted(p.name for p in results.iterdir() if p.name != "experiments")
    # seed 0 serves both experiments (trained once); seed 1 only the interpolation
    assert runs == ["digits-lenet_small-lr0.05-bs256-e2-m0.9-s0", "digits-lenet_small-lr0.05-bs256-e2-m0.9-s1"]
    for run in runs:
        with Trajectory(results / run / "trajectory.h5") as traj:
            assert len(traj) == 2 * 6 + 1  # 1,500 digits / batch 256 = 6 steps per epoch, plus the initial point
            assert traj.config["train"]["seed"] == int(run[-1])
    run, other = (results / name for name in runs)
    assert not (other / "landscape").exists() and not (other / "spectra").exists()  # not asked for
    methods = {settings_of(p)["settings"]["directions"]["method"]: p for p in (run / "landscape").iterdir()}
    assert sorted(methods) == ["hessian", "pca", "random"]
    for land_dir in methods.values():
        land = load_landscape(land_dir / "landscape_2d.h5")
        assert land.loss.shape == (5, 5) and np.isfinite(land.loss).all()
        assert land.trajectory.shape == (13, 2)
        assert land.provenance["versions"]["gradvis"] and land.config["run"]["train"]["seed"] == 0
        assert land.provenance["settings"] == settings_of(land_dir)  # the folder's settings, in the file itself
        for name in ("contour.png", "surface.png", "surface.vtk", "line.png", "landscape_1d.h5"):
            assert (land_dir / name).stat().st_size > 0, name
    # the sweep spectra.m: [6, 8] gives two spectra side by side, each with its own training video
    spectra_dirs = {settings_of(p)["settings"]["spectra"]["m"]: p for p in (run / "spectra").iterdir()}
    assert sorted(spectra_dirs) == [6, 8]
    for m, spectra_dir in spectra_dirs.items():
        spectra = load_spectra(spectra_dir / "spectra.h5")
        assert spectra.iterations.tolist() == [0, 3, 6, 9, 12]  # every 3rd checkpoint and the last
        assert int(spectra.attrs["m"]) == m
        # spectra.blocks: [whole, per_layer] in config/test.yaml: one Hessian block per layer of the LeNet
        assert list(spectra.attrs["blocks"]) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
        assert all(list(entry.blocks) == list(spectra.attrs["blocks"]) for entry in spectra.entries.values())
        densities = sorted(p.name for p in (spectra_dir / "densities").glob("*.png"))
        assert densities == [f"density_{i:06d}.png" for i in (0, 3, 6, 9, 12)]
    videos = {settings_of(v.parent)["settings"]["spectra"]["spectra"]["m"]: v
              for v in (run / "videos").glob("*/training.mp4") if "landscape" in settings_of(v.parent)["settings"]}
    assert sorted(videos) == [6, 8] and all(count_frames(v) == 5 for v in videos.values())
    # the moving frame: planes of the top Hessian eigenvectors at checkpoints 0, 6 and 12, one video over them
    (moving,) = [v for v in (run / "videos").glob("*/training.mp4") if "moving" in settings_of(v.parent)["settings"]]
    assert count_frames(moving) == 5
    centres = sorted(p.name for p in (run / "moving").glob("*/landscapes/centre_*.h5"))
    assert centres == ["centre_000000.h5", "centre_000006.h5", "centre_000012.h5"]
    assert [load_landscape(c).center_iteration for c in sorted((run / "moving").glob("*/landscapes/centre_*.h5"))] \
        == [0, 6, 12]
    compare = results / "experiments" / "training" / "compare" / run.name / "spectra.png"
    assert compare.stat().st_size > 0
    # the interpolation experiment: line, plane, spectra at its points, the Figure 8 video
    pair = only(sorted((run / "interpolation" / other.name).iterdir()))
    line = load_landscape(pair / "line.h5")
    assert line.axes[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert len(load_spectra(pair / "spectra.h5").entries) == 4
    assert count_frames(only(sorted(pair.glob("videos/*/interpolation.mp4")))) == 4
    assert (pair / "plane_contour.png").stat().st_size > 0
    with h5py.File(pair / "plane.h5") as f:
        assert f["loss"].shape == (5, 5)
    # every result records its run (the pair's files both runs, A first), so no step warned of an unrecorded input
    identity = {}
    for name in runs:
        with Trajectory(results / name / "trajectory.h5") as traj:
            identity[name] = traj.run["digest"]
    for path in run.rglob("*.h5"):
        if path.name != "trajectory.h5":
            with h5py.File(path) as f:
                recorded = [r["digest"] for r in json.loads(f.attrs["runs"])]
            pair_file = "interpolation" in path.relative_to(run).parts
            assert recorded == [identity[name] for name in (runs if pair_file else runs[:1])], path
    assert not [log for log in results.rglob("*.log") if "records no run" in log.read_text(errors="replace")]
    for experiment in ("training", "interpolation", "moving"):
        page = (results / "experiments" / experiment / "summary.html").read_text()
        assert experiment in page
    html = (folder / "report.html").read_text(errors="replace")
    assert "training.mp4" in html and "contour.png" in html and "summary.html" in html


def planned_jobs(config_path: Path) -> dict[str, int]:
    plan = snakemake("-n", "--cores", "1", "--configfile", str(config_path), "--quiet", "rules")
    assert plan.returncode == 0, plan.stderr
    return {line.split()[0]: int(line.split()[1]) for line in plan.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_complete_run_has_nothing_to_do_and_sweeps_add_only_new_jobs(tiny_run):
    folder, path, config = tiny_run
    again = snakemake("-n", "--cores", "1", "--configfile", str(path))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    wider = yaml.safe_load(path.read_text())
    wider["experiments"]["training"]["spectra"]["m"] = [6, 8, 10]  # a third value of the sweep
    wider_path = folder / "wider.yaml"
    wider_path.write_text(yaml.safe_dump(wider))
    planned = planned_jobs(wider_path)
    # the new spectra (2 chunks, gathered, plotted) and its video; the comparison and the summary take it in
    assert planned.pop("spectrum_chunk") == 2 and planned.pop("spectra_gather") == 1
    assert planned.pop("training_video") == 1 and planned.pop("compare") == 1
    assert set(planned) <= {"analysis_settings", "density_plots", "training_frames", "experiment_settings",
                            "experiment_summary", "all", "total"}, planned  # no training, no landscape reruns
    seeds = yaml.safe_load(path.read_text())
    seeds["experiments"]["interpolation"]["train"]["seed"] = [0, 1, 2]  # a new run, not an interpolation partner
    seeds_path = folder / "seeds.yaml"
    seeds_path.write_text(yaml.safe_dump(seeds))
    planned = planned_jobs(seeds_path)
    assert planned.get("train") == 1 and "interpolate" not in planned and "landscape" not in planned, planned


def test_mpi_launcher_only_for_jobs_with_several_tasks(tmp_path):
    """mpi_tasks > 1 prefixes the step with `{mpi_launcher} -n N` (and declares the `mpi` resource SLURM needs);
    one task runs plain python, with no MPI launcher required on a laptop."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["landscape"]["mpi_tasks"] = 3
    config["mpi_launcher"] = "srun"
    path = tmp_path / "mpi.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "-p", "--cores", "4", "--configfile", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    shells = [line for line in result.stdout.splitlines() if "python -m gradvis_steps." in line]
    landscape = [s for s in shells if "gradvis_steps.landscape" in s]
    others = [s for s in shells if "gradvis_steps.landscape" not in s]
    assert landscape and all("srun -n 3 python -m gradvis_steps.landscape" in s for s in landscape), landscape
    assert others and not any("srun" in s or "mpiexec" in s for s in others), others


def test_data_parallel_and_hybrid_modes_build_launcher_arguments_and_gpus(tmp_path):
    """spectra.parallel and ranks_per_group reach the spectrum and interpolation steps; eigendirections runs on
    directions.hessian.mpi_tasks ranks (data parallel); a multi-rank GPU job asks for one GPU per ranks_per_gpu ranks
    (gpu, tasks_per_gpu: the SLURM plugin's --gpus and --ntasks-per-gpu)."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["mpi_launcher"] = "srun --mpi=pmi2"
    config["spectra"].update(mpi_tasks=4, parallel="hybrid", ranks_per_group=2)
    config["directions"]["hessian"]["mpi_tasks"] = 3
    config["resources"].update(gpu=1, ranks_per_gpu=2)
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "-p", "--cores", "8", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = {}
    for block in result.stdout.split("\n\n"):
        rule = next((line.split()[-1].rstrip(":") for line in block.splitlines()
                     if line.startswith(("rule ", "localrule "))), None)
        shell = next((line for line in block.splitlines() if "python -m gradvis_steps." in line), "")
        resources = next((line for line in block.splitlines() if line.strip().startswith("resources:")), "")
        if rule:
            jobs.setdefault(rule, []).append((shell, resources))
    for rule in ("spectrum_chunk", "interpolate"):
        for shell, resources in jobs[rule]:
            assert "srun --mpi=pmi2 -n 4 python -m" in shell and "--parallel hybrid --ranks-per-group 2" in shell, shell
            assert "tasks=4" in resources and "gpu=2" in resources and "tasks_per_gpu=2" in resources, resources
    for shell, resources in jobs["eigendirections"]:
        assert "srun --mpi=pmi2 -n 3 python -m gradvis_steps.eigendirections" in shell, shell
        assert "gpu=2" in resources, resources
    for shell, resources in jobs["train"]:
        assert "srun" not in shell and "gpu=1" in resources, (shell, resources)


def test_config_values_never_reach_a_shell_unquoted(tmp_path):
    """A results folder and a dataset key with a space, a quote and shell syntax stay one argument each: the
    planned commands split back into the intended paths, and a real job writes where it should and runs nothing
    else."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    weird = "it's a folder;touch PWNED;#"
    results = tmp_path / weird / "results"
    config["results"] = str(results)
    config["datasets"] = {"my digits": {"name": "digits"}}
    config["train"]["dataset"] = ["my digits"]
    config["train"]["seed"] = [0]
    config.pop("experiments")  # the shared sections alone: the single-experiment form
    path = tmp_path / "weird.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = snakemake("-n", "-p", "--cores", "1", "--configfile", str(path))
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    shells = [line.strip() for line in plan.stdout.splitlines() if "python -m gradvis_steps." in line]
    assert shells
    for line in shells:
        words = shlex.split(line)
        assert "touch" not in words, line
        paths = [word for word in words if "PWNED" in word]  # every path under the results folder, whole
        assert paths and all(word.startswith(str(results)) for word in paths), line
        log = words[words.index("gradvis_steps.logged") + 1]  # python -m gradvis_steps.logged LOG COMMAND
        assert log.startswith(str(results)) and log.endswith(".log"), line
    run = "my digits-lenet_small-lr0.05-bs256-e2-m0.9-s0"
    assert any(run in line for line in shells)
    trained = snakemake(f"{results}/{run}/trajectory.h5", "--cores", "1", "--configfile", str(path))
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (results / run / "trajectory.h5").is_file() and (results / run / "logs" / "train.log").is_file()
    assert not list(ROOT.glob("PWNED")) and not list(tmp_path.rglob("PWNED"))


def test_tiny_workflow_runs_with_tensorflow(tmp_path):
    """`train: {framework: [tensorflow]}`: the whole tiny DAG (both kinds of experiment) on Keras models, every later
    step finding the framework in the trajectory."""
    pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")
    from gradvis_steps.render.video import count_frames
    from gradvis_steps.storage.landscape import load_landscape
    from gradvis_steps.storage.spectra import load_spectra
    from gradvis_steps.storage.trajectory import Trajectory

    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["train"]["framework"] = ["tensorflow"]
    del config["experiments"]["moving"]
    config["experiments"]["training"]["spectra"] = {"m": 8}  # no sweep: one result set is enough here
    path = tmp_path / "tf.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    run = results / "digits-lenet_small-lr0.05-bs256-e2-m0.9-s0-tensorflow"
    other = results / "digits-lenet_small-lr0.05-bs256-e2-m0.9-s1-tensorflow"
    for folder in (run, other):
        with Trajectory(folder / "trajectory.h5") as traj:
            assert traj.config["framework"] == "tensorflow" and len(traj) == 13
    for land_dir in (run / "landscape").iterdir():
        land = load_landscape(land_dir / "landscape_2d.h5")
        assert land.loss.shape == (5, 5) and np.isfinite(land.loss).all()
    spectra = load_spectra(only(sorted((run / "spectra").glob("*/spectra.h5"))))
    assert spectra.iterations.tolist() == [0, 3, 6, 9, 12]
    assert count_frames(only(sorted((run / "videos").glob("*/training.mp4")))) == 5
    pair = only(sorted((run / "interpolation" / other.name).iterdir()))
    assert count_frames(only(sorted(pair.glob("videos/*/interpolation.mp4")))) == 4
