"""One source of defaults: every step option that has a workflow config key defaults to the schema's default of that
key, in the step's parser (what ``--help`` shows and a command line gets) and in its settings dataclass (what
``run(Settings(...))`` gets); and a converted step's parser and settings agree on every other option too.

The schema is read here with PyYAML from the repository's file, independently of ``gradvis_steps.defaults``."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

from gradvis_steps import defaults

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())

#: step -> its settings dataclass (the steps converted to settings + run + main)
SETTINGS = {"spectrum": "SpectrumSettings", "landscape": "LandscapeSettings", "directions": "DirectionsSettings",
            "eigendirections": "EigendirectionsSettings", "moving_frame": "MovingFrameSettings",
            "video": "VideoSettings", "interpolate": "InterpolateSettings",
            "frames": "FramesSettings", "plot_spectra": "PlotSpectraSettings", "train": "TrainStepSettings",
            "merge_spectra": "MergeSpectraSettings", "li_surface": "LiSurfaceSettings",
            "plot_landscape": "PlotLandscapeSettings", "compare": "CompareSettings",
            "experiment_summary": "SummarySettings", "import_checkpoints": "ImportSettings",
            "settings_file": "SettingsFileSettings"}


def schema_value(key: str):
    node = SCHEMA
    for part in key.split("."):
        node = node["properties"][part]
    return node["default"]


def parser_defaults(step: str) -> dict:
    parser = importlib.import_module(f"gradvis_steps.{step}").build_parser()
    return {action.dest: action.default for action in parser._actions if action.dest != "help"}


def plain(value):
    return list(value) if isinstance(value, tuple) else value


CASES = [(step, option, key) for step, options in defaults.CONFIG_KEYS.items() for option, key in options.items()]


@pytest.mark.parametrize(("step", "option", "key"), CASES, ids=[f"{s}.{o}" for s, o, _ in CASES])
def test_step_default_is_the_schema_default(step, option, key):
    wanted = schema_value(key)
    found = parser_defaults(step)
    assert option in found, f"{step} has no option {option} (mapped to {key})"
    assert plain(found[option]) == wanted, f"{step} --{option.replace('_', '-')}: {found[option]!r}, {key}: {wanted!r}"
    if step in SETTINGS:
        settings = getattr(importlib.import_module(f"gradvis_steps.{step}"), SETTINGS[step])
        field = {f.name: f for f in dataclasses.fields(settings)}[option]
        assert plain(field.default) == wanted, f"{settings.__name__}.{option}: {field.default!r}, {key}: {wanted!r}"


@pytest.mark.parametrize("step", sorted(SETTINGS))
def test_parser_and_settings_agree(step):
    """The parser's options are the settings' fields, with the same defaults (required options: required fields)."""
    module = importlib.import_module(f"gradvis_steps.{step}")
    fields = {f.name: f for f in dataclasses.fields(getattr(module, SETTINGS[step]))}
    parser = module.build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert actions.keys() == fields.keys()
    for name, field in fields.items():
        if field.default is dataclasses.MISSING:
            assert actions[name].required or name == "kind", name
        else:
            assert plain(actions[name].default) == plain(field.default), name


def test_the_disagreements_of_the_issue_are_gone():
    """Issue 25 found m 30 (schema) / 80 (cli) and resolution 25 / 50 / 25: one value each now, the schema's."""
    from gradvis_steps import landscape, moving_frame, spectrum

    assert spectrum.SpectrumSettings.m == parser_defaults("spectrum")["m"] == schema_value("spectra.m") == 30
    assert (landscape.LandscapeSettings.resolution == moving_frame.MovingFrameSettings.resolution
            == parser_defaults("landscape")["resolution"] == schema_value("landscape.resolution") == 25)


def test_schema_default_names_a_missing_key():
    with pytest.raises(KeyError, match="spectra.nope"):
        defaults.schema_default("spectra.nope")
    with pytest.raises(KeyError, match="no default for 'experiments'"):
        defaults.schema_default("experiments")


def test_train_defaults_are_the_training_settings():
    """The train step's run settings default to core.training.TrainSettings' (its one definition)."""
    import gradvis_steps.train as train
    from gradvis_steps.core.training import TrainSettings

    step_fields = {f.name: f.default for f in dataclasses.fields(train.TrainStepSettings)}
    for field in dataclasses.fields(TrainSettings):
        assert step_fields[field.name] == field.default, field.name
