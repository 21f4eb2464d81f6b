# The plan (workflow/experiments.py): experiments, sweeps, content-addressed output folders; helpers the rules
# share to turn a job's settings into step arguments and resources, and the rules' path patterns, each from its one
# template in workflow/paths.py (pattern, folder_pattern, settings_pattern; planned* fill them in input functions).
# Rules call one step module each, through `python -m gradvis_steps.logged {log:q} COMMAND`: the command's output
# goes to its log, and its error lines also to the console (or the SLURM job's log), all of it there when the log
# cannot be written.

import atexit
import json
import re
import shlex
import sys

from experiments import ConfigError, build_plan, load_schema, summary_settings, trainer_args, validate_variant  # noqa: E402
from external_files import checkpoint_files, fingerprint, run_files  # noqa: E402
# as a module: the rules run in snakemake.workflow's namespace, whose own names (partial, ...) must stay its own
import paths as plan_paths  # noqa: E402
from preflight import preflight, writable_problem  # noqa: E402
import results_lock  # noqa: E402


MAIN = getattr(workflow, "is_main_process", True)  # where the user starts it, not again in each SLURM job
try:
    PLAN = build_plan(config, load_schema(), validate_variant)
except ConfigError as error:
    raise SystemExit(f"config error: {error}") from None

FIRST = next(iter(PLAN.experiments.values())).variants[0].config
R = FIRST["results"].rstrip("/")

if MAIN:
    try:
        preflight(PLAN)
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None


def own_results_folder():
    """Before the first job of a real run: the results folder can be written, and this run holds its lock until it
    ends (onsuccess, onerror, or the process's exit)."""
    problem = writable_problem(R)
    if problem:
        raise SystemExit(f"error: {problem}")
    try:
        warnings = results_lock.acquire(R, force=FORCE_UNLOCK)
    except results_lock.LockError as error:
        raise SystemExit(f"error: {error}") from None
    atexit.register(results_lock.release)
    for warning in warnings:
        print(warning, file=sys.stderr)


onstart:
    if MAIN:
        own_results_folder()


onsuccess:
    results_lock.release()


onerror:
    results_lock.release()

ENV = "../../envs/gradvis.yaml"
LAUNCHER = FIRST["mpi_launcher"]


def ids(*kinds):
    """Wildcard constraint: exactly the planned ids of these kinds (never matches a path of another rule)."""
    return "|".join(re.escape(i) for kind in kinds for i in PLAN.ids(kind)) or "NO_JOBS"


def one_of(names):
    """Wildcard constraint: exactly these names (runs: trained ids, external names of one kind, or all)."""
    return "|".join(re.escape(name) for name in names) or "NO_RUNS"


wildcard_constraints:
    run=one_of(PLAN.all_runs()),
    other=one_of(PLAN.all_runs()),
    experiment="|".join(re.escape(e) for e in PLAN.experiments),
    **{kind.wildcard: ids(kind.name) for kind in plan_paths.JOB_KINDS},
    log="|_log",
    dims="1|2",


def pattern(name, **values):
    """The rules' pattern of a planned file or folder (a key of FILES in workflow/paths.py): the results folder and its
    template, ``values`` filled in (the others stay wildcards)."""
    return f"{R}/{plan_paths.partial(plan_paths.template(name), **values)}"


def folder_pattern(name):
    """The rules' pattern of a folder (a key of FOLDERS in workflow/paths.py: a run's, an experiment's, a job kind's),
    for the logs its jobs write."""
    return f"{R}/{plan_paths.FOLDERS[name]}"


def settings_pattern(kind):
    """The rules' pattern of an analysis folder's settings.yaml."""
    return f"{R}/{plan_paths.settings_template(kind)}"


def planned(name, **values):
    """A planned file or folder with its wildcards filled (input functions), under the results folder."""
    return f"{R}/{plan_paths.path(name, **values)}"


def planned_settings(kind, **values):
    """An analysis folder's settings.yaml with its wildcards filled, under the results folder."""
    return f"{R}/{plan_paths.fill(plan_paths.settings_template(kind), **values)}"


def job(kind, job_id):
    return PLAN.job(kind, job_id)


def execution(kind, job_id):
    """The variant config that runs a job (the first experiment that asked for it)."""
    return job(kind, job_id).execution


def eval_args(cfg):
    e = cfg["evaluation"]
    return (f"--eval-fraction {e['fraction']} --eval-seed {e['seed']} --batch-size {e['batch_size']} "
            f"--dtype {e['dtype']} --device {shlex.quote(cfg['device'])} --no-progress")


def hvp_args(cfg):
    """The steps that multiply one point's Hessian by many vectors (eigendirections, spectra, interpolation)."""
    return f"--hvp-memory-mb {cfg['evaluation']['hvp_memory_mb']} --hvp-mode {cfg['evaluation']['hvp_mode']}"


def slq_args(cfg):
    s = cfg["spectra"]
    sigma = f" --sigma {s['sigma']}" if s["sigma"] is not None else ""
    return f"--k {s['k']} --m {s['m']} --seed {s['seed']} --vector {s['vector']} --group-size {s['group_size']}{sigma}"


def frame_args(cfg):
    f = cfg["frames"]
    sigma = cfg["spectra"]["sigma"]
    return (f"--dpi {f['dpi']} " + ("--log-scale" if f["log_scale"] else "--no-log-scale")
            + (f" --sigma {sigma}" if sigma is not None else ""))


def from_job(kind, pick):
    """An input/param/resource function: ``pick(execution config)`` of the job of ``kind`` its wildcards name."""
    wildcard = plan_paths.KIND[kind].wildcard
    return lambda w, **_: pick(execution(kind, getattr(w, wildcard)))


def gpus(cfg, tasks):
    """GPUs of a job: `resources.gpu` for one rank; for several, one per `ranks_per_gpu` ranks (each rank binds
    local_rank % visible GPUs), none if `resources.gpu` is 0."""
    if tasks == 1 or not cfg["resources"]["gpu"]:
        return cfg["resources"]["gpu"]
    return -(-tasks // cfg["resources"]["ranks_per_gpu"])


def resources_of(kind, gpu=True, mpi=None):
    """mem_mb, runtime and (model-evaluating rules) gpu of a job. ``mpi(cfg)`` names the config section whose
    `mpi_tasks` gives a job's MPI ranks: it adds `mpi` (the launcher; empty for one task, a plain process, which the
    SLURM plugin then does not treat as MPI) and `tasks`, and a multi-rank GPU job's tasks_per_gpu, which the
    plugin turns into --ntasks-per-gpu."""
    out = {name: from_job(kind, lambda cfg, name=name: cfg["resources"][name])
           for name in ("mem_mb", "runtime")}
    tasks = (lambda cfg: mpi(cfg)["mpi_tasks"]) if mpi else (lambda cfg: 1)
    if mpi:
        ranks = from_job(kind, tasks)
        out.update(mpi=lambda w: LAUNCHER if ranks(w) > 1 else "", tasks=ranks)
    if gpu:
        out["gpu"] = from_job(kind, lambda cfg: gpus(cfg, tasks(cfg)))
        out["tasks_per_gpu"] = from_job(kind, lambda cfg: min(cfg["resources"]["ranks_per_gpu"], tasks(cfg)))
    return out


def parallel_args(cfg):
    """How the ranks of a spectrum/interpolation job share each point's SLQ (Algorithms 4 and 5, hybrid)."""
    s = cfg["spectra"]
    per_group = f" --ranks-per-group {s['ranks_per_group']}" if s["parallel"] == "hybrid" else ""
    return f"--parallel {s['parallel']}{per_group}"


def threads_of(kind):
    return from_job(kind, lambda cfg: cfg["resources"]["threads"])


def mpi_launcher(wildcards, resources):
    """Shell prefix `{resources.mpi} -n {resources.tasks}` of an MPI job; empty for a one-task job."""
    mpi = getattr(resources, "mpi", None)
    return f"{mpi} -n {resources.tasks} " if mpi else ""


def settings_json(kind, job_id, **where):
    """What defines a job's folder (``where``: the run(s) it belongs to), for its settings.yaml and from there each
    HDF5 file's provenance."""
    return json.dumps({**where, "kind": kind, "id": job_id, "settings": job(kind, job_id).settings}, sort_keys=True)


def experiment_outputs(name):
    """An experiment's figures, videos and data its page links (outputs and comparisons), under the results folder."""
    experiment = PLAN.experiments[name]
    return [f"{R}/{item['path']}" for item in experiment.outputs] + [f"{R}/{p}" for p in experiment.compare]


def all_targets():
    targets = []
    for experiment in PLAN.experiments.values():
        targets += [f"{R}/{item['path']}" for item in experiment.outputs]
        targets += [f"{R}/{p}" for p in experiment.files]  # so that a deleted one is rebuilt
        targets += [f"{R}/{p}" for p in experiment.compare]
        targets.append(planned("experiment_settings", experiment=experiment.name))
        targets.append(planned("summary", experiment=experiment.name))
    return list(dict.fromkeys(targets))


def train_args(run):
    planned = PLAN.runs[run]
    s, cfg = planned["settings"], planned["execution"]
    dataset, model = cfg["datasets"][s["dataset"]], cfg["models"][s["model"]]
    args = ["--framework", s["framework"], "--dataset", dataset["name"]]
    args += [x for k, v in dataset.items() if k != "name" for x in ("--dataset-option", f"{k}={v}")]
    args += ["--model", model["name"]]
    args += [x for k, v in model.items() if k != "name" for x in ("--model-option", f"{k}={v}")]
    loss = cfg["losses"].get(s["loss"], {"name": s["loss"]})
    args += ["--loss", loss["name"]]
    args += [x for k, v in loss.items() if k != "name" for x in ("--loss-option", f"{k}={v}")]
    args += ["--seed", s["seed"], "--lr", s["lr"], "--batch-size", s["batch_size"], "--epochs", s["epochs"],
             "--momentum", s["momentum"], "--checkpoint-every", planned["checkpoint_every"], "--device", cfg["device"],
             "--on-divergence", cfg["train"]["on_divergence"], *trainer_args(s)]
    return " ".join(shlex.quote(str(a)) for a in args)


def run_resource(name):
    return lambda w: PLAN.runs[w.run]["execution"]["resources"][name]


def external_resource(name):
    return lambda w: PLAN.external[w.run]["execution"]["resources"][name]


def external_inputs(w):
    """An external run's files: its trajectory file, or the checkpoint files the import step reads."""
    return [str(path) for path in run_files(PLAN.external[w.run]["spec"])]


def external_fingerprint(w):
    """Paths, sizes and modification times of an external run's files: a changed file reruns its jobs."""
    return fingerprint(run_files(PLAN.external[w.run]["spec"]))


def import_args(run):
    """The import step's options for a run declared by checkpoints (its files are the rule's input)."""
    planned = PLAN.external[run]
    spec, cfg = planned["spec"], planned["execution"]
    dataset, model, loss = cfg["datasets"][spec["dataset"]], cfg["models"][spec["model"]], spec["loss"]
    args = ["--framework", spec["framework"], "--dataset", dataset["name"]]
    args += [x for k, v in dataset.items() if k != "name" for x in ("--dataset-option", f"{k}={v}")]
    args += ["--model", model["name"]]
    args += [x for k, v in model.items() if k != "name" for x in ("--model-option", f"{k}={v}")]
    args += ["--loss", loss["name"]]
    args += [x for k, v in loss.items() if k != "name" for x in ("--loss-option", f"{k}={v}")]
    if spec["iterations"] is not None:
        args += ["--iterations", *spec["iterations"]]
    return " ".join(shlex.quote(str(a)) for a in args)


def centre_arg(option, centre):
    return "" if centre == "last" else f"{option} {int(centre)}"


def directions_inputs(wildcards):
    planned_job = job("directions", wildcards.did)
    run = wildcards.run
    inputs = {"trajectory": planned("trajectory", run=run),
              "settings": ancient(planned_settings("directions", run=run, did=wildcards.did))}
    if "eigendirections" in planned_job.upstream:
        inputs["eig"] = planned("eigendirections", run=run, eid=planned_job.upstream["eigendirections"])
    if planned_job.settings["method"] == "custom":
        inputs["custom"] = planned_job.settings["custom_file"]
    return inputs


def directions_args(wildcards, input):
    how = job("directions", wildcards.did).settings
    args = (f"--method {how['method']} --seed {how.get('seed', 0)} "
            f"--normalization {how['normalization']} {centre_arg('--center-iteration', how['centre'])}")
    if how["method"] == "hessian":
        return f"{args} --eigendirections {shlex.quote(input.eig)} --pick {' '.join(map(str, how['pick']))}"
    if how["method"] == "custom":
        keys = how.get("custom_key")
        keys = f" --custom-key {' '.join(shlex.quote(k) for k in keys)}" if keys else ""
        return f"{args} --custom {shlex.quote(input.custom)}{keys}"
    return args


def chunks(sid):
    return execution("spectra", sid)["spectra"]["chunks"]


def plane_args(cfg):
    # minimum A at (0, 0), minimum B at (1, 0), A's initial point at (0, 1), plus the border
    b = cfg["interpolation"]["plane_border"]
    return (f"--resolution {cfg['interpolation']['resolution']} --range {-b} {1 + b} {-b} {1 + b} "
            f"--grid-batching {cfg['landscape']['grid_batching']} {eval_args(cfg)}")


def video_planes(wildcards):
    upstream = job("video", wildcards.vid).upstream
    if "moving" in upstream:
        return planned("moving_planes", run=wildcards.run, mid=upstream["moving"])
    return planned("landscape", run=wildcards.run, lid=upstream["landscape"], dims=2)


def comparison(w):
    return PLAN.experiments[w.experiment].compare[plan_paths.path("comparison", experiment=w.experiment, run=w.run,
                                                                  what=w.what)]
