"""Framework backends: the only code that imports a deep-learning framework.

Step modules never import a backend package. They ask this registry for one: :func:`backend` by name (the train
step's ``--framework``) or :func:`backend_for_trajectory` (the ``framework`` a trajectory's run config records), and
get a :class:`Backend`, the few functions a step needs of a framework. A backend is registered with a loader, which
imports its package (and so its framework) only when the backend is first asked for::

    register_backend("tensorflow", lambda: importlib.import_module("mypackage.tf_backend").BACKEND)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import Backend

if TYPE_CHECKING:
    from ..storage.trajectory import Trajectory

#: The framework of trajectories whose run config records none (written before the key existed).
DEFAULT_FRAMEWORK = "torch"

_loaders: dict[str, Callable[[], Backend]] = {}
_loaded: dict[str, Backend] = {}


def register_backend(name: str, loader: Callable[[], Backend]) -> None:
    """Make ``backend(name)`` call ``loader()`` (once, at the first request) for the backend. Registering a name
    again replaces the earlier loader."""
    _loaders[name] = loader
    _loaded.pop(name, None)


def known_backends() -> tuple[str, ...]:
    """The names registered, sorted (nothing is imported)."""
    return tuple(sorted(_loaders))


def backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded at the first request; a ValueError naming ``name`` and the known
    backends if there is none."""
    if name not in _loaders:
        known = ", ".join(map(repr, known_backends()))
        raise ValueError(f"unknown framework {name!r}: the known backends are {known}")
    if name not in _loaded:
        loaded = _loaders[name]()
        if not isinstance(loaded, Backend):
            raise TypeError(f"the loader of backend {name!r} returned {type(loaded).__name__}, not a Backend")
        _loaded[name] = loaded
    return _loaded[name]


def backend_for_trajectory(trajectory: Trajectory) -> Backend:
    """The backend of the framework that wrote ``trajectory`` (its run config's ``framework``;
    :data:`DEFAULT_FRAMEWORK` for files that record none)."""
    return backend(trajectory.config.get("framework", DEFAULT_FRAMEWORK))


def _load_torch() -> Backend:
    from .torch import BACKEND

    return BACKEND


def _load_tensorflow() -> Backend:
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise ValueError(f"framework 'tensorflow' needs TensorFlow, which is not importable here ({error}): install "
                         "the extra, pip install 'gradvis[tensorflow]'") from None
    from .tensorflow import BACKEND

    return BACKEND


register_backend("torch", _load_torch)
register_backend("tensorflow", _load_tensorflow)

__all__ = ["DEFAULT_FRAMEWORK", "Backend", "backend", "backend_for_trajectory", "known_backends", "register_backend"]
