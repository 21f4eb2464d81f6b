# Hessian eigenvalue densities (SLQ, Algorithm 2) at every k-th checkpoint, scattered over `spectra.chunks` jobs
# and gathered; each job may itself use MPI ranks over the starting vectors (Algorithm 5). Then one density plot
# per checkpoint.

SPEC_DIR = folder_pattern("spectra")  # for the logs


rule spectrum_chunk:
    input:
        trajectory=pattern("trajectory"),
        settings=ancient(settings_pattern("spectra")),
    output:
        temp(pattern("spectrum_chunk")),
    log:
        f"{SPEC_DIR}/logs/chunk_{{i}}of{{n}}.log",
    params:
        launch=mpi_launcher,
        args=from_job("spectra", lambda cfg: (
            f"--every {cfg['spectra']['every']} {slq_args(cfg)} {parallel_args(cfg)} {eval_args(cfg)} {hvp_args(cfg)} "
            f"--blocks {shlex.join(cfg['spectra']['blocks'])}")),
    threads: threads_of("spectra")
    resources:
        **resources_of("spectra", mpi=lambda cfg: cfg["spectra"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.spectrum --trajectory {input.trajectory:q} "
        "{params.args} --chunk {wildcards.i}/{wildcards.n} --folder-settings {input.settings:q} --out {output:q} "


rule spectra_gather:
    input:
        lambda w: [planned("spectrum_chunk", run=w.run, sid=w.sid, i=i, n=chunks(w.sid))
                   for i in range(1, chunks(w.sid) + 1)],
    output:
        pattern("spectra"),
    log:
        f"{SPEC_DIR}/logs/gather.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.merge_spectra --inputs {input:q} --out {output:q}"


rule density_plots:
    input:
        pattern("spectra"),
    output:
        report(directory(pattern("densities")), patterns=["density_{iteration}.png"], category="Spectra",
               subcategory="{run}", labels={"run": "{run}", "spectra": "{sid}", "iteration": "{iteration}"}),
    log:
        f"{SPEC_DIR}/logs/densities.log",
    params:
        args=from_job("spectra", lambda cfg: frame_args(cfg)),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_spectra --spectra {input:q} {params.args} --out-dir {output:q}"
