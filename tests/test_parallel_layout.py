"""The rank bookkeeping of the parallel schemes (paper section 2.3), without MPI: which ranks form a data-parallel
group (Comm.Split), which samples a shard holds (Algorithm 4), which starting vectors a rank group computes and
sends (Algorithm 5 and the hybrid), and the one-line errors naming bad settings. The real-MPI runs that compare
results with serial ones are in tests/test_steps.py (test_mpi_data_parallel_and_hybrid_equal_serial)."""

from __future__ import annotations

import numpy as np
import pytest

from gradvis_steps.core.parallel import SerialComm, distributed_values, local_rank, parallel_layout, shard_bounds


class FakeComm:
    """Rank ``rank`` of ``size``: ``split`` records its colour; ``gatherv`` records what this rank sends."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.sent: tuple[np.ndarray, np.ndarray] | None = None
        self.color: int | None = None

    def split(self, color: int, key: int) -> FakeComm:
        self.color = color
        return FakeComm(0, 2)  # stands for the group; its make-up is what MPI's Split does

    def gatherv(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        self.sent = (np.asarray(values), np.asarray(counts))
        return None


def test_modes_give_group_sizes():
    comm = FakeComm(rank=3, size=4)
    assert parallel_layout(comm, "iteration").ranks_per_group == 1 and comm.color is None
    data = parallel_layout(comm, "data")
    assert (data.ranks_per_group, data.n_groups, comm.color) == (4, 1, 0)
    hybrid = parallel_layout(comm, "hybrid", 2)
    assert (hybrid.ranks_per_group, hybrid.n_groups, comm.color) == (2, 2, 1)
    assert hybrid.record() == {"parallel": "hybrid", "ranks_per_group": 2, "rank_groups": 2}
    serial = parallel_layout(SerialComm(), "data")
    assert isinstance(serial.data, SerialComm) and serial.ranks_per_group == 1


@pytest.mark.parametrize("mode, d, message", [
    ("hybrid", None, "--parallel hybrid needs --ranks-per-group"),
    ("hybrid", 5, "--ranks-per-group 5 must be between 1 and the 4 MPI ranks"),
    ("iteration", 2, "--ranks-per-group 2 needs --parallel hybrid"),
    ("data", 2, "data parallel puts all 4 ranks in one group"),
    ("bands", None, "parallel mode 'bands' is not one of"),
])
def test_bad_settings_name_the_values(mode, d, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parallel_layout(FakeComm(0, 4), mode, d)


def test_shards_are_whole_batches_balanced_by_count():
    # 75 samples in batches of 32: 32 + 32 + 11
    assert [shard_bounds(75, 32, 3, i) for i in range(3)] == [(0, 32), (32, 64), (64, 75)]
    assert [shard_bounds(75, 32, 2, i) for i in range(2)] == [(0, 64), (64, 75)]
    assert shard_bounds(75, 32, 1, 0) == (0, 75)
    with pytest.raises(ValueError, match="75 samples in 3 batch\\(es\\) of 32, fewer than the 4 ranks"):
        shard_bounds(75, 32, 4, 0)


@pytest.mark.parametrize("rank, expected_items, sends", [(0, [0, 1, 2, 3], True), (1, [0, 1, 2, 3], False),
                                                         (2, [4, 5], True)])
def test_hybrid_groups_compute_whole_lockstep_groups_and_leaders_send(rank, expected_items, sends):
    """6 starting vectors in lockstep groups of 2, 3 ranks in rank groups of 2 ({0, 1} and {2}): the first rank
    group takes vector groups 0-1, the second group 2; every rank of a group computes, only its first rank sends."""
    comm, seen = FakeComm(rank, 3), []

    def compute(indices: np.ndarray) -> np.ndarray:
        seen.extend(indices.tolist())
        return np.ones((len(indices), 2)) * indices[:, None]

    distributed_values(comm, 6, 2, compute, group_size=2, ranks_per_group=2)
    values, counts = comm.sent
    assert seen == expected_items
    np.testing.assert_array_equal(counts, [8, 0, 4])  # (rows x width) of ranks 0, 1, 2
    assert values.size == (2 * len(expected_items) if sends else 0)


def test_local_rank_from_launcher(monkeypatch):
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK",
                 "PMIX_LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert local_rank() == 0
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("MPI_LOCALRANKID", "3")  # Hydra's, inside a SLURM allocation: the launcher's wins
    assert local_rank() == 3


def test_one_gpu_per_rank_binding(monkeypatch):
    """``auto``/``cuda`` bind ``cuda:(local rank % visible GPUs)``; an explicit index is kept (no GPU needed: CUDA's
    presence and device count are stubbed)."""
    import torch

    from gradvis_steps.backends.torch import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("MPI_LOCALRANKID", "3")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("MPI_LOCALRANKID", "4")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
