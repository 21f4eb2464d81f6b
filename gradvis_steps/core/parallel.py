"""MPI through mpi4py with a serial fallback, so every step runs the same code alone or under mpiexec.

A step asks :func:`world` for the communicator: when the process was started by an MPI launcher (the
launcher's environment variables are present) and mpi4py is installed, it wraps ``MPI.COMM_WORLD``;
otherwise a one-rank stand-in answers the same calls, so no step needs MPI to run.

A rank that fails must not leave the others waiting in a collective forever (on SLURM: until the time limit).
:func:`abort_on_error` prints the failing rank's message and calls ``MPI.COMM_WORLD.Abort``, which makes the
launcher end every rank with a non-zero status; :func:`cli.run <gradvis_steps.cli.run>` calls it for anything that
escapes a step's ``main``, and :func:`world` installs a ``sys.excepthook`` that does the same for code outside it.
A rank killed by a signal needs nothing here: the launcher (MPICH's Hydra) sees it die and kills the job.

Three ways to spread the Hessian work of one point over P ranks (paper section 2.3), chosen by :func:`parallel_layout`:
``iteration`` (Algorithm 5: each rank takes whole lockstep groups of SLQ starting vectors over the whole evaluation
set), ``data`` (Algorithm 4: all ranks run the same Lanczos chains, each over a shard of the evaluation batches, the
shards' partial sums combined by an Allreduce per product) and ``hybrid`` (the ranks split into groups of D with
``Comm.Split``: iteration-parallel over the groups, data-parallel inside each).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Variables set by mpiexec/mpirun of MPICH (Hydra), Open MPI, Intel MPI and SLURM's srun --mpi.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")

#: Seconds a failing rank waits after printing its message and before aborting, so that the launcher forwards the
#: message before it kills the job.
ABORT_GRACE_S = 0.5


class SerialComm:
    """The one-process communicator: rank 0 of 1; collectives return their input."""

    rank = 0
    size = 1

    def gatherv(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        return np.asarray(values)

    def bcast(self, obj: object) -> object:
        return obj

    def allreduce_sum_inplace(self, buffer: object) -> None:
        """One rank: the sum over ranks is the buffer itself."""
        return None

    def allreduce_min(self, value: int) -> int:
        return value

    def split(self, color: int, key: int) -> SerialComm:
        """One rank splits into itself."""
        return self

    def barrier(self) -> None:
        return None


class MPIComm:
    """mpi4py's COMM_WORLD behind the same small interface (numpy buffers, no pickling of arrays)."""

    def __init__(self, comm: object):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def gatherv(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """Algorithm 3's MPI_Gatherv: rank r contributes ``counts[r]`` float64 values; root gets them in order."""
        from mpi4py import MPI

        send = np.ascontiguousarray(values, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        if send.size != counts[self.rank]:
            raise ValueError(f"rank {self.rank} sends {send.size} values, counts say {counts[self.rank]}")
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        recv = np.empty(int(counts.sum()), dtype=np.float64) if self.rank == 0 else None
        self.comm.Gatherv(send, [recv, counts, displs, MPI.DOUBLE] if self.rank == 0 else None, root=0)
        return recv

    def bcast(self, obj: object) -> object:
        return self.comm.bcast(obj, root=0)

    def allreduce_sum_inplace(self, buffer: object) -> None:
        """Algorithm 4's Allreduce(SUM), in place on ``buffer``: any contiguous array mpi4py takes without a copy
        (the buffer protocol, DLPack, the CUDA array interface), e.g. a CPU torch tensor, or a CUDA one with a
        CUDA-aware MPI."""
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    def allreduce_min(self, value: int) -> int:
        """The smallest ``value`` over the ranks (a setting every rank must share, e.g. a block size)."""
        from mpi4py import MPI

        return int(self.comm.allreduce(int(value), op=MPI.MIN))

    def split(self, color: int, key: int) -> SerialComm | MPIComm:
        """``Comm.Split``: the ranks of equal ``color`` form a communicator, ordered by ``key``; a group of one rank
        is the serial stand-in (nothing to reduce)."""
        sub = self.comm.Split(int(color), int(key))
        if sub.Get_size() == 1:
            sub.Free()
            return SerialComm()
        return MPIComm(sub)

    def barrier(self) -> None:
        self.comm.Barrier()


def chunk_counts(n_points: int, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, displacements)`` of ``n_chunks`` contiguous chunks covering ``n_points``, sizes differing
    by at most one (the first ``n_points % n_chunks`` get one more), as MPI ``Gatherv`` wants them."""
    if n_chunks < 1 or n_points < 0:
        raise ValueError(f"need n_chunks >= 1 and n_points >= 0, got {n_chunks}, {n_points}")
    base, extra = divmod(n_points, n_chunks)
    counts = np.full(n_chunks, base, dtype=np.int64)
    counts[:extra] += 1
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return counts, displs


def chunk_indices(n_points: int, n_chunks: int, rank: int) -> np.ndarray:
    """Flat point indices of chunk ``rank`` (Algorithm 3: "Assign each worker part of the grid")."""
    if not 0 <= rank < n_chunks:
        raise ValueError(f"rank {rank} out of range for {n_chunks} chunks")
    counts, displs = chunk_counts(n_points, n_chunks)
    return np.arange(displs[rank], displs[rank] + counts[rank], dtype=np.int64)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process with more than one rank."""
    size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE")
    if size is not None:
        return int(size) > 1
    return any(var in os.environ for var in _LAUNCHER_VARS)


def world() -> SerialComm | MPIComm:
    """COMM_WORLD when running under an MPI launcher with several ranks, else the serial stand-in. With several
    ranks, an exception that reaches the top level of any rank aborts them all (:func:`install_abort_hook`)."""
    if not launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("started under an MPI launcher but mpi4py is not installed (pip install mpi4py)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        return SerialComm()
    install_abort_hook()
    return MPIComm(comm)


def _several_ranks() -> object | None:
    """mpi4py's live COMM_WORLD when this process is one of several MPI ranks, else None; never raises (it is
    asked while an error is being handled)."""
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI

        if MPI.Is_finalized():
            return None
        comm = MPI.COMM_WORLD
        return comm if comm.Get_size() > 1 else None
    except Exception:  # no mpi4py, or an MPI that cannot start: nothing to abort
        return None


def abort_on_error(message: str, code: int = 1, error: BaseException | None = None) -> None:
    """When this process is one of several MPI ranks: print ``error (rank r of n): message`` on stderr (after
    ``error``'s traceback when one is given), flush, and abort every rank with ``MPI.COMM_WORLD.Abort(code)``, so
    no rank waits forever in a collective for this one; does not return then. In a serial run it does nothing
    and returns, leaving the caller's serial behaviour (a one-line message, a traceback) unchanged."""
    comm = _several_ranks()
    if comm is None:
        return
    code = code if isinstance(code, int) and 0 < code < 256 else 1
    try:
        if error is not None:
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        print(f"error (rank {comm.Get_rank()} of {comm.Get_size()}): {message}", file=sys.stderr)
        print(f"aborting all {comm.Get_size()} MPI ranks (exit status {code})", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream must not stop the abort
                pass
        # the launcher forwards a rank's output through its proxy, which drops what it has not forwarded yet
        # when the abort arrives (measured with MPICH's Hydra: the message cut after its first line)
        time.sleep(ABORT_GRACE_S)
        comm.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return to the caller while the launcher tears the job down


_previous_excepthook: Callable | None = None


def _abort_excepthook(kind: type[BaseException], value: BaseException, tb: object) -> None:
    (_previous_excepthook or sys.__excepthook__)(kind, value, tb)  # the usual traceback
    if not issubclass(kind, KeyboardInterrupt):  # mpiexec forwards Ctrl-C to every rank itself
        abort_on_error(f"{kind.__name__}: {value}", 1)


def install_abort_hook() -> None:
    """Make an exception that reaches the top level of this rank (outside :func:`cli.run
    <gradvis_steps.cli.run>`) abort every rank, after the usual traceback. Idempotent."""
    global _previous_excepthook
    if sys.excepthook is not _abort_excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_excepthook


def group_chunk_counts(n_items: int, n_chunks: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`chunk_counts` of items that come in groups of ``group_size`` consecutive items (the last one may be
    shorter): each chunk takes whole groups, balanced by count of groups."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n_groups = -(-n_items // group_size)
    group_counts, group_displs = chunk_counts(n_groups, n_chunks)
    starts = np.minimum(group_displs * group_size, n_items)
    stops = np.minimum((group_displs + group_counts) * group_size, n_items)
    return (stops - starts).astype(np.int64), starts.astype(np.int64)


def distributed_values(comm: SerialComm | MPIComm, n_items: int, width: int,
                       compute: Callable[[np.ndarray], np.ndarray], group_size: int = 1,
                       ranks_per_group: int = 1) -> np.ndarray | None:
    """Split items 0..n-1 into contiguous chunks of whole groups of ``group_size``, one chunk per rank group of
    ``ranks_per_group`` consecutive ranks (Algorithm 3 and 5; with ``ranks_per_group`` > 1 the hybrid scheme: every
    rank of a group computes the group's chunk together, data-parallel); ``compute(indices)`` returns a
    ``(len(indices), width)`` float array; the root gets all ``(n_items, width)`` rows in order, others None."""
    n_groups = -(-comm.size // ranks_per_group)
    group, leader = divmod(comm.rank, ranks_per_group)
    counts, displs = group_chunk_counts(n_items, n_groups, group_size)
    mine = np.arange(displs[group], displs[group] + counts[group])
    values = np.asarray(compute(mine), dtype=np.float64).reshape(len(mine), width)
    # only each group's first rank sends its (group-wide identical) rows
    sends = np.zeros(comm.size, dtype=np.int64)
    sends[::ranks_per_group] = counts
    gathered = comm.gatherv(values.reshape(-1) if leader == 0 else values[:0].reshape(-1), sends * width)
    return None if gathered is None else gathered.reshape(n_items, width)


#: how the Hessian work of one point is spread over the ranks (paper Algorithms 4 and 5 and their hybrid)
PARALLEL_MODES = ("iteration", "data", "hybrid")


@dataclass(frozen=True)
class ParallelLayout:
    """Where this rank stands: ``world`` all ranks, ``data`` the ranks of its group (which shard the evaluation
    batches among themselves), ``ranks_per_group`` D, ``n_groups`` ceil(P / D), ``mode`` as asked."""

    world: SerialComm | MPIComm
    data: SerialComm | MPIComm
    mode: str
    ranks_per_group: int
    n_groups: int

    def record(self) -> dict[str, object]:
        """The mode and group size for an output's provenance."""
        return {"parallel": self.mode, "ranks_per_group": self.ranks_per_group, "rank_groups": self.n_groups}


def parallel_layout(comm: SerialComm | MPIComm, mode: str = "iteration",
                    ranks_per_group: int | None = None) -> ParallelLayout:
    """Split ``comm``'s P ranks for ``mode`` (Comm.Split, paper section 2.3): ``iteration`` groups of 1 rank
    (Algorithm 5), ``data`` one group of P (Algorithm 4), ``hybrid`` groups of ``ranks_per_group`` consecutive ranks.
    When D does not divide P the last group has P mod D ranks; it gets as many starting vectors as the others, so
    it finishes last: choose a D that divides P. Collective: every rank of ``comm`` must call it."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel mode {mode!r} is not one of {PARALLEL_MODES}")
    size = comm.size
    if mode == "iteration":
        if ranks_per_group not in (None, 1):
            raise ValueError(f"--ranks-per-group {ranks_per_group} needs --parallel hybrid (iteration parallel "
                             "is 1 rank per group)")
        d = 1
    elif mode == "data":
        if ranks_per_group not in (None, size):
            raise ValueError(f"--ranks-per-group {ranks_per_group} with --parallel data: data parallel puts all "
                             f"{size} ranks in one group (use --parallel hybrid for groups of {ranks_per_group})")
        d = size
    else:
        if ranks_per_group is None:
            raise ValueError("--parallel hybrid needs --ranks-per-group D (ranks per data-parallel group)")
        if not 1 <= ranks_per_group <= size:
            raise ValueError(f"--ranks-per-group {ranks_per_group} must be between 1 and the {size} MPI ranks")
        d = int(ranks_per_group)
    data = comm.split(comm.rank // d, comm.rank) if d > 1 else SerialComm()
    return ParallelLayout(world=comm, data=data, mode=mode, ranks_per_group=d, n_groups=-(-size // d))


def shard_bounds(n_samples: int, batch_size: int, n_shards: int, index: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of shard ``index`` of ``n_shards`` (Algorithm 4's data split): contiguous runs of
    whole evaluation batches of ``batch_size`` (the last batch may be shorter), balanced by number of batches, so
    every shard holds exactly the batches a serial run makes. A ValueError when there are fewer batches than
    shards (a rank would hold no data)."""
    n_batches = -(-n_samples // batch_size)
    if n_batches < n_shards:
        raise ValueError(f"the evaluation set has {n_samples} samples in {n_batches} batch(es) of {batch_size}, "
                         f"fewer than the {n_shards} ranks of a data-parallel group: lower --batch-size, raise "
                         "--eval-fraction, or use fewer ranks per group")
    counts, displs = chunk_counts(n_batches, n_shards)
    return int(displs[index] * batch_size), int(min((displs[index] + counts[index]) * batch_size, n_samples))


def local_rank() -> int:
    """This process's rank among the ranks of its node, from the launcher's environment (MPICH/Hydra, Open MPI,
    SLURM's srun, PMIx); 0 when not started by a launcher that says."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK",
                 "PMIX_LOCAL_RANK"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0
