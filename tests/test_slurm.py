"""Snakemake on a real (single-node, local) SLURM cluster with the repository's profiles/slurm.

Skipped with the reason when SLURM is not installed or we are not root (see tests/slurm_cluster.py;
`.ci/install-system-deps.sh` installs it). Reuse the `slurm` fixture for further cluster tests in this file:
it yields a running `SlurmCluster` (`.env` for subprocesses, `.job(id)`, `.log_tails()`), and
`snakemake_slurm_args(REPO)` gives the command-line arguments that submit through it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm_cluster, slurm_unavailable_reason, snakemake_slurm_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A running single-node cluster (partitions debug and gpu, one fake GPU), stopped after this module."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def run_snakemake(cluster: SlurmCluster, workdir: Path, *extra: str, jobs: int = 2, timeout: float = 150):
    """Run the venv's snakemake in `workdir` on the cluster (at most `jobs` submitted at once); fails the test with
    all logs if it does not succeed."""
    cmd = [sys.executable, "-m", "snakemake", *snakemake_slurm_args(REPO, jobs=jobs), *extra]
    # Jobs inherit this environment (sbatch --export=ALL): put the venv first on PATH so that a rule's `python`
    # is the venv's even when pytest was started as .venv/bin/python without activating it.
    env = dict(cluster.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{cluster.env.get('PATH', '')}")
    try:
        result = subprocess.run(cmd, cwd=workdir, env=env, text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"snakemake on SLURM timed out after {timeout}s\n{e.stdout}\n{e.stderr}\n{cluster.log_tails()}")
    if result.returncode != 0:
        pytest.fail(
            f"snakemake on SLURM failed ({result.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n{cluster.log_tails()}"
        )
    return result


TWO_RULES = textwrap.dedent(
    """
    localrules: all

    rule all:
        input: "b.txt"

    rule a:
        output: "a.txt"
        resources: gpu=1, slurm_partition="gpu"
        shell: "echo $SLURM_JOB_ID > {output}; echo gpus=${{CUDA_VISIBLE_DEVICES:-none}} >> {output}"

    rule b:
        input: "a.txt"
        output: "b.txt"
        shell: "cat {input} > {output}; echo $SLURM_JOB_ID >> {output}"
    """
)


def test_snakemake_jobs_run_through_slurm(slurm, tmp_path):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TWO_RULES)

    result = run_snakemake(slurm, workdir)

    a_lines = (workdir / "a.txt").read_text().split()
    b_lines = (workdir / "b.txt").read_text().split()
    job_a, job_b = a_lines[0], b_lines[-1]
    assert job_a.isdigit() and job_b.isdigit() and job_a != job_b, (a_lines, b_lines)
    assert a_lines[1] == "gpus=0", "rule a should see the node's (fake) GPU through CUDA_VISIBLE_DEVICES"

    # SLURM itself knows both jobs (MinJobAge keeps finished ones visible): a on the gpu partition with a GPU.
    info_a, info_b = slurm.job(job_a), slurm.job(job_b)
    assert info_a["JobState"] == info_b["JobState"] == "COMPLETED", (info_a, info_b)
    assert info_a["Partition"] == "gpu" and "gpu:1" in info_a.get("TresPerJob", ""), info_a
    assert info_b["Partition"] == "debug", info_b  # the cluster's default partition
    assert info_a["JobName"] == info_b["JobName"]  # the snakemake run id

    # Snakemake's side: it recorded the SLURM job ids, and the jobs' SLURM logs carry them.
    log = "\n".join(p.read_text() for p in (workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    submitted = set(re.findall(r"SLURM jobid (\d+)", log + result.stderr))
    assert {job_a, job_b} <= submitted, log
    for rule, job_id in (("a", job_a), ("b", job_b)):
        slurm_logs = list((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob(f"{job_id}.log"))
        assert slurm_logs, sorted(p.relative_to(workdir) for p in (workdir / ".snakemake").rglob("*.log"))


#: An MPI rule as the workflow's multi-rank GPU rules should declare it: `mpi` (the launcher prefix the profile's
#: mpi_launcher gives), `tasks` ranks, `gpu` GPUs with `tasks_per_gpu` ranks on each. The test node has one (fake) GPU,
#: so the two ranks share it here (tasks_per_gpu=2); one GPU per rank is gpu=N, tasks_per_gpu=1.
MPI_RULE = textwrap.dedent(
    """
    import yaml
    LAUNCHER = yaml.safe_load(open(PROFILE))["config"][0].split("=", 1)[1]

    rule ranks:
        output: "ranks.txt"
        resources: mpi=LAUNCHER, tasks=2, gpu=1, tasks_per_gpu=2, cpus_per_task=1, slurm_partition="gpu"
        shell: "PYTHONPATH={REPO:q} {resources.mpi} -n {resources.tasks} python -c {PROBE:q} > {output}"
    """
)

#: each rank prints what the steps see of it: its rank in the world gradvis_steps makes, that world's size, its
#: local rank (the GPU binding's input) and the GPUs visible to it
MPI_PROBE = (
    "import os; from gradvis_steps.core.parallel import local_rank, world; c = world(); "
    "print(c.rank, c.size, local_rank(), os.environ.get('CUDA_VISIBLE_DEVICES', 'none'), flush=True)"
)


def test_multi_rank_gpu_job_through_the_profile_launcher(slurm, tmp_path):
    """A 2-rank GPU job submitted by the plugin (sbatch --gpus=1 --ntasks-per-gpu=2 --ntasks=2) and started with the
    profile's mpi_launcher inside it: one MPI world of 2 ranks (not two one-rank worlds, as a bare `srun` gives the
    mpich wheel on a cluster with MpiDefault=none), local ranks 0 and 1, the GPU visible to both."""
    workdir = tmp_path / "mpi"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(f"PROFILE = {str(REPO / 'profiles' / 'slurm' / 'config.yaml')!r}\n"
                                       f"REPO = {str(REPO)!r}\nPROBE = {MPI_PROBE!r}\n" + MPI_RULE)
    run_snakemake(slurm, workdir, "ranks.txt", jobs=1)
    lines = sorted(tuple(line.split()) for line in (workdir / "ranks.txt").read_text().splitlines())
    assert lines == [("0", "2", "0", "0"), ("1", "2", "1", "0")], lines


def test_slurm_profile_sends_model_rules_to_the_gpu_partition(tmp_path):
    """profiles/slurm on its own (dry run, no cluster needed): model rules go to the gpu partition with the GPUs the
    rule asks for (the profile does not override them: a multi-rank rule asks for one per rank), others not."""
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """
            rule all:
                input: "t.txt", "p.txt"

            rule train:
                output: "t.txt"
                resources: gpu=2
                shell: "touch {output}"

            rule plot:
                output: "p.txt"
                shell: "touch {output}"
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADVIS_SLURM_")}
    env["GRADVIS_SLURM_GPU_PARTITION"] = "gpu-a100"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / "slurm"), "--dry-run"],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    resources = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.MULTILINE))
    assert "gpu=2" in resources["train"] and "slurm_partition=gpu-a100" in resources["train"], resources
    assert "gpu" not in resources["plot"] and "runtime=30" in resources["plot"], resources


# --- The whole workflow (config/test.yaml) on the cluster, compared with a local run -------------------------------

SNAKEFILE = REPO / "Snakefile"
# Attributes that legitimately differ between two runs of the same step: when/where/how it ran and how long it took.
VOLATILE_ATTRS = ("provenance",)
VOLATILE_KEY = "seconds"  # any attribute name or JSON key containing it (summary.seconds, checkpoints/*/seconds)


def _tiny_config(folder: Path) -> tuple[Path, dict]:
    """config/test.yaml with `results:` in `folder` (absolute, so the run directory does not matter) and one GPU per
    model-evaluating job, as on a GPU cluster."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["results"] = str(folder / "results")
    config["resources"]["gpu"] = 1
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def _job_stats(text: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> number of jobs) from a run's output, without the local rule `all`."""
    assert "Job stats:" in text, text[-3000:]
    table = text.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+) +(\d+)$", table, re.MULTILINE) if rule != "all"}


def _normalized(value, folder_a: str, folder_b: str):
    """An attribute value with run B's results folder written as run A's and timing entries of JSON strings dropped."""
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        return value
    value = value.replace(folder_b, folder_a)
    try:
        parsed = json.loads(value)
    except ValueError:
        return value

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if VOLATILE_KEY not in k}
        if isinstance(obj, list):
            return [drop(v) for v in obj]
        return obj

    return drop(parsed)


def _compare_h5(path_a: Path, path_b: Path, folder_a: str, folder_b: str) -> tuple[list[str], list[str]]:
    """Compare two HDF5 files: the same groups and datasets, every dataset bitwise equal (dtype, shape, bytes), every
    attribute equal except VOLATILE_ATTRS and timings. Returns (datasets compared, differences)."""
    import h5py
    import numpy as np

    compared, diffs = [], []

    def attrs(obj) -> dict:
        return {k: _normalized(v, folder_a, folder_b) for k, v in obj.attrs.items()
                if k not in VOLATILE_ATTRS and VOLATILE_KEY not in k}

    with h5py.File(path_a, "r") as a, h5py.File(path_b, "r") as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        if sorted(names_a) != sorted(names_b):
            diffs.append(f"objects differ: only local {sorted(set(names_a) - set(names_b))}, "
                         f"only SLURM {sorted(set(names_b) - set(names_a))}")
        for name in ["/", *sorted(set(names_a) & set(names_b))]:
            obj_a, obj_b = a[name], b[name]
            attrs_a, attrs_b = attrs(obj_a), attrs(obj_b)
            for key in sorted(set(attrs_a) | set(attrs_b)):
                va, vb = attrs_a.get(key), attrs_b.get(key)
                if key not in attrs_a or key not in attrs_b:
                    same = False
                elif isinstance(va, np.ndarray | np.generic) and isinstance(vb, np.ndarray | np.generic):
                    same = va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes()
                else:
                    same = type(va) is type(vb) and va == vb
                if not same:
                    diffs.append(f"{name} attribute {key}: local {va!r:.200} != SLURM {vb!r:.200}")
            if not isinstance(obj_a, h5py.Dataset):
                continue
            compared.append(name)
            da, db = obj_a[()], obj_b[()]
            if da.dtype.kind in "OSU":  # strings: compare with the results folders normalized
                la = [_normalized(v, folder_a, folder_b) for v in np.ravel(da)]
                lb = [_normalized(v, folder_a, folder_b) for v in np.ravel(db)]
                if la != lb:
                    diffs.append(f"{name}: strings differ")
            elif da.dtype != db.dtype or da.shape != db.shape:
                diffs.append(f"{name}: local {da.dtype}{da.shape} != SLURM {db.dtype}{db.shape}")
            elif da.tobytes() != db.tobytes():
                detail = ""
                if da.dtype.kind in "fiu":
                    delta = np.abs(da.astype(np.float64) - db.astype(np.float64))
                    detail = f" (max abs diff {np.nanmax(delta):.3g} in {np.count_nonzero(delta)} of {da.size} values)"
                diffs.append(f"{name}: values differ{detail}")
    return compared, diffs


def test_whole_tiny_workflow_on_slurm_matches_a_local_run(slurm, tmp_path):
    """config/test.yaml end to end: once locally, once with every job submitted through SLURM (profiles/slurm).

    The jobs must have run as SLURM jobs (the model rules on the gpu partition with a GPU), every HDF5 result must be
    bitwise identical to the local run's, and so must the figures, VTK files and videos. Both runs execute the same
    steps on the same machine with the same thread counts (the model rules set OMP_NUM_THREADS={threads} = 1; the
    others use torch's default, all cores, in both runs, as the test cluster binds no CPUs; the config says device:
    cpu), and CPU torch is deterministic then: only timings and provenance (dates, commands, paths) may differ."""
    import yaml

    started = time.monotonic()
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for folder in (local, remote):
        (folder / "work").mkdir(parents=True)
    config_local, config = _tiny_config(local)
    config_remote, _ = _tiny_config(remote)
    # The test cluster's GPU is fake (/dev/null) and torch is the CPU build: the steps must not try CUDA.
    assert config["device"] == "cpu", "config/test.yaml must set device: cpu (the test cluster has no real GPU)"
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if "gpu" in str(res.get("slurm_partition"))}
    assert {"train", "landscape", "spectrum_chunk"} <= gpu_rules, profile["set-resources"]
    assert config["resources"]["gpu"] == 1  # what a GPU cluster's config says (_tiny_config)

    # 1. Local run (the workflow profile profiles/default applies: found next to the Snakefile).
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--configfile", str(config_local),
           "--cores", "2"]
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=local / "work", env=env, text=True, capture_output=True, timeout=600)
    local_seconds = time.monotonic() - t0
    assert result.returncode == 0, f"local run failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    expected_jobs = _job_stats(result.stdout + result.stderr)

    # 2. The same on the cluster, every job through sbatch. The node runs two jobs at a time (2 CPUs; one GPU, so one
    # model job), but snakemake keeps up to 8 submitted: SLURM then starts the next queued job the moment one ends,
    # instead of after the plugin's next status check (it backs off by 10 s after each check that finds no job done).
    t0 = time.monotonic()
    result = run_snakemake(slurm, remote / "work", "--snakefile", str(SNAKEFILE), "--configfile", str(config_remote),
                           jobs=8, timeout=900)
    slurm_seconds = time.monotonic() - t0
    print(f"\n[timing] tiny workflow: local run {local_seconds:.0f} s, SLURM run {slurm_seconds:.0f} s")

    # 3. Every job of the DAG was submitted once, as a SLURM job, with its SLURM log kept.
    work = remote / "work"
    log = "\n".join(p.read_text() for p in sorted((work / ".snakemake" / "log").glob("*.snakemake.log")))
    assert _job_stats(log + result.stderr) == expected_jobs
    pattern = r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$"
    submitted = dict(re.findall(pattern, f"{log}\n{result.stderr}", re.MULTILINE))
    slurm_logs = work / ".snakemake" / "slurm_logs"
    rule_of = {job_id: Path(path).relative_to(slurm_logs).parts[0].removeprefix("rule_")
               for job_id, path in submitted.items()}
    per_rule = {rule: sum(1 for r in rule_of.values() if r == rule) for rule in set(rule_of.values())}
    # the rules that only write a settings.yaml run on the submitting host (localrule), the rest through sbatch
    local_rules = {"analysis_settings", "interpolation_settings", "experiment_settings"}
    assert per_rule == {r: n for r, n in expected_jobs.items() if r not in local_rules}, (per_rule, expected_jobs)
    problems, job_seconds = [], 0
    for job_id, rule in sorted(rule_of.items(), key=lambda item: int(item[0])):
        job_log = Path(submitted[job_id])
        if not job_log.is_file():
            problems.append(f"job {job_id} ({rule}): no SLURM log {job_log}")
        elif "1 of 1 steps (100%) done" not in job_log.read_text(errors="replace"):
            problems.append(f"job {job_id} ({rule}): its SLURM log does not report the step done")
        # SLURM's own record of every job (MinJobAge keeps them all): completed, and where the profile sent it.
        info = slurm.job(job_id)
        h, m, sec = (int(x) for x in info.get("RunTime", "0:0:0").split(":"))
        job_seconds += 3600 * h + 60 * m + sec
        gpu = "gpu:1" in info.get("TresPerJob", "")
        if info.get("JobState") != "COMPLETED" or info.get("ExitCode") != "0:0":
            problems.append(f"job {job_id} ({rule}): {info.get('JobState')} exit {info.get('ExitCode')}")
        if not info.get("Comment", "").startswith(f"rule_{rule}"):
            problems.append(f"job {job_id} ({rule}): SLURM comment {info.get('Comment')!r}")
        if (info.get("Partition"), gpu) != (("gpu", True) if rule in gpu_rules else ("debug", False)):
            problems.append(f"job {job_id} ({rule}): partition {info.get('Partition')}, "
                            f"TresPerJob {info.get('TresPerJob')!r}")
    assert not problems, "\n".join(problems) + "\n" + slurm.log_tails()

    # 4. The same results: the same files, and every HDF5 dataset bitwise equal.
    results_a, results_b = local / "results", remote / "results"
    files_a = sorted(p.relative_to(results_a) for p in results_a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(results_b) for p in results_b.rglob("*") if p.is_file())
    assert files_a == files_b, (set(files_a) ^ set(files_b))
    h5_files = [p for p in files_a if p.suffix == ".h5"]
    expected_h5 = {"trajectory.h5", "eigendirections.h5", "spectra.h5", "line.h5", "plane.h5", "plane_directions.h5",
                   "directions.h5", "landscape_1d.h5", "landscape_2d.h5",
                   *(f"centre_{i:06d}.h5" for i in (0, 6, 12))}  # the moving frame's planes (and their directions)
    assert {p.name for p in h5_files} == expected_h5, sorted(h5_files)
    compared, diffs = [], []
    for rel in h5_files:
        names, file_diffs = _compare_h5(results_a / rel, results_b / rel, str(results_a), str(results_b))
        compared += [f"{rel}:{name}" for name in names]
        diffs += [f"{rel}: {d}" for d in file_diffs]
    assert not diffs, "local and SLURM results differ:\n" + "\n".join(diffs)
    # Figures, frames, VTK surfaces and videos are rendered from those results by the same code: byte for byte equal.
    # (The rules' logs hold timings and are not compared.)
    rendered = [p for p in files_a if p.suffix not in (".h5", ".log")]
    assert {".png", ".vtk", ".mp4"} <= {p.suffix for p in rendered}, rendered
    unequal = [str(p) for p in rendered if (results_a / p).read_bytes() != (results_b / p).read_bytes()]
    assert not unequal, "local and SLURM renderings differ:\n" + "\n".join(unequal)
    print(f"[compare] {len(h5_files)} HDF5 files, {len(compared)} datasets bitwise equal, {len(rendered)} other "
          f"files byte-identical; {len(submitted)} SLURM jobs ran {job_seconds} s in all; "
          f"test {time.monotonic() - started:.0f} s")
