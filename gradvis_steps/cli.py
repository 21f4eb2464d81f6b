"""Shared command-line plumbing for the step modules: option parsing and clean error exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import yaml

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


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def spec(name: str, options: list[tuple[str, Any]] | None) -> dict[str, Any]:
    """A ``{"name": ..., **options}`` spec (datasets, models) from ``--x NAME --x-option k=v``."""
    return {"name": name, **dict(options or [])}


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap (trim threshold 1 GiB) and to serve blocks of up to 32 MiB from
    it instead of fresh ``mmap``s, for a process that evaluates a model over and over: otherwise every forward
    pass returns its activations to the OS and page-faults them in again (measured: about 10 % of a CPU forward
    pass of ResNet-20, bench/README.md). No-op (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a step's ``main``; bad input ends in one clear line on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
