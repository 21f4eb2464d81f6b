# Directions that span the landscapes: random, PCA of the trajectory, Hessian eigenvectors, custom; all centred
# at `landscape.centre` (an iteration number or "last").


rule eigendirections:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        settings=ancient(f"{R}/{{run}}/eigendirections/{{eid}}/settings.yaml"),
    output:
        f"{R}/{{run}}/eigendirections/{{eid}}/eigendirections.h5",
    log:
        f"{R}/{{run}}/eigendirections/{{eid}}/eigendirections.log",
    params:
        launch=mpi_launcher,
        args=from_job("eigendirections", "eid", lambda cfg: (
            f"--which {cfg['directions']['hessian']['which']} --target {cfg['directions']['hessian']['target']} "
            f"--count {cfg['directions']['hessian']['count']} --steps {cfg['directions']['hessian']['steps']} "
            f"{centre_arg('--iteration', cfg['landscape']['centre'])} {eval_args(cfg)} {hvp_args(cfg)}")),
    threads: threads_of("eigendirections", "eid")
    resources:
        **resources_of("eigendirections", "eid", mpi=lambda cfg: cfg["directions"]["hessian"]),
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
        f"{R}/{{run}}/directions/{{did}}/directions.h5",
    log:
        f"{R}/{{run}}/directions/{{did}}/directions.log",
    params:
        args=directions_args,
    threads: threads_of("directions", "did")
    resources:
        **resources_of("directions", "did", gpu=False),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.directions --trajectory {input.trajectory:q} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"
