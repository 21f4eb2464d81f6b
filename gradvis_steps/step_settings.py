"""Settings dataclasses shared by the steps, and the glue between a step's parser and its settings.

Every step is a frozen settings dataclass, ``run(settings)`` doing the work, and a thin ``main(argv)`` that parses
argv into the settings (:func:`parse`) and calls ``run``. The dataclass is the one place a step's defaults live:
its parser takes them from it (:func:`use_defaults`), and where the workflow config knows the same setting the
dataclass reads the schema's default (:func:`~gradvis_steps.defaults.schema_default`). Field names are the
argparse ``dest`` names, so the ``config`` a step records is the same whether it ran from a command line or a call.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from .defaults import schema_default

S = TypeVar("S")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """How a step evaluates a model: the evaluation subset, its batches, the device and precision."""

    eval_fraction: float = schema_default("evaluation.fraction")
    eval_seed: int = schema_default("evaluation.seed")
    batch_size: int = schema_default("evaluation.batch_size")
    device: str = schema_default("device")
    dtype: str = schema_default("evaluation.dtype")
    no_progress: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class HessianSettings(EvaluationSettings):
    """How a step that multiplies one point's Hessian by many vectors takes the products."""

    hvp_memory_mb: float | str = schema_default("evaluation.hvp_memory_mb")
    hvp_mode: str = schema_default("evaluation.hvp_mode")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLQSettings(HessianSettings):
    """Stochastic Lanczos quadrature (Algorithm 2) of the spectrum and interpolation steps, and how MPI ranks share
    it (Algorithms 4 and 5)."""

    k: int = schema_default("spectra.k")
    m: int = schema_default("spectra.m")
    seed: int = schema_default("spectra.seed")
    vector: str = schema_default("spectra.vector")
    sigma: float | None = schema_default("spectra.sigma")
    group_size: int | str = schema_default("spectra.group_size")
    parallel: str = schema_default("spectra.parallel")
    ranks_per_group: int | None = schema_default("spectra.ranks_per_group")


def use_defaults(parser: argparse.ArgumentParser, settings: type) -> argparse.ArgumentParser:
    """Give ``parser``'s options the defaults of the ``settings`` dataclass's fields of the same name (also shown by
    ``--help``); returns the parser."""
    parser.set_defaults(**{field.name: _plain(field.default) for field in dataclasses.fields(settings)
                           if field.default is not dataclasses.MISSING})
    return parser


def parse(parser: argparse.ArgumentParser, settings: type[S], argv: Sequence[str] | None) -> S:
    """Parse ``argv`` (argparse's messages and exit status 2 on bad options) into a ``settings`` instance."""
    return from_namespace(settings, parser.parse_args(argv))


def from_namespace(settings: type[S], args: argparse.Namespace) -> S:
    """A ``settings`` instance from parsed arguments, lists made tuples; the fields must be the arguments' names."""
    names = {field.name for field in dataclasses.fields(settings)}
    if names != set(vars(args)):  # a parser and its settings out of step: a programming error
        raise TypeError(f"{settings.__name__} fields and parser options differ: {sorted(names ^ set(vars(args)))}")
    return settings(**{key: _frozen(value) for key, value in vars(args).items()})


def config_of(settings: Any, *leave_out: str) -> dict[str, Any]:
    """The settings as the ``config`` a step records (and hashes): plain values, tuples as lists, paths as strings,
    the fields named in ``leave_out`` left out."""
    return {field.name: _plain(getattr(settings, field.name)) for field in dataclasses.fields(settings)
            if field.name not in leave_out}


def check_positive(settings: Any, *names: str) -> None:
    """A ValueError naming the first of the fields ``names`` that is not an integer >= 1 (a settings object built in
    Python skips the parser's checks)."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """A ValueError unless ``value`` is in (0, 1]."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
