"""The Hessian of a model's mean loss over data, from Python: top eigenpairs, trace and spectral density.

    from gradvis_steps.api import hessian
    h = hessian(model, (x, y), "cross_entropy")
    h.eigenvalues(top=3).values, h.trace().estimate, h.density().plot()
    fc = hessian(model, (x, y), "cross_entropy", params=["fc*"])    # the block H[S, S] of those parameters
    {name: b.eigenvalues().values[0] for name, b in h.blocks().items()}   # one block per layer

``H = d^2 L / d theta^2`` at the model's current parameters ``theta`` (``dim`` of them), where
``L(theta) = (1/n) sum_i loss(f(x_i; theta), y_i)`` over all ``n`` samples. Nothing is formed densely: every
figure comes from exact Hessian-vector products of the backend objective, through the same functions as the
steps: :func:`gradvis_steps.core.lanczos.ritz_pairs` (as the eigendirections step) and
:func:`gradvis_steps.spectrum.point_spectrum` (SLQ, as the spectrum step), with the steps' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import spectrum as spectrum_step
from ..eigendirections import EigendirectionsSettings
from ..provenance import provenance
from ..spectrum import SpectrumSettings
from .inputs import Problem, problem, setting_default
from .io import CheckpointSpectrum, Spectra, plotting, save_spectra


@dataclass(frozen=True)
class Eigenpairs:
    """Ritz pairs of the Hessian: ``values`` ``(k,)`` (ordered as asked: largest first, ...), unit ``vectors``
    ``(k, dim)`` (host arrays), and true ``residuals`` ``||H v - lambda v||`` ``(k,)``, small where converged."""

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray


@dataclass(frozen=True)
class Trace:
    """Hutchinson's estimate of ``tr H = dim * mean_i v_i^T H v_i`` over the ``samples`` SLQ starting vectors, and
    its standard error (NaN for one vector)."""

    estimate: float
    stderr: float
    samples: int


@dataclass(frozen=True, eq=False)
class Density(CheckpointSpectrum):
    """An SLQ spectral density (paper Algorithm 2, eq. 4-8), exactly what the spectrum step stores for one point:
    ``nodes``, ``weights`` ``(k, m)`` (Ritz values and squared first components of each starting vector's
    tridiagonal), ``alpha1`` ``(k,)``, the Gaussian-smoothed ``density`` on ``grid`` (width ``sigma``) and the
    ``summary`` figures (trace, extremes, negative mass). ``attrs``: the file attributes :meth:`save` writes."""

    attrs: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write a spectra file (format ``gradvis-spectra``, one entry under ``iteration``), atomically, as the
        spectrum step does: ``plot_spectra`` and ``compare`` read it."""
        save_spectra(Spectra({int(self.iteration): self}, dict(self.attrs)), path)
        return Path(path)

    def plot(self, *, log_scale: bool = True, title: str | None = None) -> Any:
        """The density figure as the spectrum step draws it (log density axis by default); a matplotlib Figure."""
        draw = plotting()
        return draw.plot_density(self.grid, self.density, log_scale=log_scale, sigma=self.sigma,
                                 title=title if title is not None else draw.density_title(self, "point"))


class Hessian:
    """The Hessian of ``problem``'s loss at its parameters; figures are computed on first use and kept.

    SLQ settings (``k`` starting vectors of ``m`` Lanczos steps, ``seed``, ``vector`` kind, ``sigma`` of the
    smoothing, ``group_size`` of lockstep chains) default to the spectrum step's; one SLQ run gives both
    :meth:`density` and :meth:`trace`."""

    def __init__(self, problem: Problem, *, k: int, m: int, seed: int, vector: str, sigma: float | None,
                 group_size: int | str, key: int = 0, params: list[str] | tuple[str, ...] | None = None):
        from ..core.lanczos import lanczos_steps
        from ..core.layout import parameter_blocks, parameter_indices

        for name, value in (("k", k), ("m", m)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if vector not in ("gaussian", "rademacher"):
            raise ValueError(f"vector {vector!r} is not one of gaussian, rademacher")
        self.problem = problem
        #: the parameters whose block H[S, S] this is (layout order; None: the whole model)
        self.params: tuple[str, ...] | None = None
        if params is not None:
            if isinstance(params, str) or not params:
                raise ValueError(f"params must be a non-empty list of parameter names or patterns, got {params!r}")
            matched = {name for item in params for name in parameter_blocks(problem.objective.layout, [item])[item]}
            self.params = tuple(spec.name for spec in problem.objective.layout if spec.name in matched)
        self._dim = problem.dim if self.params is None else len(parameter_indices(problem.objective.layout,
                                                                                    self.params))
        self.k, self.seed, self.vector, self.sigma = int(k), int(seed), vector, sigma
        self._asked = {"k": k, "m": m, "seed": seed, "vector": vector, "sigma": sigma, "group_size": group_size,
                       "key": key}  # as given, for blocks()
        self.m = lanczos_steps(int(m), self._dim)  # at most dim steps: capped where the steps cap it
        self.group_size = spectrum_step.resolve_group_size(group_size, self.k, problem.objective.device_type, 1)
        self.key = int(key)
        self._hvp: dict | None = None
        self._density: Density | None = None

    @property
    def dim(self) -> int:
        """Number of parameters (of the block, with ``params``): H is dim x dim."""
        return self._dim

    def operator(self) -> Any:
        """The backend's Hessian operator at the point (of the block ``H[S, S]`` with ``params``)."""
        objective, theta = self.problem.objective, self.problem.theta
        return objective.hvp_operator(theta) if self.params is None else objective.hvp_operator(theta,
                                                                                                params=self.params)

    @property
    def hvp_record(self) -> dict | None:
        """How the Hessian-vector products were taken (``hvp_mode="auto"`` resolved), None before the first one."""
        return self._hvp

    def _settle(self, block: int) -> dict:
        """Resolve ``hvp_mode="auto"`` once, at the first product (as the steps do), for the provenance."""
        from ..core.parallel import SerialComm

        if self._hvp is None:
            self._hvp = spectrum_step.settle_hvp_mode(SerialComm(), self.problem.objective, self.problem.theta,
                                                      block, everyone=True)
        return self._hvp

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """``H v`` for a host vector ``v`` ``(dim,)``: one exact Hessian-vector product."""
        objective = self.problem.objective
        v = np.asarray(v)
        if v.shape != (self.dim,):
            raise ValueError(f"v has shape {v.shape}, the Hessian is {self.dim} x {self.dim}")
        self._settle(1)
        if self.params is not None:
            return np.asarray(objective.to_numpy(self.operator()(objective.from_numpy(v))))
        return np.asarray(objective.to_numpy(objective.hvp(self.problem.theta, objective.from_numpy(v))))

    def eigenvalues(self, top: int = 1, *, which: str = "largest", target: float = 0.0,
                    steps: int = setting_default(EigendirectionsSettings, "steps"),
                    seed: int = setting_default(EigendirectionsSettings, "seed")) -> Eigenpairs:
        """``top`` Ritz pairs from ``steps`` Lanczos steps (full reorthogonalization) from starting vector 0 of
        stream ``seed``: the ``"largest"`` eigenvalues, the most negative (``"smallest"``), or those nearest
        ``target``, with true residuals. The eigendirections step's computation, with its defaults."""
        from ..core.lanczos import ritz_pairs
        from ..core.slq import starting_vector
        from ..eigendirections import WHICH

        if which not in WHICH:
            raise ValueError(f"which {which!r} is not one of {', '.join(WHICH)}")
        if not 1 <= int(top) <= int(steps):
            raise ValueError(f"top={top} must be between 1 and steps={steps} (one Ritz pair per Lanczos step)")
        objective, theta = self.problem.objective, self.problem.theta
        self._settle(1)
        v0 = starting_vector(self.dim, int(seed), 0, like=theta)
        pairs = ritz_pairs(self.operator(), v0, int(steps), int(top), which=which,  # m capped by lanczos itself
                           target=target)
        return Eigenpairs(np.asarray(pairs.values), np.asarray(objective.to_numpy(pairs.vectors)),
                          np.asarray(pairs.residuals))

    def density(self) -> Density:
        """The SLQ density: the spectrum step's :func:`~gradvis_steps.spectrum.point_spectrum` at this point."""
        if self._density is None:
            from ..core.parallel import SerialComm

            objective, theta = self.problem.objective, self.problem.theta
            hvp = self._settle(self.group_size)
            entry = spectrum_step.point_spectrum(SerialComm(), objective, theta, self.key, k=self.k, m=self.m,
                                                 seed=self.seed, kind=self.vector, sigma=self.sigma,
                                                 group_size=self.group_size, params=self.params)
            config = {"k": self.k, "m": self.m, "seed": self.seed, "vector": self.vector, "sigma": self.sigma,
                      "batch_size": int(objective.batch_size), "dtype": self.problem.dtype,
                      "loss": self.problem.loss, "framework": self.problem.framework, "source": "gradvis_steps.api",
                      **({"params": list(self.params)} if self.params is not None else {})}
            attrs = {"dim": self.dim, "k": self.k, "m": self.m, "seed": self.seed, "vector_kind": self.vector,
                     "sigma_rule": spectrum_step.stored_sigma_rule(self.sigma), "group_size": self.group_size,
                     "config": config, "provenance": {**provenance(config, ranks=1), "hvp": hvp}, "skipped": []}
            self._density = Density(**{name: getattr(entry, name) for name in CheckpointSpectrum.__dataclass_fields__},
                                    attrs=attrs)
        return self._density

    def blocks(self, items: list[str] | tuple[str, ...] = ("per_layer",)) -> dict[str, Hessian]:
        """The Hessians of parameter blocks, by name, with this one's settings: ``per_layer`` (one per layer, the
        parameters sharing a module prefix) and/or fnmatch patterns over the parameter names, as the spectrum step's
        ``--blocks`` (:func:`~gradvis_steps.core.layout.parameter_blocks`)."""
        from ..core.layout import parameter_blocks

        if isinstance(items, str):
            items = (items,)
        return {name: Hessian(self.problem, **self._asked, params=params)
                for name, params in parameter_blocks(self.problem.objective.layout, items).items()}

    def trace(self) -> Trace:
        """Hutchinson's trace estimate from the SLQ starting vectors (the one SLQ run of :meth:`density`)."""
        summary = self.density().summary
        return Trace(float(summary["trace_estimate"]), float(summary["trace_stderr"]), self.k)


def hessian(model: Any, data: Any, loss: str | dict | None = "cross_entropy", *,
            k: int = setting_default(SpectrumSettings, "k"), m: int = setting_default(SpectrumSettings, "m"),
            seed: int = setting_default(SpectrumSettings, "seed"),
            vector: str = setting_default(SpectrumSettings, "vector"),
            sigma: float | None = setting_default(SpectrumSettings, "sigma"),
            group_size: int | str = setting_default(SpectrumSettings, "group_size"),
            batch_size: int | None = None, device: str | None = None, dtype: str | None = None,
            hvp_mode: str = setting_default(SpectrumSettings, "hvp_mode"),
            hvp_memory_mb: float | str = setting_default(SpectrumSettings, "hvp_memory_mb"), key: int = 0,
            params: list[str] | tuple[str, ...] | None = None) -> Hessian:
    """The Hessian of ``model``'s mean ``loss`` over ``data`` at the model's current parameters (the model is never
    changed): ``.eigenvalues(top)``, ``.trace()``, ``.density()``, ``.hvp(v)``.

    ``model``: a torch ``nn.Module`` or a Keras model. ``data``: ``(x, y)`` arrays or an iterable of ``(x_b, y_b)``
    batches (concatenated; batch size the first batch's), see :mod:`gradvis_steps.api.inputs`. ``loss``: a name
    (``"cross_entropy"``, ``"mse"``, ``"bce_with_logits"``) or a spec dict (a custom entry point). SLQ settings
    and ``hvp_mode`` default to the spectrum step's; ``key``: the iteration the saved density is stored under.
    ``params``: parameter names or fnmatch patterns (``["fc2.*"]``): every figure is then of the block
    ``H[S, S]`` of those parameters (``dim`` their size), as the spectrum step's ``--blocks``.
    A ValueError of one line for a bad model, data, loss or pattern."""
    return Hessian(problem(model, data, loss, batch_size=batch_size, device=device, dtype=dtype, hvp_mode=hvp_mode,
                           hvp_memory_mb=hvp_memory_mb),
                   k=k, m=m, seed=seed, vector=vector, sigma=sigma, group_size=group_size, key=key, params=params)
