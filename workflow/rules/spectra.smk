# Hessian eigenvalue densities (SLQ, Algorithm 2) at every k-th checkpoint, scattered over `spectra.chunks` jobs
# and gathered; each job may itself use MPI ranks over the starting vectors (Algorithm 5). Then one density plot
# per checkpoint.

SPEC_DIR = f"{R}/{{run}}/spectra/{{sid}}"


rule spectrum_chunk:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        settings=ancient(f"{SPEC_DIR}/settings.yaml"),
    output:
        temp(f"{SPEC_DIR}/chunk_{{i}}of{{n}}.h5"),
    log:
        f"{SPEC_DIR}/logs/chunk_{{i}}of{{n}}.log",
    params:
        launch=mpi_launcher,
        args=from_job("spectra", "sid", lambda cfg: (
            f"--every {cfg['spectra']['every']} {slq_args(cfg)} {parallel_args(cfg)} {eval_args(cfg)} {hvp_args(cfg)}")),
    threads: threads_of("spectra", "sid")
    resources:
        **resources_of("spectra", "sid", mpi=lambda cfg: cfg["spectra"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.spectrum --trajectory {input.trajectory:q} "
        "{params.args} --chunk {wildcards.i}/{wildcards.n} --folder-settings {input.settings:q} --out {output:q} "


rule spectra_gather:
    input:
        lambda w: [f"{R}/{w.run}/spectra/{w.sid}/chunk_{i}of{chunks(w.sid)}.h5" for i in range(1, chunks(w.sid) + 1)],
    output:
        f"{SPEC_DIR}/spectra.h5",
    log:
        f"{SPEC_DIR}/logs/gather.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.merge_spectra --inputs {input:q} --out {output:q}"


rule density_plots:
    input:
        f"{SPEC_DIR}/spectra.h5",
    output:
        report(directory(f"{SPEC_DIR}/densities"), patterns=["density_{iteration}.png"], category="Spectra",
               subcategory="{run}", labels={"run": "{run}", "spectra": "{sid}", "iteration": "{iteration}"}),
    log:
        f"{SPEC_DIR}/logs/densities.log",
    params:
        args=from_job("spectra", "sid", lambda cfg: frame_args(cfg)),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_spectra --spectra {input:q} {params.args} --out-dir {output:q}"
