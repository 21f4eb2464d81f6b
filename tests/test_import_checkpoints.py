"""The import step (gradvis_steps.import_checkpoints): a trained run's checkpoints, written as the files users save
(torch state dicts plain, nested, DDP- and Lightning-prefixed, Li et al.'s model_N.t7 folders, safetensors, Keras
.weights.h5), import as a trajectory bitwise equal to the trained one, PCA directions included; every bad file is one
error line and writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from step_helpers import fails, step

from gradvis_steps import directions as directions_step
from gradvis_steps import import_checkpoints as import_step
from gradvis_steps import train as train_step
from gradvis_steps.backends import backend
from gradvis_steps.data import load_dataset
from gradvis_steps.storage.trajectory import Trajectory

MODEL = ["--model", "resnet", "--model-option", "depth=8", "--model-option", "width=2"]  # batch norm: buffers
RUN = ["--dataset", "digits", *MODEL]
ITERATIONS = 10  # checkpoints 0..10: names model_10 after model_9 in every kind


def _train(path: Path, framework: str) -> Path:
    step(train_step, "--framework", framework, *RUN, "--batch-size", 128, "--lr", 0.05, "--seed", 0,
         "--max-iterations", ITERATIONS, "--no-progress", "--out", path)
    return path


def _import(out: Path, framework: str, *paths: object, extra: tuple = ()) -> Trajectory:
    step(import_step, "--out", out, "--framework", framework, *RUN, "--no-progress", *extra, *paths)
    return Trajectory(out)


def _same_run(imported: Trajectory, trained: Trajectory) -> None:
    """Parameters, buffers, layouts and iterations bitwise equal; no batch loss known (no divergence)."""
    assert imported.layout == trained.layout and imported.buffer_layout == trained.buffer_layout
    assert np.array_equal(imported.iterations, trained.iterations)
    assert np.array_equal(imported.file["params"][()], trained.file["params"][()])
    assert np.array_equal(imported.file["buffers"][()], trained.file["buffers"][()])
    assert imported.file["params"].dtype == np.float32 and imported.file["buffers"].dtype == np.float64
    assert not imported.batch_loss_known.any() and np.isnan(imported.batch_loss).all()
    assert imported.config["source"]["kind"] == "imported" and "train" not in imported.config
    assert imported.config["loss"] == {"name": "cross_entropy"}


def _state_dicts(trajectory: Trajectory) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """Each checkpoint as the torch model's state dict (parameters and buffers, num_batches_tracked included)."""
    from gradvis_steps.backends.torch.flat import load_flat_parameters, unflatten_buffers

    framework = backend("torch")
    model = framework.build_model(trajectory.config, load_dataset(trajectory.config["dataset"]))
    out = []
    for row, iteration in enumerate(trajectory.iterations):
        load_flat_parameters(model, torch.as_tensor(trajectory.params(row)), trajectory.layout)
        for name, value in unflatten_buffers(trajectory.buffers(row), trajectory.buffer_layout).items():
            model.get_buffer(name).copy_(value)
        out.append((int(iteration), {k: v.clone() for k, v in model.state_dict().items()}))
    return out


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch")
    trained = Trajectory(_train(folder / "trained.h5", "torch"))
    return folder, trained, _state_dicts(trained)


def _write_torch_kinds(folder: Path, states: list[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, Path]:
    """One folder per kind of file users save, each checkpoint under its iteration."""
    kinds = {name: folder / name for name in ("plain", "nested", "ddp", "lightning", "safetensors", "li_et_al")}
    for path in kinds.values():
        path.mkdir()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    for iteration, state in states:
        torch.save(state, kinds["plain"] / f"ckpt_{iteration}.pt")
        torch.save({"epoch": 1, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()},
                   kinds["nested"] / f"checkpoint-{iteration}.pth")
        torch.save({f"module.{k}": v for k, v in state.items()}, kinds["ddp"] / f"ddp_{iteration}.pth")
        torch.save({"epoch": 0, "global_step": iteration, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {f"model.{k}": v for k, v in state.items()}, "loops": {}, "callbacks": {},
                    "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
                    "hyper_parameters": {"lr": 0.05}}, kinds["lightning"] / f"epoch=0-step={iteration}.ckpt")
        save_file({k: v.numpy() for k, v in state.items()}, kinds["safetensors"] / f"model-{iteration}.safetensors")
        # Li et al.'s loss-landscape code: torch.save of {'acc', 'epoch', 'state_dict'} beside the optimizer state
        # (old torch's file format; the accuracy as a numpy scalar, which loading allows)
        torch.save({"acc": np.float64(0.5), "epoch": iteration, "state_dict": state},
                   kinds["li_et_al"] / f"model_{iteration}.t7", _use_new_zipfile_serialization=False)
        torch.save({"acc": 0.5, "epoch": iteration, "optimizer": optimizer.state_dict()},
                   kinds["li_et_al"] / f"opt_state_{iteration}.t7", _use_new_zipfile_serialization=False)
    return kinds


def test_every_torch_kind_imports_the_trained_run_bitwise(torch_run, tmp_path, capsys):
    folder, trained, states = torch_run
    kinds = _write_torch_kinds(tmp_path, states)
    for name, path in kinds.items():
        source = path if name != "safetensors" else path / "*.safetensors"  # a folder, or a glob
        imported = _import(tmp_path / f"{name}.h5", "torch", source)
        _same_run(imported, trained)
        files = imported.config["source"]["files"]
        assert all(len(f["sha256"]) == 64 for f in files) and len(files) == ITERATIONS + 1
        record = imported.provenance["files"]
        expected_prefix = {"ddp": "module.", "lightning": "model."}.get(name, "")
        assert {f["prefix_stripped"] for f in record} == {expected_prefix}
        expected_nesting = {"nested": "model_state_dict", "lightning": "state_dict", "li_et_al": "state_dict"}
        assert {f["nested_under"] for f in record} == {expected_nesting.get(name)}
        if name == "li_et_al":
            assert not any(f["name"].startswith("opt_state") for f in files)
    # the run's identity is a digest of the files' contents: another kind of file, another run
    assert Trajectory(tmp_path / "plain.h5").run["digest"] != Trajectory(tmp_path / "ddp.h5").run["digest"]


def test_pca_directions_of_an_imported_run_equal_the_trained_runs(torch_run, tmp_path):
    folder, trained, states = torch_run
    for iteration, state in states:
        torch.save(state, tmp_path / f"model_{iteration}.pth")
    _import(tmp_path / "imported.h5", "torch", tmp_path).close()
    for name, trajectory in (("trained", trained.path), ("imported", tmp_path / "imported.h5")):
        step(directions_step, "--trajectory", trajectory, "--method", "pca", "--out", tmp_path / f"{name}.dir.h5")
    with h5py.File(tmp_path / "trained.dir.h5") as a, h5py.File(tmp_path / "imported.dir.h5") as b:
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.array_equal(a[key][()], b[key][()]), key


def test_iterations_from_names_in_natural_order_or_given(tmp_path):
    for number in (10, 9, 100, 2):
        (tmp_path / f"model_{number}.pt").touch()
    (tmp_path / "opt_state_1.pt").touch()  # Li et al.'s optimizer states: skipped in folders
    found = import_step.find_checkpoints([str(tmp_path)])
    assert [(i, p.name) for i, p in found] == [(2, "model_2.pt"), (9, "model_9.pt"), (10, "model_10.pt"),
                                              (100, "model_100.pt")]
    assert import_step.find_checkpoints([str(tmp_path / "model_1*.pt")]) == [(10, tmp_path / "model_10.pt"),
                                                                              (100, tmp_path / "model_100.pt")]
    given = import_step.find_checkpoints([str(tmp_path)], [0, 5, 50, 500])
    assert [(i, p.name) for i, p in given] == [(0, "model_2.pt"), (5, "model_9.pt"), (50, "model_10.pt"),
                                              (500, "model_100.pt")]
    for iterations, what in (([0, 1, 2], "gives 3 iteration"), ([0, 5, 5, 6], "strictly increasing")):
        with pytest.raises(ValueError, match=what):
            import_step.find_checkpoints([str(tmp_path)], iterations)
    mixed = tmp_path / "lightning"  # Lightning's checkpoint folder: last.ckpt beside epoch=E-step=S.ckpt
    mixed.mkdir()
    for name in ("epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt"):
        (mixed / name).touch()
    with pytest.raises(ValueError, match=r"2 name patterns \(epoch=\{N\}-step=\{N\}.ckpt, last.ckpt\)"):
        import_step.find_checkpoints([str(mixed)])
    assert [i for i, _ in import_step.find_checkpoints([str(mixed / "epoch=*")])] == [10, 20]


def test_files_without_numbers_import_with_given_iterations(torch_run, tmp_path):
    folder, trained, states = torch_run
    rows = (0, 5, 10)
    for name, row in zip(("a_start", "b_middle", "c_end"), rows, strict=True):
        torch.save(states[row][1], tmp_path / f"{name}.pt")
    paths = [str(tmp_path / "c_end.pt"), str(tmp_path / "[ab]_*.pt")]  # given in any order: natural order of names
    spec = {"framework": "torch", "dataset": {"name": "digits"}, "model": {"name": "resnet", "depth": 8, "width": 2}}
    assert [i for i, _ in import_step.check_checkpoints(paths, **spec, iterations=[0, 50, 100])] == [0, 50, 100]
    imported = _import(tmp_path / "given.h5", "torch", *paths, extra=("--iterations", 0, 50, 100, "--"))
    assert imported.iterations.tolist() == [0, 50, 100]
    assert [f["name"] for f in imported.config["source"]["files"]] == ["a_start.pt", "b_middle.pt", "c_end.pt"]
    for index, row in enumerate(rows):
        assert np.array_equal(imported.params(index), trained.params(row))
        assert np.array_equal(imported.buffers(index), trained.buffers(row))


def test_float64_files_are_rounded_with_a_record(torch_run, tmp_path, capsys):
    folder, trained, states = torch_run
    for iteration, state in states:
        torch.save({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
                   tmp_path / f"model_{iteration}.pt")
    capsys.readouterr()
    imported = _import(tmp_path / "imported.h5", "torch", tmp_path)
    assert "warning: rounded float64 parameters to float32" in capsys.readouterr().err
    _same_run(imported, trained)  # the values were float32 before: rounding them back is exact
    rounded = imported.provenance["conversions"]["float64_to_float32"]
    assert sorted(rounded) == sorted(f"model_{i}.pt" for i, _ in states)
    assert rounded["model_0.pt"] == [spec.name for spec in trained.layout]


def _bad_torch_files(folder: Path, state: dict[str, torch.Tensor]) -> list[tuple[Path, list[str]]]:
    """(file, words its error line must hold), each in a folder of its own."""
    cases = []

    def case(name: str, words: list[str]) -> Path:
        path = folder / f"case{len(cases)}" / name
        path.parent.mkdir()
        cases.append((path, [path.name, *words]))
        return path

    first = next(iter(state))
    torch.save({k: v for k, v in state.items() if k != first}, case("missing_1.pt", ["missing 1 key", first]))
    torch.save({**state, "head.extra": torch.zeros(3)}, case("extra_1.pt", ["unexpected 1 key", "head.extra"]))
    torch.save({**state, first: torch.zeros(1, 2, 3)}, case("shape_1.pt", ["shape mismatch", first, "(1, 2, 3)"]))
    for path, _ in cases:  # a good checkpoint before the bad one: a row is written to <out>.partial first
        torch.save(state, path.with_name(path.name.replace("_1", "_0")))
    case("unreadable_1.pt", ["not a readable torch checkpoint"]).write_bytes(b"not a checkpoint at all")
    good = folder / "good.pt"
    torch.save(state, good)
    case("truncated_1.pth", ["truncated"]).write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    model = backend("torch").build_model({"model": {"name": "resnet", "depth": 8, "width": 2}},
                                         load_dataset("digits"))
    torch.save(model, case("wholemodel_1.pt", ["refused", "ResNet", "torch.save(model.state_dict()"]))
    save_file({k: v.numpy() for k, v in state.items()}, good.with_suffix(".safetensors"))
    case("truncated_1.safetensors", ["not a readable safetensors"]).write_bytes(
        good.with_suffix(".safetensors").read_bytes()[:100])
    twice = case("twice_3.pt", ["twice_03.pt", "twice_3.pt", "one iteration number (3)"])
    torch.save(state, twice)
    torch.save(state, twice.with_name("twice_03.pt"))
    torch.save(state, case("final.pt", ["without a number", "--iterations"]))
    case("keras_1.weights.h5", ["Keras .weights.h5 files: --framework tensorflow"]).write_bytes(b"")
    good.unlink()
    good.with_suffix(".safetensors").unlink()
    return cases


def test_every_bad_file_is_one_line_and_writes_nothing(torch_run, tmp_path, capsys):
    folder, trained, states = torch_run
    out = tmp_path / "out"
    out.mkdir()
    for path, words in _bad_torch_files(tmp_path, states[0][1]):
        error = fails(import_step, ["--out", out / "trajectory.h5", "--framework", "torch", *RUN, "--no-progress",
                                    path.parent], capsys)
        assert all(word in error for word in words), (words, error)
        assert list(out.iterdir()) == [], error
        with pytest.raises(ValueError, match=re.escape(path.name)):  # the pre-flight check finds it too
            import_step.check_checkpoints([str(path.parent)], framework="torch", dataset={"name": "digits"},
                                          model={"name": "resnet", "depth": 8, "width": 2})


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("keras")
    return folder, Trajectory(_train(folder / "trained.h5", "tensorflow"))


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_weights_files_import_the_trained_run_bitwise(keras_run, tmp_path, capsys):
    from gradvis_steps.backends.tensorflow.flat import load_buffers, load_flat_parameters

    folder, trained = keras_run
    model = backend("tensorflow").build_model(trained.config, load_dataset("digits"))
    (tmp_path / "h5").mkdir()
    (tmp_path / "st").mkdir()
    for row, iteration in enumerate(trained.iterations):
        load_flat_parameters(model, trained.params(row))
        load_buffers(model, trained.buffers(row), trained.buffer_layout)
        model.save_weights(tmp_path / "h5" / f"weights_{iteration}.weights.h5")  # what Keras users save
        save_file({v.path: np.asarray(v.numpy()) for v in model.variables},
                  tmp_path / "st" / f"weights_{iteration}.safetensors")
    for kind in ("h5", "st"):
        imported = _import(tmp_path / f"{kind}.h5", "tensorflow", tmp_path / kind)
        _same_run(imported, trained)
        step(directions_step, "--trajectory", imported.path, "--method", "pca", "--out", tmp_path / f"{kind}.dir.h5")
    step(directions_step, "--trajectory", trained.path, "--method", "pca", "--out", tmp_path / "trained.dir.h5")
    with h5py.File(tmp_path / "trained.dir.h5") as a, h5py.File(tmp_path / "h5.dir.h5") as b:
        assert np.array_equal(a["directions"][()], b["directions"][()])

    # another model's weights file, and a truncated one: one line naming the file (and the keys), nothing written
    other = backend("tensorflow").build_model({"model": {"name": "mlp"}}, load_dataset("digits"))
    (tmp_path / "bad").mkdir()
    other.save_weights(tmp_path / "bad" / "mlp_1.weights.h5")
    out = tmp_path / "out"
    out.mkdir()
    error = fails(import_step, ["--out", out / "t.h5", "--framework", "tensorflow", *RUN, "--no-progress",
                                tmp_path / "bad"], capsys)
    assert "mlp_1.weights.h5: does not match the model" in error and "layers/dense/vars/0" in error, error
    good = tmp_path / "h5" / "weights_0.weights.h5"
    (tmp_path / "bad" / "mlp_1.weights.h5").write_bytes(good.read_bytes()[:2000])
    error = fails(import_step, ["--out", out / "t.h5", "--framework", "tensorflow", *RUN, "--no-progress",
                                tmp_path / "bad"], capsys)
    assert "mlp_1.weights.h5: not a readable Keras weights file" in error, error
    assert list(out.iterdir()) == []


def test_help_and_the_run_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        import_step.main(["--help"])
    assert exit_.value.code == 0 and "--iterations" in capsys.readouterr().out
    config = import_step.run_config("torch", {"name": "digits"}, {"name": "lenet"}, {"name": "mse"},
                                    [(0, tmp_path / "a_0.pt")], ["ab" * 32])
    assert json.loads(json.dumps(config)) == {
        "framework": "torch", "dataset": {"name": "digits"}, "model": {"name": "lenet"}, "loss": {"name": "mse"},
        "source": {"kind": "imported", "files": [{"name": "a_0.pt", "sha256": "ab" * 32}], "iterations": [0]}}
