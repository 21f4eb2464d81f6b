"""Filesystem faults on the step side (issue 27): a full disk during training, a read-only output folder, temporary
files left by a killed step, files locked by another process or not readable. Real small tmpfs mounts where this
process may mount (root: CI), a fake ``OSError`` otherwise; every message checked as the console shows it: one line
naming the path and the cause, no traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from mounts import tmpfs
from step_helpers import train_tiny

from gradvis_steps import cli
from gradvis_steps import directions as directions_step
from gradvis_steps import train as train_step
from gradvis_steps.storage import atomic, failures
from gradvis_steps.storage.atomic import FileUnavailable, atomic_path, remove_stale_temporaries
from gradvis_steps.storage.trajectory import Trajectory, partial_path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--batch-size", "128", "--lr", "0.05",
         "--seed", "0", "--no-progress"]


def one_error_line(err: str, *needles: str) -> str:
    """``err`` (a step's stderr) is exactly one ``error:`` line holding every needle, without a traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith(("removed ", "warning: "))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def step_process(module: str, *argv: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a step as the workflow does: its own interpreter, our code first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"gradvis_steps.{module}", *map(str, argv)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def same_trajectories(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            assert np.array_equal(fa[name][()], fb[name][()], equal_nan=True), name


def fill(folder: Path, leave_kib: int) -> Path:
    """Fill the filesystem of ``folder`` up to ``leave_kib`` KiB free with one file (returned: remove it to free)."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(free - leave_kib * 1024, 0))
    return filler


def test_full_disk_during_training_then_rerun_equals_clean_run(tmp_path):
    """Training fills the disk in its second epoch: one line, exit 74, no segfault (exit 139 before); with space
    freed the same command resumes from the last epoch boundary and ends equal to a clean run bitwise."""
    clean = subprocess.Popen([sys.executable, "-m", "gradvis_steps.train", *TRAIN, "--epochs", "2", "--resume",
                              "--out", str(tmp_path / "clean.h5")],
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "run" / "trajectory.h5"
        filler = fill(disk, 150)  # the first epoch fits (about 70 KiB with HDF5's metadata), the second does not
        failed = step_process("train", *TRAIN, "--epochs", "2", "--resume", "--out", out)
        assert failed.returncode == failures.EXIT_WRITE_FAILED, failed.stderr
        one_error_line(failed.stderr, f"error: {out}: cannot write (no space left on device)")
        assert not out.exists() and partial_path(out).exists()
        filler.unlink()
        again = step_process("train", *TRAIN, "--epochs", "2", "--resume", "--out", out)
        assert again.returncode == 0, again.stderr
        assert "resuming at iteration 12" in again.stderr  # the first epoch was kept
        assert clean.wait(timeout=300) == 0, clean.stderr.read()
        same_trajectories(out, tmp_path / "clean.h5")
        assert sorted(p.name for p in out.parent.iterdir()) == ["trajectory.h5"]


def test_training_starts_over_on_an_unreadable_partial_file(tmp_path, capsys):
    """What a crash while HDF5 wrote its metadata leaves (here: a partial file cut short): ``--resume`` warns in one
    line naming it and starts over, and the run equals a clean one."""
    clean = train_tiny(tmp_path / "clean.h5", 0)
    out = tmp_path / "run.h5"
    train_tiny(tmp_path / "donor.h5", 1, "--max-iterations", "5")
    partial_path(out).write_bytes((tmp_path / "donor.h5").read_bytes()[:3000])  # truncated HDF5
    capsys.readouterr()
    train_tiny(out, 0, "--resume")
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(partial_path(out)) in warning[0] and "starting over" in warning[0], warning
    same_trajectories(out, clean)
    assert not partial_path(out).exists()


def test_spectrum_starts_over_on_an_unreadable_partial_file(tmp_path, trajectory, capsys):
    """The spectrum step on a torn ``.partial`` file (what a full disk left before) warns in one line and computes
    the spectra a clean run computes."""
    from gradvis_steps import spectrum
    from gradvis_steps.storage.spectra import load_spectra

    argv = ["--trajectory", str(trajectory), "--k", "2", "--m", "6", "--every", "4", "--no-progress"]
    assert spectrum.main([*argv, "--out", str(tmp_path / "clean.h5")]) == 0
    out = tmp_path / "spectra.h5"
    Path(f"{out}.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # an HDF5 signature, then nothing
    capsys.readouterr()
    assert spectrum.main([*argv, "--out", str(out)]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"{out}.partial" in warning[0] and "starting over" in warning[0], warning
    clean, again = load_spectra(tmp_path / "clean.h5"), load_spectra(out)
    assert sorted(clean.entries) == sorted(again.entries) == [0, 4]
    for iteration, entry in clean.entries.items():
        assert np.array_equal(entry.nodes, again.entries[iteration].nodes)
        assert np.array_equal(entry.weights, again.entries[iteration].weights)


def test_read_only_output_folder_fails_before_any_work(tmp_path, monkeypatch, capsys):
    """A read-only output folder stops the step in one line before the data set is even loaded."""
    import gradvis_steps.data as data

    def no_work(*args, **kwargs):
        raise AssertionError("the step started computing before checking its output folder")

    monkeypatch.setattr(data, "load_dataset", no_work)
    if os.geteuid() == 0:
        context = tmpfs(tmp_path / "ro", "1m", "ro")
        cause = "read-only file system"
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        context, cause = contextlib.nullcontext(tmp_path / "ro"), "permission denied"
    with context as folder:
        capsys.readouterr()
        status = cli.run(train_step.main, [*TRAIN, "--out", str(folder / "trajectory.h5")])
        assert status == failures.EXIT_WRITE_FAILED
        one_error_line(capsys.readouterr().err, f"error: {folder}: cannot write ({cause})")


def test_full_output_folder_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import gradvis_steps.data as data

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("computed on a full disk"))
    with tmpfs(tmp_path / "full", "1m") as folder:
        fill(folder, 0)
        capsys.readouterr()
        assert cli.run(train_step.main, [*TRAIN, "--out", str(folder / "run" / "t.h5")]) == 74
        one_error_line(capsys.readouterr().err, f"error: {folder / 'run'}: cannot write (no space left on device)")


def test_a_full_disk_under_the_log_too_still_exits_74(tmp_path):
    """Stderr redirected into a log on the same full disk (as a rule does) cannot take the error line: the step
    still ends with status 74, not with a traceback about the log (status 1)."""
    with tmpfs(tmp_path / "full", "1m") as folder:
        log = folder / "train.log"
        log.touch()
        fill(folder, 0)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as stderr:
            done = subprocess.run([sys.executable, "-m", "gradvis_steps.train", *TRAIN, "--out",
                                   str(folder / "run" / "t.h5")], env=env, stderr=stderr, timeout=120)
        assert done.returncode == failures.EXIT_WRITE_FAILED


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("faults") / "trajectory.h5", 0, "--max-iterations", "4")


def test_full_disk_while_writing_an_hdf5_result(tmp_path, trajectory):
    """A result written whole at the end (directions, through ``hdf5_output``) on a disk that fills meanwhile: one
    line, exit 74, no segfault; whatever temporary file the dead process left is removed by the next run, whose
    result equals one written on a roomy disk."""
    argv = ["--trajectory", trajectory, "--method", "random", "--count", "40", "--seed", "3"]
    assert directions_step.main([*map(str, argv), "--out", str(tmp_path / "clean.h5")]) == 0
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = fill(disk, 60)  # 40 directions of 988 float32: 155 KiB
        failed = step_process("directions", *argv, "--out", disk / "dirs.h5")
        assert failed.returncode == 74, failed.stderr
        one_error_line(failed.stderr, "cannot write (no space left on device)", str(disk))
        assert not (disk / "dirs.h5").exists()
        filler.unlink()
        again = step_process("directions", *argv, "--out", disk / "dirs.h5")
        assert again.returncode == 0, again.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["dirs.h5"]  # no temporary left
        with h5py.File(disk / "dirs.h5", "r") as a, h5py.File(tmp_path / "clean.h5", "r") as b:
            assert np.array_equal(a["directions"][()], b["directions"][()])


def test_a_failed_step_removes_its_temporary_file(tmp_path, trajectory, monkeypatch, capsys):
    """A write error that HDF5 did not see (here injected: ENOSPC while h5py creates a dataset) leaves no temporary
    file and no output, in one line."""
    original = h5py.Group.create_dataset

    def full(self, name, *args, **kwargs):
        if name == "directions":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    out = tmp_path / "out" / "dirs.h5"
    capsys.readouterr()
    assert cli.run(directions_step.main, ["--trajectory", str(trajectory), "--method", "random", "--out",
                                          str(out)]) == 74
    one_error_line(capsys.readouterr().err, f"error: {out}: cannot write (no space left on device)")
    assert list(out.parent.iterdir()) == []


HOLD = textwrap.dedent("""
    import sys, time
    from gradvis_steps.storage.atomic import atomic_path
    with atomic_path(sys.argv[1], ".h5") as tmp, open(tmp, "wb") as handle:
        handle.write(b"half a file")  # killed while the file is open, being written
        handle.flush()
        print(tmp, flush=True)
        time.sleep(120)
""")


def test_temporary_file_of_a_killed_step_is_removed_by_the_next_run(tmp_path):
    """A step killed (-9) while writing leaves its temporary file; while its writer lives no sweep touches it (its
    lock), once dead the next step writing in that folder removes it, and that step's result is a clean run's."""
    folder = tmp_path / "run"
    folder.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / "chunk_1of2.h5.partial")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        temporary = Path(writer.stdout.readline().strip())
        assert temporary.parent == folder and temporary.exists()
        assert remove_stale_temporaries(folder, again=True) == [] and temporary.exists()  # locked: alive
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert temporary.exists()  # what the kill left
    atomic._SWEPT.clear()  # as in a new process
    train_tiny(folder / "trajectory.h5", 0, "--max-iterations", "3")
    assert sorted(p.name for p in folder.iterdir()) == ["trajectory.h5"]
    same_trajectories(folder / "trajectory.h5", train_tiny(tmp_path / "clean.h5", 0, "--max-iterations", "3"))


def test_sweep_keeps_files_that_only_look_alike(tmp_path):
    """Only the exact temporary pattern is swept: a user's hidden file, a resume file, a locked temporary stay."""
    kept = [".notes.txt", ".landscape.h5.partial-0.npz", "trajectory.h5.partial", ".x.h5.tmp-short.h5"]
    for name in kept:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".x.h5.tmp-abcd1234.h5").write_text("stale")
    atomic._SWEPT.discard(os.path.realpath(tmp_path))
    with atomic_path(tmp_path / "y.h5", ".h5") as live:  # the first write into the folder sweeps it
        assert not (tmp_path / ".x.h5.tmp-abcd1234.h5").exists()
        live.write_text("being written")
        assert remove_stale_temporaries(tmp_path, again=True) == [] and live.exists()  # this process's own
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "y.h5"])


SWEEP = "import sys; from gradvis_steps.storage.atomic import remove_stale_temporaries as r; print(len(r(sys.argv[1])))"


def test_a_second_step_in_the_folder_leaves_files_being_written_alone(tmp_path):
    """Two jobs writing in one folder (a workflow's 1-D and 2-D landscapes): the second one's sweep at its start
    must not remove what the first is writing, however that is written (HDF5 or Python, which open and close the
    file themselves and so would drop a lock held on the file itself: the CI failure this test pins)."""
    from gradvis_steps.storage.atomic import hdf5_output, write_json

    def sweep_in_another_process() -> str:
        return subprocess.run([sys.executable, "-c", SWEEP, str(tmp_path)], check=True, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()

    with hdf5_output(tmp_path / "landscape_1d.h5") as file:
        file["loss"] = np.arange(3.0)
        file.flush()
        assert sweep_in_another_process() == "0"
    with atomic_path(tmp_path / "notes.txt", ".txt") as tmp:
        tmp.write_text("being written")
        assert sweep_in_another_process() == "0"
    write_json(tmp_path / "provenance.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landscape_1d.h5", "notes.txt", "provenance.json"]
    with h5py.File(tmp_path / "landscape_1d.h5") as file:
        assert list(file["loss"][()]) == [0.0, 1.0, 2.0]


LOCK = textwrap.dedent("""
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "r+")
    print("open", flush=True)
    time.sleep(120)
""")


def test_reading_names_a_file_locked_by_another_process(tmp_path, trajectory, capsys):
    """HDF5's file lock held by a second process (a run writing the file): the reader says so, in one line, instead
    of calling the file truncated; training does not start over on such a partial file either."""
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        pytest.skip("HDF5 file locking is switched off (HDF5_USE_FILE_LOCKING=FALSE)")
    locked = tmp_path / "trajectory.h5"
    shutil.copy(trajectory, locked)
    shutil.copy(trajectory, partial_path(tmp_path / "other.h5"))
    holders = [subprocess.Popen([sys.executable, "-c", LOCK, str(path)], stdout=subprocess.PIPE, text=True)
               for path in (locked, partial_path(tmp_path / "other.h5"))]
    try:
        assert all(holder.stdout.readline().strip() == "open" for holder in holders)
        before = partial_path(tmp_path / "other.h5").read_bytes()
        with pytest.raises(FileUnavailable, match="locked by another process"):
            Trajectory(locked)
        capsys.readouterr()
        assert cli.run(directions_step.main, ["--trajectory", str(locked), "--method", "random", "--out",
                                              str(tmp_path / "d.h5")]) == 2
        one_error_line(capsys.readouterr().err, str(locked), "locked by another process (is another run using")
        assert cli.run(train_step.main, [*TRAIN, "--resume", "--out", str(tmp_path / "other.h5")]) == 2
        one_error_line(capsys.readouterr().err, str(partial_path(tmp_path / "other.h5")), "locked by another")
        assert partial_path(tmp_path / "other.h5").read_bytes() == before  # not started over
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_reading_names_permission_denied(tmp_path, trajectory, monkeypatch, capsys):
    """A file this user may not read: "permission denied", not "truncated". As root (who reads anything) h5py's own
    error is injected, as HDF5 words it."""
    forbidden = tmp_path / "trajectory.h5"
    shutil.copy(trajectory, forbidden)
    if os.geteuid() == 0:
        message = (f"Unable to synchronously open file (unable to open file: name = '{forbidden}', errno = 13, "
                   "error message = 'Permission denied', flags = 0, o_flags = 0)")

        def denied(*args, **kwargs):
            raise OSError(message)

        monkeypatch.setattr(h5py, "File", denied)
    else:
        forbidden.chmod(0)
    with pytest.raises(FileUnavailable, match=r"cannot read the trajectory file \(permission denied\)"):
        Trajectory(forbidden)
    capsys.readouterr()
    assert cli.run(directions_step.main, ["--trajectory", str(forbidden), "--method", "random", "--out",
                                          str(tmp_path / "d.h5")]) == 2
    one_error_line(capsys.readouterr().err, str(forbidden), "permission denied")


@pytest.mark.parametrize(("error", "cause", "path"), [
    (OSError(errno.ENOSPC, "No space left on device", "/r/a.h5"), "no space left on device", "/r/a.h5"),
    (PermissionError(errno.EACCES, "Permission denied", "/r"), "permission denied", "/r"),
    (OSError(errno.EROFS, "Read-only file system", "/r/x"), "read-only file system", "/r/x"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded", None),
    (RuntimeError("Unable to synchronously flush file (file write failed: time = Mon Dec  7 17:14:46 2026\n, "
                  "filename = '/r/t.h5.partial', file descriptor = 3, errno = 28, error message = 'No space left on "
                  "device', buf = 0x1, total write size = 2136)"), "no space left on device", "/r/t.h5.partial"),
    (OSError("Unable to synchronously create file (unable to open file: name = '/r/d.h5', errno = 30, error "
             "message = 'Read-only file system', flags = 13, o_flags = 242)"), "read-only file system", "/r/d.h5"),
    (RuntimeError("CUDA error: permission denied"), None, None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/r/in.h5"), None, "/r/in.h5"),
])
def test_write_failures_are_recognized_in_python_and_hdf5_wording(error, cause, path):
    assert failures.write_cause(error) == cause
    assert failures.named_path(error) == path
    assert failures.from_hdf5(error) == ("errno = " in str(error))


def test_video_encoder_on_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    """ffmpeg reports a full disk in its own words (injected here: its error with ENOSPC's text): one line naming the
    video, no temporary file left."""
    import ffmpeg
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradvis_steps import video as video_step

    (tmp_path / "frames").mkdir()
    fig, ax = plt.subplots(figsize=(2, 2), dpi=20)
    fig.savefig(tmp_path / "frames" / "f0.png")
    plt.close(fig)

    def full(self, *args, **kwargs):
        raise ffmpeg.Error("ffmpeg", b"", b"[out#0/mp4] Error writing trailer: No space left on device\n")

    monkeypatch.setattr(ffmpeg.nodes.OutputStream, "run", full, raising=False)
    monkeypatch.setattr(ffmpeg.nodes.Node, "run", full, raising=False)
    capsys.readouterr()
    out = tmp_path / "out" / "video.mp4"
    assert cli.run(video_step.main, ["--frames", str(tmp_path / "frames"), "--out", str(out)]) == 74
    one_error_line(capsys.readouterr().err, f"error: {out}: cannot write (no space left on device)")
    assert list(out.parent.iterdir()) == []


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from gradvis_steps.storage.failures import OutputError
    from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter
    with Trajectory(sys.argv[1]) as source:
        layout = source.layout
    writer = TrajectoryWriter(sys.argv[2], layout, [], {"mine": 1}, {})
    try:
        for i in range(200):
            writer.append(np.full(layout.size, i, np.float32), np.zeros(0), iteration=i, epoch=0, batch_loss=1.0)
            if i % 10 == 9:
                writer.save_resume_state({"step": i})
    except OutputError as error:
        print(f"caught: {error}", flush=True)
        writer.close()
""")


LANDSCAPE = textwrap.dedent("""
    import sys
    import numpy as np
    from gradvis_steps.core.grid import LandscapeResult
    from gradvis_steps.storage.failures import OutputError
    from gradvis_steps.storage.landscape import save_landscape
    axes = (np.linspace(-1, 1, 101),) * 2
    shape = (101, 101)
    result = LandscapeResult(axes=axes, loss=np.ones(shape), accuracy=np.ones(shape), filled=np.ones(shape, bool))
    try:
        save_landscape(result, sys.argv[2])
    except OutputError as error:
        print(f"caught: {error}", flush=True)
""")


@pytest.mark.parametrize("script", [WRITER, LANDSCAPE], ids=["trajectory", "landscape"])
def test_a_library_user_gets_the_error_and_no_segfault(tmp_path, trajectory, script):
    """Code of a user's own (the trajectory writer behind ``Recorder``, ``save_landscape``; no step around them) on
    a disk that fills: an ``OutputError`` naming the file it can catch, and the process ends without a segfault
    (HDF5's, before), with status 74: an output was lost."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk, 64)
        done = subprocess.run([sys.executable, "-c", script, str(trajectory), str(disk / "mine.h5")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
        assert done.returncode == failures.EXIT_WRITE_FAILED, done.stderr
        assert done.stdout.strip() == f"caught: {disk / 'mine.h5'}: cannot write (no space left on device); free " \
                                      "some space and run again", done.stdout
        assert "Traceback" not in done.stderr, done.stderr


MPI_SPECTRUM = textwrap.dedent("""
    import errno, os, sys
    import h5py
    from gradvis_steps import cli, spectrum
    from gradvis_steps.core.parallel import world
    original, calls = h5py.Group.create_dataset, [0]

    def full(self, name, *args, **kwargs):  # rank 0 writes; its second save finds the disk full
        if name == "iterations":
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, name, *args, **kwargs)

    h5py.Group.create_dataset = full
    sys.exit(cli.run(spectrum.main, sys.argv[1:]))
""")


def test_a_write_failure_on_rank_0_ends_the_mpi_job_in_one_line(tmp_path, trajectory):
    """Under ``mpiexec -n 2`` the writing rank's full disk aborts both ranks (the other waits in a collective) with
    the one line, prefixed by the rank, and exit status 74; the partial file of the first checkpoint stays."""
    from test_mpi_failures import assert_aborted, launch

    out = tmp_path / "spectra.h5"
    result, elapsed = launch(["-c", MPI_SPECTRUM, "--trajectory", str(trajectory), "--k", "2", "--m", "6",
                              "--eval-fraction", "0.05", "--no-progress", "--out", str(out)])
    log = assert_aborted(result, elapsed, f"error (rank 0 of 2): {out}.partial: cannot write (no space left on "
                                          "device)")
    assert "Traceback" not in log and result.returncode == 74, log
    assert Path(f"{out}.partial").exists() and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["spectra.h5.partial"]  # no temporary file left
