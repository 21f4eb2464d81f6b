"""Shared command-line plumbing for the step modules: option parsing and clean error exits."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .core.memory import check_memory_budget, keep_freed_memory  # noqa: F401 (steps call cli.keep_freed_memory)
from .step_settings import EvaluationSettings, HessianSettings, SLQSettings
from .storage.failures import EXIT_WRITE_FAILED, OutputError, hard_exit

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
    parser.add_argument("--eval-fraction", type=fraction, default=EvaluationSettings.eval_fraction,
                        help="fraction of the training set used for evaluation (paper: 0.2)")
    parser.add_argument("--eval-seed", type=int, default=EvaluationSettings.eval_seed,
                        help="seed of the evaluation subset")
    parser.add_argument("--batch-size", type=positive_int, default=EvaluationSettings.batch_size,
                        help="evaluation batch size")
    parser.add_argument("--device", default=EvaluationSettings.device, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=EvaluationSettings.dtype, choices=("float32", "float64"))
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if hessian:
        parser.add_argument("--hvp-memory-mb", type=memory_budget,
                            default=HessianSettings.hvp_memory_mb,
                            help="memory (MiB) the Hessian-vector products at one point may take: the gradient graphs "
                                 "kept between products (each product is then one backward pass per batch) and the "
                                 "working memory of a block of vectors (0: recompute the graphs, one vector at a "
                                 "time; auto, the default: half the memory available when the point starts, split "
                                 "between the ranks of a node)")
        parser.add_argument("--hvp-mode", choices=("auto", "double_backprop", "forward_over_reverse"),
                            default=HessianSettings.hvp_mode,
                            help="how Hessian-vector products are taken; auto: double backprop for one vector at a "
                                 "time on a CPU, otherwise the faster of the two timed at the first point (recorded "
                                 "in the output's provenance)")


def add_slq_arguments(parser: argparse.ArgumentParser) -> None:
    """The stochastic Lanczos quadrature options of the spectrum and interpolation steps."""
    parser.add_argument("--k", type=positive_int, default=SLQSettings.k, help="starting vectors (paper: 10)")
    parser.add_argument("--m", type=positive_int, default=SLQSettings.m, help="Lanczos steps per vector (paper: 80)")
    parser.add_argument("--seed", type=int, default=SLQSettings.seed, help="seed of the starting vectors")
    parser.add_argument("--vector", choices=("gaussian", "rademacher"), default=SLQSettings.vector)
    add_sigma_argument(parser)
    parser.add_argument("--group-size", type=group_size, default=SLQSettings.group_size,
                        help="starting vectors whose Lanczos chains advance in lockstep, one block Hessian product "
                             "per step (vector i is in group i // size; results depend on the size to float "
                             "tolerance only); auto: 1 on a CPU, on a GPU the k vectors split evenly over the MPI "
                             "ranks")


def add_sigma_argument(parser: argparse.ArgumentParser) -> None:
    """``--sigma``: the density width of every step that smooths eigenvalue nodes (spectrum, interpolate, frames,
    plot_spectra), one meaning everywhere."""
    parser.add_argument("--sigma", type=float, default=SLQSettings.sigma,
                        help="Gaussian width of the eigenvalue density, absolute (default: the range of the "
                             "nodes shown together / 500, see gradvis_steps.core.slq.SIGMA_REL)")


def check_sigma(sigma: float | None) -> None:
    """Reject a ``--sigma`` that is not a finite number > 0 before any work starts."""
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"--sigma must be > 0, got {sigma}")


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """How the spectrum and interpolation steps spread each point's SLQ over MPI ranks (paper section 2.3)."""
    parser.add_argument("--parallel", choices=("iteration", "data", "hybrid"), default=SLQSettings.parallel,
                        help="under mpiexec: iteration = whole lockstep groups of starting vectors per rank "
                             "(Algorithm 5, results bitwise equal to serial); data = every rank runs all chains over "
                             "a shard of the evaluation batches, one Allreduce per Hessian product (Algorithm 4); "
                             "hybrid = groups of --ranks-per-group ranks, iteration parallel over groups, data "
                             "parallel inside (data and hybrid equal serial to float tolerance)")
    parser.add_argument("--ranks-per-group", type=positive_int, default=SLQSettings.ranks_per_group,
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


def output_file(text: str) -> str:
    """``type`` of a step's output file option: its folder must take a file now, before any work (created if
    needed; stale temporary files of an earlier, killed run removed, see ``storage.atomic``)."""
    from .storage.atomic import check_writable

    check_writable(Path(text).parent)
    return text


def output_folder(text: str) -> str:
    """``type`` of a step's output folder option: the folder and the one holding it (where it is staged) must take
    files now, before any work."""
    from .storage.atomic import check_writable

    check_writable(Path(text).parent)
    if Path(text).is_dir():
        check_writable(text)
    return text


def check_outputs(files: tuple[str | None, ...] = (), folders: tuple[str | None, ...] = ()) -> None:
    """What the ``output_file`` and ``output_folder`` option types check, for a step's ``run`` called with settings
    built in Python (``None``: an output not asked for)."""
    for path in files:
        if path is not None:
            output_file(os.fspath(path))
    for path in folders:
        if path is not None:
            output_folder(os.fspath(path))


def write_failure(error: BaseException) -> tuple[str, bool] | None:
    """The one error line of a failed write (a full disk, a read-only or forbidden folder), and whether HDF5 saw it
    (then the process must end without closing HDF5 objects); None for any other error."""
    from .storage.failures import from_hdf5, named_path, write_cause

    if isinstance(error, OutputError):
        return str(error), error.abandon
    cause = write_cause(error)
    if cause is None:
        return None
    path = named_path(error)
    return (f"{path}: {cause}" if path else f"cannot write an output ({cause})"), from_hdf5(error)


def error_line(message: object) -> None:
    """Print ``error: message`` on stderr; a stderr that cannot take it (redirected to a log on the full disk) must
    not turn the one line into a traceback: the exit status still tells."""
    try:
        print(f"error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # ValueError: stderr closed
        pass


def exit_on_hdf5_write_failure(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a step runs: HDF5 reports some failed writes only while h5py frees an object (an
    ignored exception in ``ObjectID.__dealloc__``), after which the next HDF5 call can crash the interpreter; so end
    the process at once with the one error line. Anything else goes to the hook before."""
    _exit_if_hdf5_write_failed(unraisable.exc_value)
    _chain("unraisable", sys.__unraisablehook__, unraisable)


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """``sys.excepthook`` while a step runs: h5py (Cython) prints the traceback of an exception in ``__dealloc__``
    through it before the unraisable hook sees it; a failed HDF5 write ends the process here, in one line."""
    _exit_if_hdf5_write_failed(value)
    _chain("except", sys.__excepthook__, kind, value, tb)


_hooks: dict[str, Any] = {"unraisable": sys.__unraisablehook__, "except": sys.__excepthook__}
_chaining: set[str] = set()


def _chain(name: str, default: Callable[..., None], *args: Any) -> None:
    """Call the hook that was in place before ours; Python's own if that one leads back here (MPI's abort hook,
    installed while a step runs, calls the hook it found: ours)."""
    if name in _chaining:
        default(*args)
        return
    _chaining.add(name)
    try:
        _hooks[name](*args)
    finally:
        _chaining.discard(name)


def _exit_if_hdf5_write_failed(error: BaseException | None) -> None:
    """End the process (every MPI rank) with the one error line when ``error`` is a failed HDF5 write."""
    from .core.parallel import abort_on_error
    from .storage.failures import from_hdf5, named_path, write_cause

    cause = write_cause(error) if error is not None else None
    if cause is None or not from_hdf5(error):
        return
    message = str(OutputError(named_path(error) or "an output file", cause))
    abort_on_error(message, EXIT_WRITE_FAILED)
    error_line(message)
    hard_exit(EXIT_WRITE_FAILED)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a step's ``main``; bad input ends in one clear line on stderr and exit status 2.

    An output that cannot be written (a full disk, a read-only or forbidden folder: ``storage.failures``) ends in
    one line naming it and the cause, exit status 74 (EX_IOERR). When HDF5 saw the failed write, the process ends
    there without the interpreter's clean-up (``os._exit``): closing the HDF5 file could crash it.

    Every step also takes ``--folder-settings FILE`` (the YAML the workflow writes beside an output folder): it is taken
    out of the command line here and its content recorded in the provenance of every file the step writes.

    Under MPI with several ranks, anything that escapes ``main`` on one rank (bad input, an unexpected exception
    with its traceback, a non-zero exit) is reported with the rank and aborts every rank
    (:func:`~gradvis_steps.core.parallel.abort_on_error`): the others would otherwise wait forever in their next
    collective. A serial run behaves as described above."""
    from .core.parallel import abort_on_error

    nested = sys.unraisablehook is exit_on_hdf5_write_failure  # a step run by a step: the hooks are in place
    if not nested:
        _hooks.update({"unraisable": sys.unraisablehook, "except": sys.excepthook})
        sys.unraisablehook, sys.excepthook = exit_on_hdf5_write_failure, _excepthook
    try:
        argv, settings = take_settings_option(sys.argv[1:] if argv is None else list(argv))
        if settings is not None:
            record_settings(settings)
        status = int(main(argv) or 0)
    except (*USER_ERRORS, OSError, RuntimeError, OutputError) as error:
        failure = write_failure(error)
        if failure is not None:
            message, abandon = failure
            abort_on_error(message, EXIT_WRITE_FAILED)  # returns only when there is nothing to abort
            error_line(message)
            if abandon:
                hard_exit(EXIT_WRITE_FAILED)
            return EXIT_WRITE_FAILED
        if not isinstance(error, USER_ERRORS):
            abort_on_error(f"{type(error).__name__}: {error}", 1, error)
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        abort_on_error(str(message), 2)  # returns only when there is nothing to abort
        error_line(message)
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
    finally:
        if not nested and sys.unraisablehook is exit_on_hdf5_write_failure:
            sys.unraisablehook = _hooks["unraisable"]
        if not nested and sys.excepthook is _excepthook:  # else a hook set meanwhile (MPI's) chains to ours
            sys.excepthook = _hooks["except"]
    if status:
        abort_on_error(f"exit status {status}", status)
    return status
