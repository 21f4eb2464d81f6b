"""Shared fixtures: tiny models and data so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# TensorFlow (the tensorflow backend's tests) reads these at its import: quiet start-up, Keras on TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# the workflow's pure-Python modules (experiments.py, preflight.py) import as top-level modules, as in the Snakefile
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch on the CI machine's 2 cores and results independent of the host's core count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits():
    from gradvis_steps.data import load_dataset

    return load_dataset("digits")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
