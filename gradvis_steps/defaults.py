"""One source of defaults: the ``default:`` values of the workflow's config schema, read by every step.

A setting that both the workflow config and a step's command line know (``spectra.m`` and ``spectrum --m``) has its
default written once, in ``workflow/schemas/config.schema.yaml``; the steps' settings dataclasses (and through them
their argparse defaults) take it from there with :func:`schema_default`. The values are the laptop-sized ones the
default config runs with (``m`` 30, ``k`` 4, ``resolution`` 25); the paper's (80, 10, 50) are named in each help text.

The train step's optimizer and schedule defaults are :class:`~gradvis_steps.core.training.TrainSettings`' (one
definition, the paper's SGD: batch 256, lr 0.01, one epoch); the schema's scalar ``train`` keys (``warmup``, ``eps``,
...) equal them. The schema's ``train`` lists (``lr: [0.05]``, ``batch_size: [64]``, ``epochs: [6]``, ``seed: [0, 1]``)
are not option defaults but the default config's grid of runs, sized for a laptop, and stay as they are.
:data:`CONFIG_KEYS` maps each step option to its config key; ``tests/test_defaults.py`` checks every step against it.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import yaml

from .workflow_files import workflow_root

SCHEMA = ("workflow", "schemas", "config.schema.yaml")

_EVALUATION = {"eval_fraction": "evaluation.fraction", "eval_seed": "evaluation.seed",
               "batch_size": "evaluation.batch_size", "dtype": "evaluation.dtype", "device": "device"}
_HESSIAN = {"hvp_memory_mb": "evaluation.hvp_memory_mb", "hvp_mode": "evaluation.hvp_mode"}
_SLQ = {"k": "spectra.k", "m": "spectra.m", "seed": "spectra.seed", "vector": "spectra.vector",
        "sigma": "spectra.sigma", "group_size": "spectra.group_size"}
_PARALLEL = {"parallel": "spectra.parallel", "ranks_per_group": "spectra.ranks_per_group"}
_EIGEN = {"which": "directions.hessian.which", "target": "directions.hessian.target",
          "count": "directions.hessian.count", "steps": "directions.hessian.steps"}

#: step module -> {option (argparse dest, settings field): config key}. Options without a key here have no config
#: counterpart (or one of another meaning: ``moving_frame --every`` >= 1 is not ``frames.moving_every``, whose 0
#: means "no moving frame"; ``directions --count`` is the landscape's plane, not ``directions.hessian.count``).
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "spectrum": {"every": "spectra.every", "blocks": "spectra.blocks", **_SLQ, **_PARALLEL, **_EVALUATION, **_HESSIAN},
    "landscape": {"resolution": "landscape.resolution", "border": "landscape.border",
                  "grid_batching": "landscape.grid_batching", **_EVALUATION},
    "directions": {"seed": "directions.seed", "normalization": "directions.normalization",
                   "custom": "directions.custom_file", "custom_key": "directions.custom_key"},
    "eigendirections": {**_EIGEN, **_EVALUATION, **_HESSIAN},
    "moving_frame": {**_EIGEN, "pick": "directions.hessian.pick", "resolution": "landscape.resolution",
                     "border": "landscape.border", "grid_batching": "landscape.grid_batching", **_EVALUATION,
                     **_HESSIAN},
    "interpolate": {"points": "interpolation.points", **_SLQ, **_PARALLEL, **_EVALUATION, **_HESSIAN},
    "frames": {"log_scale": "frames.log_scale", "dpi": "frames.dpi", "sigma": "spectra.sigma"},
    "plot_spectra": {"log_scale": "frames.log_scale", "sigma": "spectra.sigma"},
    "video": {"fps": "frames.fps"},
    "compare": {"sigma": "spectra.sigma"},
    "train": {"warmup": "train.warmup", "step_every": "train.step_every", "step_gamma": "train.step_gamma",
              "min_lr": "train.min_lr", "beta1": "train.beta1", "beta2": "train.beta2", "eps": "train.eps",
              "checkpoint_every": "train.checkpoint_every", "on_divergence": "train.on_divergence", "device": "device"},
}


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The workflow's config schema (parsed once per process)."""
    path = workflow_root().joinpath(*SCHEMA)
    with open(path) as handle:
        return yaml.safe_load(handle)


def schema_default(key: str) -> Any:
    """The schema's default of the config key ``key`` (dotted: ``spectra.m``), a fresh copy; KeyError naming the key
    when the schema has no such key or no default for it."""
    node: dict[str, Any] = schema()
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"the config schema has no key {key!r}") from None
    if "default" not in node:
        raise KeyError(f"the config schema gives no default for {key!r}")
    return copy.deepcopy(node["default"])
