# Directions that span the landscapes: random, PCA of the trajectory, Hessian eigenvectors, custom.


rule eigendirections:
    input:
        f"{R}/{{run}}/trajectory.h5",
    output:
        f"{R}/{{run}}/eigendirections.h5",
    log:
        f"{R}/{{run}}/logs/eigendirections.log",
    params:
        args=(f"--which {HESSIAN['which']} --target {HESSIAN['target']} --count {HESSIAN['count']} "
              f"--steps {HESSIAN['steps']} {EVAL_ARGS} {HVP_ARGS}"),
    threads: RES["threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.eigendirections --trajectory {input:q} {params.args} "
        "--out {output:q} > {log:q} 2>&1"


rule directions:
    input:
        unpack(directions_inputs),
    output:
        f"{R}/{{run}}/directions/{{method}}.h5",
    log:
        f"{R}/{{run}}/logs/directions_{{method}}.log",
    params:
        args=directions_args,
    threads: RES["threads"]
    resources:
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.directions --trajectory {input.trajectory:q} {params.args} "
        "--out {output:q} > {log:q} 2>&1"
