# Training with a checkpoint every `train.checkpoint_every` iterations (paper section 3.3).


rule train:
    output:
        f"{R}/{{run}}/trajectory.h5",
    log:
        f"{R}/{{run}}/logs/train.log",
    params:
        args=lambda w: f"{train_args(w.run)} --device {config['device']} --no-progress",
    threads: RES["threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.train {params.args} --out {output:q} > {log:q} 2>&1"
