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

from experiments import ConfigError, digest  # noqa: E402
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
