"""The workflow's plan: experiments, analysis sweeps and content-addressed output folders.

A config holds shared defaults (the top-level sections) and, optionally, named ``experiments`` that override them.
Within an experiment the lists under ``train`` are training sweeps (one run per combination) and a list given for
any analysis value is an analysis sweep (one variant per combination). Every analysis output lives in a folder
named after the settings it depends on (a short readable name plus a hash), so adding a value adds folders and
jobs beside the existing ones and never overwrites them, and two experiments asking for the same analysis of the
same run share one job. Execution settings (device, MPI ranks, chunks, lockstep groups, HVP mode and memory, grid
batching, resources) change how a result is computed, not what it is (to float rounding), and are not in the ids.

Runs come from the ``train`` grid (their folder is a readable id of their settings) and from ``external_runs``
(runs trained elsewhere, by a trajectory file or checkpoint files; their folder is their declared name): an
experiment's ``runs`` picks them, ``trained`` standing for the grid.

The paths of the planned files are workflow/paths.py's templates filled in (the rules use the same templates).
Pure Python (no Snakemake objects), so the tests can check a plan without running Snakemake.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from paths import FOLDERS, JOB_KINDS, fill, path, settings_template

#: sections every experiment has; the first is the training grid, the rest hold analysis settings
TRAIN = "train"
ANALYSIS_SECTIONS = ("evaluation", "directions", "landscape", "spectra", "interpolation", "frames")
SECTIONS = (TRAIN, *ANALYSIS_SECTIONS, "resources")
#: which runs an experiment analyses: TRAINED (the `train` grid) and/or names declared under EXTERNAL
RUNS = "runs"
TRAINED = "trained"
EXTERNAL = "external_runs"
GLOBAL_KEYS = ("results", "device", "mpi_launcher", "datasets", "models", "losses", EXTERNAL)
EXPERIMENT_KEYS = ("description", RUNS, *SECTIONS)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: names an external run cannot have: the word for the trained runs, and the results folder's own subfolder (of the
#: experiments' pages)
RESERVED_NAMES = (TRAINED, FOLDERS["experiment"].split("/")[0])
#: keys of an external run declared by its checkpoint files; a trajectory file's run config already holds them
CHECKPOINT_KEYS = ("checkpoints", "iterations", "framework", "model", "dataset", "loss")
TRAIN_AXES = ("framework", "dataset", "model", "lr", "batch_size", "epochs", "momentum", "seed", "optimizer",
              "schedule", "weight_decay", "loss")
#: train settings that are single values, not axes (they refine one optimizer or schedule: two values are two
#: experiments); a run takes those that apply to its optimizer and schedule, in its settings and its id
TRAIN_OPTIONS = {"sgd": (), "adam": ("beta1", "beta2", "eps"), "adamw": ("beta1", "beta2", "eps"),
                 "constant": ("warmup",), "step": ("warmup", "step_every", "step_gamma"),
                 "cosine": ("warmup", "min_lr")}
#: the train step's defaults of the trainer settings, and their options: a run passes only what differs, so a run
#: with the defaults has the command line (and the id) it always had
TRAINER_DEFAULTS = {"optimizer": "sgd", "schedule": "constant", "weight_decay": 0.0, "warmup": 0, "beta1": 0.9,
                    "beta2": 0.999, "eps": 1e-8, "step_every": None, "step_gamma": 0.1, "min_lr": 0.0}
#: the loss of runs whose train.loss is not given (their run ids name no loss)
DEFAULT_LOSS = "cross_entropy"
#: the losses train.loss may name without a ``losses:`` entry (custom ones need one, with their entry point)
BUILTIN_LOSSES = ("cross_entropy", "mse", "bce_with_logits")
DEFAULT_EXPERIMENT = "main"

# the settings that say what an output is (in its folder's id); the rest of a section says how it is computed
EVALUATION_WHAT = ("fraction", "seed", "batch_size", "dtype")
SPECTRA_WHAT = ("every", "k", "m", "vector", "seed", "sigma")
SLQ_WHAT = ("k", "m", "vector", "seed", "sigma")
HESSIAN_WHAT = ("which", "target", "count", "steps")
LANDSCAPE_WHAT = ("resolution", "border", "line")
INTERPOLATION_WHAT = ("points", "resolution", "plane_border")
FRAMES_WHAT = ("log_scale", "fps", "dpi")


#: the config schema: each key's type, range and default; every variant of a plan is validated against it
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config the workflow cannot run, with the key and the value named."""


def load_schema() -> dict[str, Any]:
    """The config schema (SCHEMA_PATH) as a mapping."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_variant(config: dict[str, Any]) -> None:
    """The schema's check of one variant, its defaults filled in (as ``snakemake.utils.validate(set_default=True)``
    does in the workflow): the ``validate`` that the workflow, check_config.py and the tests give build_plan."""
    from snakemake.utils import validate

    validate(config, str(SCHEMA_PATH), set_default=True)


def digest(settings: Any, length: int = 8) -> str:
    """Short SHA-256 of the canonical JSON of ``settings``: the same settings give the same id on every machine."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]


def folder_id(readable: str, settings: dict[str, Any]) -> str:
    """``<readable>-<hash>``: a name a person can scan plus a hash of everything that defines the output."""
    return f"{readable}-{digest(settings)}"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` written over it; nested mappings merge, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _number(value: float) -> str:
    """``value`` as ``%g`` (the short form run ids have always had) unless that rounds it, then every digit: with
    ``%g`` alone two learning rates equal to 6 significant digits (0.5, 0.5000001) named one folder, and the plan
    kept one of the two runs without a word (found by tests/test_properties.py)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def run_id(settings: dict[str, Any], checkpoint_every: int) -> str:
    """Readable, stable id of a training run: the same settings always give the same folder, different ones
    different folders (names that run together, e.g. datasets ``a-b`` and ``a`` with models ``c`` and ``b-c``, are
    refused when the plan is built). A loss other than cross-entropy is appended (``-mse``), so the ids of
    cross-entropy runs are those they had before losses could be chosen."""
    base = (f"{settings['dataset']}-{settings['model']}-lr{_number(settings['lr'])}-bs{settings['batch_size']}-"
            f"e{settings['epochs']}-m{_number(settings['momentum'])}-s{settings['seed']}")
    base += "".join(f"-{part}" for part in _trainer_parts(settings))
    if checkpoint_every != 1:
        base += f"-ce{checkpoint_every}"
    if settings.get("framework", "torch") != "torch":
        base += f"-{settings['framework']}"
    loss = settings.get("loss", DEFAULT_LOSS)
    return base if loss == DEFAULT_LOSS else f"{base}-{loss}"


def _trainer_parts(settings: dict[str, Any]) -> list[str]:
    """The run id's parts for the optimizer, schedule and weight decay, each only where it is not the default (so
    every earlier run keeps its id): ``wd0.0005``, ``adam`` (``b0.8_0.99``, ``eps1e-06``), ``step500x0.1``,
    ``cosine`` (``cosine-min0.001``), ``wu100``."""
    value = {**TRAINER_DEFAULTS, **settings}
    parts = [f"wd{_number(value['weight_decay'])}"] if value["weight_decay"] else []
    if value["optimizer"] != "sgd":
        parts.append(value["optimizer"])
        if (value["beta1"], value["beta2"]) != (0.9, 0.999):
            parts.append(f"b{_number(value['beta1'])}_{_number(value['beta2'])}")
        if value["eps"] != TRAINER_DEFAULTS["eps"]:
            parts.append(f"eps{_number(value['eps'])}")
    if value["schedule"] == "step":
        parts.append(f"step{value['step_every']}x{_number(value['step_gamma'])}")
    elif value["schedule"] == "cosine":
        parts.append("cosine" + (f"-min{_number(value['min_lr'])}" if value["min_lr"] else ""))
    if value["warmup"]:
        parts.append(f"wu{value['warmup']}")
    return parts


def trainer_args(settings: dict[str, Any]) -> list[str]:
    """The train step's options for a run's optimizer, schedule and weight decay: only those that differ from the
    step's defaults (a run with the defaults keeps the command line, so Snakemake's parameter check does not
    retrain it)."""
    args = []
    for key, default in TRAINER_DEFAULTS.items():
        if key in settings and settings[key] != default:
            args += [f"--{key.replace('_', '-')}", str(settings[key])]
    return args


# --- analysis sweeps ------------------------------------------------------------------------------------------------


def resolve_ref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` (``#/definitions/...``) replaced by the definition, its own keys kept."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _is_list_valued(node: dict[str, Any]) -> bool:
    kinds = node.get("type")
    return kinds == "array" or (isinstance(kinds, list) and "array" in kinds)


def sweep_axes(section: dict[str, Any], node: dict[str, Any], schema: dict[str, Any], prefix: str
               ) -> list[tuple[str, list[Any]]]:
    """The swept keys of one analysis section: ``(dotted key, values)``. A list for a scalar key is a sweep; for a
    key whose value is itself a list (``directions.methods``, ``hessian.pick``), a list of lists is."""
    axes = []
    properties = resolve_ref(schema, node).get("properties", {})
    for key, value in section.items():
        if key not in properties:
            continue  # the schema names unknown keys when the variant is validated
        child = resolve_ref(schema, properties[key])
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and child.get("type") == "object":
            axes += sweep_axes(value, child, schema, dotted)
        elif isinstance(value, list):
            if _is_list_valued(child) and not (value and all(isinstance(v, list) for v in value)):
                continue  # a plain value of a list-valued key
            if not value:
                raise ConfigError(f"{dotted}: an empty list sweeps over nothing; give one or more values")
            axes.append((dotted, value))
    return axes


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def expand_sweeps(config: dict[str, Any], schema: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination of the swept analysis values: ``(config with one value each, {dotted key: value})``."""
    axes = []
    for section in ANALYSIS_SECTIONS:
        if isinstance(config.get(section), dict) and section in schema["properties"]:
            axes += sweep_axes(config[section], schema["properties"][section], schema, section)
    for values in itertools.product(*(values for _, values in axes)):
        variant = copy.deepcopy(config)
        chosen = {}
        for (dotted, _), value in zip(axes, values, strict=True):
            _set(variant, dotted, value)
            chosen[dotted] = value
        yield variant, chosen


# --- the plan -------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One content-addressed output folder: what defines it (``settings``, hashed into ``id``) and how the first
    experiment that asked for it computes it (``execution``: a whole variant config)."""

    kind: str
    id: str
    settings: dict[str, Any]
    execution: dict[str, Any]
    upstream: dict[str, str] = field(default_factory=dict)  # kind -> id of the jobs whose outputs it reads


@dataclass
class Variant:
    """One combination of an experiment's swept analysis values, with its complete, validated config."""

    config: dict[str, Any]
    swept: dict[str, Any]
    runs: list[str] = field(default_factory=list)  # ids of the training runs it analyses

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.swept.items()) or "default"


@dataclass
class Experiment:
    name: str
    description: str
    runs: list[str]
    variants: list[Variant]
    outputs: list[dict[str, str]] = field(default_factory=list)  # {path (under results), kind, run, label}
    # every other file or folder (under results) its jobs leave: the data behind the figures, settings.yaml files,
    # frames; targets too, so that a deleted one is rebuilt (Snakemake does not rebuild a missing intermediate file)
    files: list[str] = field(default_factory=list)
    compare: dict[str, dict[str, Any]] = field(default_factory=dict)  # figure path -> {kind, inputs, labels}
    # (run, "spectra" | "landscape_<method>") -> {input file: variant label}: what a sweep's comparison could show
    comparable: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


class Plan:
    """Everything the rules need: runs, the jobs of each kind by id, each experiment's targets."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}  # trained run id -> {settings, checkpoint_every, execution}
        # external run name -> {spec (external_run's), execution}: runs some experiment analyses, not trained here
        self.external: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Job]] = {kind.name: {} for kind in JOB_KINDS}
        self.pairs: dict[tuple[str, str], None] = {}  # (run, other) interpolation pairs
        self.experiments: dict[str, Experiment] = {}

    def add_job(self, kind: str, readable: str, settings: dict[str, Any], execution: dict[str, Any],
                **upstream: str) -> str:
        """Register a job; ``settings`` holds the whole definition (upstream jobs' settings inlined), so its
        settings.yaml reads alone and its id changes with anything it depends on."""
        job = Job(kind, folder_id(readable, settings), settings, execution, upstream)
        self.jobs[kind].setdefault(job.id, job)  # the first experiment asking for it decides how it runs
        return job.id

    def settings(self, kind: str, job_id: str) -> dict[str, Any]:
        return self.jobs[kind][job_id].settings

    def ids(self, kind: str) -> list[str]:
        return sorted(self.jobs[kind])

    def job(self, kind: str, job_id: str) -> Job:
        return self.jobs[kind][job_id]

    def all_runs(self) -> list[str]:
        """Every run folder the plan writes: the trained runs' ids and the external runs' names."""
        return [*self.runs, *self.external]

    def external_names(self, kind: str) -> list[str]:
        """The planned external runs declared by a ``trajectory`` file or by ``checkpoints``."""
        return [name for name, run in self.external.items() if run["spec"]["kind"] == kind]


def _experiments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    experiments = config.get("experiments")
    if experiments is None:
        return {DEFAULT_EXPERIMENT: {}}
    if not isinstance(experiments, dict) or not experiments:
        raise ConfigError(f"experiments must map names to settings, got {experiments!r}")
    for name, body in experiments.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError(f"experiments: name {name!r} must be letters, digits, '_', '.' or '-' (it names a "
                              "folder), starting with a letter or digit")
        if body is None:
            experiments[name] = body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"experiments.{name} must be a mapping of sections, got {body!r}")
        unknown = sorted(set(body) - set(EXPERIMENT_KEYS))
        if unknown:
            raise ConfigError(f"experiments.{name}: unknown key(s) {unknown} (allowed: {list(EXPERIMENT_KEYS)}; "
                              f"{', '.join(GLOBAL_KEYS)} are set once at the top level)")
    return experiments


def schema_message(error: BaseException) -> str:
    """One line for a schema violation: the dotted key and jsonschema's message (Snakemake's error spreads it over
    a dozen lines with the whole schema node)."""
    for cause in (error, error.__cause__, error.__context__):
        if hasattr(cause, "absolute_path") and hasattr(cause, "message"):
            key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in cause.absolute_path)[1:]
            return f"{key}: {cause.message}" if key else cause.message
    return " ".join(str(error).split())


#: keys where YAML's .inf has a meaning: no limit
UNBOUNDED_KEYS = ("evaluation.hvp_memory_mb",)


def _not_finite_keys(value: Any, key: str = "") -> list[str]:
    """The dotted keys (``train.lr[0]``) whose value is NaN or infinite (but for UNBOUNDED_KEYS, infinite)."""
    if isinstance(value, dict):
        return [k for name, v in value.items() for k in _not_finite_keys(v, f"{key}.{name}" if key else str(name))]
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _not_finite_keys(v, f"{key}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [] if math.isinf(value) and key.split("[")[0] in UNBOUNDED_KEYS else [key]
    return []


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value at a key as _not_finite_keys names it (``train.lr[0]``)."""
    value: Any = config
    for part in re.findall(r"[^.\[\]]+", dotted):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _check_variant(where: str, config: dict[str, Any]) -> None:
    """The cross-key rules the schema cannot say."""
    # YAML has .nan, and the schema's bounds cannot reject it: every comparison with NaN is false, so `fraction: .nan`
    # passed `exclusiveMinimum: 0, maximum: 1` (found by tests/test_properties.py). No key has a meaning for it, nor
    # for .inf where no upper bound stops it (lr, sigma, target), except a memory budget.
    bad = _not_finite_keys(config)
    if bad:
        raise ConfigError(f"{where}{bad[0]}: {_lookup(config, bad[0])} is not a finite number; give a value within "
                          "the schema's bounds (config/README.md)")
    declared = config.get(EXTERNAL) or {}
    for name, spec in declared.items():
        external_run(name, spec, config)
    unknown = [name for name in config[RUNS] if name != TRAINED and name not in declared]
    if unknown:
        raise ConfigError(f"{where}{RUNS} names {unknown[0]!r}, which is neither {TRAINED!r} (the runs of train:) "
                          f"nor declared under {EXTERNAL}: (declared: {sorted(declared)})")
    trains = TRAINED in config[RUNS]
    for key, known in (("dataset", config["datasets"]), ("model", config["models"])):
        for name in config[TRAIN][key] if trains else ():
            if name not in known:
                raise ConfigError(f"{where}train.{key} names {name!r}, which is not defined under {key}s: "
                                  f"(defined: {sorted(known)})")
    for name in config[TRAIN]["loss"] if trains else ():
        if name not in config["losses"] and name not in BUILTIN_LOSSES:
            raise ConfigError(f"{where}train.loss names {name!r}, which is neither a built-in loss "
                              f"({', '.join(BUILTIN_LOSSES)}) nor defined under losses: (defined: "
                              f"{sorted(config['losses'])})")
    directions, frames = config["directions"], config["frames"]
    if "custom" in directions["methods"] and not directions["custom_file"]:
        raise ConfigError(f"{where}directions.methods includes 'custom' but directions.custom_file is not set")
    wants_video = frames["training"] and config["spectra"]["enabled"] and directions["methods"]
    if wants_video and frames["direction"] not in directions["methods"]:
        raise ConfigError(f"{where}frames.direction {frames['direction']!r} is not in directions.methods "
                          f"{directions['methods']}")
    if frames["moving_every"] and frames["direction"] != "hessian":
        raise ConfigError(f"{where}frames.moving_every {frames['moving_every']} recomputes Hessian eigenvector "
                          f"planes; it needs frames.direction: hessian, got {frames['direction']!r}")
    spectra = config["spectra"]
    parallel, per_group, tasks = spectra["parallel"], spectra["ranks_per_group"], spectra["mpi_tasks"]
    if parallel == "hybrid" and per_group is None:
        raise ConfigError(f"{where}spectra.parallel: hybrid needs spectra.ranks_per_group (ranks per data-parallel "
                          f"group, 1..{tasks})")
    if parallel != "hybrid" and per_group is not None:
        raise ConfigError(f"{where}spectra.ranks_per_group {per_group} applies to spectra.parallel: hybrid only "
                          f"(got parallel: {parallel}); remove it or set parallel: hybrid")
    if per_group is not None and per_group > tasks:
        raise ConfigError(f"{where}spectra.ranks_per_group {per_group} exceeds spectra.mpi_tasks {tasks}")
    hessian = directions["hessian"]
    if max(hessian["pick"]) >= hessian["count"]:
        raise ConfigError(f"{where}directions.hessian.pick {hessian['pick']} needs count > {max(hessian['pick'])}, "
                          f"got {hessian['count']}")
    if hessian["count"] > hessian["steps"]:
        raise ConfigError(f"{where}directions.hessian.count {hessian['count']} exceeds steps {hessian['steps']}")
    _check_trainer(where, config[TRAIN])
    interpolation = config["interpolation"]
    between = interpolation["between"]
    if interpolation["enabled"] and between is not None:
        analysed = [name for name in config[RUNS] if name != TRAINED]
        outside = [name for name in between if name not in analysed]
        if outside:
            raise ConfigError(f"{where}interpolation.between names {outside[0]!r}, which is not among the external "
                              f"runs this experiment analyses ({RUNS}: {config[RUNS]}); add it to {RUNS}")
    elif interpolation["enabled"] and trains:
        missing = [s for s in interpolation["seeds"] if s not in config[TRAIN]["seed"]]
        if missing:
            raise ConfigError(f"{where}interpolation.seeds {missing} are not in train.seed {config[TRAIN]['seed']}")


def _check_trainer(where: str, train: dict[str, Any]) -> None:
    """The trainer settings' rules across keys: what a schedule needs, and no sweep that trains one run twice."""
    if "step" in train["schedule"] and train["step_every"] is None:
        raise ConfigError(f"{where}train.schedule step needs train.step_every (iterations between decays of the "
                          "learning rate, an integer >= 1)")
    if "cosine" in train["schedule"] and train["min_lr"] > min(train["lr"]):
        raise ConfigError(f"{where}train.min_lr {train['min_lr']} exceeds train.lr {min(train['lr'])}: the cosine "
                          f"schedule decays from lr down to min_lr; accepted: 0..{min(train['lr'])}")
    others = [name for name in train["optimizer"] if name != "sgd"]
    if others and len(train["momentum"]) > 1:
        raise ConfigError(f"{where}train.momentum {train['momentum']} is a sweep, but {others[0]} does not use "
                          f"momentum (its beta1 is train.beta1): its runs would be trained once per value; sweep "
                          "momentum in an experiment with train.optimizer [sgd]")


def _pick(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: section[key] for key in keys}


def _centre(value: Any) -> str:
    return "last" if value == "last" else str(int(value))


def build_plan(config: dict[str, Any], schema: dict[str, Any],
               validate: Callable[[dict[str, Any]], None]) -> Plan:
    """The plan of a config: ``validate`` checks one complete variant against ``schema`` and fills defaults."""
    allowed = {*GLOBAL_KEYS, RUNS, *SECTIONS, "experiments", "description"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}: '{unknown[0]}' was unexpected (allowed: "
                          f"{sorted(allowed)})")
    plan = Plan()
    shared = {key: value for key, value in config.items() if key not in ("experiments", "description")}
    for name, body in _experiments(config).items():
        where = "" if config.get("experiments") is None else f"experiments.{name}: "
        merged = deep_merge(shared, {k: v for k, v in body.items() if k != "description"})
        variants = []
        for variant_config, swept in expand_sweeps(merged, schema):
            try:
                validate(variant_config)
            except Exception as error:  # noqa: BLE001 - snakemake's WorkflowError wraps jsonschema's message
                chosen = f" (sweep values {swept})" if swept else ""
                raise ConfigError(f"{where}{schema_message(error)}{chosen}") from error
            _check_variant(where, variant_config)
            variants.append(Variant(variant_config, swept))
        description = body.get("description", config.get("description", "")) or ""
        experiment = Experiment(name, str(description), [], variants)
        plan.experiments[name] = experiment
        for variant in variants:
            _plan_variant(plan, experiment, variant)
        experiment.runs = list(dict.fromkeys(experiment.runs))
        _plan_comparisons(plan, experiment)
    _check_run_folders(plan, config.get(EXTERNAL) or {})
    return plan


def _check_run_folders(plan: Plan, declared: dict[str, Any]) -> None:
    """Every run has a folder of its own: an external run's name is no trained run's id, not even in another case
    (one folder on a case-insensitive file system)."""
    trained = {rid.casefold(): rid for rid in plan.runs}
    seen: dict[str, str] = {}
    for name in declared:
        if name.casefold() in trained:
            raise ConfigError(f"{EXTERNAL}.{name}: the folder {name!r} is also that of the trained run "
                              f"{trained[name.casefold()]!r}; rename the external run")
        if name.casefold() in seen:
            raise ConfigError(f"{EXTERNAL}.{name}: the name differs from {seen[name.casefold()]!r} only in case (one "
                              "folder on a case-insensitive file system); rename one of them")
        seen[name.casefold()] = name


def external_run(name: str, spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The normalized declaration of an external run (schema-checked ``spec``): ``{"kind": "trajectory",
    "trajectory": path}`` or ``{"kind": "checkpoints", "checkpoints": [paths or globs], "iterations": [...] | None,
    "framework", "model", "dataset" (keys of models/datasets), "loss": {name, **options}}``; ConfigError naming
    the key for what the schema cannot say."""
    where = f"{EXTERNAL}.{name}"
    if not NAME.match(name) or name in RESERVED_NAMES:
        raise ConfigError(f"{EXTERNAL}: name {name!r} must be letters, digits, '_', '.' or '-' (it names the run's "
                          f"folder), starting with a letter or digit, and not one of {list(RESERVED_NAMES)}")
    if ("trajectory" in spec) == ("checkpoints" in spec):
        raise ConfigError(f"{where}: give either trajectory: (a gradvis trajectory file) or checkpoints: (files, "
                          f"folders or glob patterns of saved models), {'not both' if 'trajectory' in spec else 'one'}")
    if "trajectory" in spec:
        extra = [key for key in CHECKPOINT_KEYS if key in spec]
        if extra:
            raise ConfigError(f"{where}: {extra[0]} is read from the trajectory file's own run config; remove "
                              f"{', '.join(extra)} (a trajectory run takes trajectory: and description: only)")
        return {"kind": "trajectory", "trajectory": spec["trajectory"], "description": spec.get("description")}
    missing = [key for key in ("model", "dataset") if key not in spec]
    if missing:
        raise ConfigError(f"{where}: a run declared by checkpoints needs {' and '.join(missing)}: (a key of "
                          f"{' and '.join(key + 's:' for key in missing)})")
    for key in ("model", "dataset"):
        if spec[key] not in config[f"{key}s"]:
            raise ConfigError(f"{where}.{key} names {spec[key]!r}, which is not defined under {key}s: (defined: "
                              f"{sorted(config[f'{key}s'])})")
    patterns = spec["checkpoints"]
    loss = spec.get("loss", DEFAULT_LOSS)
    if isinstance(loss, str):  # a key of a top-level `losses:` where there is one, else a loss name
        loss = dict((config.get("losses") or {}).get(loss, {"name": loss}))
    return {"kind": "checkpoints", "checkpoints": [patterns] if isinstance(patterns, str) else list(patterns),
            "iterations": spec.get("iterations"), "framework": spec.get("framework", "torch"),
            "model": spec["model"], "dataset": spec["dataset"], "loss": loss, "description": spec.get("description")}


def _runs_of(plan: Plan, variant: Variant) -> dict[str, dict[str, Any]]:
    """The trained runs of a variant (none unless its ``runs`` holds ``trained``), registered in the plan."""
    train = variant.config[TRAIN]
    runs: dict[str, dict[str, Any]] = {}
    if TRAINED not in variant.config[RUNS]:
        return runs
    for combo in itertools.product(*(train[key] for key in TRAIN_AXES)):
        settings = dict(zip(TRAIN_AXES, combo, strict=True))
        for key in (*TRAIN_OPTIONS[settings["optimizer"]], *TRAIN_OPTIONS[settings["schedule"]]):
            settings[key] = train[key]
        rid = run_id(settings, train["checkpoint_every"])
        known = plan.runs.get(rid, {}).get("settings")
        # one folder for two different runs (names that run together): one of them would be silently lost; before
        # this check the plan kept the first (found by tests/test_properties.py)
        if known is not None and known != settings:
            raise ConfigError(f"train: the runs {known} and {settings} would share the folder {rid!r}; rename a "
                              "dataset or model so that their names do not run together")
        runs[rid] = settings
        plan.runs.setdefault(rid, {"settings": settings, "checkpoint_every": train["checkpoint_every"],
                                   "execution": variant.config})
    return runs


def _plan_variant(plan: Plan, experiment: Experiment, variant: Variant) -> None:
    config = variant.config
    evaluation = _pick(config["evaluation"], EVALUATION_WHAT)
    directions, landscape, spectra = config["directions"], config["landscape"], config["spectra"]
    frames, interpolation = config["frames"], config["interpolation"]
    centre = _centre(landscape["centre"])
    hessian = {**_pick(directions["hessian"], HESSIAN_WHAT), "evaluation": evaluation}
    runs = _runs_of(plan, variant)
    external = [name for name in config[RUNS] if name != TRAINED]
    for name in external:
        plan.external.setdefault(name, {"spec": external_run(name, config[EXTERNAL][name], config),
                                        "execution": config})
    variant.runs = [*runs, *external]
    label = variant.label

    def output(path: str, kind: str, run: str) -> None:
        experiment.outputs.append({"path": path, "kind": kind, "run": run, "label": label})

    def comparable(run: str, key: str, path: str) -> None:
        experiment.comparable.setdefault((run, key), {}).setdefault(path, label)

    def files(kind: str, where: dict[str, str], *made: str) -> None:
        """Files a job of ``kind`` leaves in its folder (``where``: the folder's wildcards), and its settings.yaml."""
        experiment.files.extend([*made, fill(settings_template(kind), **where)])

    spectra_id = None
    if spectra["enabled"]:
        spectra_settings = {"evaluation": evaluation, "spectra": _pick(spectra, SPECTRA_WHAT)}
        if spectra["blocks"] != ["whole"]:  # Hessian blocks: in the id only where asked, so default ids stay
            spectra_settings["spectra"]["blocks"] = spectra["blocks"]
        spectra_id = plan.add_job("spectra", f"k{spectra['k']}-m{spectra['m']}-every{spectra['every']}",
                                  spectra_settings, config)
    eig_id = plan.add_job("eigendirections", f"{hessian['which']}{hessian['count']}-at{centre}",
                          {**hessian, "centre": centre}, config)
    landscape_ids, direction_ids = {}, {}
    for method in directions["methods"]:
        how = {"method": method, "centre": centre, "normalization": directions["normalization"]}
        if method == "random":
            how["seed"] = directions["seed"]
        elif method == "custom":
            how["custom_file"] = directions["custom_file"]
            if directions["custom_key"]:
                how["custom_key"] = directions["custom_key"]
        elif method == "hessian":
            how["eigendirections"] = plan.settings("eigendirections", eig_id)
            how["pick"] = directions["hessian"]["pick"]
        upstream = {"eigendirections": eig_id} if method == "hessian" else {}
        direction_id = direction_ids[method] = plan.add_job("directions", f"{method}-at{centre}", how, config,
                                                            **upstream)
        settings = {"directions": how, "evaluation": evaluation, "landscape": _pick(landscape, LANDSCAPE_WHAT)}
        landscape_ids[method] = plan.add_job("landscape", f"{method}-r{landscape['resolution']}-at{centre}",
                                             settings, config, directions=direction_id)
    moving_id = None
    if frames["moving_every"]:
        moving_id = plan.add_job(
            "moving", f"every{frames['moving_every']}-r{landscape['resolution']}",
            {"every": frames["moving_every"], "hessian": hessian, "pick": directions["hessian"]["pick"],
             "landscape": _pick(landscape, ("resolution", "border")), "evaluation": evaluation}, config)
    video_id = None
    if frames["training"] and spectra_id and frames["direction"] in landscape_ids:
        planes = {"moving": moving_id} if moving_id else {"landscape": landscape_ids[frames["direction"]]}
        (kind,) = planes
        video_settings = {kind: plan.settings(kind, planes[kind]), "spectra": plan.settings("spectra", spectra_id),
                          "frames": _pick(frames, FRAMES_WHAT)}
        video_id = plan.add_job("video", f"{frames['direction']}{'-moving' if moving_id else ''}", video_settings,
                                config, spectra=spectra_id, **planes)
    interpolation_id = interpolation_video_id = None
    if interpolation["enabled"]:
        interpolation_id = plan.add_job(
            "interpolation", f"p{interpolation['points']}-r{interpolation['resolution']}",
            {"evaluation": evaluation, "interpolation": _pick(interpolation, INTERPOLATION_WHAT),
             "spectra": _pick(spectra, SLQ_WHAT)}, config)
        if frames["interpolation"]:
            interpolation_video_id = plan.add_job(
                "interpolation_video", "plane", {"interpolation": plan.settings("interpolation", interpolation_id),
                                                 "frames": _pick(frames, FRAMES_WHAT)},
                config, interpolation=interpolation_id)
    log = "_log" if landscape["log_levels"] else ""
    for run in variant.runs:
        experiment.runs.append(run)
        output(path("trajectory", run=run), "trajectory", run)
        if spectra_id:
            where = {"run": run, "sid": spectra_id}
            files("spectra", where)
            output(path("spectra", **where), "spectra", run)
            comparable(run, "spectra", path("spectra", **where))
            output(path("densities", **where), "densities", run)
        if "hessian" in landscape_ids:
            where = {"run": run, "eid": eig_id}
            files("eigendirections", where, path("eigendirections", **where))
        for did in direction_ids.values():
            where = {"run": run, "did": did}
            files("directions", where, path("directions", **where))
        for method, lid in landscape_ids.items():
            where = {"run": run, "lid": lid}
            files("landscape", where, *(path("landscape", dims=dims, **where)
                                        for dims in ((2, 1) if landscape["line"] else (2,))))
            output(path("contour", log=log, **where), f"{method} contour", run)
            comparable(run, f"landscape_{method}", path("landscape", dims=2, **where))
            output(path("surface", log=log, **where), f"{method} surface", run)
            output(path("vtk", **where), f"{method} surface (VTK)", run)
            if landscape["line"]:
                output(path("line", log=log, **where), f"{method} line", run)
        if video_id:
            where = {"run": run, "vid": video_id}
            files("video", where, path("training_frames", **where))
            if moving_id:
                files("moving", {"run": run, "mid": moving_id}, path("moving_planes", run=run, mid=moving_id))
            output(path("training_video", **where), "training video", run)
    if not interpolation_id:
        return
    if interpolation["between"] is not None:  # two named runs
        pairs = [tuple(interpolation["between"])]
    else:  # each trained run with the first seed and its twin with the second, all else equal
        first, second = interpolation["seeds"]
        pairs = [(run, run_id({**settings, "seed": second}, config[TRAIN]["checkpoint_every"]))
                 for run, settings in runs.items() if settings["seed"] == first]
    for run, twin in pairs:
        plan.pairs[(run, twin)] = None
        where = {"run": run, "other": twin, "iid": interpolation_id}
        files("interpolation", where, *(path(name, **where) for name in (
            "interpolation_line", "interpolation_spectra", "plane_directions", "plane", "plane_surface")))
        output(path("interpolation_line_plot", **where), "interpolation line", run)
        output(path("plane_contour", **where), "interpolation plane", run)
        if interpolation_video_id:
            experiment.files.append(path("interpolation_frames", ivid=interpolation_video_id, **where))
            output(path("interpolation_video", ivid=interpolation_video_id, **where), "interpolation video", run)


def _plan_comparisons(plan: Plan, experiment: Experiment) -> None:
    """A figure per run and output kind whose folder differs between the sweep's variants (side by side)."""
    if len(experiment.variants) < 2:
        return
    for (run, key), inputs in experiment.comparable.items():
        if len(inputs) > 1:
            experiment.compare[path("comparison", experiment=experiment.name, run=run, what=key)] = {
                "kind": "spectra" if key == "spectra" else "landscapes", "inputs": list(inputs),
                "labels": list(inputs.values()), "run": run}


def summary_settings(plan: Plan, experiment: Experiment) -> dict[str, Any]:
    """What the experiment's report page shows. Paths are relative to the page's folder (the experiment's, under
    the results folder), so the file is the same wherever the results folder is."""
    outputs = experiment.outputs + [{"path": path, "kind": f"comparison of {item['kind']}", "run": item["run"],
                                     "label": ", ".join(item["labels"])}
                                    for path, item in experiment.compare.items()]
    up = "../" * len(FOLDERS["experiment"].split("/"))  # from the page's folder to the results folder
    outputs = [{**item, "path": f"{up}{item['path']}"} for item in outputs]
    return {
        "name": experiment.name,
        "description": experiment.description,
        "runs": {run: run_summary(plan, run) for run in experiment.runs},
        "variants": [{"swept": list(variant.swept), **{section: variant.config[section]
                                                        for section in ANALYSIS_SECTIONS}}
                     for variant in experiment.variants],
        "outputs": outputs,
    }


def run_summary(plan: Plan, run: str) -> dict[str, Any]:
    """A run's row on the report page: a trained run's training settings, an external run's declaration."""
    if run in plan.external:
        spec = plan.external[run]["spec"]
        return {"external": spec["kind"], **{key: value for key, value in spec.items()
                                             if key != "kind" and value is not None}}
    return {**plan.runs[run]["settings"], "checkpoint_every": plan.runs[run]["checkpoint_every"]}
