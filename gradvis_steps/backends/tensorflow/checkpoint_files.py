"""Reading a Keras 3 weights file (``.weights.h5``, what ``model.save_weights`` writes) as named host arrays.

The file is plain HDF5 read with h5py: nothing in it is executed. Its datasets are named by Keras' saving code
after the model's structure (``layers/dense_1/vars/0``), not after the variables' paths (``fc2/kernel``); the map
between the two is taken from Keras itself: the run's freshly built model, each variable filled with its own index,
is saved to a temporary file, whose datasets then name their variables.
"""

from __future__ import annotations

import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

#: file name endings this loader reads
SUFFIXES = (".weights.h5",)
SHOWN = 5  # keys named in an error line
_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset_map of each model


def _datasets(handle: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str, item: Any) -> None:  # a visitor that returns a value stops h5py's walk
        if isinstance(item, h5py.Dataset):
            found[name] = item

    handle.visititems(visit)
    return found


def _names(keys: list[str], labels: dict[str, str]) -> str:
    shown = ", ".join(f"{key} ({labels[key]})" if key in labels else key for key in keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def dataset_map(model: keras.Model) -> dict[str, str]:
    """``{dataset name in a .weights.h5 file of this model: variable path}`` (the model's values are restored;
    computed once per model)."""
    if model in _MAPS:
        return _MAPS[model]
    variables = list(model.variables)
    saved = [np.array(v.numpy()) for v in variables]
    try:
        for index, variable in enumerate(variables):  # markers 1, 2, ...: exact in every dtype a variable has
            variable.assign(np.full(tuple(variable.shape), index + 1).astype(variable.dtype))
        with tempfile.TemporaryDirectory() as folder:
            reference = Path(folder) / "reference.weights.h5"
            with warnings.catch_warnings():  # Keras' own, under numpy 2 (a copy keyword its arrays lack)
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                model.save_weights(reference)
            with h5py.File(reference, "r") as handle:
                mapping = {}
                for name, dataset in _datasets(handle).items():
                    values = np.asarray(dataset[()]).reshape(-1)
                    if values.size:
                        mapping[name] = variables[int(values[0]) - 1].path
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)
    _MAPS[model] = mapping
    return mapping


def load_checkpoint(path: str | Path, model: keras.Model) -> tuple[dict[str, np.ndarray], str | None]:
    """The arrays of the Keras weights file ``path`` as ``{variable path of model: array in the file's dtype}``, and
    None (no nesting). ``model``: the run's model as its spec builds it (its values are left as they were).

    One-line ValueError for a file that is not readable HDF5, or whose datasets do not match the model's: the
    missing and extra ones, and those of another shape, named (the first few) with their counts."""
    path = Path(path)
    if not path.name.endswith(SUFFIXES):
        raise ValueError(f"{path}: the tensorflow backend reads Keras weights files ({', '.join(SUFFIXES)}; "
                         "model.save_weights), not this kind")
    mapping = dataset_map(model)
    expected = {v.path: tuple(int(d) for d in v.shape) for v in model.variables}
    try:
        with h5py.File(path, "r") as handle:
            found = _datasets(handle)
            missing = sorted(set(mapping) - set(found))
            extra = sorted(set(found) - set(mapping))
            problems = []
            if missing:
                problems.append(f"missing {len(missing)} key(s): {_names(missing, mapping)}")
            if extra:
                problems.append(f"unexpected {len(extra)} key(s): {_names(extra, mapping)}")
            shapes = sorted(name for name in set(mapping) & set(found)
                            if tuple(found[name].shape) != expected[mapping[name]])
            if shapes:
                shown = ", ".join(f"{name} ({mapping[name]}) {tuple(found[name].shape)} in the file, "
                                  f"{expected[mapping[name]]} in the model" for name in shapes[:SHOWN])
                problems.append(f"{len(shapes)} shape mismatch(es): {shown}"
                                + (f" and {len(shapes) - SHOWN} more" if len(shapes) > SHOWN else ""))
            if problems:
                raise ValueError(f"{path}: does not match the model: {'; '.join(problems)}")
            arrays: dict[str, Any] = {mapping[name]: np.asarray(found[name][()]) for name in mapping}
    except (OSError, KeyError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a readable Keras weights file (empty, truncated or another format: {detail})"
                         ) from None
    return arrays, None


__all__ = ["SUFFIXES", "dataset_map", "load_checkpoint"]
