# Interpolation between two minima (paper section 3.4): the loss and the Hessian spectrum along the line between
# the final points of two runs that differ only in their seed, and the plane through both minima and the first
# run's initial point.

PAIR_DIR = f"{R}/{{run}}/interpolation/{{other}}/{{iid}}"


rule interpolate:
    input:
        a=f"{R}/{{run}}/trajectory.h5",
        b=f"{R}/{{other}}/trajectory.h5",
        settings=ancient(f"{PAIR_DIR}/settings.yaml"),
    output:
        line=f"{PAIR_DIR}/line.h5",
        spectra=f"{PAIR_DIR}/spectra.h5",
    log:
        f"{PAIR_DIR}/interpolate.log",
    params:
        launch=mpi_launcher,
        args=from_job("interpolation", "iid", lambda cfg: (
            f"--points {cfg['interpolation']['points']} {slq_args(cfg)} {parallel_args(cfg)} {eval_args(cfg)} "
            f"{hvp_args(cfg)}")),
    threads: threads_of("interpolation", "iid")
    resources:
        **resources_of("interpolation", "iid", mpi=lambda cfg: cfg["spectra"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.interpolate "
        "--trajectory-a {input.a:q} --trajectory-b {input.b:q} {params.args} --folder-settings {input.settings:q} "
        "--out-line {output.line:q} --out-spectra {output.spectra:q}"


rule plot_interpolation_line:
    input:
        f"{PAIR_DIR}/line.h5",
    output:
        report(f"{PAIR_DIR}/line.png", category="Interpolation",
               labels={"runs": "{run} → {other}", "interpolation": "{iid}", "figure": "line"}),
    log:
        f"{PAIR_DIR}/plot_line.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --line {output:q}"


rule interpolation_plane_directions:
    input:
        a=f"{R}/{{run}}/trajectory.h5",
        b=f"{R}/{{other}}/trajectory.h5",
        settings=ancient(f"{PAIR_DIR}/settings.yaml"),
    output:
        f"{PAIR_DIR}/plane_directions.h5",
    log:
        f"{PAIR_DIR}/plane_directions.log",
    threads: threads_of("interpolation", "iid")
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.directions --trajectory {input.a:q} --trajectory-b {input.b:q} "
        "--method interpolation --folder-settings {input.settings:q} --out {output:q}"


rule interpolation_plane:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        directions=f"{PAIR_DIR}/plane_directions.h5",
        settings=ancient(f"{PAIR_DIR}/settings.yaml"),
    output:
        f"{PAIR_DIR}/plane.h5",
    log:
        f"{PAIR_DIR}/plane.log",
    params:
        launch=mpi_launcher,
        args=from_job("interpolation", "iid", plane_args),
    threads: threads_of("interpolation", "iid")
    resources:
        **resources_of("interpolation", "iid", mpi=lambda cfg: cfg["landscape"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.landscape "
        "--trajectory {input.trajectory:q} --directions {input.directions:q} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"


rule plot_interpolation_plane:
    input:
        f"{PAIR_DIR}/plane.h5",
    output:
        contour=report(f"{PAIR_DIR}/plane_contour.png", category="Interpolation",
                       labels={"runs": "{run} → {other}", "interpolation": "{iid}", "figure": "plane"}),
        surface=f"{PAIR_DIR}/plane_surface.png",
    log:
        f"{PAIR_DIR}/plot_plane.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --contour {output.contour:q} "
        "--surface {output.surface:q} --log-levels --mark 1 0 'minimum B'"
