"""The trajectory store: one HDF5 file per training run, one row per checkpoint.

Layout of the file (readable with plain h5py, no gradvis needed)::

    /params       (n, N) float32   flat trainable parameters, chunked one row per chunk
    /buffers      (n, B) float64   flat buffers (batch-norm running statistics)
    /iteration    (n,)   int64     optimizer steps taken before this checkpoint (0 = initial point)
    /epoch        (n,)   int64     epoch the checkpoint was taken in
    /batch_loss   (n,)   float64   mini-batch loss evaluated at this checkpoint's parameters (NaN where not known)
    /batch_loss_known (n,) bool    whether that loss was recorded: False for the final point of a run (no step is
                                   taken from it) and for checkpoints recorded or imported without one. Files written
                                   before it existed lack it: there every row but the last counts as known.
    attrs: format, version, layout (JSON list of {name, shape, kind, offset, filter_axis}),
           buffer_layout (JSON), config (JSON), provenance (JSON), summary (JSON), diverged_at (JSON
           {iteration, epoch, reason, batch_loss}: only in a run kept with ``--on-divergence keep``, whose
           checkpoints end at the last finite point before that iteration)

The run's identity (``Trajectory.run``: a digest of the config and of checkpoint 0, see ``storage.runs``) is
computed on read, so every trajectory has one and training writes nothing for it.

Rows are chunked individually, so reading one checkpoint reads only that row. A run is written to
``<path>.partial`` and renamed when complete; the partial file also keeps a ``/resume`` group (model,
optimizer state and counters at the last epoch boundary) so an interrupted run can continue.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.layout import ParameterLayout
from . import runs
from .atomic import FileUnavailable, abandon, reading, unless_unreadable
from .failures import OutputError, hdf5_dealloc_failures, is_locked, writing

FORMAT = "gradvis-trajectory"
VERSION = 1
_SERIES = ("iteration", "epoch", "batch_loss", "batch_loss_known")
_SERIES_DTYPES = {"iteration": "i8", "epoch": "i8", "batch_loss": "f8", "batch_loss_known": "?"}


def partial_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.partial")


class TrajectoryWriter:
    """Append checkpoints to ``<path>.partial``; ``commit()`` renames it to ``path`` atomically."""

    def __init__(self, path: str | os.PathLike, layout: ParameterLayout, buffer_layout: list[dict],
                 config: dict[str, Any], provenance: dict[str, Any], *, resume: bool = False):
        self.path = Path(path)
        self.partial = partial_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        n_buffers = sum(int(np.prod(b["shape"], dtype=np.int64)) for b in buffer_layout)
        self.failed = False  # a write failed: HDF5 must not touch the file again (closing it can crash)
        if resume and self.partial.exists():
            self.file = None
            with unless_unreadable(self.partial, "partial trajectory file (--resume)"):
                with reading(self.partial, "partial trajectory file (--resume)"), self._writing():
                    file = h5py.File(self.partial, "r+")
                    try:
                        stored = file.attrs.get("config")
                    except BaseException:
                        file.close()
                        raise
                    self.file = file
            if self.file is not None:
                if stored != json.dumps(config, sort_keys=True):
                    self.file.close()
                    raise ValueError(
                        f"cannot resume {self.partial}: it was written by a different configuration; "
                        "delete it or run without --resume"
                    )
                return
        with self._writing():
            self.file = _create(self.partial)
            self.file.attrs.update({
                "format": FORMAT,
                "version": VERSION,
                "layout": layout.to_json(),
                "buffer_layout": json.dumps(buffer_layout),
                "config": json.dumps(config, sort_keys=True),
                "provenance": json.dumps(provenance, sort_keys=True, default=str),
            })
            self.file.create_dataset("params", (0, layout.size), maxshape=(None, layout.size), dtype="f4",
                                     chunks=(1, layout.size))
            # maxshape None on axis 1 lets a model without buffers (n_buffers = 0) keep a (1, 1) chunk.
            self.file.create_dataset("buffers", (0, n_buffers), maxshape=(None, None), dtype="f8",
                                     chunks=(1, max(n_buffers, 1)))
            for name in _SERIES:
                self.file.create_dataset(name, (0,), maxshape=(None,), dtype=_SERIES_DTYPES[name], chunks=(1024,))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: a full disk or a forbidden folder raises an ``OutputError`` naming the trajectory;
        when HDF5 saw the failure the file is abandoned (never closed: HDF5 can crash the interpreter closing it)."""
        if self.failed:
            raise RuntimeError(f"{self.partial}: an earlier write failed; the file can no longer be written")
        try:
            with writing(self.path), hdf5_dealloc_failures() as self._lost:
                yield
                self._check()
        except OutputError as error:
            if error.abandon:
                self.failed = True
                abandon(getattr(self, "file", None))
            raise

    def _check(self) -> None:
        """Raise the first failed write h5py reported while freeing an object (see ``_writing``): before a flush or
        a close, which could crash after it."""
        if self._lost:
            raise self._lost[0]

    def __len__(self) -> int:
        return int(self.file["params"].shape[0])

    def append(self, params: np.ndarray, buffers: np.ndarray, *, iteration: int, epoch: int,
               batch_loss: float | None) -> None:
        """Add one checkpoint row; ``batch_loss`` None: not known (stored as NaN, and not taken for a divergence)."""
        with self._writing():
            self._append(params, buffers, iteration, epoch, batch_loss)

    def _append(self, params: np.ndarray, buffers: np.ndarray, iteration: int, epoch: int,
                batch_loss: float | None) -> None:
        n = len(self)
        self._require_series()
        for name in ("params", "buffers", *_SERIES):
            self.file[name].resize(n + 1, axis=0)
        self.file["params"][n] = params
        self.file["buffers"][n] = buffers
        self.file["iteration"][n] = iteration
        self.file["epoch"][n] = epoch
        self.file["batch_loss"][n] = np.nan if batch_loss is None else batch_loss
        self.file["batch_loss_known"][n] = batch_loss is not None

    def _require_series(self) -> None:
        """A partial file of an older version (resumed) lacks ``batch_loss_known``: add it, every row known."""
        if "batch_loss_known" not in self.file:
            n = len(self)
            self.file.create_dataset("batch_loss_known", data=np.ones(n, dtype=bool), maxshape=(None,),
                                     chunks=(1024,))

    def truncate(self, n: int) -> None:
        """Drop checkpoints after the first ``n`` (used when resuming from an epoch boundary)."""
        with self._writing():
            self._require_series()
            for name in ("params", "buffers", *_SERIES):
                self.file[name].resize(n, axis=0)

    def save_resume_state(self, state: dict[str, np.ndarray | int | float]) -> None:
        """Replace the ``/resume`` group with ``state`` and flush, so a crash after this loses nothing."""
        with self._writing():
            if "resume" in self.file:
                del self.file["resume"]
            group = self.file.create_group("resume")
            for key, value in state.items():
                group.create_dataset(key, data=value)
            del group
            self._check()
            self.file.flush()

    def resume_state(self) -> dict[str, np.ndarray] | None:
        if "resume" not in self.file:
            return None
        return {key: self.file["resume"][key][()] for key in self.file["resume"]}

    def commit(self, summary: dict[str, Any] | None = None) -> Path:
        """Finish the run: drop resume state, store a summary (its ``diverged_at`` also as an attribute of its own),
        rename ``.partial`` onto the target."""
        with self._writing():
            if "resume" in self.file:
                del self.file["resume"]
            if summary is not None:
                self.file.attrs["summary"] = json.dumps(summary, sort_keys=True, default=str)
                if summary.get("diverged_at") is not None:
                    self.file.attrs["diverged_at"] = json.dumps(summary["diverged_at"], sort_keys=True)
            self._check()
            self.file.close()
            os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without committing (the partial file stays for ``--resume``); after a failed write, nothing (the
        file is abandoned: see ``storage.atomic.abandon``)."""
        if not self.failed and self.file.id.valid:
            with self._writing():
                self.file.close()


def _create(path: Path) -> h5py.File:
    """A new HDF5 file at ``path``; one that another process holds open says so in one line."""
    try:
        return h5py.File(path, "w")
    except OSError as error:
        if is_locked(error):
            raise FileUnavailable(f"{path} is locked by another process (is another run writing this trajectory?)"
                                  ) from None
        raise


class Trajectory:
    """Read-only access to a trajectory file; loads one checkpoint at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with reading(self.path, "trajectory file"):
            self.file = h5py.File(self.path, "r")
            if self.file.attrs.get("format") != FORMAT:
                self.file.close()
                raise ValueError(f"{self.path} is not a gradvis trajectory (format attribute missing)")
            self.layout = ParameterLayout.from_json(self.file.attrs["layout"])
            self.buffer_layout = json.loads(self.file.attrs["buffer_layout"])
            self.config = json.loads(self.file.attrs["config"])
            self.provenance = json.loads(self.file.attrs["provenance"])
            diverged = self.file.attrs.get("diverged_at")
            #: where training diverged (a run kept with --on-divergence keep), else None
            self.diverged_at = None if diverged is None else json.loads(diverged)
            self.iterations = self.file["iteration"][()]
            self.epochs = self.file["epoch"][()]
            self.batch_loss = self.file["batch_loss"][()]
            if "batch_loss_known" in self.file:
                #: whether each checkpoint's batch loss was recorded (NaN where not: no divergence)
                self.batch_loss_known = self.file["batch_loss_known"][()].astype(bool)
            else:  # written before the mask: every row's loss known but the last one's (no step from it)
                self.batch_loss_known = np.arange(len(self.batch_loss)) < len(self.batch_loss) - 1

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __len__(self) -> int:
        return int(self.file["params"].shape[0])

    @property
    def dim(self) -> int:
        return self.layout.size

    @cached_property
    def run(self) -> dict[str, str]:
        """This run's identity ``{"digest", "label"}`` (``storage.runs.identity``): its config and checkpoint 0,
        which appending or resuming never changes."""
        if len(self) == 0:
            return runs.identity(self.config)
        return runs.identity(self.config, self.params(0), self.buffers(0))

    def params(self, index: int) -> np.ndarray:
        """Flat parameters of checkpoint ``index`` (negative indices count from the end)."""
        with reading(self.path, "trajectory file"):
            return self.file["params"][self._index(index)]

    def buffers(self, index: int) -> np.ndarray:
        with reading(self.path, "trajectory file"):
            return self.file["buffers"][self._index(index)]

    def index_of_iteration(self, iteration: int) -> int:
        """Row of the checkpoint taken after ``iteration`` steps; error lists what exists."""
        rows = np.flatnonzero(self.iterations == iteration)
        if len(rows) == 0:
            cut = (f"; training diverged at iteration {self.diverged_at['iteration']} and was kept up to there"
                   if self.diverged_at else "")
            raise ValueError(
                f"{self.path} has no checkpoint at iteration {iteration}; it has iterations "
                f"{self.iterations.min()}..{self.iterations.max()} ({len(self)} checkpoints){cut}"
            )
        return int(rows[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.params(i)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"checkpoint {index} out of range for {self.path} with {n} checkpoints")
        return index % n
