"""Training: reproducible checkpoints, checkpoint spacing, resume, the trajectory file, the CLI."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from step_helpers import interrupt_after

from gradvis_steps import train as train_step
from gradvis_steps.backends.torch.flat import buffer_layout, layout_of
from gradvis_steps.backends.torch.models import ResNet
from gradvis_steps.backends.torch.training import TrainSettings, train
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter, partial_path

ARGS = ["--dataset", "digits", "--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", "2",
        "--batch-size", "128", "--lr", "0.05", "--no-progress"]


def run_train(tmp_path, name, *extra):
    out = tmp_path / f"{name}.h5"
    assert train_step.main([*ARGS, *extra, "--out", str(out)]) == 0
    return out


def test_same_seed_gives_bitwise_identical_checkpoints(tmp_path):
    a = run_train(tmp_path, "a", "--seed", "3")
    b = run_train(tmp_path, "b", "--seed", "3")
    c = run_train(tmp_path, "c", "--seed", "4")
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert fa["params"].shape == (25, fa["params"].shape[1])  # 2 epochs x 12 steps + initial point
        assert np.array_equal(fa["params"][()], fb["params"][()])
        assert np.array_equal(fa["batch_loss"][()], fb["batch_loss"][()], equal_nan=True)
        assert not np.array_equal(fa["params"][0], fc["params"][0])
        assert not np.array_equal(fa["params"][-1], fc["params"][-1])


def test_trajectory_contents_and_lazy_rows(tmp_path):
    path = run_train(tmp_path, "t", "--checkpoint-every", "5")
    with Trajectory(path) as traj:
        assert list(traj.iterations) == [0, 5, 10, 15, 20, 24]
        assert list(traj.epochs) == [0, 0, 0, 1, 1, 1]
        assert traj.file["params"].chunks == (1, traj.dim)  # one checkpoint per chunk: rows load alone
        assert np.isnan(traj.batch_loss[-1]) and np.all(np.isfinite(traj.batch_loss[:-1]))
        assert traj.config["train"]["checkpoint_every"] == 5
        assert traj.config["model"] == {"name": "lenet", "widths": [3, 4, 16, 12]}
        assert traj.provenance["versions"]["torch"] == torch.__version__
        assert "config_hash" in traj.provenance
        assert traj.params(-1).dtype == np.float32 and traj.params(-1).shape == (traj.dim,)
        assert traj.index_of_iteration(15) == 3
        with pytest.raises(ValueError, match="no checkpoint at iteration 7"):
            traj.index_of_iteration(7)
    assert not partial_path(path).exists()


def test_layout_readable_without_gradvis(tmp_path):
    import json

    path = run_train(tmp_path, "t")
    with h5py.File(path) as f:
        layout = json.loads(f.attrs["layout"])
        theta = f["params"][-1]
        total = sum(int(np.prod(entry["shape"])) for entry in layout)
        first = theta[layout[0]["offset"]:layout[0]["offset"] + int(np.prod(layout[0]["shape"]))]
        assert total == len(theta) and first.reshape(layout[0]["shape"]).shape == (3, 1, 5, 5)


def _trajectory_with_interrupt(tmp_path, digits, fail_after: int | None):
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 10, depth=8, width=2)  # batch-norm: buffers must resume too
    settings = TrainSettings(epochs=3, batch_size=256, lr=0.05, seed=1)
    config = {"settings": "resume-test"}
    out = tmp_path / "resume.h5"
    writer = TrajectoryWriter(out, layout_of(model), buffer_layout(model), config, {})
    if fail_after is not None:
        interrupt_after(writer, fail_after)
        with pytest.raises(KeyboardInterrupt):
            train(model, digits, settings, writer, progress=False)
        writer.close()
        torch.manual_seed(123)  # a fresh process would not share the old RNG state
        model = ResNet((1, 8, 8), 10, depth=8, width=2)
        writer = TrajectoryWriter(out, layout_of(model), buffer_layout(model), config, {}, resume=True)
    train(model, digits, settings, writer, progress=False)
    writer.commit()
    with Trajectory(out) as traj:
        return traj.file["params"][()], traj.file["buffers"][()], traj.iterations.copy()


def test_resume_reproduces_uninterrupted_run(tmp_path, digits):
    full = _trajectory_with_interrupt(tmp_path / "full", digits, None)
    resumed = _trajectory_with_interrupt(tmp_path / "resumed", digits, fail_after=9)  # dies in epoch 2
    for a, b in zip(full, resumed, strict=True):
        assert np.array_equal(a, b)


def test_resume_refuses_other_config(tmp_path):
    model = torch.nn.Linear(2, 2)
    writer = TrajectoryWriter(tmp_path / "x.h5", layout_of(model), [], {"a": 1}, {})
    writer.close()
    with pytest.raises(ValueError, match="different configuration"):
        TrajectoryWriter(tmp_path / "x.h5", layout_of(model), [], {"a": 2}, {}, resume=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
        (["--model", "vgg"], "unknown model 'vgg'; accepted:"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'; accepted:"),
        (["--lr", "-1"], "lr must be > 0, got -1.0"),
        (["--schedule", "step"], "schedule step needs step_every, an integer >= 1"),
        (["--warmup", "6"], "warmup 6 is not less than the run's 6 iterations"),  # digits: 6 batches of 256
        (["--model-option", "widths"], "expected key=value, got 'widths'"),
        (["--dataset", "cifar10", "--dataset-option", "root=/nonexistent"], "CIFAR-10 not found"),
    ],
)
def test_cli_rejects_bad_arguments_with_clear_message(tmp_path, argv, message):
    result = subprocess.run(
        [sys.executable, "-m", "gradvis_steps.train", "--out", str(tmp_path / "x.h5"), "--no-progress", *argv],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.h5").exists() and not partial_path(tmp_path / "x.h5").exists()


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "gradvis_steps.train", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--checkpoint-every" in result.stdout
