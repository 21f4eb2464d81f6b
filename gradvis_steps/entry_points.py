"""Resolve ``module:function`` entry points named in a config (user datasets and models)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_entry_point(text: str) -> Callable[..., Any]:
    """Import ``module.sub:attr.attr`` and return the callable, with errors naming what failed."""
    module_name, sep, attr_path = str(text).partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"entry point {text!r} must look like 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"entry point {text!r}: cannot import module {module_name!r} ({error})"
                         f"{_searched(error, module_name)}") from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"entry point {text!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"entry point {text!r} is not callable")
    return target


def _searched(error: ImportError, module_name: str) -> str:
    """Where Python looked, when the module itself (not one it imports) was not found: the working folder (or not)
    and PYTHONPATH, the two places a user's own module can be."""
    missing = getattr(error, "name", None)
    if not isinstance(error, ModuleNotFoundError) or not missing or not (
            module_name == missing or module_name.startswith(missing + ".")):
        return ""
    folder = Path.cwd()
    searched = any(Path(entry or ".").resolve() == folder for entry in sys.path)
    pythonpath = os.environ.get("PYTHONPATH") or "(not set)"
    if searched:
        return f"; searched the folder {folder}, PYTHONPATH={pythonpath} and the installed packages"
    return (f"; searched PYTHONPATH={pythonpath} and the installed packages, not the folder {folder} (`gradvis run` "
            "adds it; else add it to PYTHONPATH)")


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
    check_options(factory, options, *args, what=f"{kind} {name!r}")
    try:
        return name, factory(*args, **options)
    except TypeError as error:
        raise ValueError(f"{kind} {name!r}: bad options {options}: {error}") from None


def check_options(factory: Callable[..., Any], options: dict[str, Any], *args: Any, what: str = "factory") -> None:
    """Reject options ``factory(*args, **options)`` would not accept, without calling it: unknown names, and values
    whose type contradicts a simple annotation (int, float, bool, str, paths, tuples). For checking a config before
    any job runs; what a call could still reject (a value out of range) is left to the call."""
    signature = inspect.signature(factory)
    try:
        bound = signature.bind(*args, **options)
    except TypeError as error:
        accepted = [name for name, p in list(signature.parameters.items())[len(args):]
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ValueError(f"{what}: options {sorted(options)} do not fit ({error}); accepted options: "
                         f"{accepted or 'none'}") from None
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001 - annotations that do not resolve are not checked
        return
    for name, value in bound.arguments.items():
        if name in options and name in hints and not _fits(value, hints[name]):
            raise ValueError(f"{what}: option {name}={value!r} is a {type(value).__name__}; expected "
                             f"{_describe(hints[name])}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a simple annotation; annotations this does not know are taken as fitting."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None
        return item is None or all(_fits(v, item) for v in value)
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
