"""Resolve ``module:function`` entry points named in a config (user datasets and models)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def load_entry_point(text: str) -> Callable[..., Any]:
    """Import ``module.sub:attr.attr`` and return the callable, with errors naming what failed."""
    module_name, sep, attr_path = str(text).partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"entry point {text!r} must look like 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"entry point {text!r}: cannot import module {module_name!r} ({error})") from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"entry point {text!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"entry point {text!r} is not callable")
    return target


def build_from_spec(spec: dict[str, Any] | str, registry: dict[str, Callable[..., Any]], *args: Any,
                    kind: str = "model") -> tuple[str, Any]:
    """Call the factory a config names, ``{"name": ..., **options}`` or ``{"name": "custom", "entry_point":
    "module:function", **options}``, as ``factory(*args, **options)`` (YAML lists become tuples); returns the name
    and what it built. The one place every backend resolves a model spec, so bad names and options read alike."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name == "custom":
        entry = spec.pop("entry_point", None)
        if not entry:
            raise ValueError(f"{kind} 'custom' needs entry_point: 'module:function'")
        factory = load_entry_point(entry)
    elif name in registry:
        factory = registry[name]
    else:
        raise ValueError(f"unknown {kind} {name!r}; accepted: {sorted(registry) + ['custom']}")
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in spec.items()}
    try:
        return name, factory(*args, **options)
    except TypeError as error:
        raise ValueError(f"{kind} {name!r}: bad options {options}: {error}") from None
