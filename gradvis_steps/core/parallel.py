"""MPI through mpi4py with a serial fallback, so every step runs the same code alone or under mpiexec.

A step asks :func:`world` for the communicator: when the process was started by an MPI launcher (the
launcher's environment variables are present) and mpi4py is installed, it wraps ``MPI.COMM_WORLD``;
otherwise a one-rank stand-in answers the same calls, so no step needs MPI to run.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

#: Variables set by mpiexec/mpirun of MPICH (Hydra), Open MPI, Intel MPI and SLURM's srun --mpi.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


class SerialComm:
    """The one-process communicator: rank 0 of 1; collectives return their input."""

    rank = 0
    size = 1

    def gatherv(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        return np.asarray(values)

    def bcast(self, obj: object) -> object:
        return obj

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

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

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        send = np.ascontiguousarray(values, dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=MPI.SUM)
        return recv

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
    """COMM_WORLD when running under an MPI launcher with several ranks, else the serial stand-in."""
    if not launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("started under an MPI launcher but mpi4py is not installed (pip install mpi4py)") from None
    comm = MPI.COMM_WORLD
    return MPIComm(comm) if comm.Get_size() > 1 else SerialComm()


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
                       compute: Callable[[np.ndarray], np.ndarray], group_size: int = 1) -> np.ndarray | None:
    """Split items 0..n-1 into contiguous chunks of whole groups of ``group_size``, one chunk per rank (Algorithm 3
    and 5); ``compute(indices)`` returns a ``(len(indices), width)`` float array; the root gets all
    ``(n_items, width)`` rows in order, others None."""
    counts, displs = group_chunk_counts(n_items, comm.size, group_size)
    mine = np.arange(displs[comm.rank], displs[comm.rank] + counts[comm.rank])
    values = np.asarray(compute(mine), dtype=np.float64).reshape(len(mine), width)
    gathered = comm.gatherv(values.reshape(-1), counts * width)
    return None if gathered is None else gathered.reshape(n_items, width)
