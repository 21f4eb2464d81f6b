"""The backend seam: the registry the steps get their framework from, the Objective and HessianOperator protocols,
and the batch reduction of the PyTorch backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_lenet

import gradvis_steps
from gradvis_steps import backends
from gradvis_steps.backends import Backend, backend, backend_for_trajectory, known_backends, register_backend
from gradvis_steps.backends.torch import BACKEND as TORCH_BACKEND
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.backends.torch.reduction import BatchReduction
from gradvis_steps.core.layout import ParameterLayout
from gradvis_steps.core.objective import (
    Evaluation,
    HessianOperator,
    Objective,
    batched_evaluation,
    batching_record,
)
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter

PACKAGE = Path(gradvis_steps.__file__).parent
FRAMEWORKS = {"torch", "tensorflow", "keras", "jax", "flax"}
#: the step modules (and their helpers) at the package root: one per rule, plus cli, provenance, ...
STEP_MODULES = sorted(PACKAGE.glob("*.py"))
#: the backends' own packages and modules (``gradvis_steps.backends.torch``, ...), which only the registry imports
BACKEND_MODULES = {f"gradvis_steps.backends.{path.stem}" for path in (PACKAGE / "backends").iterdir()
                   if path.stem != "__init__" and (path.suffix == ".py" or (path / "__init__.py").exists())}


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` in ``path`` names, relative ones resolved from the package root (``from .backends
    import torch`` gives ``gradvis_steps.backends`` and ``gradvis_steps.backends.torch``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, ["gradvis_steps", base]))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", STEP_MODULES, ids=lambda p: p.name)
def test_step_modules_import_no_framework_and_no_backend_package(path):
    for name in _imported_modules(path):
        assert name.split(".")[0] not in FRAMEWORKS, f"{path.name} imports {name}"
        inside = [module for module in BACKEND_MODULES if name == module or name.startswith(module + ".")]
        assert not inside, f"{path.name} imports {name}: get the backend from gradvis_steps.backends instead"


#: every module of the package outside ``backends/``, at any depth; ``project_template/`` holds the files ``gradvis
#: init`` copies into a user's project (a user's torch model), package data the package never imports
FRAMEWORK_FREE_MODULES = sorted(path for path in PACKAGE.rglob("*.py")
                                if not {"backends", "project_template"} & set(path.relative_to(PACKAGE).parts[:-1]))


def _framework_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of a framework in ``path``, at any level: the module's top, a function,
    a method, a branch (``ast.walk`` visits every node)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:  # relative imports stay inside the package
            names = [node.module or ""]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] in FRAMEWORKS]
    return found


def test_no_module_outside_the_backends_imports_a_framework_at_any_level():
    assert len(FRAMEWORK_FREE_MODULES) > 40  # core/, storage/, render/, data/, the steps: the whole package
    assert PACKAGE / "core" / "lanczos.py" in FRAMEWORK_FREE_MODULES
    found = [hit for path in FRAMEWORK_FREE_MODULES for hit in _framework_imports(path)]
    assert not found, f"framework imports outside gradvis_steps/backends/: {found}"


def test_the_framework_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "loop.py"
    path.write_text("import numpy\n\nclass A:\n    def f(self):\n        if True:\n            import torch.cuda\n"
                    "        from keras import ops\n\ndef g():\n    from .backends import torch\n")
    assert sorted(_framework_imports(path)) == ["loop.py:6 torch.cuda", "loop.py:7 keras"]


def test_the_import_check_sees_a_backend_import(tmp_path):
    assert "gradvis_steps.backends.torch" in BACKEND_MODULES
    path = tmp_path / "step.py"
    path.write_text("from .backends.torch import objective_for_trajectory\nfrom .backends import torch as t\n")
    assert _imported_modules(path).count("gradvis_steps.backends.torch") == 2


def test_the_registry_and_the_step_parsers_import_no_framework():
    code = ("import sys; import gradvis_steps.backends as b, gradvis_steps.train as t; "
            "import gradvis_steps.landscape, gradvis_steps.spectrum, gradvis_steps.interpolate, "
            "gradvis_steps.eigendirections; t.build_parser(); "
            "assert {'torch', 'tensorflow'} <= set(b.known_backends()); "
            "loaded = sorted(set(sys.modules) & {'torch', 'tensorflow', 'jax'}); assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------------- registry
def test_torch_backend_is_found_and_loaded_once():
    assert "torch" in known_backends()
    found = backend("torch")
    assert isinstance(found, Backend) and found.name == "torch"
    assert found is TORCH_BACKEND and backend("torch") is found


def test_unknown_framework_names_itself_and_the_known_backends():
    with pytest.raises(ValueError, match=r"'jax'.*'tensorflow', 'torch'"):
        backend("jax")


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(backends, "_loaders", dict(backends._loaders))
    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))
    return backends


def test_a_registered_backend_is_loaded_lazily_and_once(registry):
    calls = []

    def loader() -> Backend:
        calls.append(1)
        return Backend(name="fake", resolve_device=str, objective_for_trajectory=dict, build_model=dict,
                       parameter_layout=len, buffer_layout=list, train=dict)

    register_backend("fake", loader)
    assert calls == [] and "fake" in known_backends()
    assert backend("fake").name == "fake" and backend("fake") is backend("fake")
    assert calls == [1]


def test_a_loader_must_give_a_backend(registry):
    register_backend("broken", lambda: object())
    with pytest.raises(TypeError, match="broken"):
        backend("broken")


def _trajectory(path: Path, config: dict) -> Path:
    layout = ParameterLayout.from_shapes([("w", (3,), "other", None)])
    writer = TrajectoryWriter(path, layout, [], config, {})
    writer.append(np.zeros(3), np.zeros(0), iteration=0, epoch=0, batch_loss=float("nan"))
    return writer.commit()


def test_a_trajectory_gives_the_backend_of_its_framework(tmp_path):
    with Trajectory(_trajectory(tmp_path / "new.h5", {"framework": "torch"})) as traj:
        assert backend_for_trajectory(traj) is TORCH_BACKEND
    with Trajectory(_trajectory(tmp_path / "old.h5", {"dataset": {"name": "digits"}})) as traj:
        assert "framework" not in traj.config
        assert backend_for_trajectory(traj) is TORCH_BACKEND  # files from before the key: torch
    with Trajectory(_trajectory(tmp_path / "jax.h5", {"framework": "jax"})) as traj:
        with pytest.raises(ValueError, match="jax"):
            backend_for_trajectory(traj)


def test_the_tensorflow_backend_without_tensorflow_names_the_extra():
    code = ("import sys; sys.modules['tensorflow'] = None; from gradvis_steps.backends import backend\n"
            "try:\n    backend('tensorflow')\nexcept ValueError as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert "framework 'tensorflow' needs TensorFlow" in done.stdout and "gradvis[tensorflow]" in done.stdout


def test_train_offers_the_registered_frameworks():
    from gradvis_steps.train import build_parser

    assert build_parser().parse_args(["--out", "x.h5"]).framework == "torch"
    assert build_parser().parse_args(["--out", "x.h5", "--framework", "tensorflow"]).framework == "tensorflow"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x.h5", "--framework", "jax"])


# ------------------------------------------------------------------------------------------------ protocols
@pytest.fixture
def objective(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples
    return TorchObjective(tiny_lenet(), x, y, batch_size=7, dtype=torch.float64)


def test_torch_objective_and_its_operator_satisfy_the_protocols(objective):
    assert isinstance(objective, Objective)
    assert objective.device_type == "cpu"
    operator = objective.hvp_operator(objective.initial_point())
    assert isinstance(operator, HessianOperator)
    assert operator.block_size >= 1


def test_batched_evaluation_is_found_where_there_is_one(objective):
    assert batched_evaluation(objective) == objective.evaluate_many
    assert batching_record(objective) is None  # nothing evaluated yet
    theta = objective.initial_point()
    objective.evaluate_many(theta, [torch.ones_like(theta)], np.zeros((2, 1)))
    assert batching_record(objective)["mode"] == "per_point"

    class Plain:  # an objective without the capability
        pass

    assert batched_evaluation(Plain()) is None and batching_record(Plain()) is None


def test_an_object_missing_what_the_steps_call_is_no_objective(objective):
    class Partial:
        layout, hvp_mode, dim, device_type = objective.layout, "auto", objective.dim, "cpu"
        from_numpy = to_numpy = evaluate = loss = grad = hvp = hvp_operator = calibrate_hvp = staticmethod(id)

    assert not isinstance(Partial(), Objective)  # no initial_point, no set_buffers
    Partial.initial_point = Partial.set_buffers = staticmethod(id)
    assert isinstance(Partial(), Objective)


# ---------------------------------------------------------------------------------------------- reduction
def test_batch_mean_is_the_full_sum_over_the_sample_count_with_an_uneven_last_batch():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(10) % 3
    reduction = BatchReduction(x, y, batch_size=4)
    assert [len(xb) for xb, _ in reduction.batches()] == [4, 4, 2] and reduction.n_samples == 10
    assert reduction.batches() is reduction.batches()  # made once
    assert all(xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for xb, _ in reduction.batches())
    seen = []

    def per_batch(index: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append((index, yb.tolist()))
        return xb.sum(dim=0)

    mean = reduction.mean(x[0], per_batch)
    assert [index for index, _ in seen] == [0, 1, 2] and sum((labels for _, labels in seen), []) == y.tolist()
    torch.testing.assert_close(mean, x.sum(dim=0) / 10, rtol=1e-14, atol=1e-14)
    whole = torch.arange(30, dtype=torch.float64).view(10, 3)  # integers: every order of summation is exact
    assert torch.equal(BatchReduction(whole, y, 4).mean(whole[0], lambda _, xb, yb: xb.sum(dim=0)),
                       whole.sum(dim=0) / 10)


def test_loss_and_accuracy_sums_become_means():
    reduction = BatchReduction(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), batch_size=3)
    sums = torch.tensor([[4.0, 6.0], [2.0, 0.0]], dtype=torch.float64)
    assert reduction.evaluations(sums) == [Evaluation(0.5, 0.75), Evaluation(0.25, 0.0)]


def test_reduction_rejects_bad_batches():
    with pytest.raises(ValueError, match="batch_size"):
        BatchReduction(torch.zeros(3), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="labels"):
        BatchReduction(torch.zeros(3), torch.zeros(2), 2)
