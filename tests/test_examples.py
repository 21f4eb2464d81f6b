"""The examples run as a user runs them (CI runs them here): examples/own_loop.py trains in its own loop with Adam
and a cosine schedule, records the run, and runs the whole workflow and the report on it through `gradvis run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_own_loop_example_records_and_analyses_its_run(tmp_path):
    gradvis = Path(sys.executable).with_name("gradvis")
    if not gradvis.exists():
        pytest.skip(f"the gradvis command is not installed beside {sys.executable} (pip install -e .)")
    env = {**os.environ, "PATH": f"{gradvis.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), "--workdir", str(tmp_path),
                             "--epochs", "2", "--resolution", "5", "--every", "12"], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with h5py.File(tmp_path / "runs" / "mine" / "trajectory.h5", "r") as f:
        config = json.loads(f.attrs["config"])
        iterations, known, loss = f["iteration"][()], f["batch_loss_known"][()], f["batch_loss"][()]
    np.testing.assert_array_equal(iterations, np.arange(49))  # 2 epochs of 24 batches, every step, and the end
    assert known[:-1].all() and not known[-1] and loss[-2] < loss[0]  # it learns
    assert config["source"]["kind"] == "recorded" and config["source"]["optimizer"]["class"] == "Adam"
    assert "train" not in config and config["model"] == {"name": "custom", "entry_point": "own_loop:net"}
    results = tmp_path / "results"
    folder = results / "mine"
    assert (folder / "trajectory.h5").is_file() and not (results / "digits-lenet-lr0.05-bs64-e6-m0.9-s0").exists()
    for pattern in ("landscape/pca-*/contour.png", "landscape/hessian-*/surface.png", "spectra/*/spectra.h5",
                    "videos/*/training.mp4"):
        assert list(folder.glob(pattern)), pattern
    assert (results / "report.html").stat().st_size > 0
