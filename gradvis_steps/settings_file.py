"""Step: write the settings that define an output folder as YAML (the workflow puts one beside every analysis).

    python -m gradvis_steps.settings_file --json '{"kind": "spectra", "settings": {...}}' --out settings.yaml

The steps that compute into that folder get ``--folder-settings settings.yaml`` and record its content in the
provenance of every file they write, so an HDF5 file names the settings it was computed from without its folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import cli, step_settings


@dataclass(frozen=True, kw_only=True)
class SettingsFileSettings:
    """Settings of the settings_file step: the settings as a JSON object, the YAML file to write."""

    json: str
    out: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.settings_file",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="the settings as a JSON object")
    parser.add_argument("--out", required=True, type=cli.output_file, help="YAML file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), SettingsFileSettings, argv))
    return 0


def run(settings_: SettingsFileSettings) -> Path:
    """Write the JSON object ``settings_.json`` as YAML (sorted keys) to ``settings_.out``; returns its path."""
    args = settings_
    cli.check_outputs(files=(args.out,))
    from .storage.atomic import atomic_path

    try:
        settings = json.loads(args.json)
    except json.JSONDecodeError as error:
        raise ValueError(f"--json is not valid JSON ({error}): {args.json[:200]!r}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--json must be a JSON object, got {type(settings).__name__}")
    with atomic_path(args.out, ".yaml") as tmp:
        with open(tmp, "w") as handle:
            yaml.safe_dump(settings, handle, sort_keys=True, default_flow_style=False)
    return Path(args.out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
