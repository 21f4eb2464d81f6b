"""Recording a user's own training loop (``gradvis_steps.record``): a loop that does the train step's SGD gives its
trajectory bitwise (parameters, buffers, layout, iterations, epochs, batch losses); the recorder appends on resume
and refuses steps that do not increase; attached to the optimizer it records every step; a checkpoint without a
known batch loss is analysed, not skipped as diverged.

The reference runs are the train step's own (``python -m gradvis_steps.train``) on the digits: a ResNet-8 of width 2
(batch-norm buffers) for two epochs of 6 steps."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from step_helpers import step as run_step

from gradvis_steps import directions, landscape, spectrum
from gradvis_steps import train as train_step
from gradvis_steps.backends import backend
from gradvis_steps.backends.torch.training import epoch_permutation
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory, partial_path

MODEL = {"name": "resnet", "depth": 8, "width": 2}
LR, MOMENTUM, DECAY, SEED, BATCH, EPOCHS = 0.05, 0.9, 1e-4, 3, 256, 2


def trained(path):
    """The train step's run that the user loops below repeat."""
    run_step(train_step, "--dataset", "digits", "--model", "resnet", "--model-option", "depth=8",
             "--model-option", "width=2", "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", LR, "--momentum", MOMENTUM,
             "--weight-decay", DECAY, "--seed", SEED, "--no-progress", "--out", path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # a module fixture runs before conftest's per-test thread setting: pin the threads the tests' loops use (2), as
    # a thread count left by an earlier test would change the rounding of the reference run
    folder = tmp_path_factory.mktemp("reference")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return {1: trained(folder / "every1.h5")}
    finally:
        torch.set_num_threads(previous)


def user_setup(digits):
    """What a user's script does: the same model init (the backend's build), data and SGD as the train step."""
    model = backend("torch").build_model({"model": MODEL, "train": {"seed": SEED}}, digits)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    return model, optimizer, torch.as_tensor(digits.x_train), torch.as_tensor(digits.y_train).long()


def recorder(path, model, optimizer, every: int = 1):
    from gradvis_steps.record import Recorder

    return Recorder(path, model, model_spec=MODEL, dataset_spec="digits", every=every, optimizer=optimizer)


def user_loop(rec, model, optimizer, x, y, *, epochs=range(EPOCHS), start: int = 0, hooked: bool = False) -> int:
    """The train step's loop written as a user would: record theta_t before the forward pass, then its batch loss."""
    step = start
    for epoch in epochs:
        order = epoch_permutation(len(x), SEED, epoch)
        if hooked:
            rec.epoch = epoch
        for begin in range(0, len(x), BATCH):
            if not hooked:
                rec.record(step, epoch=epoch)
            batch = order[begin:begin + BATCH]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            rec.batch_loss(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return step


SERIES = ("params", "buffers", "iteration", "epoch", "batch_loss", "batch_loss_known")


def assert_same_trajectory(recorded, reference, rows=slice(None)) -> None:
    """Every stored series (of the reference's ``rows``) and both layouts equal bitwise (NaN where the loss is not
    known)."""
    with h5py.File(recorded) as a, h5py.File(reference) as b:
        for name in SERIES:
            np.testing.assert_array_equal(a[name][()], b[name][()][rows], err_msg=name, strict=True)
        for name in ("layout", "buffer_layout"):
            assert a.attrs[name] == b.attrs[name], name


def test_a_user_loop_with_the_train_steps_sgd_records_its_trajectory_bitwise(reference, digits, tmp_path):
    for every in (1, 3):
        path = tmp_path / f"mine{every}.h5"
        model, optimizer, x, y = user_setup(digits)
        with recorder(path, model, optimizer, every) as rec:
            final = user_loop(rec, model, optimizer, x, y)
            rec.record(final, force=True)
        assert not partial_path(path).exists()
        # the train step with --checkpoint-every 3 stores rows 0, 3, ..., 12 of its every-step run (the same steps)
        assert_same_trajectory(path, reference[1], rows=slice(None, None, every))
    with Trajectory(path) as mine, Trajectory(reference[1]) as theirs:
        assert "train" not in mine.config and mine.config["model"] == theirs.config["model"]
        assert mine.config["source"] == {"kind": "recorded", "every": 3, "optimizer": {"class": "SGD", "param_groups": [
            {**mine.config["source"]["optimizer"]["param_groups"][0], "lr": LR, "momentum": MOMENTUM,
             "weight_decay": DECAY}]}}
        assert mine.config["loss"] == {"name": "cross_entropy"} and mine.config["framework"] == "torch"


def test_the_recorder_resumes_to_the_uninterrupted_recording(reference, digits, tmp_path):
    path = tmp_path / "resumed.h5"
    model, optimizer, x, y = user_setup(digits)
    rec = recorder(path, model, optimizer)
    step = user_loop(rec, model, optimizer, x, y, epochs=[0])
    rec.close(commit=False)  # interrupted after the first epoch: only the .partial file
    assert partial_path(path).exists() and not path.exists()
    rec = recorder(path, model, optimizer)
    assert rec.epoch == 0 and rec.session.last_step == step - 1
    with pytest.raises(ValueError, match=f"step {step - 1} does not come after the last step recorded, {step - 1}"):
        rec.record(step - 1)
    final = user_loop(rec, model, optimizer, x, y, epochs=[1], start=step)
    rec.record(final)
    rec.close()
    assert_same_trajectory(path, reference[1])
    # a committed file is appended to as well; another run config is one clear error
    rec = recorder(path, model, optimizer)
    with pytest.raises(ValueError, match=f"step {final} does not come after the last step recorded, {final}"):
        rec.record(final)
    rec.record(final + 5, epoch=2)
    rec.close()
    with Trajectory(path) as t:
        assert t.iterations[-2:].tolist() == [final, final + 5] and t.epochs[-1] == 2
    other = torch.optim.SGD(model.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=r"cannot append to .*resumed\.h5: it records another run \(its source "
                                         r"differ\); record to another path or delete that file"):
        recorder(path, model, other)


def test_attached_to_the_optimizer_it_records_every_step(digits, tmp_path, reference):
    path = tmp_path / "hooked.h5"
    model, optimizer, x, y = user_setup(digits)
    captured = []
    optimizer.register_step_post_hook(lambda *_: captured.append(
        torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]).numpy()))
    initial = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]).numpy()
    with recorder(path, model, optimizer) as rec:
        rec.attach(optimizer)
        steps = user_loop(rec, model, optimizer, x, y, hooked=True)
    with Trajectory(path) as t:
        assert t.iterations.tolist() == list(range(steps + 1)) and len(captured) == steps
        np.testing.assert_array_equal(np.stack([t.params(i) for i in range(len(t))]),
                                      np.stack([initial, *captured]), strict=True)
    assert_same_trajectory(path, reference[1])  # the hook records what record() does (losses via batch_loss)
    # interrupted after the first epoch and continued: the same points (the one at the break keeps no loss: its
    # batch came after the first recorder closed)
    resumed = tmp_path / "hooked_resumed.h5"
    model, optimizer, x, y = user_setup(digits)
    rec = recorder(resumed, model, optimizer).attach(optimizer)
    step = user_loop(rec, model, optimizer, x, y, epochs=[0], hooked=True)
    rec.close(commit=False)
    with recorder(resumed, model, optimizer) as rec:
        rec.attach(optimizer)
        user_loop(rec, model, optimizer, x, y, epochs=[1], start=step, hooked=True)
    with Trajectory(resumed) as t, Trajectory(path) as whole:
        assert t.iterations.tolist() == whole.iterations.tolist()
        np.testing.assert_array_equal(np.stack(list(t)), np.stack(list(whole)), strict=True)
        known = whole.batch_loss_known.copy()
        known[step] = False
        assert t.batch_loss_known.tolist() == known.tolist()
    # every 5 steps of 12: 0, 5, 10 and the final point 12 (not known loss), the values of those steps
    path = tmp_path / "hooked5.h5"
    model, optimizer, x, y = user_setup(digits)
    with recorder(path, model, optimizer, every=5) as rec:
        rec.attach(optimizer)
        steps = user_loop(rec, model, optimizer, x, y, hooked=True)
    with Trajectory(path) as t, Trajectory(reference[1]) as full:
        assert t.iterations.tolist() == [0, 5, 10, 12]
        for row, iteration in enumerate(t.iterations):
            np.testing.assert_array_equal(t.params(row), full.params(int(iteration)), strict=True)
        assert t.batch_loss_known.tolist() == [True, True, True, False]


def test_bad_input_is_one_clear_error(digits, tmp_path):
    from gradvis_steps.record import Recorder

    model = backend("torch").build_model({"model": MODEL}, digits)
    with pytest.raises(ValueError, match=r"the model does not match model_spec \{'name': 'resnet', 'depth': 8, "
                                         r"'width': 4\}: parameters \['bn.bias', 'bn.weight', 'conv.weight'"):
        Recorder(tmp_path / "t.h5", model, model_spec={**MODEL, "width": 4}, dataset_spec="digits")
    with pytest.raises(ValueError, match="model_spec must be 'module:function', a built-in name or a dict"):
        Recorder(tmp_path / "t.h5", model, model_spec=3, dataset_spec="digits")
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        Recorder(tmp_path / "t.h5", model, model_spec=MODEL, dataset_spec="digits", every=0)
    rec = Recorder(tmp_path / "t.h5", model, model_spec=MODEL, dataset_spec="digits", optimizer="Adam, lr 1e-3")
    rec.record(4)
    with pytest.raises(ValueError, match="step 2 does not come after the last step recorded, 4"):
        rec.record(2)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        rec.record(-1)
    rec.close()
    with pytest.raises(ValueError, match="the recording to .*t.h5 is closed: open a new recorder to append to it"):
        rec.record(5)
    with Trajectory(tmp_path / "t.h5") as t:
        assert t.config["source"]["optimizer"] == "Adam, lr 1e-3" and t.iterations.tolist() == [4]
        assert t.batch_loss_known.tolist() == [False] and np.isnan(t.batch_loss).all()


def test_a_custom_entry_point_and_the_users_rng_are_left_alone(digits, tmp_path, monkeypatch):
    module = tmp_path / "mynets.py"
    module.write_text("import torch\n\ndef net(input_shape, num_classes):\n"
                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from gradvis_steps.record import Recorder

    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    state = torch.get_rng_state()
    rec = Recorder(tmp_path / "custom.h5", model, model_spec="mynets:net", dataset_spec="digits")
    assert torch.equal(torch.get_rng_state(), state)  # building the spec's model drew from a forked generator
    rec.record(0)
    rec.close()
    with Trajectory(tmp_path / "custom.h5") as t:
        assert t.config["model"] == {"name": "custom", "entry_point": "mynets:net"}
        np.testing.assert_array_equal(t.params(0), torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


def test_importing_the_record_module_imports_no_framework():
    code = "import sys, gradvis_steps.record; print('tensorflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- checkpoints with no known batch loss
def test_checkpoints_without_a_known_batch_loss_are_analysed_not_skipped(digits, tmp_path, capsys):
    """A run recorded without losses (every row NaN, not known): PCA, landscape and spectra use every checkpoint, and
    give what they give on the same run recorded with its losses."""
    runs = {}
    for known in (True, False):
        path = runs[known] = tmp_path / f"known_{known}.h5"
        model = backend("torch").build_model({"model": {"name": "lenet", "widths": [3, 4, 16, 12]}}, digits)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x, y = torch.as_tensor(digits.x_train[:512]), torch.as_tensor(digits.y_train[:512]).long()
        from gradvis_steps.record import Recorder

        with Recorder(path, model, model_spec={"name": "lenet", "widths": [3, 4, 16, 12]}, dataset_spec="digits",
                      optimizer=optimizer) as rec:
            for step in range(6):
                batch = slice(64 * step, 64 * step + 64)
                rec.record(step)
                loss = F.cross_entropy(model(x[batch]), y[batch])
                if known:
                    rec.batch_loss(loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            rec.record(6)
    with Trajectory(runs[False]) as t:
        assert not t.batch_loss_known.any() and np.isnan(t.batch_loss).all() and len(t) == 7
    results = {}
    for known, path in runs.items():
        pca = tmp_path / f"pca_{known}.h5"
        run_step(directions, "--trajectory", path, "--method", "pca", "--out", pca)
        grid = tmp_path / f"landscape_{known}.h5"
        run_step(landscape, "--trajectory", path, "--directions", pca, "--resolution", 3, "--eval-fraction", 0.05,
                 "--no-progress", "--out", grid)
        spectra = tmp_path / f"spectra_{known}.h5"
        run_step(spectrum, "--trajectory", path, "--iterations", 0, 3, 6, "--k", 2, "--m", 4, "--eval-fraction", 0.05,
                 "--no-progress", "--out", spectra)
        results[known] = (load_directions_file(pca), load_landscape(grid), load_spectra(spectra))
    assert "skipped" not in capsys.readouterr().err
    for (pca, grid, spectra), (pca_ref, grid_ref, spectra_ref) in [(results[False], results[True])]:
        assert pca.skipped == [] and grid.skipped == [] and spectra.skipped == {}
        np.testing.assert_array_equal(pca.vectors, pca_ref.vectors)
        np.testing.assert_array_equal(grid.checkpoint_loss, grid_ref.checkpoint_loss)
        assert np.isfinite(grid.checkpoint_loss).all() and len(grid.checkpoint_loss) == 7
        assert sorted(spectra.entries) == sorted(spectra_ref.entries) == [0, 3, 6]
    json.dumps(results[False][0].skipped)
