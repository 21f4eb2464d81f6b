"""Pre-flight: what the schema cannot say about a config, checked when the workflow loads, before any job runs.

The schema (``workflow/schemas/config.schema.yaml``) checks each key's type and range, and the planner
(``experiments.py``) the rules between keys. What needs the package is checked here: every run's dataset and model
(names, option names and types, the CIFAR-10 files, custom entry points that must import, the model built once for
the dataset's input), every run's loss (names, a custom loss's entry point, a classification loss on a dataset whose
facts say its targets are floats) and the checkpoints a run will store against what its analyses ask of them.
Without this, each of these failed only inside a job, hours into a cluster run, in the job's log. External runs
(``external_runs:``): their files exist, a trajectory file is one and fits the model its own run config names,
checkpoint files are found with their iterations (the import step's ``find_checkpoints``), and they hold what the
analyses ask of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from experiments import DEFAULT_EXPERIMENT, EXTERNAL, ConfigError, Plan
from external_files import checkpoint_files, missing_files


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


#: Free space below which no job of a run can be expected to finish (a trajectory, a log, a settings file)
MIN_FREE_BYTES = 1 << 20


def writable_problem(results: str | os.PathLike[str]) -> str | None:
    """Why a run could not write into the results folder (not writable, a read-only file system, a full disk), in
    one line naming the folder and the cause; None when it can. Checked before the first job: otherwise the first
    job to write failed, hours into a run, with a Snakemake traceback or an empty log."""
    folder = Path(results).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"results folder {folder}: {existing} is not a folder"
    folders = [existing] if existing != folder else [Path(f) for f, _, _ in os.walk(folder)]
    for path in folders:
        if not os.access(path, os.W_OK | os.X_OK):  # False on a read-only mount, even for root
            cause = "read-only file system" if _read_only(path) else "permission denied"
            if existing != folder:
                return f"results folder {folder} cannot be created: {path} is not writable ({cause})"
            where = "" if path == folder else f": its subfolder {path}"
            return f"results folder {folder} is not writable{where} ({cause})"
    try:
        space = os.statvfs(existing)
    except OSError:
        return None
    if space.f_bavail * space.f_frsize < MIN_FREE_BYTES:
        return (f"results folder {folder}: no space left on device ({space.f_bavail * space.f_frsize} bytes free on "
                f"the file system of {existing})")
    if space.f_files and not space.f_favail:
        return f"results folder {folder}: no space left on device (no free inodes on the file system of {existing})"
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def preflight(plan: Plan) -> None:
    """Raise ConfigError naming key, value and what is accepted for the first thing no job could run."""
    for name, external in plan.external.items():  # needs no package: checked even where the steps are not installed
        problem = missing_files(external["spec"])
        if problem:
            raise ConfigError(f"{EXTERNAL}.{name}: {problem}")
    try:
        import gradvis_steps.data  # noqa: F401 - the package, for what follows
    except ImportError as error:  # snakemake outside the package's environment (jobs in conda envs)
        print(f"pre-flight check of datasets, models and checkpoints skipped: {error}", file=sys.stderr)
        return

    facts: dict[str, Any] = {}
    built: set[tuple[str, str, str]] = set()
    for run in plan.runs.values():
        settings, config = run["settings"], run["execution"]
        key = settings["dataset"]
        if key not in facts:
            facts[key] = _facts(f"datasets.{key}", config["datasets"][key])
        _check_loss(settings, config, facts[key])
        model = (settings["framework"], settings["model"], key)
        if model not in built and facts[key] is not None:
            _build_model(settings, config, facts[key])
            built.add(model)
    stored = {name: _external_checkpoints(name, external, facts) for name, external in plan.external.items()}
    for experiment in plan.experiments.values():
        where = "" if experiment.name == DEFAULT_EXPERIMENT else f"experiments.{experiment.name}: "
        for variant in experiment.variants:
            for rid in variant.runs:
                if rid in stored:
                    _check_stored(where, rid, plan.external[rid]["spec"], stored[rid], variant.config)
                    continue
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


def _build_model(settings: dict[str, Any], config: dict[str, Any], facts: Any, spec: dict[str, Any] | None = None,
                 where: str | None = None) -> Any:
    """Build the model once, on the CPU, for a one-sample stand-in of the dataset's shape: an unknown name, bad
    options or a custom entry point that does not import fail here as they would in the train job. Returns its
    parameter layout. ``spec``/``where``: a model spec given directly (a trajectory file's) and its name in errors."""
    import numpy as np

    from gradvis_steps.backends import backend
    from gradvis_steps.data import ArrayDataset

    key, framework = settings["model"], settings["framework"]
    spec = config["models"][key] if spec is None else spec
    stand_in = ArrayDataset(settings["dataset"], np.zeros((1, *facts.input_shape), np.float32),
                            np.zeros(1, np.int64), facts.num_classes)
    try:
        chosen = backend(framework)
        model = chosen.build_model({"framework": framework, "model": dict(spec), "train": {"seed": 0}}, stand_in)
        return chosen.parameter_layout(model)
    except Exception as error:  # noqa: BLE001 - whatever a factory raises, the job would fail the same way
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{where or f'models.{key}'} {spec} ({framework}, for {settings['dataset']} inputs of "
                          f"shape {facts.input_shape}): {message}") from None


def _external_checkpoints(name: str, external: dict[str, Any], facts: dict[str, Any]) -> list[int] | int:
    """The iterations an external run's trajectory will hold (or, where the files' iterations cannot be read
    without the import step, their number); a file that does not fit its model is a ConfigError."""
    spec, config = external["spec"], external["execution"]
    where = f"{EXTERNAL}.{name}"
    if spec["kind"] == "checkpoints":
        try:
            found = checkpoint_files(spec)
        except (ValueError, OSError) as error:  # the import step's words, with its option named as the config's key
            message = _first_line(error).replace("--iterations N [N ...]", f"{where}.iterations: [N, ...]")
            raise ConfigError(f"{where}: {message.replace('--iterations', 'iterations:')}") from None
        if not found:
            raise ConfigError(f"{where}: checkpoints {spec['checkpoints']} match no file")
        key = spec["dataset"]
        if key not in facts:
            facts[key] = _facts(f"datasets.{key}", config["datasets"][key])
        if facts[key] is not None:
            _build_model({"model": spec["model"], "framework": spec["framework"], "dataset": key}, config, facts[key])
        if spec["iterations"] is not None and len(spec["iterations"]) != len(found):
            raise ConfigError(f"{where}.iterations gives {len(spec['iterations'])} iterations for the "
                              f"{len(found)} files {spec['checkpoints']} match; give one per file")
        iterations = [i for i, _ in found]
        return len(found) if None in iterations else iterations  # None: listed without the import step
    from gradvis_steps.storage.trajectory import Trajectory

    path = spec["trajectory"]
    try:
        with Trajectory(path) as trajectory:
            run, layout, iterations = trajectory.config, trajectory.layout, trajectory.iterations.tolist()
    except (ValueError, OSError, KeyError) as error:
        message = _first_line(error)
        raise ConfigError(f"{where}: {message if path in message else f'trajectory {path}: {message}'}") from None
    model, dataset = run.get("model"), run.get("dataset")
    if not isinstance(model, dict) or not isinstance(dataset, dict):
        raise ConfigError(f"{where}: trajectory {path} records no model and dataset in its run config (attribute "
                          "config); record it with gradvis (the train step, the recorder or the import step)")
    shapes = _facts(f"{where}: trajectory {path}: dataset", dataset)
    if shapes is not None:  # a custom loader's shapes are known only once it has run
        from gradvis_steps.backends import DEFAULT_FRAMEWORK

        framework = run.get("framework", DEFAULT_FRAMEWORK)
        built = _build_model({"model": name, "framework": framework, "dataset": dataset.get("name", "?")}, config,
                             shapes, model, f"{where}: trajectory {path}: model")
        mismatch = _layout_mismatch(layout, built, by_name=framework != "tensorflow")
        if mismatch:
            raise ConfigError(f"{where}: trajectory {path} does not fit the model its run config names ({model}, "
                              f"{framework}): {mismatch}")
    return iterations


def _facts(where: str, spec: dict[str, Any]) -> Any:
    from gradvis_steps.data import dataset_facts

    try:
        return dataset_facts(spec)
    except (ValueError, TypeError, OSError) as error:
        raise ConfigError(f"{where} {spec}: {error}") from None


def _layout_mismatch(stored: Any, built: Any, by_name: bool = True) -> str:
    """What differs between a file's parameter layout and the model's (names and shapes), or ''. Without
    ``by_name`` (Keras, whose variable names carry a per-process counter) the parameters in order, by shape."""
    if not by_name:
        have, want = [tuple(p.shape) for p in stored], [tuple(p.shape) for p in built]
        if have == want:
            return ""
        first = next(i for i in range(max(len(have), len(want))) if have[i:i + 1] != want[i:i + 1])
        return (f"the file holds {len(have)} parameter tensors, the model {len(want)}; tensor {first} has shape "
                f"{have[first] if first < len(have) else 'none'} (the model's: "
                f"{want[first] if first < len(want) else 'none'})")
    have, want = {p.name: p.shape for p in stored}, {p.name: p.shape for p in built}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [f"{name} {have[name]} (the model's: {want[name]})" for name in want if name in have
              and tuple(have[name]) != tuple(want[name])]
    parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else [])
    return "; ".join(parts + ([f"shapes differ: {', '.join(shapes)}"] if shapes else []))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_stored(where: str, name: str, spec: dict[str, Any], stored: list[int] | int, config: dict[str, Any]
                  ) -> None:
    """An external run's checkpoints (their iterations, or only their number) against what its analyses need."""
    count = stored if isinstance(stored, int) else len(stored)
    files = spec["kind"] if spec["kind"] == "checkpoints" else "trajectory"
    run = f"external run {name} ({files} {', '.join(spec.get('checkpoints') or [spec.get('trajectory', '')])})"
    methods = config["directions"]["methods"]
    if "pca" in methods and count < 3:
        raise ConfigError(f"{where}directions.methods includes pca, which needs at least 3 checkpoints, but "
                          f"{run} holds {count}; accepted: a run of 3 or more checkpoints, or methods without "
                          "pca")
    centre = config["landscape"]["centre"]
    if methods and centre != "last" and isinstance(stored, list) and centre not in stored:
        shown = ", ".join(map(str, stored)) if len(stored) <= 8 else (
            f"{', '.join(map(str, stored[:4]))}, ..., {', '.join(map(str, stored[-2:]))}")
        raise ConfigError(f"{where}landscape.centre {centre} is not a checkpoint of {run}: it holds "
                          f"iterations {shown} ({count} checkpoints); accepted: last or one of those")


def _check_checkpoints(where: str, rid: str, run: dict[str, Any], config: dict[str, Any], n_train: int) -> None:
    """The checkpoints a run stores (the train step's schedule, ``core.training.checkpoint_iterations``: 0, k, 2k,
    ... and the last) against what its analyses need."""
    from gradvis_steps.core.training import TrainSettings, checkpoint_iterations, steps_per_epoch

    settings, every = run["settings"], run["checkpoint_every"]
    schedule = TrainSettings(epochs=settings["epochs"], batch_size=settings["batch_size"], checkpoint_every=every)
    iterations = checkpoint_iterations(schedule, n_train)
    per_epoch, total, stored = steps_per_epoch(schedule, n_train), iterations[-1], len(iterations)
    run_text = (f"run {rid} ({settings['epochs']} epochs x {per_epoch} batches of {settings['batch_size']} from "
                f"{n_train} samples = {total} iterations)")
    if every > total:
        raise ConfigError(f"{where}train.checkpoint_every {every} is more than the {total} iterations of {run_text}: "
                          f"its trajectory would hold only the initial and final points; accepted: 1..{total - 1}")
    warmup = settings.get("warmup", 0)
    if warmup >= total:
        raise ConfigError(f"{where}train.warmup {warmup} is not less than the {total} iterations of {run_text}: its "
                          f"learning rate would never reach lr; accepted: 0..{total - 1}")
    step_every = settings.get("step_every")
    if step_every is not None and step_every >= total - warmup:
        raise ConfigError(f"{where}train.step_every {step_every}: the step schedule of {run_text} would never decay "
                          f"the learning rate ({total - warmup} iterations after a warm-up of {warmup}); accepted: "
                          f"1..{total - warmup - 1}")
    methods = config["directions"]["methods"]
    if "pca" in methods and stored < 3:
        raise ConfigError(f"{where}directions.methods includes pca, which needs at least 3 checkpoints, but "
                          f"train.checkpoint_every {every} stores {stored} checkpoints of {run_text}; "
                          f"accepted: 1..{total - 1}")
    centre = config["landscape"]["centre"]
    if methods and centre != "last" and centre not in set(iterations):
        raise ConfigError(f"{where}landscape.centre {centre} is not a checkpoint of {run_text}: it stores iterations "
                          f"0, {every}, {2 * every}, ... (train.checkpoint_every {every}) and the last, {total}; "
                          f"accepted: last or one of those")
