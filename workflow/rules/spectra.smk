# Hessian eigenvalue densities (SLQ, Algorithm 2) at every k-th checkpoint, scattered over
# `spectra.chunks` jobs and gathered; each job may itself use MPI ranks over the starting vectors (Algorithm 5).


rule spectrum_chunk:
    input:
        f"{R}/{{run}}/trajectory.h5",
    output:
        temp(f"{R}/{{run}}/spectra/chunk_{{i}}of{{n}}.h5"),
    log:
        f"{R}/{{run}}/logs/spectrum_chunk_{{i}}of{{n}}.log",
    params:
        launch=mpi_launcher,
        args=f"--every {SPEC['every']} {SPEC_ARGS} {EVAL_ARGS} {HVP_ARGS}",
    threads: RES["threads"]
    resources:
        **mpi_resources(SPEC["mpi_tasks"]),
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.launch}python -m gradvis_steps.spectrum "
        "--trajectory {input:q} {params.args} --chunk {wildcards.i}/{wildcards.n} --out {output:q} > {log:q} 2>&1"


rule spectra_gather:
    input:
        lambda w: [f"{R}/{w.run}/spectra/chunk_{i}of{CHUNKS}.h5" for i in range(1, CHUNKS + 1)],
    output:
        f"{R}/{{run}}/spectra.h5",
    log:
        f"{R}/{{run}}/logs/spectra_gather.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.merge_spectra --inputs {input:q} --out {output:q} > {log:q} 2>&1"
