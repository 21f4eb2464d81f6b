"""Filesystem faults on the workflow side (issue 27): the job wrapper's console copy of errors, the results folder's
lock, the writability check before the first job, and every result a target (a deleted one is rebuilt).

One real Snakemake run of a small config serves the workflow checks (module fixture): a second run on its results
folder from another working directory is refused while it runs, then each kind of file is deleted and a dry run
must plan its job. Read-only and full file systems are small tmpfs mounts where this process may mount (root);
elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml
from mounts import tmpfs
from workflow_runner import BIN, ROOT, snakemake

sys.path.insert(0, str(ROOT / "workflow"))
import results_lock  # noqa: E402
from preflight import writable_problem  # noqa: E402

HAVE_SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) is not None
needs_snakemake = pytest.mark.skipif(not HAVE_SNAKEMAKE, reason="snakemake is not installed in this environment")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to its last byte."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)


def logged(log: Path, code: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m gradvis_steps.logged LOG python -c CODE``."""
    return subprocess.run([sys.executable, "-m", "gradvis_steps.logged", str(log), sys.executable, "-c", code],
                          capture_output=True, text=True, env=ENV, timeout=60, **kwargs)


STEP = ("import sys; print('wrote it'); print('progress 1/2', file=sys.stderr); "
        "print('error: /r/out.h5: no space left on device', file=sys.stderr); sys.exit(2)")
STEP_LINES = ["error: /r/out.h5: no space left on device", "progress 1/2", "wrote it"]  # sorted: stdout and
# stderr are copied as they come, so the stdout line may land anywhere between the stderr ones (in order)


def in_order(lines: list[str]) -> bool:
    return sorted(lines) == STEP_LINES and lines.index("progress 1/2") < lines.index(STEP_LINES[0])


# --- the job wrapper -----------------------------------------------------------------------------------------------

def test_wrapper_keeps_the_log_and_echoes_only_the_error_line(tmp_path):
    log = tmp_path / "job.log"
    result = logged(log, STEP)
    assert result.returncode == 2
    assert in_order(log.read_text().splitlines())
    assert result.stderr == "error: /r/out.h5: no space left on device\n" and result.stdout == ""


def test_wrapper_is_quiet_when_the_job_succeeds_and_echoes_a_traceback_last_line(tmp_path):
    ok = logged(tmp_path / "ok.log", "import sys; print('wrote it', file=sys.stderr)")
    assert ok.returncode == 0 and ok.stderr == "" and (tmp_path / "ok.log").read_text() == "wrote it\n"
    crash = logged(tmp_path / "crash.log", "raise OSError(28, 'No space left on device')")
    assert crash.returncode == 1
    assert crash.stderr == "OSError: [Errno 28] No space left on device\n"
    assert "Traceback" in (tmp_path / "crash.log").read_text()


def test_wrapper_runs_the_job_with_its_messages_on_the_console_when_the_log_cannot_be_opened(tmp_path):
    (tmp_path / "file").write_text("")
    log = tmp_path / "file" / "job.log"  # under a file: no such folder, for any user
    result = logged(log, STEP)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"warning: cannot write the log {log}: not a directory; the job's messages follow here"
    assert in_order(lines[1:])


def test_wrapper_on_a_read_only_and_on_a_full_file_system(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        result = logged(ro / "job.log", STEP)
        assert result.returncode == 2
        assert result.stderr.splitlines()[0].endswith(": read-only file system; the job's messages follow here")
        assert in_order(result.stderr.splitlines()[1:])
    with tmpfs(tmp_path / "full", "256k") as full:
        fill(full)
        result = logged(full / "job.log", STEP)  # the file is created, its first write fails
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines[0] == (f"warning: cannot write the log {full / 'job.log'}: no space left on device; the job's "
                            "messages follow here")
        assert in_order(lines[1:])


def test_wrapper_passes_sigterm_on_and_returns_the_jobs_status(tmp_path):
    marker = tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-m", "gradvis_steps.logged", str(tmp_path / "job.log"),
                              sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); "
                              "time.sleep(60)"], env=ENV)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM


# --- the results folder's lock -------------------------------------------------------------------------------------

HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[2]); import results_lock; "
          "print(results_lock.acquire(sys.argv[1]), flush=True); sys.stdin.readline(); results_lock.release()")


def holder(results: Path) -> subprocess.Popen:
    """Another process that holds the lock of ``results`` until a line arrives on its stdin."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(results), str(ROOT / "workflow")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "[]"
    return process


def test_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
    results = tmp_path / "results"
    first = holder(results)
    with pytest.raises(results_lock.LockError) as refused:
        results_lock.acquire(results)
    message = str(refused.value)
    assert message.startswith(f"results folder {results} is in use by another run (host {socket.gethostname()}, "
                              f"PID {first.pid}, started ")
    assert "gradvis unlock" in message
    assert results_lock.holder(results)["pid"] == first.pid
    first.kill()  # dies without releasing: its record stays, the kernel drops its flock
    first.wait()
    assert results_lock.holder(results) is None  # a dead PID on this host holds nothing
    warnings = results_lock.acquire(results)
    assert len(warnings) == 1 and "from a run which ended without releasing it" in warnings[0]
    assert f"PID {first.pid}" in warnings[0]
    assert results_lock._read(results / ".gradvis.lock")["pid"] == os.getpid()
    results_lock.release()
    assert not (results / ".gradvis.lock").exists()


def test_force_takes_a_held_lock_and_the_old_holder_leaves_it_alone(tmp_path):
    results = tmp_path / "results"
    first = holder(results)
    warnings = results_lock.acquire(results, force=True)
    assert len(warnings) == 1 and "as force_unlock asks" in warnings[0] and f"PID {first.pid}" in warnings[0]
    first.communicate("\n", timeout=30)  # the first run ends and releases: not the lock it no longer holds
    assert results_lock._read(results / ".gradvis.lock")["pid"] == os.getpid()
    results_lock.release()
    assert not (results / ".gradvis.lock").exists()


def test_lock_of_another_host_is_never_presumed_dead_and_clear_removes_it(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    record = {"host": "elsewhere.example", "pid": 1, "started": "then", "cwd": "/w"}
    (results / ".gradvis.lock").write_text(json.dumps(record))
    with pytest.raises(results_lock.LockError, match="host elsewhere.example, PID 1, started then in /w"):
        results_lock.acquire(results)
    assert results_lock.clear(results) == record and not (results / ".gradvis.lock").exists()
    assert results_lock.acquire(results) == []
    results_lock.release()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    """A record whose PID now belongs to a process started later (this one) is a dead run's."""
    results = tmp_path / "results"
    results.mkdir()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": 1.0, "started": "long ago"}
    (results / ".gradvis.lock").write_text(json.dumps(record))
    assert results_lock.alive(record) is False
    (warning,) = results_lock.acquire(results)
    assert "ended without releasing it" in warning
    results_lock.release()


# --- the writability check before the first job --------------------------------------------------------------------

def test_writable_problem_names_the_folder_and_the_cause(tmp_path):
    assert writable_problem(tmp_path / "new" / "results") is None
    (tmp_path / "file").write_text("")
    assert "is not a folder" in writable_problem(tmp_path / "file" / "results")
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        assert writable_problem(ro / "results") == (f"results folder {ro / 'results'} cannot be created: {ro} is not "
                                                    "writable (read-only file system)")
        assert writable_problem(ro) == f"results folder {ro} is not writable (read-only file system)"
    with tmpfs(tmp_path / "full", "512k") as full:
        fill(full)
        problem = writable_problem(full / "results")
        assert problem.startswith(f"results folder {full / 'results'}: no space left on device (")


# --- the workflow: one real run, a second refused, every file a target ---------------------------------------------

def small_config(results: Path) -> dict:
    """Every kind of output (landscapes 1D/2D on Hessian directions, spectra in two chunks, the moving frame and its
    video, interpolation line/plane/spectra) at the smallest sizes."""
    return {
        "results": str(results), "device": "cpu",
        "datasets": {"digits": {"name": "digits"}}, "models": {"tiny": {"name": "lenet", "widths": [2, 2, 8, 6]}},
        "train": {"dataset": ["digits"], "model": ["tiny"], "seed": [0], "lr": [0.05], "batch_size": [512],
                  "epochs": [1], "momentum": [0.9]},
        "evaluation": {"fraction": 0.05, "seed": 0, "batch_size": 1024, "dtype": "float32"},
        "directions": {"methods": ["hessian"], "hessian": {"which": "largest", "pick": [0, 1], "count": 2,
                                                           "steps": 6}},
        "landscape": {"resolution": 3, "border": 0.4, "line": True},
        "spectra": {"every": 2, "k": 1, "m": 4, "chunks": 1},
        "interpolation": {"enabled": False, "seeds": [0, 1], "points": 2, "resolution": 3},
        "frames": {"direction": "hessian", "fps": 4, "dpi": 20, "moving_every": 2, "interpolation": False},
        "resources": {"gpu": 0, "threads": 1, "mem_mb": 1000, "runtime": 10},
        "experiments": {
            "training": {},
            "interpolation": {"train": {"seed": [0, 1]}, "directions": {"methods": []},
                              "spectra": {"enabled": False}, "interpolation": {"enabled": True},
                              "frames": {"moving_every": 0}},
        },
    }


@pytest.fixture(scope="module")
def owned_run(tmp_path_factory):
    """A real run from one working directory; while it runs, a second one on the same results folder from another
    working directory (the repository) is started and must stop at once."""
    folder = tmp_path_factory.mktemp("faults")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(small_config(folder / "results")))
    workdir = folder / "first"
    workdir.mkdir()
    first = subprocess.Popen([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                              str(workdir), "--cores", "2", "--configfile", str(config)], cwd=workdir, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = folder / "results" / ".gradvis.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    start = time.monotonic()
    second = snakemake("--cores", "1", "--configfile", str(config), timeout=120)
    second_took = time.monotonic() - start
    start = time.monotonic()
    third = subprocess.run([sys.executable, "-m", "gradvis_steps.command", "run", str(config), "--cores", "1"],
                           cwd=folder, env=ENV, capture_output=True, text=True, timeout=120)
    third_took = time.monotonic() - start
    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output[-3000:]
    return SimpleNamespace(folder=folder, config=config, pid=first.pid, output=output, second=second,
                           second_took=second_took, third=third, third_took=third_took)


@needs_snakemake
def test_a_second_run_on_the_same_results_folder_is_refused(owned_run):
    run = owned_run
    print(f"second run refused after {run.second_took:.1f} s (snakemake), {run.third_took:.1f} s (gradvis run)")
    in_use = (f"results folder {run.folder / 'results'} is in use by another run (host {socket.gethostname()}, "
              f"PID {run.pid}, started ")
    assert run.second.returncode != 0
    assert run.second.stderr.strip().splitlines()[-1].startswith(f"error: {in_use}")
    assert "Traceback" not in run.second.stderr and "Building DAG" not in run.second.stdout + run.second.stderr
    assert run.third.returncode == 2 and run.third.stdout == ""
    assert run.third.stderr.startswith(f"gradvis: error: {in_use}") and len(run.third.stderr.splitlines()) == 1
    assert "warning:" not in run.output  # the first run found no lock of anyone else
    assert not (run.folder / "results" / ".gradvis.lock").exists()  # released at its end


@needs_snakemake
def test_the_first_run_completes_untouched(owned_run):
    """Its trajectory equals a clean run of the train step with the same command line."""
    from gradvis_steps.storage.trajectory import Trajectory

    (train,) = [shlex.split(line.rsplit("python -m ", 1)[1]) for line in owned_run.output.splitlines()  # commands
                if "python -m gradvis_steps.train " in line and line.rstrip().endswith("-s0/trajectory.h5")]
    ran_path = Path(train[train.index("--out") + 1])
    out = owned_run.folder / "clean" / "trajectory.h5"
    train[train.index("--out") + 1] = str(out)
    subprocess.run([sys.executable, "-m", *train], check=True, env={**ENV, "OMP_NUM_THREADS": "1"},  # as the job
                   capture_output=True)
    with Trajectory(out) as clean, Trajectory(ran_path) as ran:
        assert ran.iterations.tolist() == clean.iterations.tolist() and len(ran) > 1
        for i in range(len(clean)):
            np.testing.assert_array_equal(ran.params(i), clean.params(i))
    assert (ran_path.parent / "logs" / "train.log").read_text().startswith("wrote ")


FOLDER_OUTPUTS = ("frames", "landscapes", "densities")  # directory() outputs: the folder is the output


def kinds_of_files(results: Path) -> dict[str, Path]:
    """One file (or folder output) of each kind a run leaves under ``results``, by its path without the run and job
    ids (``landscape/landscape_1d.h5``); logs and lock files aside."""
    found: dict[str, Path] = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results)
        if path.suffix == ".log" or path.name.startswith(".") or "logs" in relative.parts or path.is_dir():
            continue
        for i, part in enumerate(relative.parts[:-1]):
            if part in FOLDER_OUTPUTS:
                path, relative = results.joinpath(*relative.parts[:i + 1]), Path(*relative.parts[:i + 1])
                break
        found.setdefault("/".join(part for part in relative.parts if "-" not in part), path)
    return found


MISSING, UPDATED = "Missing output files: ", ("Updated input files: ", "Input files updated by another job: ")


def planned_again(config: Path, paths: list[Path], parking: Path) -> dict[str, set[str] | None]:
    """Dry run with ``paths`` moved away: each file some job will write as missing -> the rewritten inputs that
    job also names as its reason (None: a reason of another kind, such as changed code or params)."""
    parking.mkdir(exist_ok=True)
    parked = [(path, parking / str(n)) for n, path in enumerate(paths)]
    for path, away in parked:
        os.rename(path, away)  # a rename keeps the modification time
    try:
        planned = snakemake("-n", "--cores", "1", "--configfile", str(config))
    finally:
        for path, away in parked:
            os.rename(away, path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    causes: dict[str, set[str] | None] = {}
    for line in (planned.stdout + planned.stderr).splitlines():
        if line.strip().startswith("reason: "):
            parts = line.strip()[len("reason: "):].split("; ")
            named = {prefix: {f for part in parts if part.startswith(prefix) for f in part[len(prefix):].split(", ")}
                     for prefix in (MISSING, *UPDATED)}
            other = [part for part in parts if not part.startswith((MISSING, *UPDATED))]
            for path in named[MISSING]:
                causes[path] = None if other else named[UPDATED[0]] | named[UPDATED[1]]
    return causes


def planned_for_itself(path: str, causes: dict[str, set[str] | None], deleted: set[str]) -> bool:
    """Whether the job of ``path`` is planned because ``path`` is missing, not because of another deleted file
    upstream: no deleted file (but ``path``) among the rewritten inputs it depends on, all of them missing files
    whose own reasons are known."""
    stack, seen = [path], {path}
    while stack:
        inputs = causes.get(stack.pop())
        if inputs is None:
            return False
        for item in inputs - seen:
            if item in deleted:
                return False
            seen.add(item)
            stack.append(item)
    return True


@needs_snakemake
def test_every_file_of_a_run_is_rebuilt_when_deleted(owned_run, tmp_path):
    """Each kind of file under results (logs aside: the record of a job, not a result) is planned again once
    deleted; one (a 1D landscape) is rebuilt equal to the one deleted. The kinds are deleted together, one dry run a
    round: a file counts as planned for its own absence only where no other deleted file upstream plans its job
    anyway (from the jobs' reasons); the others wait for a later round, without the files confirmed."""
    config, results = owned_run.config, owned_run.folder / "results"
    kinds = kinds_of_files(results)
    expected = {"trajectory.h5", "spectra/spectra.h5", "spectra/densities", "spectra/settings.yaml",
                "directions/directions.h5", "directions/settings.yaml", "eigendirections/eigendirections.h5",
                "eigendirections/settings.yaml", "landscape/landscape_2d.h5", "landscape/landscape_1d.h5",
                "landscape/contour.png", "landscape/surface.png", "landscape/surface.vtk", "landscape/line.png",
                "landscape/settings.yaml", "moving/landscapes", "moving/settings.yaml", "videos/frames",
                "videos/training.mp4", "videos/settings.yaml", "interpolation/line.h5", "interpolation/plane.h5",
                "interpolation/plane_directions.h5", "interpolation/spectra.h5", "interpolation/line.png",
                "interpolation/plane_contour.png", "interpolation/plane_surface.png", "interpolation/settings.yaml",
                "experiments/training/settings.yaml", "experiments/training/summary.html",
                "experiments/interpolation/settings.yaml", "experiments/interpolation/summary.html"}
    assert set(kinds) == expected, sorted(set(kinds) ^ expected)
    pending = dict(kinds)
    for _ in range(10):
        causes = planned_again(config, list(pending.values()), tmp_path / "parked")
        assert not [kind for kind, path in pending.items() if str(path) not in causes]  # no job would write it
        deleted = {str(path) for path in pending.values()}
        confirmed = [kind for kind, path in pending.items() if planned_for_itself(str(path), causes, deleted)]
        assert confirmed, sorted(pending)
        pending = {kind: path for kind, path in pending.items() if kind not in confirmed}
        if not pending:
            break
    assert not pending
    one_d = kinds["landscape/landscape_1d.h5"]
    with h5py.File(one_d) as f:
        before = f["loss"][()]
    one_d.unlink()
    rebuilt = snakemake("--cores", "1", "--configfile", str(config))
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    with h5py.File(one_d) as f:
        np.testing.assert_array_equal(f["loss"][()], before)


@needs_snakemake
def test_a_read_only_results_folder_stops_the_run_in_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(small_config(ro / "results")))
        result = snakemake("--cores", "1", "--configfile", str(config), timeout=300)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert errors == [f"error: results folder {ro / 'results'} cannot be created: {ro} is not writable (read-only "
                      "file system)"]
    assert "Traceback" not in result.stdout + result.stderr


@needs_snakemake
def test_gradvis_unlock_clears_the_results_folders_lock(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    record = {"host": "elsewhere.example", "pid": 4242, "started": "then", "cwd": "/w"}
    (results / ".gradvis.lock").write_text(json.dumps(record))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config(results)))
    result = subprocess.run([sys.executable, "-m", "gradvis_steps.command", "unlock", str(config)], cwd=tmp_path,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == (f"removed the lock of {results} held by host elsewhere.example, PID 4242, "
                                             "started then in /w")
    assert not (results / ".gradvis.lock").exists()


@needs_snakemake
def test_a_disk_full_during_training_is_named_on_the_console_and_a_rerun_completes(tmp_path):
    """Issue 27's first case: the default LeNet's trajectory (about 2.5 MB) on a 2000 KiB file system passes the
    check before the first job (more than 1 MiB free) and fills it during training; once there is space, a plain
    rerun completes, equal to a clean run of the same train command."""
    from gradvis_steps.storage.trajectory import Trajectory

    with tmpfs(tmp_path / "disk", "2000k") as disk:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "results": str(disk / "results"), "device": "cpu",
            "train": {"dataset": ["digits"], "model": ["lenet"], "seed": [0], "lr": [0.05], "batch_size": [64],
                      "epochs": [1], "momentum": [0.9]},
            "directions": {"methods": []}, "spectra": {"enabled": False}, "interpolation": {"enabled": False},
            "frames": {"training": False}}))
        full = snakemake("--cores", "1", "--configfile", str(config), timeout=300)
        assert full.returncode != 0
        console = full.stdout + full.stderr
        assert "no space left on device" in console.lower()
        (trajectory,) = (disk / "results").glob("*/trajectory.h5.partial")  # never under its final name
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = snakemake("--cores", "1", "--configfile", str(config), timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        ran = trajectory.with_suffix("")
        (train,) = [shlex.split(line.rsplit("python -m ", 1)[1]) for line in (rerun.stdout + rerun.stderr).splitlines()
                    if "python -m gradvis_steps.train " in line]
        train[train.index("--out") + 1] = str(tmp_path / "clean.h5")
        subprocess.run([sys.executable, "-m", *train], check=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                       capture_output=True)
        with Trajectory(tmp_path / "clean.h5") as clean, Trajectory(ran) as resumed:
            assert resumed.iterations.tolist() == clean.iterations.tolist()
            for i in range(len(clean)):
                np.testing.assert_array_equal(resumed.params(i), clean.params(i))
