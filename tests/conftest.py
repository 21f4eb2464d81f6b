"""Shared fixtures: tiny models and data so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# TensorFlow (the tensorflow backend's tests) reads these at its import: quiet start-up, Keras on TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# the workflow's pure-Python modules (experiments.py, preflight.py) import as top-level modules, as in the Snakefile
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

torch = pytest.importorskip("torch")

try:  # the property-based tests (tests/test_properties.py); hypothesis comes with the test extra
    from hypothesis import settings as hypothesis_settings
except ImportError:
    pass
else:
    # No example database and no per-example deadline (a loaded CI machine must not fail a property for being slow);
    # a failure prints the blob that reproduces it. Hypothesis's caches (unicode tables, constants of the code under
    # test) go to the temporary folder instead of .hypothesis/ in the repository.
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "gradvis-hypothesis"))
    hypothesis_settings.register_profile("gradvis", database=None, deadline=None, print_blob=True)
    hypothesis_settings.load_profile("gradvis")


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
