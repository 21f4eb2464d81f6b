# Training with a checkpoint every `train.checkpoint_every` iterations (paper section 3.3). The step keeps its
# progress in <out>.partial and `--resume` continues from there, so a killed job (a SLURM time limit) loses at most
# the iterations since the last checkpoint.


rule train:
    output:
        pattern("trajectory"),
    log:
        f"{folder_pattern('run')}/logs/train.log",
    wildcard_constraints:
        run=one_of(PLAN.runs),
    params:
        args=lambda w: train_args(w.run),
    threads: run_resource("threads")
    resources:
        gpu=run_resource("gpu"),
        mem_mb=run_resource("mem_mb"),
        runtime=run_resource("runtime"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.train {params.args} --resume --no-progress "
        "--out {output:q}"
