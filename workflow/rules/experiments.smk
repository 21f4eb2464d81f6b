# Per experiment: the sweep's results side by side (one figure per run and kind of output whose folder differs
# between the variants) and a summary page for `snakemake --report` (settings, runs, variants, outputs).


rule compare:
    input:
        lambda w: [f"{R}/{p}" for p in comparison(w)["inputs"]],
    output:
        report(pattern("comparison"), category="{experiment}",
               subcategory="comparisons", labels={"run": "{run}", "figure": "{what}"}),
    log:
        f"{folder_pattern('experiment')}/compare/{{run}}/{{what}}.log",
    wildcard_constraints:
        what="spectra|landscape_[a-z]+",
    params:
        kind=lambda w: comparison(w)["kind"],
        labels=lambda w: " ".join(shlex.quote(label) for label in comparison(w)["labels"]),
        args=lambda w: frame_args(PLAN.experiments[w.experiment].variants[0].config) if comparison(w)["kind"] == "spectra" else "",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.compare --{params.kind} {input:q} --labels {params.labels} {params.args} "
        "--out {output:q}"


rule experiment_summary:
    input:
        settings=pattern("experiment_settings"),
        outputs=lambda w: experiment_outputs(w.experiment),
    output:
        report(pattern("summary"), category="{experiment}", subcategory="summary",
               labels={"experiment": "{experiment}", "page": "settings and outputs"}),
    log:
        f"{folder_pattern('experiment')}/summary.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.experiment_summary --name {wildcards.experiment:q} --settings {input.settings:q} "
        "--out {output:q}"
