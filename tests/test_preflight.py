"""Bad configs are rejected when the workflow loads, before any job: each through a real (not dry) Snakemake run,
checked for its message (key, value, what is accepted) and for no output written. And the YAML reader that names
the line, the config checker, and the option checks the pre-flight shares with the train step."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from workflow_runner import BIN, ROOT, snakemake

pytestmark = pytest.mark.skipif(shutil.which("snakemake", path=str(BIN)) is None,
                                reason="snakemake is not installed in this environment (pip install -e .[workflow])")

MISSING = "/nonexistent/gradvis-data"

#: (id, config merged over config/config.yaml, a part of the message). Each is a distinct mistake.
BAD_CONFIGS = [
    # the schema: types, ranges, enums, unknown keys
    ("resolution-below-2", {"landscape": {"resolution": 1}}, "1 is less than the minimum of 2"),
    ("misspelt-section", {"landscpe": {"resolution": 5}}, "'landscpe' was unexpected"),
    ("unknown-key-in-section", {"spectra": {"steps": 5}}, "'steps' was unexpected"),
    ("vector-not-in-enum", {"spectra": {"vector": "uniform"}}, "'uniform' is not one of ['gaussian', 'rademacher']"),
    ("negative-train-seed", {"train": {"seed": [-1]}}, "-1 is less than the minimum of 0"),
    ("negative-spectra-seed", {"spectra": {"seed": -3}}, "-3 is less than the minimum of 0"),
    ("duplicate-pick", {"directions": {"hessian": {"pick": [0, 0]}}}, "[0, 0] has non-unique elements"),
    ("empty-results", {"results": ""}, "should be non-empty"),
    ("device-typo", {"device": "gpu"}, "'gpu' does not match"),
    ("zero-lr", {"train": {"lr": [0]}}, "0 is less than or equal to the minimum of 0"),
    ("momentum-one", {"train": {"momentum": [1.0]}}, "1.0 is greater than or equal to the maximum of 1"),
    ("fraction-above-1", {"evaluation": {"fraction": 1.5}}, "1.5 is greater than the maximum of 1"),
    ("k-not-integer", {"spectra": {"k": "four"}}, "'four' is not of type 'integer'"),
    ("unknown-framework", {"train": {"framework": ["jax"]}}, "'jax' is not one of ['torch', 'tensorflow']"),
    ("zero-fps", {"frames": {"fps": 0}}, "0 is less than or equal to the minimum of 0"),
    ("nan-fraction", {"evaluation": {"fraction": float("nan")}}, "evaluation.fraction: nan is not a finite number"),
    ("infinite-lr", {"train": {"lr": [0.1, float("inf")]}}, "train.lr[1]: inf is not a finite number"),
    # the planner: rules between keys
    ("undefined-model-key", {"train": {"model": ["vgg"]}}, "train.model names 'vgg', which is not defined"),
    ("undefined-dataset-key", {"train": {"dataset": ["mnist"]}}, "train.dataset names 'mnist', which is not defined"),
    ("frame-direction-not-drawn", {"frames": {"direction": "custom"}},
     "frames.direction 'custom' is not in directions.methods"),
    ("custom-without-file", {"directions": {"methods": ["custom"]}, "frames": {"training": False}},
     "directions.methods includes 'custom' but directions.custom_file is not set"),
    ("pick-beyond-count", {"directions": {"hessian": {"pick": [0, 2]}}}, "pick [0, 2] needs count > 2, got 2"),
    ("count-above-steps", {"directions": {"hessian": {"count": 8, "steps": 5}}}, "count 8 exceeds steps 5"),
    ("interpolation-seed-not-trained", {"interpolation": {"seeds": [0, 5]}},
     "interpolation.seeds [5] are not in train.seed [0, 1]"),
    ("experiment-name-is-a-path", {"experiments": {"a/b": {}}}, "name 'a/b' must be letters"),
    ("experiment-global-key", {"experiments": {"x": {"results": "elsewhere"}}}, "are set once at the top level"),
    ("experiment-sweep-value", {"experiments": {"mine": {"landscape": {"resolution": [5, 1]}}}},
     "experiments.mine: "),
    ("hybrid-without-group", {"spectra": {"mpi_tasks": 4, "parallel": "hybrid"}},
     "hybrid needs spectra.ranks_per_group"),
    # the pre-flight: datasets, models, entry points, data folders, checkpoints
    ("unknown-dataset-name", {"datasets": {"digits": {"name": "mnist"}}},
     "unknown dataset 'mnist'; accepted: ['cifar10', 'diabetes', 'digits', 'synthetic', 'custom']"),
    ("unknown-dataset-option", {"datasets": {"digits": {"name": "digits", "root": "data"}}},
     "dataset 'digits': options ['root'] do not fit"),
    ("ill-typed-dataset-option", {"datasets": {"digits": {"name": "synthetic", "n_train": "many"}}},
     "option n_train='many' is a str; expected int"),
    ("cifar-folder-missing", {"datasets": {"digits": {"name": "cifar10", "root": MISSING}}},
     "CIFAR-10 not found: looked for data_batch_1"),
    ("cifar-download-not-bool", {"datasets": {"digits": {"name": "cifar10", "download": "yes"}}},
     "option download='yes' is a str; expected bool"),
    ("dataset-entry-point-does-not-import", {"datasets": {"digits": {"name": "custom",
                                                                      "entry_point": "no_such_module_x:load"}}},
     "cannot import module 'no_such_module_x'"),
    ("dataset-entry-point-missing-function", {"datasets": {"digits": {"name": "custom", "entry_point": "math:nope"}}},
     "'math' has no attribute 'nope'"),
    ("unknown-model-name", {"models": {"lenet": {"name": "vgg"}}},
     "unknown model 'vgg'; accepted: ['lenet', 'mlp', 'resnet', 'resnet20', 'custom']"),
    ("unknown-model-option", {"models": {"lenet": {"name": "lenet", "depth": 3}}},
     "options ['depth'] do not fit (got an unexpected keyword argument 'depth'); accepted options: ['widths']"),
    ("ill-typed-model-option", {"models": {"lenet": {"name": "mlp", "hidden": "wide"}}},
     "option hidden='wide' is a str; expected tuple[int, ...]"),
    ("model-entry-point-does-not-import", {"models": {"lenet": {"name": "custom", "entry_point": "no_such_net:net"}}},
     "cannot import module 'no_such_net'"),
    ("model-entry-point-not-given", {"models": {"lenet": {"name": "custom"}}},
     "model 'custom' needs entry_point: 'module:function'"),
    ("checkpoint-every-beyond-run", {"train": {"checkpoint_every": 5000}},
     "train.checkpoint_every 5000 is more than the 144 iterations of run"),
    ("pca-with-two-checkpoints", {"train": {"checkpoint_every": 144}},
     "directions.methods includes pca, which needs at least 3 checkpoints, but train.checkpoint_every 144 stores 2"),
    ("centre-not-a-checkpoint", {"train": {"checkpoint_every": 5}, "landscape": {"centre": 7}},
     "landscape.centre 7 is not a checkpoint of run"),
    ("centre-after-the-run", {"landscape": {"centre": 7000}}, "landscape.centre 7000 is not a checkpoint of run"),
    # the trainer settings: schema, planner, pre-flight
    ("unknown-optimizer", {"train": {"optimizer": ["rmsprop"]}}, "'rmsprop' is not one of ['sgd', 'adam', 'adamw']"),
    ("step-schedule-without-step", {"train": {"schedule": ["step"]}}, "train.schedule step needs train.step_every"),
    ("warmup-beyond-run", {"train": {"warmup": 144}}, "train.warmup 144 is not less than the 144 iterations of run"),
    # the losses: names, custom entry points, a classification loss on float targets
    ("unknown-loss", {"train": {"loss": ["hinge"]}},
     "train.loss names 'hinge', which is neither a built-in loss (cross_entropy, mse, bce_with_logits)"),
    ("loss-entry-point-does-not-import", {"losses": {"mine": {"name": "custom", "entry_point": "no_such_loss_x:f"}},
                                          "train": {"loss": ["mine"]}}, "cannot import module 'no_such_loss_x'"),
    ("loss-entry-point-not-given", {"losses": {"mine": {"name": "custom"}}, "train": {"loss": ["mine"]}},
     "losses.mine {'name': 'custom'}: loss 'custom' needs entry_point"),
    ("classification-loss-on-float-targets", {"datasets": {"digits": {"name": "diabetes"}},
                                              "models": {"lenet": {"name": "mlp"}}},
     "train.loss 'cross_entropy' is a classification loss, but datasets.digits has float (regression) targets"),
]


@pytest.fixture(scope="module")
def rejected(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every bad config through `snakemake --cores 1` (a real run, not a dry run), two at a time."""
    folder = tmp_path_factory.mktemp("bad_configs")

    def attempt(case: tuple[str, dict, str]) -> tuple[subprocess.CompletedProcess, Path]:
        name, override, _ = case
        results = folder / name / "results"
        config = {"results": str(results), **override}
        path = folder / name / "config.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(config))
        return snakemake("--cores", "1", "--configfile", str(path), timeout=300), results

    with ThreadPoolExecutor(2) as pool:
        return dict(zip((case[0] for case in BAD_CONFIGS), pool.map(attempt, BAD_CONFIGS), strict=True))


def test_there_are_at_least_30_distinct_bad_configs():
    assert len({name for name, _, _ in BAD_CONFIGS}) == len(BAD_CONFIGS) >= 30
    assert len({yaml.safe_dump(override) for _, override, _ in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize(("name", "override", "message"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_rejected_before_any_job(rejected, name, override, message):
    result, results = rejected[name]
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("config error: ")]
    assert len(errors) == 1 and message in errors[0], text[-2000:]  # the whole message on one line
    assert not results.exists(), sorted(results.rglob("*"))  # nothing written: no job started
    assert "Building DAG of jobs" not in text


def test_a_yaml_syntax_error_names_file_and_line(tmp_path):
    """Snakemake reads a --configfile before the workflow runs and names no line; workflow/check_config.py does, as
    the Snakefile does for its own config/config.yaml."""
    path = tmp_path / "broken.yaml"
    path.write_text(f"results: {tmp_path / 'results'}\nlandscape:\n  resolution: 5\n   border: 3\n")
    result = snakemake("--cores", "1", "--configfile", str(path))
    assert result.returncode != 0 and "not valid JSON or YAML" in result.stderr
    assert not (tmp_path / "results").exists()
    check = subprocess.run([sys.executable, str(ROOT / "workflow" / "check_config.py"), str(path)],
                           capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 1
    assert f"{path}:4:10: YAML syntax error: mapping values are not allowed here" in check.stderr


def test_check_config_accepts_what_the_workflow_runs_and_names_the_first_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"checkpoint_every": 5000}}))
    result = subprocess.run([sys.executable, str(ROOT / "workflow" / "check_config.py"), "config/test.yaml",
                             "config/config.yaml", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "config/test.yaml: ok: 3 experiment(s), 2 run(s)" in result.stdout
    assert "config/config.yaml: ok: 1 experiment(s), 2 run(s)" in result.stdout
    assert f"{bad}: train.checkpoint_every 5000 is more than the 144 iterations" in result.stderr


def test_cifar_with_download_or_its_files_passes_the_preflight(tmp_path):
    """The pre-flight looks for CIFAR-10's batch files, not more: `download: true` or the files present pass."""
    from gradvis_steps.data import dataset_facts
    from gradvis_steps.data.cifar10 import FOLDER, TEST_BATCH, TRAIN_BATCHES

    assert dataset_facts({"name": "cifar10", "root": MISSING, "download": True}).n_train == 50000
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        (tmp_path / FOLDER).mkdir(exist_ok=True)
        (tmp_path / FOLDER / name).write_bytes(b"")
    facts = dataset_facts({"name": "cifar10", "root": str(tmp_path)})
    assert (facts.input_shape, facts.num_classes) == ((3, 32, 32), 10)


def test_the_train_step_rejects_bad_model_options_as_the_preflight_does(tmp_path):
    """The option check lives where every backend resolves a model spec, so a hand-run train step says the same."""
    result = subprocess.run([sys.executable, "-m", "gradvis_steps.train", "--out", str(tmp_path / "t.h5"),
                             "--model", "mlp", "--model-option", "hidden=wide", "--max-iterations", "1"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "option hidden='wide' is a str; expected tuple[int, ...]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", [{"name": "digits"}, {"name": "synthetic", "n_train": 300, "shape": [2, 5, 5],
                                                       "num_classes": 4}, {"name": "diabetes"}])
def test_dataset_facts_agree_with_the_loaded_dataset(spec):
    """The pre-flight sizes runs without loading their data: its facts must be the loaded dataset's."""
    from gradvis_steps.data import dataset_facts, load_dataset

    facts, dataset = dataset_facts(spec), load_dataset(spec)
    assert (facts.input_shape, facts.num_classes, facts.n_train) == (dataset.input_shape, dataset.num_classes,
                                                                     len(dataset.x_train))
    assert facts.regression == dataset.is_regression
