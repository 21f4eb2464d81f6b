"""The plan names each path once (workflow/paths.py): the planner's targets are the table's templates filled in,
renaming a folder or a file in the table moves every rule and target with it (a dry run of a copy of the workflow),
and the pre-flight checks configs against the checkpoints the training loop really stores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

pytest.importorskip("snakemake.utils", reason="snakemake is not installed (pip install -e .[workflow])")

import paths  # noqa: E402
from experiments import TRAIN_OPTIONS, TRAINER_DEFAULTS, ConfigError, Plan  # noqa: E402
from workflow_runner import BIN, ROOT, plan_of  # noqa: E402

from gradvis_steps.core import training  # noqa: E402


def as_regex(template: str) -> re.Pattern[str]:
    """A template as a regex of the concrete paths it names (each wildcard one path component or part of one)."""
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join("[^/]*" if part.startswith("{") else re.escape(part) for part in parts))


def test_job_kinds_are_one_list_with_distinct_wildcards_and_folders():
    kinds = paths.JOB_KINDS
    assert list(Plan().jobs) == [kind.name for kind in kinds]
    assert len({kind.wildcard for kind in kinds}) == len({kind.folder for kind in kinds}) == len(kinds)
    for kind in kinds:  # a kind's folder is named by its own id (one folder per job), inside a run's folder
        assert kind.folder.startswith("{run}/") and kind.folder.endswith(f"{{{kind.wildcard}}}"), kind
    for folder, _ in paths.FILES.values():
        assert folder in paths.FOLDERS
    # the kinds whose settings.yaml one rule writes: every kind directly under a run's folder
    assert paths.run_subfolders() == {"eigendirections": "eigendirections", "directions": "directions",
                                      "landscape": "landscape", "spectra": "spectra", "videos": "video",
                                      "moving": "moving"}


def test_fill_partial_and_path():
    assert paths.path("spectra", run="r", sid="s1") == "r/spectra/s1/spectra.h5"
    assert paths.path("landscape", run="r", lid="l", dims=2) == "r/landscape/l/landscape_2d.h5"
    assert paths.partial(paths.template("landscape"), dims=1) == "{run}/landscape/{lid}/landscape_1d.h5"
    assert paths.partial(paths.template("trajectory"), run="{other}") == "{other}/trajectory.h5"
    assert paths.wildcards(paths.template("interpolation_video")) == ["run", "other", "iid", "ivid"]
    with pytest.raises(KeyError, match="sid"):
        paths.path("spectra", run="r")


@pytest.mark.parametrize("config", ["test.yaml", "config.yaml"])
def test_every_planned_path_is_a_template_of_the_table(config):
    """Each target the planner names (outputs, data files, settings files, comparisons) is one of the table's
    templates filled in: none is spelled out in the planner."""
    plan = plan_of(yaml.safe_load((ROOT / "config" / config).read_text()))
    templates = [*(paths.template(name) for name in paths.FILES),
                 *(paths.settings_template(kind.name) for kind in paths.JOB_KINDS)]
    regexes = [as_regex(template) for template in templates]
    named = [p for e in plan.experiments.values() for p in (*(o["path"] for o in e.outputs), *e.files, *e.compare)]
    assert named
    for path in named:
        assert any(regex.fullmatch(path) for regex in regexes), path


def test_renaming_a_folder_and_a_file_in_the_table_moves_every_rule_and_target(tmp_path):
    """One edit of workflow/paths.py (the videos folder, the spectra file) and a dry run of config/test.yaml writes
    every job's output, log and input at the new place: no rule or target kept the old name."""
    copy = tmp_path / "gradvis"
    copy.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, copy / name)
    table = copy / "workflow" / "paths.py"
    text = table.read_text()
    edited = text.replace('"{run}/videos/{vid}"', '"{run}/clips/{vid}"').replace(
        '"spectra": ("spectra", "spectra.h5")', '"spectra": ("spectra", "slq.h5")')
    assert edited.count("clips") == 1 and edited.count("slq.h5") == 1
    table.write_text(edited)
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--cores", "1", "--configfile",
                             str(tmp_path / "config.yaml")], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    results = re.escape(config["results"])
    # the training videos' folders (a run's videos/), not the interpolation videos' (a pair's videos/, not renamed)
    assert not re.search(rf"{results}/[^/\s]+/videos/", out)
    assert re.search(rf"{results}/[^/\s]+/clips/[^/\s]+/training\.mp4", out)
    assert re.search(rf"{results}/[^/\s]+/clips/[^/\s]+/frames\.log", out)  # the logs follow their folder
    assert re.search(rf"{results}/[^/\s]+/clips/[^/\s]+/settings\.yaml", out)
    assert re.search(rf"{results}/[^/\s]+/interpolation/[^/\s]+/[^/\s]+/videos/", out)
    assert not re.search(rf"{results}/[^/\s]+/spectra/[^/\s]+/spectra\.h5", out)
    assert re.search(rf"{results}/[^/\s]+/spectra/[^/\s]+/slq\.h5", out)


class Recorder:
    """A writer that keeps only the iterations run_training stores (the truth of its checkpoint schedule)."""

    def __init__(self) -> None:
        self.iterations: list[int] = []

    def __len__(self) -> int:
        return len(self.iterations)

    def append(self, params, buffers, *, iteration, epoch, batch_loss) -> None:
        self.iterations.append(iteration)

    def resume_state(self):
        return None

    def save_resume_state(self, state) -> None:
        pass

    def truncate(self, n: int) -> None:
        del self.iterations[n:]


def stored_iterations(settings: training.TrainSettings, n: int) -> list[int]:
    writer = Recorder()
    training.run_training(settings, n, writer, snapshot=lambda: (np.zeros(2, np.float32), np.zeros(0)),
                          order=lambda epoch: np.arange(n), step=lambda indices, lr: 1.0,
                          optimizer_state=dict, restore=lambda state: None, progress=False)
    return writer.iterations


SCHEDULES = [(10, 3, 2, 1, None), (10, 3, 2, 4, None), (10, 3, 2, 8, None), (12, 4, 3, 3, None),
             (100, 7, 1, 5, None), (50, 8, 3, 4, 11), (9, 9, 2, 1, None)]  # (n, batch, epochs, every, max_iter)


@pytest.mark.parametrize(("n", "batch", "epochs", "every", "max_iterations"), SCHEDULES)
def test_checkpoint_schedule_is_what_the_training_loop_stores(n, batch, epochs, every, max_iterations):
    settings = training.TrainSettings(epochs=epochs, batch_size=batch, checkpoint_every=every,
                                      max_iterations=max_iterations)
    assert training.checkpoint_iterations(settings, n) == stored_iterations(settings, n)


@pytest.mark.parametrize(("n", "batch", "epochs", "every"), [s[:4] for s in SCHEDULES if s[4] is None])
def test_preflight_accepts_exactly_the_stored_checkpoints_as_centre(n, batch, epochs, every):
    """The pre-flight's centre check against the iterations a run of that schedule really stores."""
    from preflight import _check_checkpoints

    stored = stored_iterations(training.TrainSettings(epochs=epochs, batch_size=batch, checkpoint_every=every), n)
    run = {"settings": {"batch_size": batch, "epochs": epochs}, "checkpoint_every": every}
    if every > stored[-1] or len(stored) < 3:
        return  # refused for other reasons (tests/test_preflight.py)
    for centre in range(stored[-1] + 2):
        config = {"directions": {"methods": ["pca"]}, "landscape": {"centre": centre}}
        if centre in stored:
            _check_checkpoints("", "r", run, config, n)
        else:
            with pytest.raises(ConfigError, match=f"landscape.centre {centre} is not a checkpoint"):
                _check_checkpoints("", "r", run, config, n)


def test_planner_trainer_defaults_are_the_train_steps():
    """The planner leaves a trainer setting off a run's command line (and id) when it equals the train step's
    default: the two must agree, or a run would silently train with another value."""
    fields = training.TrainSettings.__dataclass_fields__
    assert {key: fields[key].default for key in TRAINER_DEFAULTS} == TRAINER_DEFAULTS
    assert set(TRAIN_OPTIONS) == {*training.OPTIMIZERS, *training.SCHEDULES}
