# gradvis: the GradVis pipeline (train -> directions -> landscapes, spectra, interpolation -> frames -> videos),
# for one or more experiments with analysis sweeps (workflow/experiments.py plans them).
# Run: snakemake --cores 2 (see README.md); config in config/config.yaml, each experiment's settings validated
# against workflow/schemas/config.schema.yaml before any job runs.

from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/settings.smk"
include: "workflow/rules/train.smk"
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
