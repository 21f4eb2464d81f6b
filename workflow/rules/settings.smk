# settings.yaml beside every analysis output: everything that defines the folder (its id is a hash of it). The
# steps record it in each HDF5 file's provenance (--folder-settings). The rules read it as ancient(): its content
# follows from its folder's name, so a deleted one is written again without rerunning the folder's jobs.

FOLDER_KINDS = plan_paths.run_subfolders()  # {subfolder of a run's folder: analysis kind}, from workflow/paths.py


rule analysis_settings:
    output:
        f"{folder_pattern('run')}/{{folder}}/{{aid}}/{plan_paths.SETTINGS}",
    log:
        f"{folder_pattern('run')}/{{folder}}/{{aid}}/logs/settings.log",
    wildcard_constraints:
        folder="|".join(map(re.escape, FOLDER_KINDS)),
        aid=ids(*FOLDER_KINDS.values()),
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
        settings_pattern("interpolation"),
    log:
        f"{folder_pattern('interpolation')}/logs/settings.log",
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
        pattern("experiment_settings"),
    log:
        f"{folder_pattern('experiment')}/logs/settings.log",
    params:
        json=lambda w: json.dumps(summary_settings(PLAN, PLAN.experiments[w.experiment]), sort_keys=True),
    localrule: True
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.settings_file --json {params.json:q} --out {output:q}"
