"""Step: turn the checkpoint files of your own training run into a trajectory, so every analysis runs on it.

    python -m gradvis_steps.import_checkpoints --framework torch --dataset digits --model lenet \\
        --out results/mine/trajectory.h5 runs/mine/          # model_0.pt, model_1.pt, ... or a glob 'runs/*.pt'

Files: torch state dicts (``.pt .pth .ckpt .t7``: plain, nested under ``state_dict``, ``model_state_dict`` or
``model``, with DDP ``module.`` or a LightningModule attribute prefix such as ``model.``: the prefix that makes the
keys match the model is stripped and recorded), safetensors files (``.safetensors``, either framework) and Keras 3
weights files (``.weights.h5``, what ``model.save_weights`` writes). Nothing in a file is executed: torch files load
with ``weights_only=True`` (a pickled model object or custom class is refused), the others are plain arrays.

Paths: files, folders (their checkpoint files by those endings; ``opt_state_*`` files, the optimizer states of Li et
al.'s loss-landscape folders, are skipped, so ``model_{epoch}.t7`` folders import as they are) or glob patterns.
Each file's iteration is the last number in its name (``model_10.pt`` -> 10; files in that order, ``model_9``
before ``model_10``), or ``--iterations`` gives them for the files in natural order of their names.

Every file must hold exactly the model's parameters and buffers (batch-norm statistics, ``num_batches_tracked``
included) in their shapes; any other key, a missing one, another shape or an unreadable file is one error line
naming the file and the keys, and nothing is written. The trajectory stores parameters as float32 and buffers as
float64, as training does: float16/bfloat16/float32 parameters are exact, float64 ones are rounded to float32 (a
warning, and the files recorded under ``conversions`` in the provenance). Rows have no batch loss (not known: no
divergence) and epoch -1 (not known). The run config records ``source: {kind: imported, files: [{name, sha256}],
iterations}``: the run's identity is a digest of the files' contents.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import cli, step_settings
from .backends import backend, known_backends
from .losses import DEFAULT_LOSS, normalize
from .provenance import file_sha256, provenance

#: file name endings of checkpoint files (folders are scanned for these)
SUFFIXES = (".pt", ".pth", ".ckpt", ".t7", ".safetensors", ".weights.h5")
#: name beginnings of files a folder scan skips: Li et al.'s optimizer states (``opt_state_{epoch}.t7``)
SKIPPED_IN_FOLDERS = ("opt_state_",)
SHOWN = 5  # names shown in an error line before "and N more"
_DIGITS = re.compile(r"\d+")


def suffix_of(name: str) -> str | None:
    """The checkpoint file ending of ``name`` (``.weights.h5`` before ``.h5``), None if it is no checkpoint file."""
    return next((suffix for suffix in SUFFIXES if name.endswith(suffix)), None)


def _stem(path: Path) -> str:
    """The file name without its checkpoint ending (``model_10.t7`` -> ``model_10``: the 7 is no iteration)."""
    return path.name[: len(path.name) - len(suffix_of(path.name) or "")]


def _natural(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``model_9`` before ``model_10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


def _natural_key(path: Path) -> tuple:
    """Files in natural order of their names, then of their whole paths."""
    return _natural(path.name), _natural(str(path))


def _listing(items: list[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _pattern(path: Path) -> str:
    """The name with its numbers as ``{N}`` (``model_{N}.t7``): one run's files share it."""
    return _DIGITS.sub("{N}", _stem(path)) + (suffix_of(path.name) or "")


def _folder_files(folder: Path) -> list[Path]:
    files = [f for f in folder.iterdir() if f.is_file() and suffix_of(f.name)
             and not f.name.startswith(SKIPPED_IN_FOLDERS)]
    if not files:
        raise ValueError(f"folder {folder} holds no checkpoint files (file names ending in {', '.join(SUFFIXES)})")
    patterns = sorted({_pattern(f) for f in files})
    if len(patterns) > 1:
        raise ValueError(f"folder {folder} holds checkpoint files of {len(patterns)} name patterns "
                         f"({_listing(patterns)}): give the files of one run as a glob, e.g. "
                         f"'{folder / patterns[0].replace('{N}', '*')}'")
    return files


def expand_paths(paths: list[str]) -> list[Path]:
    """The checkpoint files that ``paths`` (files, folders, glob patterns) name, each once, in natural order."""
    if not paths:
        raise ValueError("no checkpoint paths given (files, folders or glob patterns)")
    files: dict[Path, Path] = {}
    for text in map(str, paths):
        path = Path(text)
        if path.is_dir():
            found = _folder_files(path)
        elif path.is_file():
            if not suffix_of(path.name):
                raise ValueError(f"{path}: not a checkpoint file kind gradvis imports (file names ending in "
                                 f"{', '.join(SUFFIXES)})")
            found = [path]
        elif glob.has_magic(text):
            found = [Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file() and suffix_of(m)]
            if not found:
                raise ValueError(f"the pattern {text!r} matches no checkpoint files (file names ending in "
                                 f"{', '.join(SUFFIXES)})")
        else:
            raise FileNotFoundError(f"checkpoint path {text} does not exist")
        for file in found:
            files.setdefault(file.resolve(), file)
    return sorted(files.values(), key=_natural_key)


def find_checkpoints(paths: list[str], iterations: list[int] | None = None) -> list[tuple[int, Path]]:
    """The checkpoint files ``paths`` name, each with its iteration, in increasing order: the last number in each
    file's name (two files with one number, or a name without one, is an error listing them), or ``iterations``
    given for the files in natural order of their names (as many, strictly increasing)."""
    files = expand_paths(paths)
    if iterations is not None:
        iterations = [int(i) for i in iterations]
        if len(iterations) != len(files):
            raise ValueError(f"--iterations gives {len(iterations)} iteration(s) for {len(files)} checkpoint file(s) "
                             f"({_listing(files)})")
        if any(i < 0 for i in iterations) or any(np.diff(iterations) <= 0):
            raise ValueError(f"--iterations must be >= 0 and strictly increasing, got {_listing(iterations)}")
        return list(zip(iterations, files, strict=True))
    numbered: dict[int, list[Path]] = {}
    unnumbered = []
    for file in files:
        digits = _DIGITS.findall(_stem(file))
        if digits:
            numbered.setdefault(int(digits[-1]), []).append(file)
        else:
            unnumbered.append(file)
    if unnumbered:
        raise ValueError(f"{len(unnumbered)} checkpoint file(s) without a number in their name: "
                         f"{_listing(unnumbered)}; give the iterations with --iterations N [N ...]")
    shared = {number: group for number, group in numbered.items() if len(group) > 1}
    if shared:
        number, group = min(shared.items())
        raise ValueError(f"checkpoint files {_listing(group)} have one iteration number ({number}) in their names"
                         f"{f' (and {len(shared) - 1} more numbers are shared)' if len(shared) > 1 else ''}; "
                         "select one run's files with a glob, or give --iterations")
    return [(number, group[0]) for number, group in sorted(numbered.items())]


def read_arrays(path: Path, framework: Any, model: Any) -> tuple[dict[str, np.ndarray], str | None]:
    """The named arrays of one checkpoint file (safetensors here, framework-neutral; other kinds by the backend)."""
    if path.name.endswith(".safetensors"):
        try:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
        except ImportError:
            raise ValueError(f"{path}: reading safetensors files needs the safetensors package: pip install "
                             "safetensors") from None
        try:
            return load_file(path), None
        except (SafetensorError, OSError, ValueError, TypeError) as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{path}: not a readable safetensors file (empty, truncated or another format: "
                             f"{detail})") from None
    if framework.load_checkpoint is None:
        raise ValueError(f"{path}: the {framework.name} backend reads no checkpoint files")
    return framework.load_checkpoint(path, model)


def _prefix(names: list[str], wanted: set[str]) -> str:
    """The key prefix (``""``, ``"module."``, ``"model."``, ...) whose removal makes the most keys model names."""
    counts: dict[str, int] = {"": sum(name in wanted for name in names)}
    for name in names:
        for match in re.finditer(r"[./]", name):
            if name[match.end():] in wanted:
                prefix = name[: match.end()]
                counts[prefix] = counts.get(prefix, 0) + 1
    return max(counts, key=lambda p: (counts[p], -len(p)))


def match_to_model(path: Path, arrays: Mapping[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
                   ) -> tuple[dict[str, np.ndarray], str]:
    """``arrays`` under the model's names (``shapes``: name -> shape of every parameter and buffer), with the prefix
    stripped that makes the keys match; one-line ValueError naming missing and extra keys and other shapes."""
    prefix = _prefix(list(arrays), set(shapes))
    named = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
    outside = sorted(key for key in arrays if not key.startswith(prefix))
    missing = [name for name in shapes if name not in named]
    extra = outside + sorted(name for name in named if name not in shapes)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} key(s): {_listing(extra)}")
    other = [name for name in shapes if name in named and tuple(np.shape(named[name])) != tuple(shapes[name])]
    if other:
        problems.append(f"{len(other)} shape mismatch(es): "
                        + _listing([f"{name} {tuple(np.shape(named[name]))} in the file, {tuple(shapes[name])} in "
                                    "the model" for name in other]))
    if problems:
        stripped = f" (after stripping the key prefix {prefix!r})" if prefix else ""
        raise ValueError(f"{path}: does not match the model{stripped}: {'; '.join(problems)}")
    return named, prefix


def _float32_parameters(path: Path, named: dict[str, np.ndarray], layout: Any) -> tuple[np.ndarray, list[str]]:
    """The flat float32 parameter row, and the names of tensors rounded from a wider float type."""
    rounded, pieces = [], []
    for spec in layout:
        value = np.asarray(named[spec.name])
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: parameter {spec.name} is {value.dtype}, not a floating-point tensor")
        if np.finfo(value.dtype).bits > 32:
            rounded.append(spec.name)
        pieces.append(value.astype(np.float32).reshape(-1))
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), rounded


def _float64_buffers(path: Path, named: dict[str, np.ndarray], buffers: list[dict]) -> np.ndarray:
    """The flat float64 buffer row (integer counters exact up to 2**53, as training stores them)."""
    pieces = []
    for entry in buffers:
        value = np.asarray(named[entry["name"]])
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise ValueError(f"{path}: buffer {entry['name']} is {value.dtype}, not a numeric tensor")
        if np.issubdtype(value.dtype, np.integer) and value.size and np.abs(value).max() > 2**53:
            raise ValueError(f"{path}: buffer {entry['name']} holds integers beyond 2**53, which float64 does not "
                             "store exactly")
        if np.issubdtype(value.dtype, np.floating) and np.finfo(value.dtype).bits > 64:
            raise ValueError(f"{path}: buffer {entry['name']} is {value.dtype}, wider than the float64 stored")
        pieces.append(value.astype(np.float64).reshape(-1))
    return np.concatenate(pieces) if pieces else np.zeros(0)


def run_config(framework: str, dataset: dict[str, Any], model: dict[str, Any], loss: dict[str, Any] | None,
               checkpoints: list[tuple[int, Path]], hashes: list[str]) -> dict[str, Any]:
    """The run config of an imported run: no ``train``; ``source`` names the files by name and content digest."""
    return {
        "framework": framework,
        "dataset": dict(dataset),
        "model": dict(model),
        "loss": normalize(loss),  # checked as the train step checks --loss (None: cross-entropy)
        "source": {
            "kind": "imported",
            "files": [{"name": path.name, "sha256": digest} for (_, path), digest in zip(checkpoints, hashes,
                                                                                          strict=True)],
            "iterations": [int(iteration) for iteration, _ in checkpoints],
        },
    }


@dataclass(frozen=True)
class Target:
    """The run's model as its spec builds it, and where each of its tensors goes in a trajectory row."""

    framework: Any  # the Backend
    model: Any
    layout: Any  # ParameterLayout
    buffers: list[dict]
    shapes: dict[str, tuple[int, ...]]  # every parameter and buffer name -> shape


def target_model(framework: str, dataset: dict[str, Any], model: dict[str, Any]) -> Target:
    """Build the model ``model`` (spec) for ``dataset`` (spec) in ``framework`` through the backend registry."""
    from .data import load_dataset

    chosen = backend(framework)
    net = chosen.build_model({"framework": framework, "dataset": dict(dataset), "model": dict(model)},
                             load_dataset(dict(dataset)))
    layout, buffers = chosen.parameter_layout(net), chosen.buffer_layout(net)
    shapes = {spec.name: tuple(spec.shape) for spec in layout}
    for entry in buffers:
        if entry["name"] in shapes:
            raise ValueError(f"the model names a parameter and a buffer {entry['name']!r}: cannot tell them apart")
        shapes[entry["name"]] = tuple(entry["shape"])
    return Target(chosen, net, layout, buffers, shapes)


def read_checkpoint(path: Path, target: Target) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[str]]:
    """One file as a trajectory row: float32 parameters, float64 buffers, what was done to read it (nesting key,
    stripped prefix) and the parameters rounded from float64."""
    arrays, nested = read_arrays(path, target.framework, target.model)
    named, prefix = match_to_model(path, arrays, target.shapes)
    params, rounded = _float32_parameters(path, named, target.layout)
    record = {"name": path.name, "path": str(path), "nested_under": nested, "prefix_stripped": prefix}
    return params, _float64_buffers(path, named, target.buffers), record, rounded


def check_checkpoints(paths: list[str], *, framework: str, dataset: dict[str, Any], model: dict[str, Any],
                      iterations: list[int] | None = None) -> list[tuple[int, Path]]:
    """What :func:`import_checkpoints` checks, writing nothing (for a pre-flight check): the files exist, have
    iterations and match the model's keys and shapes. Returns :func:`find_checkpoints`' list; the first problem is a
    one-line ValueError."""
    checkpoints = find_checkpoints(paths, iterations)
    target = target_model(framework, dataset, model)
    for _, path in checkpoints:
        read_checkpoint(path, target)
    return checkpoints


def import_checkpoints(paths: list[str], out: str | Path, *, framework: str, dataset: dict[str, Any],
                       model: dict[str, Any], loss: dict[str, Any] | None = None,
                       iterations: list[int] | None = None, progress: bool = True) -> dict[str, Any]:
    """Import the checkpoint files ``paths`` name as the trajectory ``out`` of a run of ``model`` on ``dataset``
    (spec dicts) in ``framework``; returns the summary stored with it. Written to ``<out>.partial`` and renamed at
    the end; on any error the partial file is removed and nothing is written."""
    from .storage.trajectory import TrajectoryWriter, partial_path

    start = time.perf_counter()
    checkpoints = find_checkpoints(paths, iterations)
    target = target_model(framework, dataset, model)
    hashes = [file_sha256(path) for _, path in checkpoints]
    config = run_config(framework, dataset, model, loss, checkpoints, hashes)
    files: list[dict[str, Any]] = []
    rounded: dict[str, list[str]] = {}
    writer = TrajectoryWriter(out, target.layout, target.buffers, config, {})  # provenance: once the files are read
    try:
        for iteration, path in tqdm(checkpoints, disable=not progress, desc="import", unit="file"):
            params, buffers, record, names = read_checkpoint(path, target)
            if names:
                rounded[path.name] = names
            writer.append(params, buffers, iteration=iteration, epoch=-1, batch_loss=None)
            files.append(record)
        writer.file.attrs["provenance"] = _provenance(config, files, rounded)
        summary = {"checkpoints": len(checkpoints), "first_iteration": checkpoints[0][0],
                   "iterations": checkpoints[-1][0], "seconds": round(time.perf_counter() - start, 3)}
        written = writer.commit(summary)
    except BaseException:
        writer.close()
        partial_path(out).unlink(missing_ok=True)
        raise
    prefixes = sorted({f["prefix_stripped"] for f in files if f["prefix_stripped"]})
    if prefixes:
        print(f"stripped the key prefix {' / '.join(map(repr, prefixes))} to match the model", file=sys.stderr)
    if rounded:
        print(f"warning: rounded float64 parameters to float32 (the trajectory stores float32) in {len(rounded)} "
              f"file(s): {_listing(sorted(rounded))}", file=sys.stderr)
    print(f"imported {len(checkpoints)} checkpoints (iterations {checkpoints[0][0]}..{checkpoints[-1][0]}, "
          f"{target.layout.size} parameters) to {written}", file=sys.stderr)
    return summary


def _provenance(config: dict[str, Any], files: list[dict[str, Any]], rounded: dict[str, list[str]]) -> str:
    record = provenance(config, files=files, conversions={"float64_to_float32": rounded} if rounded else {})
    return json.dumps(record, sort_keys=True, default=str)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the module docstring (file kinds, iterations, conversions) as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.import_checkpoints", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files, folders or glob patterns")
    parser.add_argument("--out", required=True, type=cli.output_file, help="trajectory file to write (.h5)")
    parser.add_argument("--framework", required=True, choices=known_backends(), help="the framework of the files")
    parser.add_argument("--dataset", required=True, help="digits | cifar10 | synthetic | custom")
    parser.add_argument("--dataset-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="dataset option, e.g. entry_point=mymod:load (repeatable)")
    parser.add_argument("--model", required=True, help="lenet | mlp | resnet20 | resnet | custom")
    parser.add_argument("--model-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="model option, e.g. widths=[6,16,120,84] or entry_point=mymod:net (repeatable)")
    parser.add_argument("--loss",
                        help="the loss the run trained with: cross_entropy | mse | bce_with_logits | custom")
    parser.add_argument("--loss-option", type=cli.key_value, action="append", metavar="KEY=VALUE",
                        help="loss option, e.g. entry_point=mymod:loss (repeatable)")
    parser.add_argument("--iterations", type=int, nargs="+", metavar="N",
                        help="the files' iterations, strictly increasing, for the files in natural order of their "
                             "names (default: the last number in each file name); give the PATHs before it, or end "
                             "the list with --")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return step_settings.use_defaults(parser, ImportSettings)


@dataclass(frozen=True, kw_only=True)
class ImportSettings:
    """Settings of the import_checkpoints step: the files, the run they belong to (framework, dataset, model and loss
    by name and options), their iterations, the trajectory to write."""

    paths: tuple[str, ...]
    out: str
    framework: str
    dataset: str
    model: str
    dataset_option: tuple[tuple[str, Any], ...] | None = None
    model_option: tuple[tuple[str, Any], ...] | None = None
    loss: str = DEFAULT_LOSS
    loss_option: tuple[tuple[str, Any], ...] | None = None
    iterations: tuple[int, ...] | None = None
    no_progress: bool = False


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), ImportSettings, argv))
    return 0


def run(settings: ImportSettings) -> dict[str, Any]:
    """Import the checkpoint files of ``settings`` as the trajectory ``settings.out``; returns the stored summary."""
    args = settings
    cli.check_outputs(files=(args.out,))
    return import_checkpoints(list(args.paths), args.out, framework=args.framework,
                              dataset=cli.spec(args.dataset, args.dataset_option),
                              model=cli.spec(args.model, args.model_option),
                              loss=cli.spec(args.loss, args.loss_option),
                              iterations=None if args.iterations is None else list(args.iterations),
                              progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(cli.run(main))

