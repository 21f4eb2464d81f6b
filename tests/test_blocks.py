"""Per-layer (per-block) Hessian spectra: each block's Hessian H[S, S] against the dense Hessian's principal
submatrix, in both backends; the step's ``--blocks`` beside the whole model's spectrum, bitwise unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradvis_steps.api import hessian
from gradvis_steps.core.layout import ParameterLayout, layer_of, parameter_blocks, parameter_indices
from gradvis_steps.core.slq import starting_vector


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def _torch_dense_hessian(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean cross-entropy's Hessian in the flat parameters, by torch.autograd.functional.hessian."""
    named = list(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces, start = {}, 0
        for name, p in named:
            pieces[name] = theta[start:start + p.numel()].reshape(p.shape)
            start += p.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, pieces, (xt,)), yt)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def _check_block(h, dense: np.ndarray, index: list[int]) -> None:
    """Top eigenvalue, Hutchinson trace and quadrature moments j = 0, 1, 2 of ``h`` (full Lanczos) against
    ``dense[S, S]``."""
    block = dense[np.ix_(index, index)]
    dim = len(index)
    assert h.dim == dim and h.m == dim
    truth = np.linalg.eigvalsh(block)
    top = h.eigenvalues(top=1, steps=dim)
    assert abs(top.values[0] - truth[-1]) <= 1e-8 * max(1.0, abs(truth[-1]))
    assert top.residuals[0] < 1e-7
    density = h.density()
    starts = np.stack([starting_vector(dim, h.seed, i) for i in range(h.k)])
    quadratic = np.einsum("ij,jk,ik->i", starts, block, starts)
    assert np.isclose(h.trace().estimate, dim * quadratic.mean(), rtol=1e-10)
    # full-Lanczos Gauss quadrature is exact: sum_j w_ij l_ij^p = v_i^T H_SS^p v_i; averaged over many vectors it
    # estimates tr(H_SS^p)/dim
    for p, matrix in ((0, np.eye(dim)), (1, block), (2, block @ block)):
        moments = np.einsum("ij,jk,ik->i", starts, matrix, starts)
        assert np.allclose((density.weights * density.nodes ** p).sum(axis=1), moments, rtol=1e-8, atol=1e-12)
    assert np.allclose(h.hvp(starts[0]), block @ starts[0], atol=1e-12)


def test_layers_and_patterns_are_blocks_of_the_layout():
    layout = ParameterLayout.from_shapes([("features.0.weight", (2, 3), "linear", 0), ("features.0.bias", (2,), "bias",
                                          None), ("fc/kernel", (2, 2), "linear", 1), ("scale", (1,), "other", None)])
    assert [layer_of(s.name) for s in layout] == ["features.0", "features.0", "fc", "scale"]
    blocks = parameter_blocks(layout, ["whole", "per_layer", "*.bias"])
    assert blocks == {"features.0": ("features.0.weight", "features.0.bias"), "fc": ("fc/kernel",),
                      "scale": ("scale",), "*.bias": ("features.0.bias",)}
    assert parameter_indices(layout, ["fc/kernel", "features.0.bias"]) == [6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match=r"block 'conv\*' matches no parameter.*features.0.weight, .*scale$"):
        parameter_blocks(layout, ["per_layer", "conv*"])


@pytest.mark.parametrize(("params", "hvp_mode", "group_size", "hvp_memory_mb"), [
    (["0.weight", "0.bias"], "double_backprop", 1, "auto"),  # kept graphs, one vector at a time
    (["2.*"], "forward_over_reverse", 1, "auto"),
    (["0.bias", "2.weight"], "double_backprop", 3, 0),  # lockstep blocks of 3 vectors, graphs recomputed
    (["0.bias", "2.weight"], "forward_over_reverse", 3, "auto"),
])
def test_torch_blocks_equal_the_dense_hessian_block(params, hvp_mode, group_size, hvp_memory_mb):
    model = _mlp()
    x, y = _data()
    dense = _torch_dense_hessian(model, x, y)
    h = hessian(model, (x, y), "cross_entropy", k=3, m=1000, params=params, batch_size=7, hvp_mode=hvp_mode,
                group_size=group_size, hvp_memory_mb=hvp_memory_mb)
    _check_block(h, dense, parameter_indices(h.problem.objective.layout, h.params))


def test_tensorflow_blocks_equal_the_dense_hessian_block():
    pytest.importorskip("tensorflow")
    import keras

    from gradvis_steps.backends.tensorflow import dtype_policy

    keras.utils.set_random_seed(0)
    with dtype_policy("float64"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh", name="hidden"),
                                  keras.layers.Dense(3, name="out")])
    x, y = _data()
    for mode in ("forward_over_reverse", "double_backprop"):
        whole = hessian(model, (x, y), "cross_entropy", hvp_mode=mode, batch_size=7)
        objective, theta = whole.problem.objective, whole.problem.theta
        dense = np.stack([objective.hvp(theta, e) for e in np.eye(objective.dim)], axis=1)  # column by column
        for params in (["*/hidden/*"], ["*/out/kernel", "*/hidden/bias"]):
            h = hessian(model, (x, y), "cross_entropy", k=3, m=1000, params=params, hvp_mode=mode, batch_size=7)
            _check_block(h, dense, parameter_indices(objective.layout, h.params))


def test_a_pattern_that_matches_nothing_is_one_error_naming_it():
    x, y = _data()
    with pytest.raises(ValueError, match=r"block 'conv\*' matches no parameter.*0.weight, 0.bias, 2.weight, 2.bias"):
        hessian(_mlp(), (x, y), "cross_entropy", params=["conv*"])


# -- the spectrum step ------------------------------------------------------------------------------------------------

STEP_ARGV = ["--iterations", "0", "12", "--k", "2", "--m", "6", "--dtype", "float64", "--hvp-mode", "double_backprop",
             "--eval-fraction", "0.05", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def step_files(tmp_path_factory):
    from step_helpers import step, train_tiny

    from gradvis_steps import spectrum

    folder = tmp_path_factory.mktemp("blocks")
    trajectory = train_tiny(folder / "trajectory.h5", 0)
    whole, blocks = folder / "whole.h5", folder / "blocks.h5"
    step(spectrum, "--trajectory", trajectory, "--out", whole, *STEP_ARGV)
    step(spectrum, "--trajectory", trajectory, "--out", blocks, *STEP_ARGV, "--blocks", "whole", "per_layer", "*.bias")
    return folder, trajectory, whole, blocks


def _datasets(path) -> dict[str, bytes]:
    import h5py

    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, np.asarray(obj[()]).tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def test_the_step_stores_blocks_beside_the_unchanged_whole_spectrum(step_files):
    from gradvis_steps.backends import backend_for_trajectory
    from gradvis_steps.spectrum import SpectrumSettings
    from gradvis_steps.storage.spectra import load_spectra
    from gradvis_steps.storage.trajectory import Trajectory

    _, trajectory, whole, blocks = step_files
    plain, with_blocks = _datasets(whole), _datasets(blocks)
    assert not any("blocks" in name for name in plain)  # the default writes what it wrote before
    assert {name: with_blocks[name] for name in plain} == plain  # the whole model's spectrum, bitwise
    spectra = load_spectra(blocks)
    assert load_spectra(whole).entries[12].blocks == {}
    with Trajectory(trajectory) as traj:
        layout = traj.layout
        layers = list(dict.fromkeys(spec.name.rsplit(".", 1)[0] for spec in layout))
        assert list(spectra.attrs["blocks"]) == [*layers, "*.bias"]
        assert spectra.attrs["blocks"]["*.bias"] == [spec.name for spec in layout if spec.name.endswith(".bias")]
        objective = backend_for_trajectory(traj).objective_for_trajectory(
            traj, fraction=0.05, subset_seed=SpectrumSettings.eval_seed, batch_size=SpectrumSettings.batch_size,
            device="cpu", dtype="float64", hvp_mode="double_backprop")
        theta = objective.from_numpy(traj.params(12))
    entry = spectra.entries[12]
    assert list(entry.blocks) == list(spectra.attrs["blocks"])
    for name, params in spectra.attrs["blocks"].items():
        block = entry.blocks[name]
        index = parameter_indices(layout, params)
        # v_i^T H[S, S] v_i by the whole model's product of the zero-padded vector: an independent path
        for i, alpha in enumerate(block.alpha1):
            v = starting_vector(len(index), 0, i)
            padded = np.zeros(objective.dim)
            padded[index] = v
            product = objective.to_numpy(objective.hvp(theta, objective.from_numpy(padded)))[index]
            assert np.isclose(alpha, v @ product, rtol=1e-9, atol=1e-13)
        assert np.isclose(block.summary["trace_estimate"], len(index) * block.alpha1.mean(), rtol=1e-12)
        assert block.summary["ritz_top_residual"] >= 0 and np.isfinite(block.summary["ritz_top"])
        assert block.nodes.shape == (2, min(6, len(index)))
    assert np.array_equal(spectra.series("ritz_top", block=layers[0]),
                          [spectra.entries[i].blocks[layers[0]].summary["ritz_top"] for i in (0, 12)])


def test_chunks_merge_and_plot_with_their_blocks(step_files, tmp_path):
    from step_helpers import step

    from gradvis_steps import merge_spectra, plot_spectra, spectrum

    folder, trajectory, _, blocks = step_files
    parts = [tmp_path / f"chunk{i}.h5" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        step(spectrum, "--trajectory", trajectory, "--out", part, *STEP_ARGV, "--blocks", "whole", "per_layer",
             "*.bias", "--chunk", f"{i}/2")
    merged = tmp_path / "merged.h5"
    step(merge_spectra, "--inputs", *parts, "--out", merged)
    assert _datasets(merged) == _datasets(blocks)
    step(plot_spectra, "--spectra", merged, "--out-dir", tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["density_000000.png", "density_000012.png"]


def test_the_step_names_a_bad_pattern_in_one_line(step_files, capsys):
    from step_helpers import fails

    from gradvis_steps import spectrum

    folder, trajectory, _, _ = step_files
    err = fails(spectrum, ["--trajectory", trajectory, "--out", folder / "bad.h5", *STEP_ARGV, "--blocks", "nope*"],
                capsys)
    assert "block 'nope*' matches no parameter" in err and "conv1.weight, conv1.bias, conv2.weight" in err


def test_api_blocks_are_the_layers_with_the_same_settings():
    x, y = _data()
    h = hessian(_mlp(), (x, y), "cross_entropy", k=2, m=5)
    layers = h.blocks()
    assert list(layers) == ["0", "2"] and layers["2"].params == ("2.weight", "2.bias")
    alone = hessian(_mlp(), (x, y), "cross_entropy", k=2, m=5, params=["2.*"])
    assert np.array_equal(layers["2"].density().nodes, alone.density().nodes)
    assert layers["0"].dim == 25 and layers["0"].m == 5
