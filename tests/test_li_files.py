"""Li et al.'s loss-landscape files both ways (issue 28): their direction files in, their surface files out and in.

The Li-format files here are built with plain h5py and torch the way their code writes them (``h5_util.write_list``:
one dataset per parameter tensor named 0, 1, ...; ``net_plotter.normalize_direction``: each filter scaled to the
weights' filter norm with their 1e-10, biases and batch-norm zeroed; ``plot_surface.py``: values filled in
``numpy.meshgrid(x, y)`` order, -1 where not evaluated, accuracy in percent), independently of gradvis's writers.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from step_helpers import fails, step, train_tiny
from workflow_runner import shell_commands

from gradvis_steps import directions, landscape, li_surface, plot_landscape
from gradvis_steps.core.grid import LandscapeResult
from gradvis_steps.core.normalization import is_normalized, normalize_directions
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape, save_landscape
from gradvis_steps.storage.trajectory import Trajectory

EVAL = ("--eval-fraction", 0.05, "--batch-size", 512, "--device", "cpu", "--no-progress")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("li")
    path = train_tiny(folder / "trajectory.h5", 0, "--max-iterations", 4)
    with Trajectory(path) as traj:
        tensors = [(spec.name, traj.params(-1)[spec.slice].reshape(spec.shape)) for spec in traj.layout]
    return {"folder": folder, "trajectory": path, "weights": tensors}


def li_direction(weights, seed: int) -> list[np.ndarray]:
    """A random direction normalized as Li et al.'s net_plotter does (filter norm, ignore='biasbn')."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _, w in weights:
        w = torch.as_tensor(w)
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        if d.dim() <= 1:
            d.fill_(0)  # their ignore='biasbn'
        else:
            for d_filter, w_filter in zip(d, w, strict=True):
                d_filter.mul_(w_filter.norm() / (d_filter.norm() + 1e-10))
        out.append(d.numpy())
    return out


def write_li_directions(path, x, y=None) -> None:
    with h5py.File(path, "w") as f:
        for name, tensors in (("xdirection", x), ("ydirection", y)):
            if tensors is not None:
                group = f.create_group(name)
                for i, tensor in enumerate(tensors):
                    group.create_dataset(str(i), data=tensor)


def test_li_direction_file_gives_the_landscape_of_the_same_directions_as_npy(run):
    folder, trajectory = run["folder"], run["trajectory"]
    x, y = li_direction(run["weights"], 1), li_direction(run["weights"], 2)
    write_li_directions(folder / "li_dirs.h5", x, y)
    flat = np.stack([np.concatenate([t.ravel() for t in x]), np.concatenate([t.ravel() for t in y])])
    np.save(folder / "dirs.npy", flat)
    results = {}
    for name, source in (("li", folder / "li_dirs.h5"), ("npy", folder / "dirs.npy")):
        step(directions, "--trajectory", trajectory, "--method", "custom", "--custom", source,
             "--out", folder / f"dirs_{name}.h5")
        loaded = load_directions_file(folder / f"dirs_{name}.h5")
        # already filter-normalized at the centre: recognised and kept as in the file, x first
        np.testing.assert_array_equal(loaded.vectors, flat)
        assert all("as given" in label for label in loaded.labels)
        step(landscape, "--trajectory", trajectory, "--directions", folder / f"dirs_{name}.h5", "--resolution", 3,
             *EVAL, "--out", folder / f"land_{name}.h5")
        results[name] = load_landscape(folder / f"land_{name}.h5")
    np.testing.assert_array_equal(results["li"].loss, results["npy"].loss)
    np.testing.assert_array_equal(results["li"].axes[0], results["npy"].axes[0])


def test_directions_not_normalized_at_the_centre_are_normalized(run):
    folder, trajectory = run["folder"], run["trajectory"]
    raw = [np.full(w.shape, 1.0, dtype=np.float32) for _, w in run["weights"]]
    write_li_directions(folder / "raw.h5", raw)
    step(directions, "--trajectory", trajectory, "--method", "custom", "--custom", folder / "raw.h5",
         "--out", folder / "raw_dirs.h5")
    with Trajectory(trajectory) as traj:
        expected = normalize_directions(np.concatenate([t.ravel() for t in raw])[None], traj.params(-1), traj.layout)
        assert is_normalized(expected[0], traj.params(-1), traj.layout)
        assert not is_normalized(np.concatenate([t.ravel() for t in raw]), traj.params(-1), traj.layout)
    loaded = load_directions_file(folder / "raw_dirs.h5")
    np.testing.assert_array_equal(loaded.vectors, expected.astype(np.float32))
    assert loaded.labels == ("custom direction 1, filter-normalized",)


def test_custom_key_and_bad_li_files(run, capsys):
    folder, trajectory = run["folder"], run["trajectory"]
    x = li_direction(run["weights"], 3)
    flat = np.concatenate([t.ravel() for t in x])
    with h5py.File(folder / "many.h5", "w") as f:
        f["a"], f["b"], f["c"] = flat, -flat, 2 * flat
    step(directions, "--trajectory", trajectory, "--method", "custom", "--custom", folder / "many.h5",
         "--custom-key", "c", "a", "--normalization", "none", "--out", folder / "keys.h5")
    np.testing.assert_array_equal(load_directions_file(folder / "keys.h5").vectors, np.stack([2 * flat, flat]))
    err = fails(directions, ["--trajectory", trajectory, "--method", "custom", "--custom", folder / "many.h5",
                             "--out", folder / "no.h5"], capsys)
    assert "['a', 'b', 'c']" in err and "--custom-key" in err
    # a 'states' file: the buffers too (here one more tensor than the model's parameters)
    write_li_directions(folder / "states.h5", [*x, np.zeros(3, dtype=np.float32)])
    err = fails(directions, ["--trajectory", trajectory, "--method", "custom", "--custom", folder / "states.h5",
                             "--out", folder / "no.h5"], capsys)
    assert f"holds {len(x) + 1} tensors, the model has {len(x)}" in err and "states" in err
    swapped = [x[1], x[0], *x[2:]]
    write_li_directions(folder / "swapped.h5", swapped)
    err = fails(directions, ["--trajectory", trajectory, "--method", "custom", "--custom", folder / "swapped.h5",
                             "--out", folder / "no.h5"], capsys)
    assert "xdirection/0 has shape" in err and run["weights"][0][0] in err
    assert not (folder / "no.h5").exists()


def _result(nx: int, ny: int) -> LandscapeResult:
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 2, ny)
    loss = np.add.outer(x**2, 3 * y)  # loss[i, j] at (x[i], y[j])
    accuracy = np.add.outer(0 * x, 0.1 + 0.2 * (y > 0))
    filled = np.ones((nx, ny), dtype=bool)
    filled[0, -1] = False
    loss[0, -1] = accuracy[0, -1] = np.nan
    return LandscapeResult(axes=(x, y), loss=loss, accuracy=accuracy, filled=filled, method="pca")


def test_surface_file_in_their_layout_reads_back(tmp_path):
    result = _result(4, 3)
    save_landscape(result, tmp_path / "landscape_2d.h5")
    step(li_surface, tmp_path / "landscape_2d.h5", tmp_path / "surface.h5")
    with h5py.File(tmp_path / "surface.h5", "r") as f:  # read as their plot_2D.py does
        x, y = f["xcoordinates"][:], f["ycoordinates"][:]
        X, Y = np.meshgrid(x, y)
        Z, acc = f["train_loss"][:], f["train_acc"][:]
    assert Z.shape == X.shape == (3, 4)
    valid = Z != -1
    np.testing.assert_array_equal(Z[valid], (X**2 + 3 * Y)[valid])
    assert Z[-1, 0] == -1 and acc[-1, 0] == -1  # the unevaluated point (x[0], y[-1]), their marker
    np.testing.assert_allclose(acc[valid], 100 * (0.1 + 0.2 * (Y > 0))[valid])
    back = load_landscape(tmp_path / "surface.h5")
    np.testing.assert_array_equal(back.axes[0], result.axes[0])
    np.testing.assert_array_equal(back.filled, result.filled)
    np.testing.assert_array_equal(back.loss, result.loss)  # NaN at the same place
    np.testing.assert_allclose(back.accuracy, result.accuracy, rtol=1e-15)


def test_their_surface_file_feeds_gradvis_plots(tmp_path):
    # as their plot_surface.py fills it: losses of shape (nx, ny), point k of meshgrid(x, y).ravel() at ravel()[k]
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 1, 3)
    losses = -np.ones((len(x), len(y)))
    xm, ym = np.meshgrid(x, y)
    for k, (a, b) in enumerate(zip(xm.ravel(), ym.ravel(), strict=True)):
        losses.ravel()[k] = 1 + a**2 + b
    with h5py.File(tmp_path / "theirs.h5", "w") as f:
        f["xcoordinates"], f["ycoordinates"], f["train_loss"] = x, y, losses
        f["train_acc"] = np.full_like(losses, 50.0)
    result = load_landscape(tmp_path / "theirs.h5")
    np.testing.assert_allclose(result.loss, 1 + np.add.outer(x**2, y), rtol=1e-15)
    np.testing.assert_array_equal(result.accuracy, np.full((5, 3), 0.5))
    step(plot_landscape, "--landscape", tmp_path / "theirs.h5", "--contour", tmp_path / "contour.png",
         "--surface", tmp_path / "surface.png")
    assert (tmp_path / "contour.png").stat().st_size > 0 and (tmp_path / "surface.png").stat().st_size > 0


def test_workflow_passes_custom_keys(tmp_path):
    directions_file = tmp_path / "mine.npz"
    np.savez(directions_file, d1=np.zeros(3), d2=np.zeros(3))
    config = tmp_path / "keys.yaml"
    config.write_text(f"directions: {{methods: [custom], custom_file: '{directions_file}', custom_key: [d2, d1]}}\n"
                      "frames: {training: false}\n")
    commands = [w for w in shell_commands("--configfile", "config/test.yaml", str(config))
                if w[0] == "gradvis_steps.directions" and "custom" in w]
    assert commands and all(w[w.index("--custom-key") + 1:w.index("--custom-key") + 3] == ["d2", "d1"]
                            for w in commands)
