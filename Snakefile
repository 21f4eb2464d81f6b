# gradvis: the GradVis pipeline (train -> directions -> landscapes, spectra, interpolation -> frames -> videos),
# for one or more experiments with analysis sweeps (workflow/experiments.py plans them).
# Run: snakemake --cores 2 (see README.md); config in config/config.yaml, each experiment's settings validated
# against workflow/schemas/config.schema.yaml before any job runs.

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from experiments import ConfigError  # noqa: E402
from preflight import load_config_file  # noqa: E402

# Snakemake's own YAML reader names no line of a syntax error; this one does (for a --configfile, Snakemake reads it
# before this file runs: `python workflow/check_config.py FILE` names the line there).
try:
    if Path("config/config.yaml").is_file():  # as for configfile: below, relative to the working directory
        load_config_file("config/config.yaml")
except ConfigError as error:
    raise SystemExit(f"config error: {error}") from None


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/settings.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/directions.smk"
include: "workflow/rules/landscape.smk"
include: "workflow/rules/spectra.smk"
include: "workflow/rules/interpolation.smk"
include: "workflow/rules/video.smk"
include: "workflow/rules/experiments.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
