"""Running the workflow from tests: the snakemake of this environment in the repository, and the plan it builds."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from experiments import SCHEMA_PATH  # noqa: F401 - the tests' name for it

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def snakemake(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` in the repository, with this environment's executables first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def shell_commands(*args: str) -> list[list[str]]:
    """The step commands (``gradvis_steps.<step> ...`` as words) a dry run of the workflow would run."""
    result = snakemake("-n", "-p", "--cores", "1", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the step's command is the last `python -m` of a job's shell (the first runs gradvis_steps.logged around it)
    return [shlex.split(line.rsplit("python -m ", 1)[1].split(" > ")[0]) for line in result.stdout.splitlines()
            if "python -m gradvis_steps." in line]


def plan_of(config: dict):
    """The plan as the workflow builds it: the config merged over the embedded default (Snakemake's --configfile)."""
    from experiments import build_plan, deep_merge, load_schema, validate_variant

    return build_plan(deep_merge(DEFAULT_CONFIG, config), load_schema(), validate_variant)


def config_copy(name: str, folder: Path) -> Path:
    """A copy of ``config/<name>`` in ``folder`` that passes the pre-flight on a machine without CIFAR-10: its
    ``download: false`` becomes true unless ``data/`` holds the dataset (a real run would download it first)."""
    text = (ROOT / "config" / name).read_text()
    if not (ROOT / "data" / "cifar-10-batches-py").is_dir():
        text = text.replace("download: false", "download: true")
    path = folder / name
    path.write_text(text)
    return path
