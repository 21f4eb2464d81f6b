"""Pre-flight: what the schema cannot say about a config, checked when the workflow loads, before any job runs.

The schema (``workflow/schemas/config.schema.yaml``) checks each key's type and range, and the planner
(``experiments.py``) the rules between keys. What needs the package is checked here: every run's dataset and model
(names, option names and types, the CIFAR-10 files, custom entry points that must import, the model built once for
the dataset's input), every run's loss (names, a custom loss's entry point, a classification loss on a dataset whose
facts say its targets are floats) and the checkpoints a run will store against what its analyses ask of them.
Without this, each of these failed only inside a job, hours into a cluster run, in the job's log.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import yaml
from experiments import DEFAULT_EXPERIMENT, ConfigError, Plan


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; a syntax error names the file, line and column (``file:line:col``)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: YAML syntax error: {error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (results:, train:, ...), got a "
                          f"{type(config).__name__}")
    return config


def preflight(plan: Plan) -> None:
    """Raise ConfigError naming key, value and what is accepted for the first thing no job could run."""
    try:
        from gradvis_steps.data import dataset_facts
    except ImportError as error:  # snakemake outside the package's environment (jobs in conda envs)
        print(f"pre-flight check of datasets, models and checkpoints skipped: {error}", file=sys.stderr)
        return

    facts: dict[str, Any] = {}
    built: set[tuple[str, str, str]] = set()
    for run in plan.runs.values():
        settings, config = run["settings"], run["execution"]
        key = settings["dataset"]
        if key not in facts:
            try:
                facts[key] = dataset_facts(config["datasets"][key])
            except (ValueError, TypeError, OSError) as error:
                raise ConfigError(f"datasets.{key} {config['datasets'][key]}: {error}") from None
        _check_loss(settings, config, facts[key])
        model = (settings["framework"], settings["model"], key)
        if model not in built and facts[key] is not None:
            _build_model(settings, config, facts[key])
            built.add(model)
    for experiment in plan.experiments.values():
        where = "" if experiment.name == DEFAULT_EXPERIMENT else f"experiments.{experiment.name}: "
        for variant in experiment.variants:
            for rid in variant.runs:
                run = plan.runs[rid]
                dataset = facts[run["settings"]["dataset"]]
                if dataset is not None:  # a custom loader's size is known only once it has run
                    _check_checkpoints(where, rid, run, variant.config, dataset.n_train)


def _check_loss(settings: dict[str, Any], config: dict[str, Any], facts: Any) -> None:
    """The run's loss spec as the train job would take it, and against the dataset's targets where its facts tell."""
    from gradvis_steps.losses import is_classification, normalize

    name = settings["loss"]
    where = f"losses.{name}" if name in config["losses"] else "train.loss"
    spec = config["losses"].get(name, {"name": name})
    try:
        spec = normalize(spec)
    except ValueError as error:
        raise ConfigError(f"{where} {spec}: {error}") from None
    if facts is not None and facts.regression and is_classification(spec):
        raise ConfigError(f"{where} {spec['name']!r} is a classification loss, but datasets.{settings['dataset']} has "
                          "float (regression) targets; use a regression loss (mse, or a custom one)")


def _build_model(settings: dict[str, Any], config: dict[str, Any], facts: Any) -> None:
    """Build the model once, on the CPU, for a one-sample stand-in of the dataset's shape: an unknown name, bad
    options or a custom entry point that does not import fail here as they would in the train job."""
    import numpy as np

    from gradvis_steps.backends import backend
    from gradvis_steps.data import ArrayDataset

    key, framework = settings["model"], settings["framework"]
    spec = config["models"][key]
    stand_in = ArrayDataset(settings["dataset"], np.zeros((1, *facts.input_shape), np.float32),
                            np.zeros(1, np.int64), facts.num_classes)
    try:
        backend(framework).build_model({"framework": framework, "model": dict(spec), "train": {"seed": 0}},
                                       stand_in)
    except Exception as error:  # noqa: BLE001 - whatever a factory raises, the job would fail the same way
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"models.{key} {spec} ({framework}, for {settings['dataset']} inputs of shape "
                          f"{facts.input_shape}): {message}") from None


def _check_checkpoints(where: str, rid: str, run: dict[str, Any], config: dict[str, Any], n_train: int) -> None:
    """The checkpoints a run stores (iterations 0, k, 2k, ... and the last) against what its analyses need."""
    settings, every = run["settings"], run["checkpoint_every"]
    per_epoch = math.ceil(n_train / settings["batch_size"])
    total = per_epoch * settings["epochs"]
    stored = math.ceil(total / every) + 1
    run_text = (f"run {rid} ({settings['epochs']} epochs x {per_epoch} batches of {settings['batch_size']} from "
                f"{n_train} samples = {total} iterations)")
    if every > total:
        raise ConfigError(f"{where}train.checkpoint_every {every} is more than the {total} iterations of {run_text}: "
                          f"its trajectory would hold only the initial and final points; accepted: 1..{total - 1}")
    methods = config["directions"]["methods"]
    if "pca" in methods and stored < 3:
        raise ConfigError(f"{where}directions.methods includes pca, which needs at least 3 checkpoints, but "
                          f"train.checkpoint_every {every} stores {stored} checkpoints of {run_text}; "
                          f"accepted: 1..{total - 1}")
    centre = config["landscape"]["centre"]
    if methods and centre != "last" and not (centre == total or (centre < total and centre % every == 0)):
        raise ConfigError(f"{where}landscape.centre {centre} is not a checkpoint of {run_text}: it stores iterations "
                          f"0, {every}, {2 * every}, ... (train.checkpoint_every {every}) and the last, {total}; "
                          f"accepted: last or one of those")
