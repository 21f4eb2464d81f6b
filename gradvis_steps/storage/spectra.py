"""Spectrum files: raw SLQ quadratures, smoothed density and derived figures per checkpoint (HDF5).

Layout (format ``gradvis-spectra``), one group per checkpoint, plus time series at the top::

    /iterations                 (c,)     iterations of the checkpoints, ascending
    /summary/<figure>           (c,)     trace_estimate, trace_stderr, lambda_min, lambda_max, negative_mass, ...
    /checkpoints/<iteration>/nodes     (k, m)  Ritz values of each starting vector's tridiagonal (eq. 6)
    /checkpoints/<iteration>/weights   (k, m)  squared first eigenvector components (eq. 7)
    /checkpoints/<iteration>/alpha1    (k,)    v_i^T H v_i (Hutchinson)
    /checkpoints/<iteration>/grid, density    the Gaussian-smoothed density (eq. 4-8) and its grid
    /checkpoints/<iteration> attrs: iteration, summary (JSON), seconds, sigma (the density's Gaussian width;
                                       absent in older files, read as NaN)
    /checkpoints/<iteration>/blocks/<j>/...    the same datasets and attrs for block j (0, 1, ...: the spectrum of
                                       the Hessian block H[S, S] of some parameters), plus attr name; absent without
                                       blocks (older files, the default ``spectra.blocks: [whole]``)
    attrs: format, version, dim, k, m, seed, vector_kind, sigma_rule (how the widths were chosen), config,
           provenance, runs (JSON: the run, or the pair A, B of an interpolation line, see ``storage.runs``;
           absent in older files),
           skipped (JSON list of {iteration, reason}: checkpoints or points left out because they
           were not finite, the run having diverged there; absent in older files),
           blocks (JSON {block name: [parameter names]}; only where blocks were analysed)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from . import runs as run_record
from .atomic import hdf5_output, reading

FORMAT = "gradvis-spectra"
VERSION = 1
#: the settings of the spectrum step (its ``config`` attribute) that say what a spectrum is: chunks merged into one
#: file must agree on them (the others, such as device, MPI layout or --chunk, change how it is computed)
RESULT_SETTINGS = ("every", "iterations", "k", "m", "vector", "seed", "sigma", "eval_fraction", "eval_seed",
                   "batch_size", "dtype", "blocks")


@dataclass(frozen=True, eq=False)
class CheckpointSpectrum:
    """SLQ result of one parameter point."""

    iteration: int
    nodes: np.ndarray
    weights: np.ndarray
    alpha1: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    summary: dict[str, float]
    seconds: float = float("nan")
    sigma: float = float("nan")  # Gaussian width of ``density`` (NaN: not recorded, a file from before)
    #: the spectra of Hessian blocks H[S, S] at this point, by block name (empty: the whole model only)
    blocks: dict[str, CheckpointSpectrum] = field(default_factory=dict)


@dataclass(eq=False)
class Spectra:
    """A set of checkpoint spectra of one run, keyed by iteration."""

    entries: dict[int, CheckpointSpectrum]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> np.ndarray:
        return np.array(sorted(self.entries), dtype=np.int64)

    @property
    def runs(self) -> run_record.Runs | None:
        """The run(s) the spectra belong to (None: not recorded)."""
        return run_record.from_attribute(self.attrs.get(run_record.ATTRIBUTE))

    @property
    def skipped(self) -> dict[int, str]:
        """Points left out as non-finite (the run diverged there): key -> reason."""
        return {int(item["iteration"]): str(item["reason"]) for item in self.attrs.get("skipped") or []}

    def series(self, name: str, block: str | None = None) -> np.ndarray:
        """One derived figure (e.g. ``lambda_max``) over the checkpoints, in iteration order (of ``block``'s
        spectra where given; NaN where a checkpoint lacks it)."""
        entries = [self.entries[i] if block is None else self.entries[i].blocks.get(block) for i in self.iterations]
        return np.array([np.nan if e is None else e.summary.get(name, np.nan) for e in entries])


def _write_entry(group: h5py.Group, entry: CheckpointSpectrum) -> None:
    for name in ("nodes", "weights", "alpha1", "grid", "density"):
        group.create_dataset(name, data=np.asarray(getattr(entry, name), dtype=np.float64))
    group.attrs["iteration"] = int(entry.iteration)
    group.attrs["summary"] = json.dumps(entry.summary)
    group.attrs["seconds"] = float(entry.seconds)
    group.attrs["sigma"] = float(entry.sigma)
    for j, (name, block) in enumerate(entry.blocks.items()):
        _write_entry(group.create_group(f"blocks/{j}"), block)
        group[f"blocks/{j}"].attrs["name"] = name


def _read_entry(group: h5py.Group) -> CheckpointSpectrum:
    blocks = group.get("blocks", {})
    return CheckpointSpectrum(
        blocks={str(blocks[j].attrs["name"]): _read_entry(blocks[j]) for j in sorted(blocks, key=int)},
        iteration=int(group.attrs["iteration"]),
        summary=json.loads(group.attrs["summary"]),
        seconds=float(group.attrs.get("seconds", np.nan)),
        sigma=float(group.attrs.get("sigma", np.nan)),
        **{name: group[name][()] for name in ("nodes", "weights", "alpha1", "grid", "density")},
    )


def save_spectra(spectra: Spectra, path: str | os.PathLike) -> None:
    """Write all entries atomically, with the time series of every derived figure at the top."""
    with hdf5_output(path) as f:
        f.attrs.update({"format": FORMAT, "version": VERSION})
        for key, value in spectra.attrs.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value, default=str)
        iterations = spectra.iterations
        f.create_dataset("iterations", data=iterations)
        names = sorted({name for entry in spectra.entries.values() for name in entry.summary})
        for name in names:
            f.create_dataset(f"summary/{name}", data=spectra.series(name))
        for iteration in iterations:
            _write_entry(f.create_group(f"checkpoints/{iteration}"), spectra.entries[int(iteration)])


def load_spectra(path: str | os.PathLike) -> Spectra:
    with reading(path, "spectra file"), h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a gradvis spectra file (format attribute missing)")
        attrs = {key: _maybe_json(value) for key, value in f.attrs.items() if key not in ("format", "version")}
        entries = {int(name): _read_entry(group) for name, group in f.get("checkpoints", {}).items()}
    return Spectra(entries, attrs)


def merge_spectra(paths: list[str | os.PathLike]) -> Spectra:
    """Gather per-chunk files of one run into one (the attrs of the first file are kept, the skipped checkpoints of
    all files listed together). The files must belong to one run (``storage.runs``) and agree on the settings that
    say what a spectrum is (:data:`RESULT_SETTINGS`)."""
    parts = [load_spectra(p) for p in paths]
    if not parts:
        raise ValueError("no spectra files to merge")
    run_record.check_same_runs(run_record.Source("spectra chunk", os.fspath(path), part.runs)
                               for path, part in zip(paths, parts, strict=True))
    first = _result_settings(parts[0])
    for path, part in zip(paths[1:], parts[1:], strict=True):
        settings = _result_settings(part)
        if settings != first:
            keys = [key for key in RESULT_SETTINGS if settings[key] != first[key]]
            raise ValueError(
                f"spectra chunk {os.fspath(path)} was computed with "
                f"{', '.join(f'{key}={settings[key]!r}' for key in keys)}, but {os.fspath(paths[0])} with "
                f"{', '.join(f'{key}={first[key]!r}' for key in keys)}: chunks of one spectrum differ in --chunk only")
    entries: dict[int, CheckpointSpectrum] = {}
    skipped: dict[int, str] = {}
    for path, part in zip(paths, parts, strict=True):
        overlap = (set(entries) | set(skipped)) & (set(part.entries) | set(part.skipped))
        if overlap:
            raise ValueError(f"{path} repeats checkpoints {sorted(overlap)[:5]} already in another file")
        entries.update(part.entries)
        skipped.update(part.skipped)
    attrs = dict(parts[0].attrs)
    if any("skipped" in part.attrs for part in parts):
        attrs["skipped"] = [{"iteration": key, "reason": skipped[key]} for key in sorted(skipped)]
    return Spectra(entries, attrs)


def _result_settings(spectra: Spectra) -> dict[str, Any]:
    config = spectra.attrs.get("config")
    config = config if isinstance(config, dict) else {}
    return {key: config.get(key) for key in RESULT_SETTINGS}


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value
