"""Directions that span a landscape, from Python: random (filter-normalized), PCA of a recorded trajectory, Hessian
eigenvectors; each a :class:`DirectionSet`, the object the directions step stores, with :meth:`~DirectionSet.save`.

    from gradvis_steps.api import directions
    plane = directions.random(model, seed=0)          # 2 filter-normalized random directions
    plane = directions.pca("runs/a/trajectory.h5")    # the directions step on a trajectory file
    plane = directions.eigen(model, (x, y), "cross_entropy", count=2)
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.normalization import DEFAULT_IGNORE
from ..core.normalization import METHODS as NORMALIZATIONS
from ..directions import DirectionsSettings
from ..eigendirections import EigendirectionsSettings
from ..provenance import provenance
from .hessian import hessian
from .inputs import framework_of, setting_default
from .io import Directions, save_directions


@dataclass(frozen=True, eq=False)
class DirectionSet(Directions):
    """Directions ``vectors`` ``(count, dim)`` (float32, as stored) with their labels, normalization and, for
    eigenvectors, ``eigenvalues`` and ``residuals``: the directions step's object, plus :meth:`save`."""

    def save(self, path: str | Path) -> Path:
        """Write a directions file (format ``gradvis-directions``), atomically, as the directions step does: the
        landscape step (``--directions``) and :func:`gradvis_steps.api.landscape` read it."""
        save_directions(self, path)
        return Path(path)

    @classmethod
    def of(cls, directions: Directions) -> DirectionSet:
        """The same directions as a :class:`DirectionSet`."""
        return cls(**{f.name: getattr(directions, f.name) for f in dataclasses.fields(Directions)})


def random(model: Any, seed: int = setting_default(DirectionsSettings, "seed"), normalization: str = "filter", *,
           count: int = 2, ignore: Sequence[str] = DEFAULT_IGNORE) -> DirectionSet:
    """``count`` Gaussian random directions (stream ``seed``, vector ``i`` from ``SeedSequence([seed, i])``: the
    directions step's), normalized at the model's parameters: ``"filter"`` (Li et al., paper eq. 2: each filter
    scaled to the norm of the model's filter, the ``ignore`` kinds zeroed), ``"layer"`` or ``"none"``."""
    from ..backends import backend
    from ..core.directions import random_directions
    from ..core.normalization import normalize_directions

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    if int(count) < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    chosen = backend(framework_of(model))
    layout = chosen.parameter_layout(model)
    center = np.asarray(chosen.flat_parameters(model))
    vectors = random_directions(layout.size, int(seed), count=int(count))
    labels = [f"random direction {i + 1}" for i in range(int(count))]
    if normalization != "none":
        vectors = normalize_directions(np.asarray(vectors), center, layout, method=normalization, ignore=tuple(ignore))
        labels = [f"{label}, {normalization}-normalized" for label in labels]
    config = {"method": "random", "seed": int(seed), "count": int(count), "normalization": normalization,
              "ignore": list(ignore), "source": "gradvis_steps.api"}
    return DirectionSet(np.asarray(vectors, dtype=np.float32), "random", tuple(labels), normalization, None,
                        config=config, provenance=provenance(config))


def pca(trajectory: str | Path, count: int = 2, *, center_iteration: int | None = None,
        normalization: str = "auto", out: str | Path | None = None) -> DirectionSet:
    """The first ``count`` principal directions of a recorded trajectory file (streamed PCA of the checkpoints
    minus the centre, paper section 3.3): the directions step's ``run`` itself, writing ``out`` (None: a
    temporary file, removed)."""
    from ..directions import run

    with tempfile.TemporaryDirectory(prefix="gradvis-api-") as folder:
        target = Path(out) if out is not None else Path(folder) / "pca.h5"
        found = run(DirectionsSettings(trajectory=str(trajectory), method="pca", out=str(target), count=int(count),
                                       center_iteration=center_iteration, normalization=normalization))
    return DirectionSet.of(found)


def eigen(model: Any, data: Any, loss: str | dict | None = "cross_entropy", count: int = 2, *,
          which: str = setting_default(EigendirectionsSettings, "which"),
          target: float = setting_default(EigendirectionsSettings, "target"),
          steps: int = setting_default(EigendirectionsSettings, "steps"),
          seed: int = setting_default(EigendirectionsSettings, "seed"), **evaluation: Any) -> DirectionSet:
    """``count`` Hessian eigenvectors of ``model``'s loss over ``data`` at its parameters (``which``: largest,
    smallest or nearest ``target``; ``steps`` Lanczos steps): the eigendirections step's computation, as a
    direction set (not normalized: an eigenvector stays one). ``evaluation``: ``batch_size``, ``device``,
    ``dtype``, ``hvp_mode`` as for :func:`~gradvis_steps.api.hessian`."""
    h = hessian(model, data, loss, **evaluation)
    pairs = h.eigenvalues(int(count), which=which, target=target, steps=steps, seed=seed)
    labels = [f"eigenvector {i + 1} (λ={value:.3g})" for i, value in enumerate(pairs.values)]
    config = {"method": "hessian", "count": int(count), "which": which, "target": target, "steps": steps,
              "seed": seed, "loss": h.problem.loss, "source": "gradvis_steps.api"}
    return DirectionSet(pairs.vectors.astype(np.float32), "eigenvector", tuple(labels), "none", None,
                        eigenvalues=pairs.values, residuals=pairs.residuals, config=config,
                        provenance={**provenance(config), "hvp": h.hvp_record})
