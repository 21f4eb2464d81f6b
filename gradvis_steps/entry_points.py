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
