"""Trainer options: the learning-rate schedule against its closed form and torch's own schedulers, torch's Adam and
AdamW steps against a numpy re-implementation, bad settings in one line, and a run interrupted and resumed from its
``.partial`` file equal to the uninterrupted run, bitwise, for every optimizer and schedule in both frameworks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from step_helpers import interrupt_after

from gradvis_steps.backends import backend
from gradvis_steps.backends.torch.flat import flatten_parameters
from gradvis_steps.backends.torch.models import MLP
from gradvis_steps.backends.torch.training import epoch_permutation
from gradvis_steps.core.training import TrainingDiverged, TrainingPoint, TrainSettings, learning_rate
from gradvis_steps.data.base import ArrayDataset
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter

LENET = {"name": "lenet", "widths": [2, 3, 8, 6]}


# ------------------------------------------------------------------------------------------------------- schedule
def test_schedules_follow_their_closed_forms():
    base = {"lr": 0.2, "epochs": 1}
    rates = [learning_rate(TrainSettings(**base, warmup=4), t, 10) for t in range(10)]
    assert rates[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2], rel=1e-15) and rates[4:] == [0.2] * 6
    step = TrainSettings(**base, schedule="step", step_every=3, step_gamma=0.5, warmup=2)
    assert [learning_rate(step, t, 12) for t in range(12)] == pytest.approx(
        [0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025], rel=1e-15)
    cosine = TrainSettings(**base, schedule="cosine", min_lr=0.02, warmup=5)
    total = 25  # after the warm-up: 20 iterations from lr down to min_lr
    assert learning_rate(cosine, 5, total) == pytest.approx(0.2, rel=1e-15)
    assert learning_rate(cosine, 15, total) == pytest.approx(0.11, rel=1e-15)  # halfway: the mean of the two
    assert learning_rate(cosine, 25, total) == pytest.approx(0.02, rel=1e-15)  # the final point, no step from it
    assert learning_rate(TrainSettings(lr=0.01), 123, 1000) == 0.01  # the default: lr itself, every iteration


def _torch_rates(scheduler_of, steps: int, lr: float = 0.2) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = scheduler_of(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_equal_torchs_schedulers():
    """Warm-up = LinearLR(1/W .. 1 over W - 1 steps), then StepLR or CosineAnnealingLR (recursive forms: to 1e-12)."""
    sched = torch.optim.lr_scheduler
    warm = TrainSettings(lr=0.2, warmup=7)
    np.testing.assert_allclose([learning_rate(warm, t, 50) for t in range(7)],
                               _torch_rates(lambda o: sched.LinearLR(o, 1 / 7, 1.0, total_iters=6), 7), rtol=1e-12)
    step = TrainSettings(lr=0.2, schedule="step", step_every=4, step_gamma=0.3, warmup=7)
    np.testing.assert_allclose([learning_rate(step, t, 50) for t in range(7, 50)],
                               _torch_rates(lambda o: sched.StepLR(o, 4, 0.3), 43), rtol=1e-12)
    cosine = TrainSettings(lr=0.2, schedule="cosine", min_lr=0.01, warmup=7)
    np.testing.assert_allclose([learning_rate(cosine, t, 50) for t in range(7, 50)],
                               _torch_rates(lambda o: sched.CosineAnnealingLR(o, 43, 0.01), 43), rtol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": "adm"}, "optimizer must be one of sgd, adam, adamw, got 'adm'"),
        ({"schedule": "linear"}, "schedule must be one of constant, step, cosine, got 'linear'"),
        ({"schedule": "step"}, "schedule step needs step_every, an integer >= 1 (iterations between decays), got None"),
        ({"warmup": -1}, "warmup must be an integer >= 0 (iterations), got -1"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1), got 1.0"),
        ({"eps": 0.0}, "eps must be > 0, got 0.0"),
        ({"step_gamma": 2.0}, "step_gamma must be in (0, 1], got 2.0"),
        ({"min_lr": 0.5}, "min_lr must be in [0, lr = 0.01], got 0.5"),
    ],
)
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError) as error:
        TrainSettings(**options)
    assert str(error.value) == message


def test_divergence_names_the_scheduled_learning_rate():
    settings = TrainSettings(lr=0.4, schedule="cosine", warmup=10, epochs=3)
    point = TrainingPoint(np.zeros(2, np.float32), np.zeros(0), 5, 0, float("nan"))
    text = str(TrainingDiverged(point, "batch loss nan", settings, 5, None, total=100))
    assert "(lr 0.2 at the step before it; schedule cosine, warm-up 10, peak lr 0.4)" in text  # lr_4 = 0.4 * 5 / 10
    plain = TrainingDiverged(point, "batch loss nan", TrainSettings(lr=0.4), 5, None, total=100)
    assert plain.describe().endswith("batch loss nan (lr 0.4)")


# ------------------------------------------------------------------------------------------ Adam against numpy
def _numpy_adam(theta: np.ndarray, x: np.ndarray, y: np.ndarray, settings: TrainSettings, orders: list[np.ndarray],
                total: int) -> list[np.ndarray]:
    """Float64 Adam/AdamW (Kingma & Ba with bias corrections; AdamW: Loshchilov & Hutter's decoupled decay) of the
    linear softmax model logits = x W^T + b, theta = [W (10 x 64) row-major, b]; the points theta_0..theta_total."""
    theta = theta.astype(np.float64)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    points, t = [theta.copy()], 0
    x = x.reshape(len(x), -1).astype(np.float64)
    for order in orders:
        for start in range(0, len(x), settings.batch_size):
            if t == total:
                break
            batch = order[start:start + settings.batch_size]
            w, b = theta[:640].reshape(10, 64), theta[640:]
            logits = x[batch] @ w.T + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(batch)), y[batch]] -= 1  # d(mean cross-entropy)/d logits, times the batch size
            g = np.concatenate([(p.T @ x[batch]).ravel(), p.sum(axis=0)]) / len(batch)
            lr = learning_rate(settings, t, total)
            t += 1
            if settings.optimizer == "adamw":
                theta = theta * (1 - lr * settings.weight_decay)
            else:
                g = g + settings.weight_decay * theta
            m = settings.beta1 * m + (1 - settings.beta1) * g
            v = settings.beta2 * v + (1 - settings.beta2) * g * g
            m_hat, v_hat = m / (1 - settings.beta1 ** t), v / (1 - settings.beta2 ** t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + settings.eps)
            points.append(theta.copy())
    return points


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_torch_adam_follows_a_numpy_implementation(tmp_path, digits, optimizer):
    data = ArrayDataset("digits", digits.x_train[:150], digits.y_train[:150], 10)
    settings = TrainSettings(epochs=2, batch_size=64, lr=0.05, seed=2, optimizer=optimizer, weight_decay=0.1,
                             beta1=0.8, beta2=0.99, eps=1e-6, schedule="cosine", warmup=2)
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, hidden=())  # the linear softmax model: its gradient is written out above
    theta0 = flatten_parameters(model).numpy()
    torch_backend = backend("torch")
    writer = TrajectoryWriter(tmp_path / "t.h5", torch_backend.parameter_layout(model),
                              torch_backend.buffer_layout(model), {"test": optimizer}, {})
    torch_backend.train(model, data, settings, writer, device="cpu", progress=False)
    writer.commit()
    orders = [epoch_permutation(150, 2, epoch).numpy() for epoch in range(2)]
    expected = _numpy_adam(theta0, data.x_train, data.y_train, settings, orders, total=6)
    with Trajectory(tmp_path / "t.h5") as traj:
        assert len(traj) == 7
        for i, point in enumerate(expected):
            # float32 training vs float64: steps of size ~lr, agreeing to float32 rounding of theta
            np.testing.assert_allclose(traj.params(i), point, rtol=1e-5, atol=1e-6)
        moved = np.abs(traj.params(6) - theta0)
    assert moved.max() > 0.1  # Adam moved the weights several steps of ~lr


# ------------------------------------------------------------------------------------------- bitwise resume
COMBINATIONS = [(o, s) for o in ("sgd", "adam", "adamw") for s in ("step", "cosine")]


def _settings(optimizer: str, schedule: str) -> TrainSettings:
    return TrainSettings(epochs=3, batch_size=128, lr=0.02 if optimizer != "sgd" else 0.1, seed=1,
                         optimizer=optimizer, schedule=schedule, step_every=5, step_gamma=0.5, min_lr=0.001,
                         warmup=3, weight_decay=0.01, max_iterations=30)


def _train(framework: str, path, data, settings: TrainSettings, fail_after: int | None):
    """A small LeNet trained once, or interrupted after ``fail_after`` checkpoints and resumed from ``.partial``
    (the resumed process starts from other initial weights, as a fresh one would)."""
    chosen = backend(framework)
    config = {"framework": framework, "model": LENET, "dataset": {"name": "digits"}, "train": {"seed": 1}}

    def fresh(seed: int):
        model = chosen.build_model({**config, "train": {"seed": seed}}, data)
        return model, TrajectoryWriter(path, chosen.parameter_layout(model), chosen.buffer_layout(model), config,
                                       {}, resume=seed != 1)

    model, writer = fresh(1)
    if fail_after is not None:
        interrupt_after(writer, fail_after)
        with pytest.raises(KeyboardInterrupt):
            chosen.train(model, data, settings, writer, device=chosen.resolve_device("cpu"), progress=False)
        writer.close()
        model, writer = fresh(77)
    chosen.train(model, data, settings, writer, device=chosen.resolve_device("cpu"), progress=False)
    writer.commit()
    with h5py.File(path) as f:
        return {name: f[name][()] for name in ("params", "buffers", "batch_loss", "iteration", "epoch")}


@pytest.fixture(scope="module")
def small_digits(digits):
    return ArrayDataset("digits", digits.x_train[:300], digits.y_train[:300], 10)  # 3 batches of 128 an epoch


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize(("optimizer", "schedule"), COMBINATIONS, ids=[f"{o}-{s}" for o, s in COMBINATIONS])
def test_a_resumed_run_equals_the_uninterrupted_one_bitwise(tmp_path, small_digits, framework, optimizer, schedule):
    if framework == "tensorflow":
        pytest.importorskip("tensorflow")
    settings = _settings(optimizer, schedule)
    full = _train(framework, tmp_path / "full.h5", small_digits, settings, None)
    resumed = _train(framework, tmp_path / "resumed.h5", small_digits, settings, fail_after=5)  # dies in epoch 2
    assert len(full["params"]) == 10  # 3 epochs x 3 steps + the final point
    assert not np.array_equal(full["params"][3], full["params"][-1])
    for name, values in full.items():
        assert values.tobytes() == resumed[name].tobytes(), name


#: runs the train step for each argument list given as JSON; with a kill count, the process SIGKILLs itself (no
#: cleanup, the file left open) when the trajectory is about to take checkpoint number KILL + 1
KILLABLE = """
import json, os, signal, sys
from gradvis_steps import train
from gradvis_steps.storage import trajectory
kill, calls, append = int(sys.argv[1]), [0], trajectory.TrajectoryWriter.append
def killing_append(self, *args, **kwargs):
    calls[0] += 1
    if kill and calls[0] > kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return append(self, *args, **kwargs)
trajectory.TrajectoryWriter.append = killing_append
for argv in json.loads(sys.argv[2]):
    assert train.main(argv) == 0
"""


def test_killed_runs_resume_bitwise(tmp_path, digits):
    """The train step killed (SIGKILL, in its second epoch) and run again with --resume gives the file of a run in one
    go, for each optimizer (momentum, Adam's moments and step count come back from the .partial file)."""
    common = ["--dataset", "digits", "--model", "lenet", "--model-option", "widths=[2,3,8,6]", "--epochs", "2",
              "--batch-size", "128", "--lr", "0.01", "--schedule", "cosine", "--warmup", "5", "--weight-decay",
              "0.01", "--no-progress", "--device", "cpu"]
    argv = {o: [*common, "--optimizer", o] for o in ("sgd", "adam", "adamw")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process alike: thread counts change float rounding

    def start(kill: int, jobs: list[list[str]]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", KILLABLE, str(kill), json.dumps(jobs)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    per_epoch = math.ceil(len(digits.x_train) / 128)
    killed = [start(per_epoch + 5, [[*args, "--out", str(tmp_path / f"{name}.h5")]]) for name, args in argv.items()]
    for name, process in zip(argv, killed, strict=True):
        assert process.wait(timeout=300) == -signal.SIGKILL, process.stderr.read()[-2000:]
        assert (tmp_path / f"{name}.h5.partial").exists() and not (tmp_path / f"{name}.h5").exists()
    jobs = [[*args, "--resume", "--out", str(tmp_path / f"{name}.h5")] for name, args in argv.items()]
    jobs += [[*args, "--out", str(tmp_path / f"{name}-fresh.h5")] for name, args in argv.items()]
    again = start(0, jobs)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-2000:]
    for name in argv:
        with Trajectory(tmp_path / f"{name}.h5") as a, Trajectory(tmp_path / f"{name}-fresh.h5") as b:
            assert len(a) == len(b) == 2 * per_epoch + 1
            assert a.config == b.config and a.config["train"]["optimizer"] == name
            for key in ("params", "batch_loss", "iteration"):
                assert a.file[key][()].tobytes() == b.file[key][()].tobytes(), (name, key)
