# Per experiment: the sweep's results side by side (one figure per run and kind of output whose folder differs
# between the variants) and a summary page for `snakemake --report` (settings, runs, variants, outputs).


rule compare:
    input:
        lambda w: [f"{R}/{path}" for path in comparison(w)["inputs"]],
    output:
        report(f"{R}/experiments/{{experiment}}/compare/{{run}}/{{what}}.png", category="{experiment}",
               subcategory="comparisons", labels={"run": "{run}", "figure": "{what}"}),
    log:
        f"{R}/experiments/{{experiment}}/compare/{{run}}/{{what}}.log",
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
        settings=f"{R}/experiments/{{experiment}}/settings.yaml",
        outputs=lambda w: [f"{R}/{item['path']}" for item in PLAN.experiments[w.experiment].outputs]
        + [f"{R}/{path}" for path in PLAN.experiments[w.experiment].compare],
    output:
        report(f"{R}/experiments/{{experiment}}/summary.html", category="{experiment}", subcategory="summary",
               labels={"experiment": "{experiment}", "page": "settings and outputs"}),
    log:
        f"{R}/experiments/{{experiment}}/summary.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.experiment_summary --name {wildcards.experiment:q} --settings {input.settings:q} "
        "--out {output:q}"
