"""Process memory: how much a Hessian operator may keep, and glibc's handling of freed blocks.

Both serve the kept-graph Hessian products (:meth:`Objective.hvp_operator`): the budget decides how many
evaluation batches keep their gradient graphs between products (each kept batch saves a forward and a backward
pass per product), and :func:`keep_freed_memory` stops every product from page-faulting its temporaries in again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os

#: ``hvp_memory_mb="auto"``: this share of the memory available when the operator is made, split between the
#: ranks of a node. Half leaves room for the products' own temporaries (about one batch graph) and the rest of
#: the process; a number pins the budget instead.
AUTO_MEMORY_SHARE = 0.5


def check_memory_budget(value: float | str) -> float | str:
    """``"auto"`` or a number of MiB >= 0 (``inf``: no limit); a ValueError naming the value otherwise."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number >= 0:
        raise ValueError(f"hvp_memory_mb must be 'auto' or a number >= 0 (0: keep no gradient graphs), got {value!r}")
    return number


def host_available_bytes() -> int:
    """Memory this process can still take without swapping or being killed: the OS's available memory (psutil:
    free plus reclaimable caches), or less where a memory cgroup (a SLURM job's ``--mem``, a container) is
    tighter."""
    import psutil

    available = int(psutil.virtual_memory().available)
    room = cgroup_room_bytes()
    return available if room is None else min(available, room)


def cgroup_room_bytes(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """Limit minus usage of the tightest memory cgroup above this process (cgroup v2 ``memory.max`` /
    ``memory.current``, v1 ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``), or None where none limits it."""
    try:
        lines = open(membership).read().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(root, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):  # the process's cgroup and every parent: the tightest counts
            folder = os.path.join(base, *parts[:depth])
            try:
                limit = open(os.path.join(folder, files[0])).read().strip()
                usage = int(open(os.path.join(folder, files[1])).read().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:  # "max" or v1's huge number: no limit
                rooms.append(max(int(limit) - usage, 0))
    return min(rooms) if rooms else None


def ranks_on_this_node() -> int:
    """How many ranks of this job share the node, from the launcher's environment (MPICH/Hydra, Open MPI, SLURM,
    PMIx); 1 outside a launcher. An automatic memory budget is split between them."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE", "PMIX_LOCAL_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    tasks = os.environ.get("SLURM_TASKS_PER_NODE", "").split("(")[0].split(",")[0]  # "4(x2),3" -> 4
    return int(tasks) if tasks.isdigit() and int(tasks) > 0 else 1


def budget_bytes(value: float | str, available: int) -> float:
    """A memory budget in bytes: ``value`` MiB, or for ``"auto"`` :data:`AUTO_MEMORY_SHARE` of ``available`` over
    the ranks on this node."""
    if value == "auto":
        return AUTO_MEMORY_SHARE * available / ranks_on_this_node()
    return float(value) * 2**20


_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap (trim threshold 1 GiB) and to serve blocks of up to 32 MiB from
    it instead of fresh ``mmap``s, for a process that evaluates a model over and over: otherwise every forward
    pass or Hessian product returns its temporaries to the OS and page-faults them in again (measured: about 10 %
    of a CPU forward pass of ResNet-20, bench/README.md). Process-wide; the torch objective calls it when made, so
    a notebook gets it as a step does. No-op (False) where the C library is not glibc."""
    global _kept
    if _kept:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _kept = bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _kept
