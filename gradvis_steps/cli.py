"""Shared command-line plumbing for the step modules: option parsing and clean error exits."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import yaml

from .core.memory import check_memory_budget, keep_freed_memory  # noqa: F401 (steps call cli.keep_freed_memory)
from .core.objective import HVP_MEMORY_MB

#: Errors that mean "bad input": reported in one line naming the problem, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, IndexError)


def key_value(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with the value read as YAML (numbers, lists, booleans)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def memory_budget(text: str) -> float | str:
    """``auto`` or a number of MiB >= 0 (``inf``: no limit)."""
    try:
        return check_memory_budget(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text}") from None


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def group_size(text: str) -> int | str:
    """``auto`` or an integer >= 1: starting vectors per lockstep group of SLQ."""
    return text if text == "auto" else positive_int(text)


def add_evaluation_arguments(parser: argparse.ArgumentParser, *, hessian: bool = False) -> None:
    """Options shared by the steps that evaluate a model (landscape, spectrum, eigendirections, ...); ``hessian``
    adds those of the steps that multiply one point's Hessian by many vectors."""
    parser.add_argument("--eval-fraction", type=fraction, default=0.2,
                        help="fraction of the training set used for evaluation (paper: 0.2)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation subset")
    parser.add_argument("--batch-size", type=positive_int, default=1024, help="evaluation batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if hessian:
        parser.add_argument("--hvp-memory-mb", type=memory_budget, default=HVP_MEMORY_MB,
                            help="memory (MiB) the Hessian-vector products at one point may take: the gradient graphs "
                                 "kept between products (each product is then one backward pass per batch) and the "
                                 "working memory of a block of vectors (0: recompute the graphs, one vector at a "
                                 "time; auto, the default: half the memory available when the point starts, split "
                                 "between the ranks of a node)")
        parser.add_argument("--hvp-mode", choices=("auto", "double_backprop", "forward_over_reverse"), default="auto",
                            help="how Hessian-vector products are taken; auto: double backprop for one vector at a "
                                 "time on a CPU, otherwise the faster of the two timed at the first point (recorded "
                                 "in the output's provenance)")


def add_slq_arguments(parser: argparse.ArgumentParser) -> None:
    """The stochastic Lanczos quadrature options of the spectrum and interpolation steps."""
    parser.add_argument("--k", type=positive_int, default=10, help="starting vectors (paper: 10)")
    parser.add_argument("--m", type=positive_int, default=80, help="Lanczos steps per vector (paper: 80)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starting vectors")
    parser.add_argument("--vector", choices=("gaussian", "rademacher"), default="gaussian")
    add_sigma_argument(parser)
    parser.add_argument("--group-size", type=group_size, default="auto",
                        help="starting vectors whose Lanczos chains advance in lockstep, one block Hessian product "
                             "per step (vector i is in group i // size; results depend on the size to float "
                             "tolerance only); auto: 1 on a CPU, on a GPU the k vectors split evenly over the MPI "
                             "ranks")


def add_sigma_argument(parser: argparse.ArgumentParser) -> None:
    """``--sigma``: the density width of every step that smooths eigenvalue nodes (spectrum, interpolate, frames,
    plot_spectra), one meaning everywhere."""
    parser.add_argument("--sigma", type=float, default=None,
                        help="Gaussian width of the eigenvalue density, absolute (default: the range of the "
                             "nodes shown together / 500, see gradvis_steps.core.slq.SIGMA_REL)")


def check_sigma(sigma: float | None) -> None:
    """Reject a ``--sigma`` that is not a finite number > 0 before any work starts."""
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"--sigma must be > 0, got {sigma}")


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """How the spectrum and interpolation steps spread each point's SLQ over MPI ranks (paper section 2.3)."""
    parser.add_argument("--parallel", choices=("iteration", "data", "hybrid"), default="iteration",
                        help="under mpiexec: iteration = whole lockstep groups of starting vectors per rank "
                             "(Algorithm 5, results bitwise equal to serial); data = every rank runs all chains over "
                             "a shard of the evaluation batches, one Allreduce per Hessian product (Algorithm 4); "
                             "hybrid = groups of --ranks-per-group ranks, iteration parallel over groups, data "
                             "parallel inside (data and hybrid equal serial to float tolerance)")
    parser.add_argument("--ranks-per-group", type=positive_int, default=None,
                        help="ranks per data-parallel group of --parallel hybrid (1: iteration, all ranks: data); "
                             "should divide the number of ranks, else the last group is smaller and finishes last")


def spec(name: str, options: list[tuple[str, Any]] | None) -> dict[str, Any]:
    """A ``{"name": ..., **options}`` spec (datasets, models) from ``--x NAME --x-option k=v``."""
    return {"name": name, **dict(options or [])}


def take_settings_option(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--folder-settings FILE`` (or ``--folder-settings=FILE``), and FILE: an option every step
    takes."""
    rest, path = [], None
    items = iter(argv)
    for item in items:
        if item == "--folder-settings":
            path = next(items, None)
            if path is None:
                raise ValueError("--folder-settings needs a FILE (the YAML settings of the output folder)")
        elif item.startswith("--folder-settings="):
            path = item.split("=", 1)[1]
        else:
            rest.append(item)
    return rest, path


def record_settings(path: str) -> None:
    """Load the YAML settings of the output folder (``--folder-settings FILE``) into every provenance this process
    writes."""
    from . import provenance
    from .storage.atomic import reading

    with reading(path, "settings file (--folder-settings)"):
        with open(path) as handle:
            try:
                settings = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not a readable settings file ({error})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: settings must be a YAML mapping, got {type(settings).__name__}")
    provenance.FOLDER_SETTINGS.clear()
    provenance.FOLDER_SETTINGS.update(settings)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a step's ``main``; bad input ends in one clear line on stderr and exit status 2.

    Every step also takes ``--folder-settings FILE`` (the YAML the workflow writes beside an output folder): it is taken
    out of the command line here and its content recorded in the provenance of every file the step writes.

    Under MPI with several ranks, anything that escapes ``main`` on one rank (bad input, an unexpected exception
    with its traceback, a non-zero exit) is reported with the rank and aborts every rank
    (:func:`~gradvis_steps.core.parallel.abort_on_error`): the others would otherwise wait forever in their next
    collective. A serial run behaves as described above."""
    from .core.parallel import abort_on_error

    try:
        argv, settings = take_settings_option(sys.argv[1:] if argv is None else list(argv))
        if settings is not None:
            record_settings(settings)
        status = int(main(argv) or 0)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        abort_on_error(str(message), 2)  # returns only when there is nothing to abort
        print(f"error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's usage errors; sys.exit(...) in a step
        if exit_.code not in (None, 0):
            code = exit_.code if isinstance(exit_.code, int) else 1
            abort_on_error(f"exit status {exit_.code}" if isinstance(exit_.code, int) else str(exit_.code), code)
        raise
    except KeyboardInterrupt:  # mpiexec forwards Ctrl-C to every rank itself
        raise
    except BaseException as error:
        abort_on_error(f"{type(error).__name__}: {error}", 1, error)
        raise
    if status:
        abort_on_error(f"exit status {status}", status)
    return status
