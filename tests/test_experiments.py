"""Experiments and analysis sweeps (workflow/experiments.py): the plan of a config, its folder ids, the paper's two
experiments as a dry run plans them, bad experiment configs, and a training job that resumes after a kill."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("snakemake.utils", reason="snakemake is not installed (pip install -e .[workflow])")

from experiments import ConfigError, digest, summary_settings  # noqa: E402
from workflow_runner import BIN, ROOT, config_copy, plan_of, shell_commands, snakemake  # noqa: E402


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_paper_config_plans_exactly_the_papers_jobs(tmp_path):
    """Section 3.3: one run of one epoch with SLQ at all 197 checkpoints; section 3.4: two runs of ten epochs and
    SLQ at the 20 points of their interpolation line; nothing more."""
    commands = shell_commands("--configfile", str(config_copy("paper_lenet_cifar10.yaml", tmp_path)))
    by_step: dict[str, list[list[str]]] = {}
    for words in commands:
        by_step.setdefault(words[0], []).append(words)
    trains = sorted((int(option(w, "--epochs")), int(option(w, "--seed"))) for w in by_step["gradvis_steps.train"])
    assert trains == [(1, 0), (10, 0), (10, 1)]
    assert all("--resume" in w and option(w, "--batch-size") == "256" for w in by_step["gradvis_steps.train"])
    # SLQ over the one-epoch run only, at every checkpoint, scattered over 20 chunks that cover it once
    spectra = by_step["gradvis_steps.spectrum"]
    assert {option(w, "--trajectory").split("/")[1] for w in spectra} == {"cifar10-lenet-lr0.01-bs256-e1-m0.9-s0"}
    assert {option(w, "--every") for w in spectra} == {"1"}
    assert {(option(w, "--k"), option(w, "--m")) for w in spectra} == {("10", "80")}
    assert sorted(option(w, "--chunk") for w in spectra) == sorted(f"{i}/20" for i in range(1, 21))
    # CIFAR-10 has 50,000 training images: 196 iterations at batch 256, 197 checkpoints with the initial point
    from gradvis_steps.checkpoints import select_rows

    iterations = np.arange(math.ceil(50_000 / 256) + 1)
    chosen = [select_rows(iterations, every=1, wanted=None, chunk=option(w, "--chunk")) for w in spectra]
    assert sorted(int(i) for rows in chosen for i in iterations[rows]) == list(range(197))
    (interpolate,) = by_step["gradvis_steps.interpolate"]
    assert option(interpolate, "--points") == "20"
    assert "e10-m0.9-s0" in option(interpolate, "--trajectory-a") and "e10-m0.9-s1" in option(interpolate,
                                                                                                "--trajectory-b")
    # landscapes: the Hessian plane of the one-epoch run (N = 50) and the interpolation plane (N = 50)
    landscapes = by_step["gradvis_steps.landscape"]
    assert len(landscapes) == 2 and {option(w, "--resolution") for w in landscapes} == {"50"}
    assert len(by_step["gradvis_steps.eigendirections"]) == 1
    assert len(by_step["gradvis_steps.video"]) == 2  # the training video and the interpolation video


def test_single_experiment_form_is_one_experiment_named_main():
    plan = plan_of({})
    assert list(plan.experiments) == ["main"]
    (variant,) = plan.experiments["main"].variants
    assert variant.swept == {} and len(plan.runs) == 2 and len(plan.pairs) == 1


def test_sweep_ids_are_stable_distinct_and_shared_where_settings_agree():
    two = plan_of({"spectra": {"m": [20, 30]}})
    three = plan_of({"spectra": {"m": [20, 30, 40]}})
    assert len(two.ids("spectra")) == 2 and set(two.ids("spectra")) < set(three.ids("spectra"))
    # the landscapes do not depend on m: one folder each, whatever the sweep
    assert two.ids("landscape") == three.ids("landscape") == plan_of({}).ids("landscape")
    # how a result is computed (chunks, ranks, lockstep group, HVP mode) is not in any id
    faster = plan_of({"spectra": {"m": [20, 30], "chunks": 7, "mpi_tasks": 3, "group_size": 2},
                      "evaluation": {"hvp_mode": "double_backprop"}, "landscape": {"mpi_tasks": 4}})
    for kind in two.jobs:
        assert faster.ids(kind) == two.ids(kind), kind
    # an id is a readable name plus the hash of the settings that define the folder
    for job_id in two.ids("spectra"):
        job = two.job("spectra", job_id)
        assert job_id.startswith(f"k4-m{job.settings['spectra']['m']}-every3-") and job_id.endswith(
            digest(job.settings))
    labels = sorted(v.label for v in two.experiments["main"].variants)
    assert labels == ["spectra.m=20", "spectra.m=30"]
    assert len(two.experiments["main"].compare) == 2  # one comparison of the spectra per run


def test_list_valued_keys_sweep_with_lists_of_lists_and_experiments_share_runs():
    plan = plan_of({"experiments": {
        "a": {"train": {"seed": [0]}, "interpolation": {"enabled": False},
              "directions": {"hessian": {"pick": [[0, 1], [1, 0]]}}},
        "b": {"train": {"seed": [0, 1]}, "frames": {"direction": "pca"},
              "directions": {"methods": [["pca"], ["random", "pca"]]}},
    }})
    assert [v.swept for v in plan.experiments["a"].variants] == [{"directions.hessian.pick": [0, 1]},
                                                                 {"directions.hessian.pick": [1, 0]}]
    assert len(plan.experiments["b"].variants) == 2
    assert sorted(plan.runs) == ["digits-lenet-lr0.05-bs64-e6-m0.9-s0", "digits-lenet-lr0.05-bs64-e6-m0.9-s1"]
    pca = [j for j in plan.jobs["landscape"].values() if j.settings["directions"]["method"] == "pca"]
    assert len(pca) == 1  # both experiments' PCA landscape of seed 0 is one job


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"experiments": {"a/b": {}}}, "name 'a/b' must be letters"),
        ({"experiments": {"x": {"landscpe": {}}}}, "experiments.x: unknown key(s) ['landscpe']"),
        ({"experiments": {"x": {"results": "elsewhere"}}}, "are set once at the top level"),
        ({"experiments": {"x": {"spectra": {"m": [20, 1]}}}}, "experiments.x: "),
        ({"spectra": {"m": []}}, "spectra.m: an empty list sweeps over nothing"),
        ({"experiments": {"x": {"frames": {"moving_every": 2, "direction": "pca"}}}}, "needs frames.direction"),
        ({"spectra": {"mpi_tasks": 4, "parallel": "hybrid"}}, "hybrid needs spectra.ranks_per_group"),
        ({"spectra": {"mpi_tasks": 2, "parallel": "hybrid", "ranks_per_group": 3}}, "ranks_per_group 3 exceeds"),
        ({"spectra": {"ranks_per_group": 2}}, "applies to spectra.parallel: hybrid only"),
    ],
)
def test_bad_experiment_configs_name_the_experiment_and_value(config, message):
    with pytest.raises(ConfigError) as error:
        plan_of(config)
    assert message in str(error.value)
    if "[20, 1]" in str(config):
        assert "1 is less than the minimum of 2" in str(error.value) and "spectra.m': 1" in str(error.value)


def test_train_job_resumes_after_a_kill(tmp_path):
    """A killed training job (a SLURM time limit, Ctrl-C) leaves <trajectory>.partial; the next run of the workflow
    continues from its last epoch and gives the same trajectory as an uninterrupted run."""
    import h5py

    from gradvis_steps.storage.trajectory import Trajectory

    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config.pop("experiments")
    config["results"] = str(tmp_path / "results")
    config["train"].update(epochs=[6], batch_size=[32])  # 47 iterations per epoch, enough to be killed midway
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = "digits-lenet_small-lr0.05-bs32-e6-m0.9-s0"
    target = tmp_path / "results" / run / "trajectory.h5"
    partial = target.with_name("trajectory.h5.partial")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HDF5_USE_FILE_LOCKING": "FALSE"}
    job = subprocess.Popen([str(BIN / "snakemake"), str(target), "--cores", "1", "--configfile", str(path)],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and job.poll() is None:  # wait for the state saved after an epoch
            try:
                with h5py.File(partial, "r", locking=False) as f:
                    if "resume" in f and int(f["resume"]["next_epoch"][()]) >= 2:
                        break
            except (OSError, KeyError):
                pass
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    if target.exists():
        pytest.skip("training finished before it could be killed (machine too fast for this check)")
    assert partial.exists()
    unlocked = snakemake("--unlock", "--cores", "1", "--configfile", str(path))  # a kill leaves Snakemake's lock
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    again = snakemake(str(target), "--cores", "1", "--configfile", str(path), "--rerun-incomplete")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (tmp_path / "results" / run / "logs" / "train.log").read_text()
    assert "resuming at iteration" in log and "of 6)" in log, log
    fresh = tmp_path / "fresh.h5"
    subprocess.run([sys.executable, "-m", "gradvis_steps.train", "--dataset", "digits", "--model", "lenet",
                    "--model-option", "widths=[3, 4, 16, 12]", "--seed", "0", "--lr", "0.05", "--batch-size", "32",
                    "--epochs", "6", "--momentum", "0.9", "--device", "cpu", "--no-progress", "--out", str(fresh)],
                   check=True, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # as the job
    with Trajectory(target) as resumed, Trajectory(fresh) as uninterrupted:
        assert len(resumed) == len(uninterrupted) == 6 * 47 + 1
        for i in range(len(resumed)):
            np.testing.assert_array_equal(resumed.params(i), uninterrupted.params(i))


# --- external runs (runs trained elsewhere: a trajectory file or checkpoint files) -----------------------------------

EXTERNAL = {"mine": {"trajectory": "runs/mine/trajectory.h5"},
            "li_a": {"checkpoints": "li/a/model_*.pth", "model": "lenet", "dataset": "digits"},
            "li_b": {"checkpoints": ["li/b/model_1.pth", "li/b/model_2.pth"], "iterations": [10, 20],
                     "framework": "tensorflow", "model": "lenet", "dataset": "digits",
                     "loss": {"name": "custom", "entry_point": "mylosses:huber", "delta": 0.5}}}


def test_external_runs_alone_train_nothing_and_pair_by_name():
    plan = plan_of({"external_runs": EXTERNAL, "runs": ["mine", "li_a"],
                    "interpolation": {"between": ["li_a", "mine"]}})
    assert plan.runs == {} and list(plan.external) == ["mine", "li_a"]  # declared but unused: li_b not planned
    assert plan.external["mine"]["spec"] == {"kind": "trajectory", "trajectory": "runs/mine/trajectory.h5",
                                             "description": None}
    assert plan.external["li_a"]["spec"] == {
        "kind": "checkpoints", "checkpoints": ["li/a/model_*.pth"], "iterations": None, "framework": "torch",
        "model": "lenet", "dataset": "digits", "loss": {"name": "cross_entropy"}, "description": None}
    experiment = plan.experiments["main"]
    assert experiment.runs == ["mine", "li_a"] and plan.pairs == {("li_a", "mine"): None}
    # every analysis of each run, in the run's folder named after it; the pair's in A's folder
    paths = [item["path"] for item in experiment.outputs]
    for run in ("mine", "li_a"):
        assert f"{run}/trajectory.h5" in paths
        assert [p for p in paths if p.startswith(f"{run}/spectra/") and p.endswith("spectra.h5")]
        assert len([p for p in paths if p.startswith(f"{run}/landscape/") and p.endswith("contour.png")]) == 3
        assert [p for p in paths if p.startswith(f"{run}/videos/") and p.endswith("training.mp4")]
    pair = [p for p in paths if "/interpolation/" in p]  # line, plane, video
    assert len(pair) == 3 and all(p.startswith("li_a/interpolation/mine/") for p in pair)
    # the report page lists each external run by its declaration
    runs = summary_settings(plan, experiment)["runs"]
    assert runs == {"mine": {"external": "trajectory", "trajectory": "runs/mine/trajectory.h5"},
                    "li_a": {"external": "checkpoints", "checkpoints": ["li/a/model_*.pth"], "framework": "torch",
                             "model": "lenet", "dataset": "digits", "loss": {"name": "cross_entropy"}}}


def test_external_runs_beside_trained_ones_and_shared_between_experiments():
    plan = plan_of({"external_runs": EXTERNAL, "experiments": {
        "both": {"runs": ["trained", "li_b"], "directions": {"methods": ["pca"]}, "frames": {"direction": "pca"}},
        "imported": {"runs": ["li_a", "li_b"], "interpolation": {"between": [["li_a", "li_b"], ["li_b", "li_a"]]},
                     "directions": {"methods": ["pca"]}, "frames": {"direction": "pca"}}}})
    assert sorted(plan.runs) == ["digits-lenet-lr0.05-bs64-e6-m0.9-s0", "digits-lenet-lr0.05-bs64-e6-m0.9-s1"]
    assert list(plan.external) == ["li_b", "li_a"]
    assert plan.external["li_b"]["spec"]["loss"] == {"name": "custom", "entry_point": "mylosses:huber", "delta": 0.5}
    assert plan.experiments["both"].runs == [*sorted(plan.runs), "li_b"]
    # trained runs pair by seed; a sweep over between gives one pair per variant
    assert list(plan.pairs) == [tuple(sorted(plan.runs)), ("li_a", "li_b"), ("li_b", "li_a")]
    assert [v.label for v in plan.experiments["imported"].variants] == [
        "interpolation.between=['li_a', 'li_b']", "interpolation.between=['li_b', 'li_a']"]
    # what an analysis is does not depend on its run: li_b's PCA landscape folder is the trained runs' one
    assert len(plan.ids("landscape")) == 1


def test_an_imported_run_is_one_import_command_and_no_train_job(tmp_path):
    """A dry run: the checkpoint files become the import step's paths, with the model, dataset and loss options
    (the import step's command line, as fixed for all parts); no training."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for i in (10, 2, 1):
        (folder / f"model_{i}.pth").write_bytes(b"not read by a dry run")
    config = {"results": str(tmp_path / "results"), "models": {"small": {"name": "lenet", "widths": [3, 4, 16, 12]}},
              "external_runs": {"imported": {"checkpoints": str(folder / "model_*.pth"), "model": "small",
                                             "dataset": "digits", "loss": "mse"}},
              "runs": ["imported"], "directions": {"methods": ["random"]}, "spectra": {"enabled": False},
              "frames": {"training": False}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    commands = shell_commands("--configfile", str(path))
    steps = [words[0] for words in commands]
    assert "gradvis_steps.train" not in steps and steps.count("gradvis_steps.import_checkpoints") == 1
    (words,) = [w for w in commands if w[0] == "gradvis_steps.import_checkpoints"]
    assert option(words, "--out") == str(tmp_path / "results" / "imported" / "trajectory.h5")
    assert (option(words, "--framework"), option(words, "--dataset"), option(words, "--model")) == (
        "torch", "digits", "lenet")
    assert option(words, "--model-option") == "widths=[3, 4, 16, 12]" and option(words, "--loss") == "mse"
    files = words[words.index("--no-progress") + 1:]
    assert sorted(files) == sorted(str(folder / f"model_{i}.pth") for i in (1, 2, 10))
    landscape = [w for w in commands if w[0] == "gradvis_steps.landscape"]
    assert {option(w, "--trajectory") for w in landscape} == {option(words, "--out")}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"external_runs": {"x": {}}}, "external_runs.x: give either trajectory: (a gradvis trajectory file) or "
                                       "checkpoints: (files, folders or glob patterns of saved models), one"),
        ({"external_runs": {"x": {"trajectory": "a.h5", "checkpoints": "b/*"}}}, "external_runs.x: give either"),
        ({"external_runs": {"x": {"trajectory": "a.h5", "model": "lenet"}}},
         "external_runs.x: model is read from the trajectory file's own run config; remove model"),
        ({"external_runs": {"x": {"checkpoints": "b/*", "dataset": "digits"}}},
         "external_runs.x: a run declared by checkpoints needs model: (a key of models:)"),
        ({"external_runs": {"x": {"checkpoints": "b/*", "model": "vgg", "dataset": "digits"}}},
         "external_runs.x.model names 'vgg', which is not defined under models: (defined: ['lenet'])"),
        ({"external_runs": {"x": {"checkpoints": "b/*", "model": "lenet", "dataset": "digits",
                                  "framework": "jax"}}}, "'jax' is not one of ['torch', 'tensorflow']"),
        ({"external_runs": {"x": {"checkpoints": 5, "model": "lenet", "dataset": "digits"}}},
         "external_runs.x.checkpoints: 5 is not of type 'string', 'array'"),
        ({"external_runs": {"trained": {"trajectory": "a.h5"}}}, "name 'trained' must be letters"),
        ({"external_runs": {"experiments": {"trajectory": "a.h5"}}}, "name 'experiments' must be letters"),
        ({"external_runs": {"a/b": {"trajectory": "a.h5"}}}, "name 'a/b' must be letters"),
        ({"external_runs": {"digits-lenet-lr0.05-bs64-e6-m0.9-S0": {"trajectory": "a.h5"}}},
         "the folder 'digits-lenet-lr0.05-bs64-e6-m0.9-S0' is also that of the trained run "
         "'digits-lenet-lr0.05-bs64-e6-m0.9-s0'"),
        ({"external_runs": {"Mine": {"trajectory": "a.h5"}, "mine": {"trajectory": "b.h5"}}},
         "external_runs.mine: the name differs from 'Mine' only in case"),
        ({"experiments": {"x": {"runs": ["trained", "mine"]}}},
         "experiments.x: runs names 'mine', which is neither 'trained' (the runs of train:) nor declared under "
         "external_runs: (declared: [])"),
        ({"runs": []}, "runs: [] should be non-empty"),
        ({"external_runs": {"a": {"trajectory": "a.h5"}}, "runs": ["a"], "interpolation": {"between": ["a", "b"]}},
         "interpolation.between names 'b', which is not among the external runs this experiment analyses"),
        ({"external_runs": {"a": {"trajectory": "a.h5"}}, "runs": ["a"], "interpolation": {"between": ["a", "a"]}},
         "has non-unique elements"),
    ],
)
def test_bad_external_run_configs_name_the_run_and_value(config, message):
    with pytest.raises(ConfigError) as error:
        plan_of(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
