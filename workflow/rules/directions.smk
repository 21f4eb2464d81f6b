# Directions that span the landscapes: random, PCA of the trajectory, Hessian eigenvectors, custom; all centred
# at `landscape.centre` (an iteration number or "last").


rule eigendirections:
    input:
        trajectory=pattern("trajectory"),
        settings=ancient(settings_pattern("eigendirections")),
    output:
        pattern("eigendirections"),
    log:
        f"{folder_pattern('eigendirections')}/eigendirections.log",
    params:
        launch=mpi_launcher,
        args=from_job("eigendirections", lambda cfg: (
            f"--which {cfg['directions']['hessian']['which']} --target {cfg['directions']['hessian']['target']} "
            f"--count {cfg['directions']['hessian']['count']} --steps {cfg['directions']['hessian']['steps']} "
            f"{centre_arg('--iteration', cfg['landscape']['centre'])} {eval_args(cfg)} {hvp_args(cfg)}")),
    threads: threads_of("eigendirections")
    resources:
        **resources_of("eigendirections", mpi=lambda cfg: cfg["directions"]["hessian"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.eigendirections --trajectory {input.trajectory:q} "
        "{params.args} --folder-settings {input.settings:q} --out {output:q}"


rule directions:
    input:
        unpack(directions_inputs),
    output:
        pattern("directions"),
    log:
        f"{folder_pattern('directions')}/directions.log",
    params:
        args=directions_args,
    threads: threads_of("directions")
    resources:
        **resources_of("directions", gpu=False),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.directions --trajectory {input.trajectory:q} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"
