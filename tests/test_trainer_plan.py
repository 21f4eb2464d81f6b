"""The trainer settings in the workflow: run ids of existing configs unchanged, new ids (and the train job's options)
for Adam, schedules, warm-up and weight decay, and the cross-key rules."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("snakemake.utils", reason="snakemake is not installed (pip install -e .[workflow])")

from experiments import ConfigError, trainer_args  # noqa: E402
from workflow_runner import ROOT, plan_of, shell_commands  # noqa: E402

NO_PAIRS = {"interpolation": {"enabled": False}}


def historical_id(settings: dict, checkpoint_every: int) -> str:
    """The run id as the workflow named runs before the trainer settings (written out again: the truth the new
    ids of default runs must equal)."""
    text = (f"{settings['dataset']}-{settings['model']}-lr{settings['lr']:g}-bs{settings['batch_size']}-"
            f"e{settings['epochs']}-m{settings['momentum']:g}-s{settings['seed']}")
    text += f"-ce{checkpoint_every}" if checkpoint_every != 1 else ""
    return text if settings["framework"] == "torch" else f"{text}-{settings['framework']}"


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper_lenet_cifar10.yaml"])
def test_existing_configs_keep_their_run_ids_and_command_lines(name):
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    plan = plan_of(config)
    assert plan.runs
    for rid, run in plan.runs.items():
        settings = run["settings"]
        assert (settings["optimizer"], settings["schedule"], settings["weight_decay"]) == ("sgd", "constant", 0)
        assert rid == historical_id(settings, run["checkpoint_every"])
        assert trainer_args(settings) == []  # the train job's command line as before: Snakemake retrains nothing


def test_optimizers_schedules_and_decay_are_axes_with_ids_of_their_own():
    plan = plan_of({**NO_PAIRS, "train": {"seed": [0], "optimizer": ["sgd", "adam", "adamw"],
                                          "schedule": ["constant", "cosine"], "weight_decay": [0, 5e-4]}})
    base = "digits-lenet-lr0.05-bs64-e6-m0.9-s0"
    assert sorted(plan.runs) == sorted(f"{base}{wd}{opt}{sched}" for wd in ("", "-wd0.0005")
                                       for opt in ("", "-adam", "-adamw") for sched in ("", "-cosine"))
    adam = plan.runs[f"{base}-wd0.0005-adam-cosine"]["settings"]
    assert {k: adam[k] for k in ("optimizer", "schedule", "weight_decay", "beta1", "beta2", "eps", "min_lr")} == {
        "optimizer": "adam", "schedule": "cosine", "weight_decay": 5e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
        "min_lr": 0.0}
    assert "step_every" not in adam and "beta1" not in plan.runs[base]["settings"]  # only what applies
    assert trainer_args(adam) == ["--optimizer", "adam", "--schedule", "cosine", "--weight-decay", "0.0005"]


def test_single_valued_options_are_in_the_id_when_they_apply():
    plan = plan_of({**NO_PAIRS, "experiments": {
        "a": {"train": {"seed": [0], "optimizer": ["adam"], "beta2": 0.99, "eps": 1e-6, "warmup": 20}},
        "b": {"train": {"seed": [0], "schedule": ["step"], "step_every": 40, "step_gamma": 0.5}},
        "c": {"train": {"seed": [0], "schedule": ["cosine"], "min_lr": 0.001, "beta2": 0.5}},  # beta2: sgd ignores it
    }})
    base = "digits-lenet-lr0.05-bs64-e6-m0.9-s0"
    assert sorted(plan.runs) == sorted([f"{base}-adam-b0.9_0.99-eps1e-06-wu20", f"{base}-step40x0.5",
                                        f"{base}-cosine-min0.001"])
    assert trainer_args(plan.runs[f"{base}-step40x0.5"]["settings"]) == [
        "--schedule", "step", "--step-every", "40", "--step-gamma", "0.5"]


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"optimizer": ["adm"]}, "'adm' is not one of ['sgd', 'adam', 'adamw']"),
        ({"schedule": ["step"]}, "train.schedule step needs train.step_every"),
        ({"schedule": ["cosine"], "min_lr": 0.1}, "train.min_lr 0.1 exceeds train.lr 0.05"),
        ({"optimizer": ["sgd", "adam"], "momentum": [0.5, 0.9]}, "train.momentum [0.5, 0.9] is a sweep, but adam"),
        ({"warmup": -1}, "train.warmup: -1 is less than the minimum of 0"),
    ],
)
def test_bad_trainer_settings_are_named(train, message):
    with pytest.raises(ConfigError) as error:
        plan_of({"train": train})
    assert message in str(error.value)


def test_the_train_jobs_get_the_options(tmp_path):
    """A dry run of the workflow: the Adam run's train job has the options, the SGD run's has none of them."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config.pop("experiments")
    config["results"] = str(tmp_path / "results")
    config["train"].update(optimizer=["sgd", "adamw"], schedule=["cosine"], warmup=3, weight_decay=[0.01])
    config["directions"]["methods"] = []
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    trains = {words[words.index("--out") + 1].split("/")[-2]: words for words in
              shell_commands("--configfile", str(path)) if words[0] == "gradvis_steps.train"}
    base = "digits-lenet_small-lr0.05-bs256-e2-m0.9-s0-wd0.01"
    assert sorted(trains) == [f"{base}-adamw-cosine-wu3", f"{base}-cosine-wu3"]
    adamw = trains[f"{base}-adamw-cosine-wu3"]
    assert adamw[adamw.index("--optimizer") + 1] == "adamw" and adamw[adamw.index("--warmup") + 1] == "3"
    assert "--optimizer" not in trains[f"{base}-cosine-wu3"]


def test_preflight_refuses_a_warmup_longer_than_the_run():
    from preflight import preflight

    plan = plan_of({**NO_PAIRS, "train": {"seed": [0], "epochs": [1], "batch_size": [256], "warmup": 6}})
    with pytest.raises(ConfigError, match=r"train.warmup 6 is not less than the 6 iterations of run .*accepted: 0..5"):
        preflight(plan)
    step = plan_of({**NO_PAIRS, "train": {"seed": [0], "epochs": [1], "batch_size": [256], "schedule": ["step"],
                                          "step_every": 6}})
    with pytest.raises(ConfigError, match=r"train.step_every 6: the step schedule .* would never decay"):
        preflight(step)
