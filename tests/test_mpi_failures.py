"""A failing MPI rank ends the whole job: under ``mpiexec -n 2``, a rank that raises (bad input or an unexpected
exception, inside a step's ``main`` or outside it) or is killed ends every rank with a non-zero status within 30 s,
its message and rank in the log, while the other rank is waiting in a collective. A serial run still exits 2 with
one ``error:`` line for bad input.

Minimal drivers exercise each way of failing in about a second; two real steps (spectrum, landscape) on a tiny
trajectory fail on rank 1 in the middle of their model evaluations (the 30th Hessian-vector product,
the 30th grid point)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradvis_steps import directions
from gradvis_steps import train as train_step

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")
DEADLINE_S = 30

#: rank ``failing`` fails as ``kind`` says while the others wait in a barrier; ``cli.run`` around it unless the
#: kind ends in ``-toplevel`` (then the excepthook that ``world()`` installs must abort).
DRIVER = """
import os, sys
from gradvis_steps import cli
from gradvis_steps.core.parallel import world
kind, failing = sys.argv[1], int(sys.argv[2])

def main(argv):
    comm = world()
    if comm.rank == failing:
        if kind.startswith("value"):
            raise ValueError("bad thing")
        if kind.startswith("runtime"):
            raise RuntimeError("unexpected thing")
        if kind == "kill":
            os.kill(os.getpid(), 9)
    comm.barrier()
    print(f"rank {comm.rank} passed the barrier", flush=True)
    return 0

if kind.endswith("-toplevel"):
    main(None)
else:
    sys.exit(cli.run(main))
"""

#: a real step that fails on rank 1 in its 30th call of ``method`` of ``cls``: one Hessian-vector product of
#: the spectrum step, one grid point's forward pass of the landscape step
STEP_DRIVER = """
import sys
from gradvis_steps import cli, landscape, spectrum
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.backends.torch.point_hvp import TorchHessianOperator
from gradvis_steps.core.parallel import world

name, error, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
module, cls, method = {"spectrum": (spectrum, TorchHessianOperator, "__call__"),
                       "landscape": (landscape, TorchObjective, "_evaluate_point")}[name]
original, calls = getattr(cls, method), [0]

def failing(self, *args, **kwargs):
    calls[0] += 1
    if world().rank == 1 and calls[0] == 30:
        raise (ValueError if error == "value" else RuntimeError)(f"bad thing in call {calls[0]} of {method}")
    return original(self, *args, **kwargs)

setattr(cls, method, failing)
sys.exit(cli.run(module.main, argv))
"""


def mpiexec() -> str:
    path = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if path is None:
        print("skipping: mpiexec not found next to the interpreter or on PATH")
        pytest.skip("mpiexec not found")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("skipping: mpi4py is not installed")
        pytest.skip("mpi4py not installed")
    return path


def launch(args: list[str], ranks: int | None = 2) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python args...`` under ``mpiexec -n ranks`` (``None``: plain, serial) in a clean environment;
    returns the result and the seconds it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    launcher = [] if ranks is None else [mpiexec(), "-n", str(ranks)]
    start = time.monotonic()
    try:
        result = subprocess.run([*launcher, sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the job hung: still running after {hung.timeout} s")
    elapsed = time.monotonic() - start
    print(f"driver {' '.join(args[2:4])}, ranks={ranks}: exit {result.returncode} after {elapsed:.1f} s")
    return result, elapsed


def assert_aborted(result: subprocess.CompletedProcess, elapsed: float, *expected: str) -> str:
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s"
    assert "passed the barrier" not in log
    for text in expected:
        assert text in log, log[-3000:]
    return log


# ---------------------------------------------------------------------------------------------- drivers
def test_user_error_on_one_rank_aborts_the_job():
    result, elapsed = launch(["-c", DRIVER, "value", "1"])
    log = assert_aborted(result, elapsed, "error (rank 1 of 2): bad thing")
    assert "Traceback" not in log  # bad input: one line, as in a serial run


@pytest.mark.parametrize("kind", ["runtime", "runtime-toplevel"])
def test_unexpected_error_on_one_rank_aborts_the_job(kind):
    result, elapsed = launch(["-c", DRIVER, kind, "1"])
    assert_aborted(result, elapsed, "Traceback", "RuntimeError: unexpected thing",
                   "error (rank 1 of 2): RuntimeError: unexpected thing")


def test_user_error_on_rank_0_aborts_the_job():
    result, elapsed = launch(["-c", DRIVER, "value", "0"])
    assert_aborted(result, elapsed, "error (rank 0 of 2): bad thing")


def test_killed_rank_ends_the_job():
    result, elapsed = launch(["-c", DRIVER, "kill", "1"])
    assert_aborted(result, elapsed)


def test_serial_user_error_exits_2_with_one_line():
    result, _ = launch(["-c", DRIVER, "value", "0"], ranks=None)
    assert result.returncode == 2
    assert result.stderr == "error: bad thing\n"


def test_serial_unexpected_error_keeps_the_plain_traceback():
    result, _ = launch(["-c", DRIVER, "runtime", "0"], ranks=None)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "error (rank" not in result.stderr and "aborting" not in result.stderr


# ------------------------------------------------------------------------------------------------ steps
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One epoch of batch 512 on the digits: 4 checkpoints; random directions around the last one."""
    folder = tmp_path_factory.mktemp("mpi_failures")
    trajectory, plane = folder / "trajectory.h5", folder / "random.h5"
    assert train_step.main(["--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", "1",
                            "--batch-size", "512", "--lr", "0.05", "--no-progress", "--out", str(trajectory)]) == 0
    assert directions.main(["--trajectory", str(trajectory), "--method", "random", "--out", str(plane)]) == 0
    return folder, trajectory, plane


def test_user_error_in_spectrum_on_one_rank_aborts_the_job(tiny):
    mpiexec()
    folder, trajectory, _ = tiny
    result, elapsed = launch(["-c", STEP_DRIVER, "spectrum", "value", "--trajectory", str(trajectory), "--k", "4",
                              "--m", "8", "--eval-fraction", "0.05", "--no-progress",
                              "--out", str(folder / "spectra.h5")])
    assert_aborted(result, elapsed, "error (rank 1 of 2): bad thing in call 30 of __call__")
    assert not (folder / "spectra.h5").exists()


def test_unexpected_error_in_landscape_on_one_rank_aborts_the_job(tiny):
    mpiexec()
    folder, trajectory, plane = tiny
    result, elapsed = launch(["-c", STEP_DRIVER, "landscape", "runtime", "--trajectory", str(trajectory),
                              "--directions", str(plane), "--resolution", "9", "--grid-batching", "per_point",
                              "--eval-fraction", "0.05", "--no-progress", "--out", str(folder / "landscape.h5")])
    assert_aborted(result, elapsed, "Traceback",
                   "error (rank 1 of 2): RuntimeError: bad thing in call 30 of _evaluate_point")
    assert not (folder / "landscape.h5").exists()


def test_error_in_data_parallel_spectrum_aborts_the_job(tiny):
    """Algorithm 4: rank 1 fails in a Hessian product while rank 0 waits in that product's Allreduce."""
    mpiexec()
    folder, trajectory, _ = tiny
    out = folder / "spectra_data.h5"
    result, elapsed = launch(["-c", STEP_DRIVER, "spectrum", "runtime", "--trajectory", str(trajectory), "--k", "4",
                              "--m", "8", "--eval-fraction", "0.05", "--batch-size", "32", "--parallel", "data",
                              "--no-progress", "--out", str(out)])
    assert_aborted(result, elapsed, "Traceback", "error (rank 1 of 2): RuntimeError: bad thing in call 30 of __call__")
    assert not out.exists()
