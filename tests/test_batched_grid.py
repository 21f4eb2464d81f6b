"""Many grid points in one vectorized forward pass (backends/torch/batched_points.py) against the per-point path
and a plain forward pass of the model with the point's weights loaded; the auto choice and its fallback."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_bn_net, tiny_lenet
from torch import nn

from gradvis_steps import landscape
from gradvis_steps import train as train_step
from gradvis_steps.backends.torch import batched_points
from gradvis_steps.backends.torch import plane as plane_module
from gradvis_steps.backends.torch.batched_points import BatchedPoints, forward_peak_bytes
from gradvis_steps.backends.torch.flat import load_flat_parameters
from gradvis_steps.backends.torch.models import MLP
from gradvis_steps.backends.torch.objective import TorchObjective
from gradvis_steps.storage.landscape import load_landscape


def tiny_mlp() -> nn.Module:
    """No shortcut: its first Linear sees the flattened batch, not the batch itself."""
    torch.manual_seed(2)
    return MLP((1, 8, 8), 10, hidden=(12, 9)).double()


MODELS = {"lenet": tiny_lenet, "mlp": tiny_mlp, "resnet_bn": tiny_bn_net}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _calibrate_on_cpu(monkeypatch):
    """These tests exercise the calibration on the CPU, where "auto" otherwise keeps the per-point path untimed."""
    monkeypatch.setattr(batched_points, "CALIBRATE_ON_CPU", True)


@pytest.fixture
def eval_data(digits):
    x, y = digits.evaluation_subset(0.02, seed=3)  # 30 samples: batches of 7 leave an uneven last one of 2
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)


def _plane(objective: TorchObjective, dims: int, n_points: int = 10):
    g = torch.Generator().manual_seed(0)
    dirs = [0.3 * torch.randn(objective.dim, generator=g, dtype=torch.float64) for _ in range(dims)]
    coeffs = np.random.default_rng(dims).uniform(-2.0, 2.0, (n_points, dims))
    coeffs[0] = 0.0  # the center itself
    return objective.initial_point(), dirs, coeffs


def _objective(make_model, eval_data, mode: str, dtype=torch.float64, **kwargs) -> TorchObjective:
    x, y = eval_data
    return TorchObjective(make_model(), x, y, batch_size=7, dtype=dtype, grid_batching=mode, **kwargs)


def _chunks_of(objective: TorchObjective, points: int) -> None:
    """A memory budget that holds ``points`` points (and a half) per vectorized call."""
    objective.grid_memory_mb = (points + 0.5) * objective.grid_evaluator.batched.bytes_per_point() / 2**20


def _spy(monkeypatch, owner, name: str) -> list:
    """Record the calls of ``owner.name`` (their point counts), calling through."""
    calls = []
    original = getattr(owner, name)

    def spy(self, center, dirs, coeffs, *rest):
        calls.append(len(coeffs))
        return original(self, center, dirs, coeffs, *rest)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_vmapped_points_equal_the_per_point_path(name, dims, dtype, eval_data, monkeypatch):
    """10 points in vectorized calls of 3 (3 + 3 + 3 + 1) over batches of 7, 7, 7, 7 and 2 samples."""
    per_point = _objective(MODELS[name], eval_data, "per_point", dtype)
    vmapped = _objective(MODELS[name], eval_data, "vmap", dtype)
    center, dirs, coeffs = _plane(per_point, dims)
    _chunks_of(vmapped, 3)
    chunks = _spy(monkeypatch, BatchedPoints, "evaluate")
    got = vmapped.evaluate_many(center, dirs, coeffs)
    assert chunks == [3, 3, 3, 1]
    assert vmapped.grid_batching["mode"] == "vmap" and vmapped.grid_batching["points_per_call"] == 3
    assert (name != "mlp") == (vmapped.plane_for(center, [d.to(dtype) for d in dirs]) is not None)
    expected = per_point.evaluate_many(center, dirs, coeffs)
    assert chunks == [3, 3, 3, 1]  # the per-point objective never ran the vectorized path
    losses = np.array([e.loss for e in expected])
    assert len(np.unique(losses.round(3))) == len(coeffs)  # distinct points: a mixed-up order would show
    np.testing.assert_allclose([e.loss for e in got], losses, rtol=TOLERANCE[dtype], atol=0)
    flips = np.abs(np.array([e.accuracy for e in got]) - [e.accuracy for e in expected]) * len(eval_data[1])
    # float64: the same predictions; float32: a sample whose two top logits tie to rounding may flip
    assert flips.max() == 0 if dtype == torch.float64 else flips.max() <= 1 + 1e-9


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vmapped_points_equal_the_models_own_forward_pass(name, eval_data):
    """Independent truth: a copy of the user's model with each point's weights loaded, one plain forward pass."""
    x, y = eval_data
    model = MODELS[name]()
    objective = TorchObjective(model, x, y, batch_size=7, dtype=torch.float64, grid_batching="vmap")
    center, dirs, coeffs = _plane(objective, 2, n_points=5)
    got = objective.evaluate_many(center, dirs, coeffs)
    plain = copy.deepcopy(model).eval()
    for (a, b), result in zip(coeffs, got, strict=True):
        load_flat_parameters(plain, center + a * dirs[0] + b * dirs[1])
        with torch.no_grad():
            logits = plain(x)
        assert result.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
        assert result.accuracy == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-15)


def test_vmapped_points_without_the_input_layer_shortcut(eval_data, monkeypatch):
    monkeypatch.setattr(plane_module, "PLANE_BUFFER_ELEMENTS", 0)  # over budget: every layer runs vmapped
    vmapped = _objective(tiny_lenet, eval_data, "vmap")
    center, dirs, coeffs = _plane(vmapped, 2)
    got = vmapped.evaluate_many(center, dirs, coeffs)
    assert vmapped.plane_for(center, dirs) is None
    monkeypatch.undo()
    expected = _objective(tiny_lenet, eval_data, "per_point").evaluate_many(center, dirs, coeffs)
    for a, b in zip(got, expected, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.accuracy == b.accuracy


def test_each_mode_takes_its_path_and_records_it(eval_data, monkeypatch):
    vectorized = _spy(monkeypatch, BatchedPoints, "evaluate")
    one_by_one = _spy(monkeypatch, TorchObjective, "evaluate_per_point")
    objective = _objective(tiny_lenet, eval_data, "per_point")
    center, dirs, coeffs = _plane(objective, 2, n_points=5)
    objective.evaluate_many(center, dirs, coeffs)
    assert one_by_one == [5] and vectorized == []
    assert objective.grid_batching["mode"] == "per_point" and objective.grid_batching["requested"] == "per_point"

    objective.grid_batching_mode = "vmap"  # the override may change between calls
    objective.evaluate_many(center, dirs, coeffs)
    assert one_by_one == [5] and vectorized == [5]
    assert objective.grid_batching["mode"] == "vmap" and objective.grid_batching["bytes_per_point"] > 0


def test_bad_modes_are_named(eval_data):
    with pytest.raises(ValueError, match="grid_batching 'fast' is not one of 'auto', 'vmap', 'per_point'"):
        _objective(tiny_lenet, eval_data, "fast")
    objective = _objective(tiny_lenet, eval_data, "auto")
    objective.grid_batching_mode = "VMAP"
    center, dirs, coeffs = _plane(objective, 2, n_points=3)
    with pytest.raises(ValueError, match="grid_batching 'VMAP' is not one of 'auto', 'vmap', 'per_point'"):
        objective.evaluate_many(center, dirs, coeffs)
    with pytest.raises(SystemExit):
        landscape.build_parser().parse_args(["--trajectory", "t", "--directions", "d", "--out", "o",
                                             "--grid-batching", "fast"])


class VirtualClock:
    """``batched_points.clock`` advancing only by the costs charged to each path: the calibration sees exactly
    these per-point times (one list entry per call of the path, the last one repeated), whatever the machine does.
    Make the objective after the clock: its grid evaluator takes the per-point path when the objective is made."""

    def __init__(self, monkeypatch, per_point: list[float], vmap: list[float]):
        self.now = 0.0
        self.costs = {"per_point": list(per_point), "vmap": list(vmap)}
        self.calls = {"per_point": 0, "vmap": 0}
        monkeypatch.setattr(batched_points, "clock", lambda: self.now)
        for owner, name, path in ((TorchObjective, "evaluate_per_point", "per_point"),
                                  (BatchedPoints, "evaluate", "vmap")):
            monkeypatch.setattr(owner, name, self._charged(getattr(owner, name), path))

    def _charged(self, original, path: str):
        def run(obj, center, dirs, coeffs, *rest):
            costs = self.costs[path]
            self.now += costs[min(self.calls[path], len(costs) - 1)] * len(coeffs)
            self.calls[path] += 1
            return original(obj, center, dirs, coeffs, *rest)

        return run


@pytest.mark.parametrize(
    ("per_point", "vmap", "mode", "reason"),
    [([2.0], [1.0], "vmap", "faster in every round"),
     ([1.0], [3.0], "per_point", "not faster in round 1"),
     ([1.0], [0.5, 0.5, 0.5, 1.1], "per_point", "not faster in round 3"),  # costs: warm-up, then rounds
     ([1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 1.5, 0.5], "per_point", "too noisy"),  # every round faster, but overlapping
     ([1.0], [0.95], "per_point", "less than 1.11x faster")],
    ids=["vmap-faster", "vmap-slower", "slower-late", "noisy", "small-gain"],
)
def test_auto_calibrates_once_and_keeps_the_per_point_path_unless_batching_clearly_pays(
        per_point, vmap, mode, reason, eval_data, monkeypatch):
    reference = _objective(tiny_lenet, eval_data, "per_point")
    center, dirs, coeffs = _plane(reference, 2, n_points=9)
    expected = reference.evaluate_many(center, dirs, coeffs)
    clock = VirtualClock(monkeypatch, per_point, vmap)
    objective = _objective(tiny_lenet, eval_data, "auto")  # made after the clock: its evaluator has the charged paths
    got = objective.evaluate_many(center, dirs, coeffs)
    choice = objective.grid_batching
    assert choice["requested"] == "auto" and choice["mode"] == mode and reason in choice["reason"]
    assert choice["points_per_call"] == 9 and set(choice["seconds_per_point"]) == {"per_point", "vmap"}
    for a, b in zip(got, expected, strict=True):  # calibration results are real results
        assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.accuracy == b.accuracy
    calls = dict(clock.calls)
    objective.evaluate_many(center, dirs, coeffs[:4])  # later calls: the chosen path, no new calibration
    assert clock.calls[mode] == calls[mode] + 1
    assert clock.calls["per_point" if mode == "vmap" else "vmap"] == calls["per_point" if mode == "vmap" else "vmap"]


def test_auto_keeps_the_per_point_path_when_the_vectorized_one_fails(eval_data, monkeypatch):
    def broken(self, *args):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(BatchedPoints, "evaluate", broken)
    objective = _objective(tiny_lenet, eval_data, "auto")
    center, dirs, coeffs = _plane(objective, 2, n_points=4)
    expected = _objective(tiny_lenet, eval_data, "per_point").evaluate_many(center, dirs, coeffs)
    got = objective.evaluate_many(center, dirs, coeffs)
    assert objective.grid_batching["mode"] == "per_point" and "no batching rule" in objective.grid_batching["reason"]
    assert [e.loss for e in got] == [e.loss for e in expected]


def test_auto_does_not_calibrate_single_points_or_one_point_budgets(eval_data, monkeypatch):
    vectorized = _spy(monkeypatch, BatchedPoints, "evaluate")
    objective = _objective(tiny_lenet, eval_data, "auto")
    center, dirs, coeffs = _plane(objective, 2, n_points=6)
    objective.evaluate_many(center, dirs, coeffs[:1])
    assert objective.grid_batching is None and vectorized == []  # undecided until a call with 2 points or more
    _chunks_of(objective, 1)
    objective.evaluate_many(center, dirs, coeffs)
    assert objective.grid_batching["mode"] == "per_point" and "memory budget" in objective.grid_batching["reason"]
    assert vectorized == []


def test_points_per_call_follow_the_memory_budget(eval_data, monkeypatch):
    objective = _objective(tiny_lenet, eval_data, "vmap")
    batched = objective.grid_evaluator.batched
    per_point = batched.bytes_per_point()
    assert per_point > objective.dim * 8  # activations and the point's parameters
    assert batched.points_per_call(100, 7.5 * per_point) == 7
    assert batched.points_per_call(5, 7.5 * per_point) == 5  # never more than asked for
    assert batched.points_per_call(5, 0.1 * per_point) == 1
    monkeypatch.setitem(batched_points.MEMORY_BUDGET_MB, "cpu", 4.5 * per_point / 2**20)  # the module default
    chunks = _spy(monkeypatch, BatchedPoints, "evaluate")
    center, dirs, coeffs = _plane(objective, 2, n_points=10)
    objective.evaluate_many(center, dirs, coeffs)
    assert chunks == [4, 4, 2]


def test_forward_peak_bytes_counts_what_is_alive_at_once():
    x = torch.randn(10, 8, dtype=torch.float64)
    hidden = 10 * 1000 * 8  # bytes of one (10, 1000) float64 activation
    out_of_place = nn.Sequential(nn.Linear(8, 1000), nn.ReLU(), nn.Linear(1000, 1)).double().eval()
    in_place = nn.Sequential(nn.Linear(8, 1000), nn.ReLU(inplace=True), nn.Linear(1000, 1)).double().eval()
    assert forward_peak_bytes(out_of_place, x) == 2 * hidden  # ReLU's input and output
    assert hidden <= forward_peak_bytes(in_place, x) < hidden + 1024


def test_landscape_step_records_the_choice_and_the_paths_agree(tmp_path, digits):
    """The --grid-batching option end to end: vmap and per_point give the same landscape; provenance says which."""
    trajectory = tmp_path / "trajectory.h5"
    assert train_step.main(["--model", "lenet", "--model-option", "widths=[2,3,8,6]", "--epochs", "1",
                            "--batch-size", "256", "--no-progress", "--out", str(trajectory)]) == 0
    from gradvis_steps import directions

    direction_file = tmp_path / "random.h5"
    assert directions.main(["--trajectory", str(trajectory), "--method", "random", "--out",
                            str(direction_file)]) == 0
    results = {}
    for mode in ("vmap", "per_point"):
        out = tmp_path / f"{mode}.h5"
        assert landscape.main(["--trajectory", str(trajectory), "--directions", str(direction_file), "--resolution",
                               "5", "--eval-fraction", "0.03", "--no-progress", "--dtype", "float64",
                               "--grid-batching", mode, "--out", str(out)]) == 0
        results[mode] = load_landscape(out)
        assert results[mode].provenance["grid_batching"]["mode"] == mode
        assert results[mode].config["grid_batching"] == mode
    np.testing.assert_allclose(results["vmap"].loss, results["per_point"].loss, rtol=1e-12)
    np.testing.assert_array_equal(results["vmap"].accuracy, results["per_point"].accuracy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["lenet", "resnet_bn"])
def test_vmapped_points_on_cuda_equal_the_per_point_path_on_the_cpu(name, eval_data):
    x, y = eval_data
    cpu = _objective(MODELS[name], eval_data, "per_point")
    gpu = TorchObjective(MODELS[name](), x, y, batch_size=7, dtype=torch.float64, device="cuda", grid_batching="vmap")
    center, dirs, coeffs = _plane(cpu, 2)
    expected = cpu.evaluate_many(center, dirs, coeffs)
    got = gpu.evaluate_many(center.cuda(), [d.cuda() for d in dirs], coeffs)
    assert gpu.grid_batching["memory_budget_mb"] == batched_points.MEMORY_BUDGET_MB["cuda"]
    for a, b in zip(got, expected, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.accuracy == b.accuracy


def test_auto_on_a_cpu_keeps_the_per_point_path_without_timing(eval_data, monkeypatch):
    monkeypatch.setattr(batched_points, "CALIBRATE_ON_CPU", False)
    vectorized = _spy(monkeypatch, BatchedPoints, "evaluate")
    objective = _objective(tiny_lenet, eval_data, "auto")
    center, dirs, coeffs = _plane(objective, 2, n_points=6)
    expected = _objective(tiny_lenet, eval_data, "per_point").evaluate_many(center, dirs, coeffs)
    got = objective.evaluate_many(center, dirs, coeffs)
    assert objective.grid_batching["mode"] == "per_point" and "CPU" in objective.grid_batching["reason"]
    assert vectorized == [] and [e.loss for e in got] == [e.loss for e in expected]
