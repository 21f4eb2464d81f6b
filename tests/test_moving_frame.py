"""The moving-frame step on a tiny trajectory (LeNet of widths 3, 4, 16, 12 on the digits, 10 iterations: 11
checkpoints, 988 parameters): the centres it writes, each plane's centre loss against a fresh float64 torch
model, its directions against the backend's Hessian-vector products at that checkpoint, and resuming."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from gradvis_steps import cli, directions, eigendirections, landscape, moving_frame
from gradvis_steps import train as train_step
from gradvis_steps.backends.torch import objective_for_trajectory
from gradvis_steps.backends.torch.models import build_model
from gradvis_steps.data import load_dataset
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.trajectory import Trajectory

EVAL_FRACTION = 0.05
CENTRES = [0, 5, 10]  # --every 5 over iterations 0..10: rows 0, 5, 10 (the last one is row 10)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and leaves the other core free."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("moving_frame")


@pytest.fixture(scope="module")
def trajectory(folder) -> Path:
    path = folder / "trajectory.h5"
    torch.set_num_threads(1)
    argv = ["--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", "1", "--batch-size", "128",
            "--lr", "0.05", "--max-iterations", "10", "--no-progress", "--out", str(path)]
    assert train_step.main(argv) == 0
    with Trajectory(path) as traj:
        assert list(traj.iterations) == list(range(11)) and traj.dim == 988
    return path


def argv(trajectory: Path, out: Path, *extra: str) -> list[str]:
    return ["--trajectory", str(trajectory), "--every", "5", "--out-dir", str(out), "--which", "largest",
            "--count", "2", "--steps", "30", "--pick", "0", "1", "--resolution", "3", "--range", "-0.5", "0.5",
            "-0.5", "0.5", "--grid-batching", "per_point", "--dtype", "float64", "--eval-fraction",
            str(EVAL_FRACTION), "--no-progress", *extra]


class Calls:
    """Counts the steps moving_frame runs (their ``run``: never their command line), by the centre each works on."""

    def __init__(self, monkeypatch, fail_at_landscape: int | None = None):
        self.log: dict[str, list[str]] = {"eigendirections": [], "directions": [], "landscape": []}
        for module in (eigendirections, directions, landscape):
            self._wrap(monkeypatch, module, fail_at_landscape)

    def _wrap(self, monkeypatch, module, fail_at_landscape):
        name = module.__name__.rsplit(".", 1)[1]
        original = module.run

        def counted(settings):
            self.log[name].append(Path(settings.out).name)
            if name == "landscape" and fail_at_landscape == len(self.log[name]):
                raise KeyboardInterrupt  # the run is killed while this centre's grid is evaluated
            return original(settings)

        monkeypatch.setattr(module, "run", counted)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def frame_dir(folder, trajectory) -> Path:
    out = folder / "frames"
    torch.set_num_threads(1)
    assert moving_frame.main(argv(trajectory, out)) == 0
    return out


def centre_loss(trajectory: Path, theta: np.ndarray) -> float:
    """Independent loss: a fresh torch model in float64 loaded with ``vector_to_parameters``, one batch."""
    with Trajectory(trajectory) as traj:
        config = traj.config
    dataset = load_dataset(config["dataset"])
    model = build_model(config["model"], dataset.input_shape, dataset.num_classes).double().eval()
    x, y = dataset.evaluation_subset(EVAL_FRACTION, 0)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.as_tensor(theta, dtype=torch.float64), model.parameters())
        return float(F.cross_entropy(model(torch.as_tensor(x, dtype=torch.float64)), torch.as_tensor(y)))


def test_centres_are_planes_of_their_own_eigenvectors(frame_dir, trajectory):
    assert sorted(p.name for p in frame_dir.glob("*.h5")) == [f"centre_{i:06d}.h5" for i in CENTRES]
    assert sorted(p.name for p in (frame_dir / "directions").iterdir()) == [f"centre_{i:06d}.h5" for i in CENTRES]
    assert not (frame_dir / moving_frame.WORK).exists()
    assert not frame_dir.with_name(f".{frame_dir.name}.partial").exists()
    leftovers = [p.name for p in frame_dir.iterdir() if p.name.startswith(".") and p.name != moving_frame.MANIFEST]
    assert leftovers == []
    with Trajectory(trajectory) as traj:
        for iteration in CENTRES:
            row = traj.index_of_iteration(iteration)
            theta = traj.params(row).astype(np.float64)
            result = load_landscape(frame_dir / f"centre_{iteration:06d}.h5")
            plane = load_directions_file(frame_dir / "directions" / f"centre_{iteration:06d}.h5")
            assert plane.center_iteration == iteration and plane.method == "eigenvector"
            assert result.config["directions_config"]["center_iteration"] == iteration
            x, y = result.axes
            assert x[1] == 0 and y[1] == 0  # --range -0.5 0.5 at resolution 3: the centre is a grid point
            # the plane's (0, 0) is the checkpoint itself: its loss from an independent model
            assert result.loss[1, 1] == pytest.approx(centre_loss(trajectory, theta), rel=1e-10)
            assert result.loss[1, 1] == pytest.approx(result.checkpoint_loss[row], rel=1e-12)
            assert np.all(result.trajectory[row] == 0)
            # the directions are eigenvectors of the Hessian at this checkpoint (not at the last one)
            objective = objective_for_trajectory(traj, fraction=EVAL_FRACTION, device="cpu", dtype="float64",
                                                 buffers_from=row)
            point = objective.from_numpy(theta)
            assert plane.eigenvalues[0] >= plane.eigenvalues[1]  # --which largest --pick 0 1
            np.testing.assert_array_equal(result.eigenvalues, plane.eigenvalues)
            for v, value in zip(plane.vectors.astype(np.float64), plane.eigenvalues, strict=True):
                hv = objective.to_numpy(objective.hvp(point, objective.from_numpy(v)))
                assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
                assert np.linalg.norm(hv - value * v) <= 1e-4 * abs(value), (iteration, value)
        # consecutive planes' axes point alike (signs aligned), so frames do not mirror each other
        planes = [load_directions_file(frame_dir / "directions" / f"centre_{i:06d}.h5").vectors.astype(np.float64)
                  for i in CENTRES]
        for before, after in zip(planes, planes[1:], strict=False):
            assert np.all(np.einsum("ij,ij->i", before, after) >= 0)
        # the planes move: the top eigenvector at the first centre is not the one at the last
        first, last = (load_directions_file(frame_dir / "directions" / f"centre_{i:06d}.h5").vectors[0]
                       for i in (CENTRES[0], CENTRES[-1]))
        assert abs(float(first.astype(np.float64) @ last.astype(np.float64))) < 0.99


def test_removed_file_is_the_only_one_recomputed(frame_dir, trajectory, monkeypatch):
    before = {p.name: sha256(p) for p in frame_dir.glob("*.h5")}
    removed = frame_dir / "centre_000005.h5"
    loss = load_landscape(removed).loss
    removed.unlink()
    calls = Calls(monkeypatch)
    assert moving_frame.main(argv(trajectory, frame_dir)) == 0
    assert calls.log == {"eigendirections": [], "directions": [], "landscape": ["centre_000005.h5"]}
    after = {p.name: sha256(p) for p in frame_dir.glob("*.h5")}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name != removed.name)
    np.testing.assert_allclose(load_landscape(removed).loss, loss, rtol=1e-12)

    # a lost directions file takes its landscape along: both recomputed from new eigenvectors
    (frame_dir / "directions" / "centre_000010.h5").unlink()
    calls = Calls(monkeypatch)
    assert moving_frame.main(argv(trajectory, frame_dir)) == 0
    assert calls.log == {"eigendirections": ["eigendirections_000010.h5"], "directions": ["directions_000010.h5"],
                         "landscape": ["centre_000010.h5"]}


def test_killed_run_resumes(folder, frame_dir, trajectory, monkeypatch):
    out = folder / "killed"
    staging = folder / ".killed.partial"
    Calls(monkeypatch, fail_at_landscape=2)
    with pytest.raises(KeyboardInterrupt):
        moving_frame.main(argv(trajectory, out))
    assert not out.exists()  # the folder appears whole or not at all
    assert sorted(p.name for p in staging.glob("*.h5")) == ["centre_000000.h5"]

    calls = Calls(monkeypatch)
    assert moving_frame.main(argv(trajectory, out)) == 0
    # centre 5's eigenvectors were computed before the kill; only its landscape and all of centre 10 remain
    assert calls.log == {"eigendirections": ["eigendirections_000010.h5"], "directions": ["directions_000010.h5"],
                         "landscape": ["centre_000005.h5", "centre_000010.h5"]}
    assert not staging.exists()
    for iteration in CENTRES:
        name = f"centre_{iteration:06d}.h5"
        np.testing.assert_allclose(load_landscape(out / name).loss, load_landscape(frame_dir / name).loss,
                                   rtol=1e-9)

    # other settings never reuse the files: the same folder with another plane is computed afresh
    calls = Calls(monkeypatch)
    assert moving_frame.main(argv(trajectory, out)[:-1] + ["--pick", "1", "0", "--no-progress"]) == 0
    assert len(calls.log["eigendirections"]) == len(CENTRES) and len(calls.log["landscape"]) == len(CENTRES)


def test_bad_arguments_exit_2(folder, trajectory, capsys):
    out = folder / "never"

    def fails(*extra: str) -> str:
        capsys.readouterr()
        assert cli.run(moving_frame.main, argv(trajectory, out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "two different eigenvectors, got 1 1" in fails("--pick", "1", "1")
    err = fails("--pick", "0", "2")
    assert "[2] out of range" in err and "--count 2" in err and "0..1" in err
    assert "--count 5 exceeds --steps 3" in fails("--count", "5", "--steps", "3")
    assert "--border must be in [0, 10], got -1.0" in fails("--border", "-1")
    capsys.readouterr()
    assert cli.run(moving_frame.main, argv(folder / "missing.h5", out)) == 2
    assert "missing.h5 does not exist" in capsys.readouterr().err
    assert not out.exists() and not (folder / ".never.partial").exists()


def test_align_signs(tmp_path):
    from gradvis_steps.storage.directions import Directions, save_directions

    rng = np.random.default_rng(0)
    before = rng.standard_normal((2, 50)).astype(np.float32)
    current = np.stack([-before[0] + 0.1, before[1] + 0.1]).astype(np.float32)  # row 0 points the other way
    save_directions(Directions(before, "eigenvector", center_iteration=0), tmp_path / "a.h5")
    save_directions(Directions(current, "eigenvector", center_iteration=5, eigenvalues=np.array([2.0, 1.0])),
                    tmp_path / "b.h5")
    assert moving_frame.align_signs(tmp_path / "b.h5", tmp_path / "a.h5") == [True, False]
    aligned = load_directions_file(tmp_path / "b.h5")
    np.testing.assert_array_equal(aligned.vectors, np.stack([-current[0], current[1]]))
    np.testing.assert_array_equal(aligned.eigenvalues, [2.0, 1.0])
    assert aligned.center_iteration == 5
    assert aligned.config["flipped"] == [True, False] and aligned.config["signs_aligned_to"] == 0
    assert moving_frame.align_signs(tmp_path / "b.h5", tmp_path / "a.h5") == [False, False]  # nothing left to flip
