# settings.yaml beside every analysis output: everything that defines the folder (its id is a hash of it). The
# steps record it in each HDF5 file's provenance (--folder-settings). The rules read it as ancient(): its content
# follows from its folder's name, so a deleted one is written again without rerunning the folder's jobs.

FOLDER_KINDS = {"spectra": "spectra", "eigendirections": "eigendirections", "directions": "directions",
                "landscape": "landscape", "videos": "video", "moving": "moving"}


rule analysis_settings:
    output:
        f"{R}/{{run}}/{{folder}}/{{aid}}/settings.yaml",
    log:
        f"{R}/{{run}}/{{folder}}/{{aid}}/logs/settings.log",
    wildcard_constraints:
        folder="|".join(FOLDER_KINDS),
        aid="|".join(re.escape(i) for kind in FOLDER_KINDS.values() for i in PLAN.ids(kind)) or "NO_JOBS",
    params:
        json=lambda w: settings_json(FOLDER_KINDS[w.folder], w.aid, run=w.run),
    localrule: True
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.settings_file --json {params.json:q} --out {output:q}"


rule interpolation_settings:
    output:
        f"{R}/{{run}}/interpolation/{{other}}/{{iid}}/settings.yaml",
    log:
        f"{R}/{{run}}/interpolation/{{other}}/{{iid}}/logs/settings.log",
    params:
        json=lambda w: settings_json("interpolation", w.iid, run=w.run, other=w.other),
    localrule: True
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.settings_file --json {params.json:q} --out {output:q}"


rule experiment_settings:
    output:
        f"{R}/experiments/{{experiment}}/settings.yaml",
    log:
        f"{R}/experiments/{{experiment}}/logs/settings.log",
    params:
        json=lambda w: json.dumps(summary_settings(PLAN, PLAN.experiments[w.experiment]), sort_keys=True),
    localrule: True
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.settings_file --json {params.json:q} --out {output:q}"
