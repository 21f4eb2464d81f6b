"""The workflow on regression runs: one real Snakemake run of a tiny config, an mlp trained on the diabetes set with
mse and with a custom loss (tests/custom_losses.py), each with its PCA directions, landscape and spectra (the accuracy
of these runs is NaN throughout)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from workflow_runner import BIN, snakemake

from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory

pytestmark = pytest.mark.skipif(shutil.which("snakemake", path=str(BIN)) is None,
                                reason="snakemake is not installed in this environment (pip install -e .[workflow])")


def test_the_workflow_trains_and_analyses_mse_and_custom_loss_runs_on_diabetes(tmp_path, monkeypatch):
    """One real Snakemake run of a tiny regression config: train, PCA directions, landscapes, spectra, summary."""
    tests = str(Path(__file__).resolve().parent)  # the custom loss's module, for the pre-flight and the jobs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    results = tmp_path / "results"
    config = {
        "results": str(results), "device": "cpu",
        "datasets": {"diabetes": {"name": "diabetes"}}, "models": {"mlp_small": {"name": "mlp", "hidden": [4]}},
        "losses": {"smooth": {"name": "custom", "entry_point": "custom_losses:torch_log_cosh", "scale": 0.5}},
        "train": {"dataset": ["diabetes"], "model": ["mlp_small"], "loss": ["mse", "smooth"], "seed": [0], "lr": [0.05],
                  "batch_size": [100], "epochs": [1], "momentum": [0.9]},
        "evaluation": {"fraction": 0.25, "seed": 0, "batch_size": 1024, "dtype": "float32"},
        "directions": {"methods": ["pca"]},
        "landscape": {"resolution": 3, "line": False},
        "spectra": {"every": 4, "k": 1, "m": 4, "chunks": 1},
        "interpolation": {"enabled": False},
        "frames": {"training": False, "direction": "pca"},
        "resources": {"gpu": 0, "threads": 1, "mem_mb": 1000, "runtime": 10},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    base = results / "diabetes-mlp_small-lr0.05-bs100-e1-m0.9-s0"
    for suffix, loss in (("-mse", {"name": "mse"}),
                         ("-smooth", {"name": "custom", "entry_point": "custom_losses:torch_log_cosh", "scale": 0.5})):
        run = base.with_name(base.name + suffix)
        with Trajectory(run / "trajectory.h5") as trajectory:
            assert trajectory.config["loss"] == loss and len(trajectory) == 5
        (land_file,) = run.glob("landscape/*/landscape_2d.h5")
        land = load_landscape(land_file)
        assert land.loss.shape == (3, 3) and np.isfinite(land.loss).all() and np.isnan(land.accuracy).all()
        (spectra_file,) = run.glob("spectra/*/spectra.h5")
        assert sorted(load_spectra(spectra_file).entries) == [0, 4]
