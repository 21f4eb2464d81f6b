# Config validation, run ids and the targets the config asks for. Rules call one step module each.

import itertools
import re
import shlex

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml", set_default=True)

R = config["results"].rstrip("/")
ENV = "../../envs/gradvis.yaml"
RES = config["resources"]
EVAL = config["evaluation"]


def fail(message):
    raise ValueError(f"config error: {message}")


for key, known in (("dataset", config["datasets"]), ("model", config["models"])):
    for name in config["train"][key]:
        if name not in known:
            fail(f"train.{key} names {name!r}, which is not defined under {key}s: (defined: {sorted(known)})")
if "custom" in config["directions"]["methods"] and not config["directions"]["custom_file"]:
    fail("directions.methods includes 'custom' but directions.custom_file is not set")
if config["frames"]["direction"] not in config["directions"]["methods"]:
    fail(f"frames.direction {config['frames']['direction']!r} is not in directions.methods "
         f"{config['directions']['methods']}")
_hessian = config["directions"]["hessian"]
if max(_hessian["pick"]) >= _hessian["count"]:
    fail(f"directions.hessian.pick {_hessian['pick']} needs count > {max(_hessian['pick'])}, got {_hessian['count']}")
if _hessian["count"] > _hessian["steps"]:
    fail(f"directions.hessian.count {_hessian['count']} exceeds steps {_hessian['steps']}")
if config["interpolation"]["enabled"]:
    _missing = [s for s in config["interpolation"]["seeds"] if s not in config["train"]["seed"]]
    if _missing:
        fail(f"interpolation.seeds {_missing} are not in train.seed {config['train']['seed']}")


def run_id(dataset, model, lr, batch_size, epochs, momentum, seed):
    """Readable, stable id: the same settings always give the same folder, whatever else the sweep holds."""
    return f"{dataset}-{model}-lr{lr:g}-bs{batch_size}-e{epochs}-m{momentum:g}-s{seed}"


RUNS = {}
for _combo in itertools.product(*(config["train"][k] for k in
                                  ("dataset", "model", "lr", "batch_size", "epochs", "momentum", "seed"))):
    RUNS[run_id(*_combo)] = dict(zip(("dataset", "model", "lr", "batch_size", "epochs", "momentum", "seed"), _combo))

# Interpolation pairs: the run with the first seed and its twin with the second seed.
PAIRS = {}
if config["interpolation"]["enabled"]:
    _seed_a, _seed_b = config["interpolation"]["seeds"]
    for _run, _settings in RUNS.items():
        if _settings["seed"] == _seed_a:
            PAIRS[_run] = run_id(*(_settings[k] for k in ("dataset", "model", "lr", "batch_size", "epochs",
                                                          "momentum")), _seed_b)

METHODS = config["directions"]["methods"]


def mpi_resources(tasks):
    """Resources of a step that can run under MPI: `mpi` (the launcher) and `tasks` (ranks). A one-task job
    declares no `mpi` and runs as a plain process: nothing to launch, and the SLURM plugin refuses MPI jobs of
    one task."""
    return {"mpi": config["mpi_launcher"], "tasks": tasks} if tasks > 1 else {"tasks": 1}


def mpi_launcher(wildcards, resources):
    """Shell prefix `{resources.mpi} -n {resources.tasks}` of an MPI job; empty for a one-task job."""
    mpi = getattr(resources, "mpi", None)
    return f"{mpi} -n {resources.tasks} " if mpi else ""
CHUNKS = config["spectra"]["chunks"]


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS) or "NO_RUNS",
    other="|".join(re.escape(r) for r in RUNS) or "NO_RUNS",
    method="|".join(METHODS),
    dims="1|2",


def train_args(run):
    s = RUNS[run]
    args = ["--dataset", config["datasets"][s["dataset"]]["name"]]
    args += [x for k, v in config["datasets"][s["dataset"]].items() if k != "name"
             for x in ("--dataset-option", f"{k}={v}")]
    args += ["--model", config["models"][s["model"]]["name"]]
    args += [x for k, v in config["models"][s["model"]].items() if k != "name"
             for x in ("--model-option", f"{k}={v}")]
    args += ["--seed", s["seed"], "--lr", s["lr"], "--batch-size", s["batch_size"], "--epochs", s["epochs"],
             "--momentum", s["momentum"], "--checkpoint-every", config["train"]["checkpoint_every"]]
    return " ".join(shlex.quote(str(a)) for a in args)


HESSIAN = config["directions"]["hessian"]
LAND = config["landscape"]
SPEC = config["spectra"]
INTERP = config["interpolation"]
FRAMES = config["frames"]
PAIR_DIR = f"{R}/{{run}}/interpolation/{{other}}"

EVAL_ARGS = (f"--eval-fraction {EVAL['fraction']} --eval-seed {EVAL['seed']} --batch-size {EVAL['batch_size']} "
             f"--dtype {EVAL['dtype']} --device {config['device']} --no-progress")


# the steps that multiply one point's Hessian by many vectors (eigendirections, spectra, interpolation)
HVP_ARGS = f"--hvp-memory-mb {EVAL['hvp_memory_mb']} --hvp-mode {EVAL['hvp_mode']}"
SPEC_ARGS = (f"--k {SPEC['k']} --m {SPEC['m']} --seed {SPEC['seed']} --vector {SPEC['vector']} "
             f"--group-size {SPEC['group_size']}")
FRAME_ARGS = f"--dpi {FRAMES['dpi']} " + ("--log-scale" if FRAMES["log_scale"] else "--no-log-scale")


def directions_inputs(wildcards):
    inputs = {"trajectory": f"{R}/{wildcards.run}/trajectory.h5"}
    if wildcards.method == "hessian":
        inputs["eig"] = f"{R}/{wildcards.run}/eigendirections.h5"
    if wildcards.method == "custom":
        inputs["custom"] = config["directions"]["custom_file"]
    return inputs


def directions_args(wildcards, input):
    args = (f"--method {wildcards.method} --seed {config['directions']['seed']} "
            f"--normalization {config['directions']['normalization']}")
    if wildcards.method == "hessian":
        return f"{args} --eigendirections {shlex.quote(input.eig)} --pick {' '.join(map(str, HESSIAN['pick']))}"
    if wildcards.method == "custom":
        return f"{args} --custom {shlex.quote(input.custom)}"
    return args


def all_targets():
    targets = []
    for run in RUNS:
        targets.append(f"{R}/{run}/trajectory.h5")
        targets.append(f"{R}/{run}/spectra.h5")
        for method in METHODS:
            targets += [f"{R}/{run}/plots/{method}_contour.png", f"{R}/{run}/plots/{method}_surface.png",
                        f"{R}/{run}/plots/{method}_surface.vtk"]
            if config["landscape"]["line"]:
                targets.append(f"{R}/{run}/plots/{method}_line.png")
        targets.append(f"{R}/{run}/training.mp4")
    for run, other in PAIRS.items():
        folder = f"{R}/{run}/interpolation/{other}"
        targets += [f"{folder}/line.png", f"{folder}/plane_contour.png", f"{folder}/interpolation.mp4"]
    return targets
