# gradvis: the GradVis pipeline (train -> directions -> landscapes, spectra, interpolation -> frames -> videos),
# for one or more experiments with analysis sweeps (workflow/experiments.py plans them).
# Run: snakemake --cores 2 in the clone, or `gradvis run` in a folder of your own (see README.md); config in
# config/config.yaml, merged over the embedded default; each experiment's settings validated
# against workflow/schemas/config.schema.yaml before any job runs.

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")
# This file's folder (not workflow.basedir, the main Snakefile's, which differs when gradvis is a Snakemake module).
GRADVIS_ROOT = Path(str(workflow.current_basedir))
sys.path.insert(0, str(GRADVIS_ROOT / "workflow"))
from experiments import ConfigError, deep_merge  # noqa: E402
from preflight import load_config_file  # noqa: E402
import results_lock  # noqa: E402

# Snakemake's own YAML reader names no line of a syntax error; this one does (for a --configfile, Snakemake reads it
# before this file runs: `python workflow/check_config.py FILE` names the line there).
try:
    if Path("config/config.yaml").is_file():  # as for configfile: below, relative to the working directory
        load_config_file("config/config.yaml")
except ConfigError as error:
    raise SystemExit(f"config error: {error}") from None


configfile: "config/config.yaml"


# Every config is merged over the embedded default (as check_config.py does), so a config of one's own, in another
# folder or passed to this file as a Snakemake module, names only what it changes. In place: `config` is Snakemake's.
try:
    _merged = deep_merge(load_config_file(GRADVIS_ROOT / "config" / "config.yaml"), config)
except ConfigError as error:
    raise SystemExit(f"config error: {error}") from None
config.clear()
config.update(_merged)
# `--config force_unlock=true`: take the results folder's lock even from a run that holds it (workflow/results_lock.py)
FORCE_UNLOCK = config.pop("force_unlock", False)
if not isinstance(FORCE_UNLOCK, bool):
    raise SystemExit(f"config error: force_unlock must be true or false, got {FORCE_UNLOCK!r}")
# A results folder is owned by one run at a time (workflow/results_lock.py; taken before the first job, in onstart):
# a second run stops here, before the config's validation, the pre-flight and the DAG. A dry run only says so, as do
# gradvis report and unlock (GRADVIS_LOCK=warn). Not in the jobs Snakemake starts (SLURM), only where the user does.
if getattr(workflow, "is_main_process", True) and not FORCE_UNLOCK:
    _results = str(config.get("results", "results")).rstrip("/")
    _holder = results_lock.holder(_results)
    if _holder is not None:
        _dry = getattr(getattr(workflow, "output_settings", None), "dryrun", False)  # workflow.dryrun: not yet known
        if _dry or os.environ.get("GRADVIS_LOCK") == "warn":
            print(f"warning: {results_lock.in_use_message(_results, _holder)}", file=sys.stderr)
        else:
            raise SystemExit(f"error: {results_lock.in_use_message(_results, _holder)}")


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
