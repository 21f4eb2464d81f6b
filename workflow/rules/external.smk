# Runs not trained here (`external_runs:`): a trajectory file is copied into the run's folder; checkpoint files
# become a trajectory through the import step. Either way results/<name>/trajectory.h5 then feeds every analysis
# as a trained run's does. A changed file (content, size or modification time) reruns that run's jobs only.


rule external_trajectory:
    input:
        external_inputs,
    output:
        pattern("trajectory"),
    log:
        f"{folder_pattern('run')}/logs/external.log",
    wildcard_constraints:
        run=one_of(PLAN.external_names("trajectory")),
    params:
        fingerprint=external_fingerprint,
    localrule: True
    conda:
        ENV
    shell:
        # a copy, not a link: the results stay what they are if the file is moved, edited or deleted later;
        # written beside the output and renamed, so an interrupted copy never passes for the trajectory
        "python -m gradvis_steps.logged {log:q} "
        """sh -c 'cp -- "$1" "$2.partial" && mv -f -- "$2.partial" "$2"' copy {input:q} {output:q}"""


rule import_checkpoints:
    input:
        external_inputs,
    output:
        pattern("trajectory"),
    log:
        f"{folder_pattern('run')}/logs/import.log",
    wildcard_constraints:
        run=one_of(PLAN.external_names("checkpoints")),
    params:
        args=lambda w: import_args(w.run),
        fingerprint=external_fingerprint,
    threads: external_resource("threads")
    resources:
        mem_mb=external_resource("mem_mb"),
        runtime=external_resource("runtime"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.import_checkpoints --out {output:q} {params.args} "
        "--no-progress {input:q}"
