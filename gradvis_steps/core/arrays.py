"""Backend-neutral array helpers for the Krylov loops: host copies, autograd-free views, on-device random vectors.

Written against the array API (``array_api_compat``), so numpy arrays and any backend's tensors (torch, possibly on
a GPU) share them; this module never imports a framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, to_device
from array_api_compat import device as array_device

__all__ = ["Array", "RESTART_SALT", "START_SALT", "from_numpy", "hash_vector", "plain", "to_numpy"]

Array = Any  # a numpy array or a backend tensor (array-API compatible)

#: :func:`hash_vector` salts of Lanczos: the start from a zero vector, and the restart directions after a breakdown
#: (``roll(hash_vector(..., RESTART_SALT), j + 1)`` at step j), the same in every loop.
START_SALT = 0x5EED
RESTART_SALT = 0xB10C

_MASK32 = 0xFFFFFFFF


def to_numpy(x: Array) -> np.ndarray:
    """Copy a backend array to a host numpy array (the one place a device sync happens)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    detach = getattr(x, "detach", None)  # torch tensors that still carry autograd history
    if callable(detach):
        x = detach()
    try:
        x = to_device(x, "cpu")
    except Exception:  # namespaces without a "cpu" device string (numpy-likes): np.asarray copes
        pass
    return np.asarray(x)


def from_numpy(a: np.ndarray, like: Array | None) -> Array:
    """Convert a host array once to the array type, dtype and device of ``like`` (numpy if None)."""
    if like is None:
        return np.asarray(a)
    xp = array_namespace(like)
    return xp.asarray(a, dtype=like.dtype, device=array_device(like))


def plain(x: Array) -> Array:
    """``x`` without autograd history, if its backend has any, so a Krylov basis never records a graph."""
    if not getattr(x, "requires_grad", False) and getattr(x, "grad_fn", None) is None:
        return x  # nothing to drop (numpy arrays, plain tensors): no detach() call per step
    return x.detach()


def _mix32(x: int) -> int:
    """32-bit integer hash (lowbias32), on the host, for salts."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def hash_vector(xp: Any, n: int, salt: int, dtype: Any, dev: Any) -> Array:
    """Pseudo-random vector in [-0.5, 0.5)^n made ON the device (the lowbias32 hash of each index, salted).

    The restart direction after a Lanczos breakdown and the start from a zero vector: built on the device, it
    costs no host-to-device copy (and so no sync) inside a loop, and every loop gets the same vector. Products may
    wrap in int64; only the low 32 bits, which wrapping preserves, are kept.
    """
    x = xp.arange(n, dtype=xp.int64, device=dev)
    x = (x ^ _mix32(salt)) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return xp.astype(x & 0xFFFFFF, dtype) * (1.0 / 2**24) - 0.5
