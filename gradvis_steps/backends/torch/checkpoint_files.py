"""Reading a user's torch checkpoint file (``.pt``, ``.pth``, ``.ckpt``, ``.t7``) as named host arrays.

Only ``torch.load(..., weights_only=True, map_location="cpu")`` touches the file: its restricted unpickler builds
tensors, containers and plain values and refuses any other class, so no code from the file runs. Numpy scalars and
arrays of numbers (an ``acc`` or ``best_loss`` beside the state dict) are allowed too: numpy rebuilds them from their
bytes (object arrays stay refused). A file that needs more (a whole pickled model, a custom class) is refused with one
line saying what to save instead.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: file name endings this loader reads
SUFFIXES = (".pt", ".pth", ".ckpt", ".t7")
#: keys under which checkpoint dicts nest the state dict, tried in this order (Lightning and Li et al.:
#: ``state_dict``; common training scripts: ``model_state_dict`` or ``model``)
NESTED = ("state_dict", "model_state_dict", "model")

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _numpy_globals() -> list[Any]:
    """What rebuilds numpy scalars and arrays of booleans and numbers, under numpy 2's and numpy 1's names."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(code)) for code in "?bhilqBHILQefd"]
    return [scalar, _reconstruct, np.ndarray, np.dtype, *dtypes,
            (scalar, "numpy.core.multiarray.scalar"), (_reconstruct, "numpy.core.multiarray._reconstruct")]


def _load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, numpy's number types allowed (where torch can allow globals)."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        return torch.load(path, weights_only=True, map_location="cpu")
    with allow(_numpy_globals()):
        return torch.load(path, weights_only=True, map_location="cpu")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _refused(path: Path, error: Exception) -> ValueError:
    """The line for a pickle that ``weights_only`` loading refuses (it names a class or function to import)."""
    match = _GLOBAL.search(str(error))
    what = f"the class or function {match.group(1)}" if match else "objects other than tensors and plain values"
    return ValueError(f"{path}: refused to load: the file needs {what} (a pickled model object or custom class), and "
                      "loading it would run code from the file; save the weights instead: "
                      "torch.save(model.state_dict(), path)")


def load_checkpoint(path: str | Path, model: Any = None) -> tuple[dict[str, np.ndarray], str | None]:
    """The tensors of the state dict in ``path`` as ``{key: array}`` (keys as stored, dtypes as stored but bfloat16,
    widened to float32 exactly), and the key it was nested under (None: the file is the state dict itself).

    ``model`` is not needed (the keys are matched to the model by the caller). One-line ValueError for a file that
    is unreadable, truncated, refused by ``weights_only`` loading, or holds no state dict."""
    path = Path(path)
    if not path.name.endswith(SUFFIXES):
        raise ValueError(f"{path}: the torch backend reads torch checkpoint files ({', '.join(SUFFIXES)}), not this "
                         "kind (Keras .weights.h5 files: --framework tensorflow)")
    try:
        loaded = _load(path)
    except pickle.UnpicklingError as error:
        detail = _DETAIL.search(str(error))
        if "Weights only load failed" in str(error) and not (detail and detail.group(1).startswith("Unsupported "
                                                                                               "operand")):
            raise _refused(path, error) from None
        text = detail.group(1) if detail else (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: not a readable torch checkpoint (not a torch file, or a damaged one: {text})"
                         ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, IndexError, KeyError) as error:
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a readable torch checkpoint (empty, truncated or another format: {detail})"
                         ) from None
    nested = None
    if not _is_state_dict(loaded):
        nested = next((key for key in NESTED if isinstance(loaded, Mapping) and _is_state_dict(loaded.get(key))),
                      None)
        if nested is None:
            if isinstance(loaded, Mapping):
                kinds = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(loaded.items())[:6])
                more = f" and {len(loaded) - 6} more" if len(loaded) > 6 else ""
                held = f"a dict of {{{kinds}{more}}}"
            else:
                held = f"a {type(loaded).__name__}"
            raise ValueError(f"{path}: holds {held}, not a state dict: expected a dict of tensors, or one under "
                             f"{' or '.join(map(repr, NESTED))}; save it with torch.save(model.state_dict(), path)")
        loaded = loaded[nested]
    arrays = {}
    for key, tensor in loaded.items():
        tensor = tensor.detach()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 exactly
            tensor = tensor.float()
        try:
            arrays[str(key)] = tensor.contiguous().numpy()
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{path}: tensor {key!r} ({tensor.dtype}, {tensor.layout}) cannot be read as an array "
                             f"({str(error).splitlines()[0]})") from None
    return arrays, nested


__all__ = ["NESTED", "SUFFIXES", "load_checkpoint"]
