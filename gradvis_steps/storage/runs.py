"""Which training run a result belongs to: recorded in every output, checked wherever a step combines files.

A run is named by its *identity*: a digest of the trajectory's stored run config (canonical JSON) and of its
checkpoint 0 (the initial parameters and buffers, as stored), with a label read from the config
(``digits/lenet seed 0 lr 0.05 bs 128 epochs 2``). Checkpoint 0 is written first and never rewritten, so a run
keeps its identity while training appends to it or resumes; two seeds, two learning rates, or one config started
from other initial weights are different runs. Two trainings of one config from one initial point count as one
run (on a GPU their later checkpoints may still differ in rounding).

Every file derived from a trajectory holds the attribute ``runs``: the JSON list of the identities it belongs to,
``[{"digest": ..., "label": ...}]``; one for a result of one run, two (A, B) for a result of the interpolation
between two runs (the plane's directions and landscape, the line and its spectra), A first: the run whose final
point the plane is centred on. No paths and no hosts: two copies of one run, a local and a SLURM one, record the
same bytes.

A step that combines files checks them before any work: :func:`check_trajectory` (a derived file against the
trajectory it is used with: its first run must be the trajectory's) and :func:`check_same_runs` (derived files
among themselves: the same runs in the same order). A mismatch is a :class:`RunMismatch`, a ``ValueError`` the
steps' command line reports in one line (exit status 2) naming both files and both runs.

Files written before runs were recorded have no ``runs`` attribute. They are accepted with a warning naming the
file, so results computed earlier stay usable; recompute them to have them checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..losses import DEFAULT_LOSS

#: the attribute (HDF5) or key (JSON) that holds a result's runs
ATTRIBUTE = "runs"
DIGEST_CHARS = 16  # stored; messages show the first SHOWN_CHARS
SHOWN_CHARS = 8

Runs = list[dict[str, str]]

_warned: set[str] = set()  # files already warned about in this process (a step may read one file twice)


class RunMismatch(ValueError):
    """Inputs of one step that belong to different runs (one line naming both files and both runs)."""


def identity(config: dict[str, Any], params0: np.ndarray | None = None,
             buffers0: np.ndarray | None = None) -> dict[str, str]:
    """The identity of the run with this stored run ``config`` and checkpoint 0 (``params0``, ``buffers0``)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode())
    for row in (params0, buffers0):
        if row is not None:
            array = np.ascontiguousarray(row)
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)  # the same bytes on any machine
            digest.update(array.dtype.str.encode())
            digest.update(array.tobytes())
    return {"digest": digest.hexdigest()[:DIGEST_CHARS], "label": label(config)}


def label(config: dict[str, Any]) -> str:
    """A readable name of a run from its config: dataset/model, seed, learning rate, batch size, epochs, and the loss
    where it is not cross-entropy."""
    dataset, model = (config.get(key) or {} for key in ("dataset", "model"))
    train = config.get("train") or {}
    text = f"{dataset.get('name', '?')}/{model.get('name', '?')}"
    for key, short in (("seed", "seed"), ("lr", "lr"), ("batch_size", "bs"), ("epochs", "epochs")):
        if key in train:
            value = train[key]
            text += f" {short} {value:g}" if isinstance(value, float) else f" {short} {value}"
    loss = (config.get("loss") or {}).get("name", DEFAULT_LOSS)
    if loss != DEFAULT_LOSS:
        text += f" loss {loss}"
    framework = config.get("framework", "torch")
    return text if framework == "torch" else f"{text} ({framework})"


def digests(runs: Runs) -> tuple[str, ...]:
    return tuple(str(run["digest"]) for run in runs)


def describe(runs: Runs) -> str:
    """``run <label> (<digest>)``, or ``runs <A> (<digest>) → <B> (<digest>)`` for a pair."""
    names = " → ".join(f"{run.get('label', '?')} ({str(run['digest'])[:SHOWN_CHARS]})" for run in runs)
    return f"{'run' if len(runs) == 1 else 'runs'} {names}"


def to_attribute(runs: Runs) -> str:
    """The JSON stored in a file's ``runs`` attribute."""
    return json.dumps([{"digest": str(run["digest"]), "label": str(run.get("label", ""))} for run in runs],
                      sort_keys=True)


def from_attribute(value: Any) -> Runs | None:
    """Read a ``runs`` attribute (JSON text, or already decoded); None when the file records none."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(run, dict) and "digest" in run for run in value):
        raise ValueError(f"not a list of runs: {value!r:.200}")
    return [dict(run) for run in value]


def in_hdf5(path: str | os.PathLike) -> Runs | None:
    """The runs an HDF5 file records (None: not HDF5, unreadable, or no ``runs`` attribute)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return from_attribute(f.attrs.get(ATTRIBUTE))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Source:
    """One input of a step: what it is (``"directions file"``), its path as given, and the runs it records."""

    kind: str
    path: str
    runs: Runs | None

    @classmethod
    def of_trajectory(cls, trajectory: Any, path: str | os.PathLike | None = None) -> Source:
        """A trajectory (``storage.trajectory.Trajectory``) as an input: one run, its own."""
        return cls("trajectory", os.fspath(trajectory.path if path is None else path), [trajectory.run])

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def warn_unrecorded(source: Source) -> None:
    """Say once per file that ``source`` records no run and is therefore not checked."""
    if source.path in _warned:
        return
    _warned.add(source.path)
    print(f"warning: {source} records no run (written before gradvis recorded runs): not checked against the other "
          "inputs; recompute it to have it checked", file=sys.stderr)


def _mismatch(source: Source, reference: Source, hint: str = "") -> RunMismatch:
    assert source.runs is not None and reference.runs is not None
    same_labels = [run.get("label") for run in source.runs] == [run.get("label") for run in reference.runs]
    note = " (the same label: the configs differ elsewhere, or the initial parameters do)" if same_labels else ""
    verb = "is" if reference.kind == "trajectory" else "belongs to"
    return RunMismatch(f"{source} belongs to {describe(source.runs)}, but {reference} {verb} "
                       f"{describe(reference.runs)}{note}{hint}")


def check_trajectory(trajectory: Source, derived: Source, *, warn: bool = True, hint: str = "") -> None:
    """``derived`` (directions, a landscape, ...) is used with ``trajectory``: its first run must be the
    trajectory's (a pair's first run is the one the plane is centred on). Unrecorded: a warning (if ``warn``)."""
    if derived.runs is None:
        if warn:
            warn_unrecorded(derived)
        return
    assert trajectory.runs is not None
    if not derived.runs or digests(derived.runs)[0] != digests(trajectory.runs)[0]:
        if len(derived.runs) > 1:
            hint = f"; a result of two runs goes with the first run's trajectory{hint}"
        raise _mismatch(derived, trajectory, hint)


def check_same_runs(sources: Iterable[Source], *, warn: bool = True) -> Runs | None:
    """Derived files used together must record the same runs, in the same order; returns those runs (None if no
    file records any). Files without a record are skipped with a warning (if ``warn``)."""
    reference: Source | None = None
    for source in sources:
        if source.runs is None:
            if warn:
                warn_unrecorded(source)
        elif reference is None:
            reference = source
        elif digests(source.runs) != digests(reference.runs):
            raise _mismatch(source, reference)
    return None if reference is None else reference.runs


def differ(a: Runs | None, b: Runs | None) -> bool:
    """Both recorded and different (a file without a record differs from nothing)."""
    return a is not None and b is not None and digests(a) != digests(b)
