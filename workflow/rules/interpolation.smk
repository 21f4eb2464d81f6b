# Interpolation between two minima (paper section 3.4): the loss and the Hessian spectrum along the line between
# the final points of two runs that differ only in their seed, and the plane through both minima and the first
# run's initial point.

PAIR_DIR = folder_pattern("interpolation")  # for the logs


rule interpolate:
    input:
        a=pattern("trajectory"),
        b=pattern("trajectory", run="{other}"),
        settings=ancient(settings_pattern("interpolation")),
    output:
        line=pattern("interpolation_line"),
        spectra=pattern("interpolation_spectra"),
    log:
        f"{PAIR_DIR}/interpolate.log",
    params:
        launch=mpi_launcher,
        args=from_job("interpolation", lambda cfg: (
            f"--points {cfg['interpolation']['points']} {slq_args(cfg)} {parallel_args(cfg)} {eval_args(cfg)} "
            f"{hvp_args(cfg)}")),
    threads: threads_of("interpolation")
    resources:
        **resources_of("interpolation", mpi=lambda cfg: cfg["spectra"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.interpolate "
        "--trajectory-a {input.a:q} --trajectory-b {input.b:q} {params.args} --folder-settings {input.settings:q} "
        "--out-line {output.line:q} --out-spectra {output.spectra:q}"


rule plot_interpolation_line:
    input:
        pattern("interpolation_line"),
    output:
        report(pattern("interpolation_line_plot"), category="Interpolation",
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
        a=pattern("trajectory"),
        b=pattern("trajectory", run="{other}"),
        settings=ancient(settings_pattern("interpolation")),
    output:
        pattern("plane_directions"),
    log:
        f"{PAIR_DIR}/plane_directions.log",
    threads: threads_of("interpolation")
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.directions --trajectory {input.a:q} --trajectory-b {input.b:q} "
        "--method interpolation --folder-settings {input.settings:q} --out {output:q}"


rule interpolation_plane:
    input:
        trajectory=pattern("trajectory"),
        directions=pattern("plane_directions"),
        settings=ancient(settings_pattern("interpolation")),
    output:
        pattern("plane"),
    log:
        f"{PAIR_DIR}/plane.log",
    params:
        launch=mpi_launcher,
        args=from_job("interpolation", plane_args),
    threads: threads_of("interpolation")
    resources:
        **resources_of("interpolation", mpi=lambda cfg: cfg["landscape"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.landscape "
        "--trajectory {input.trajectory:q} --directions {input.directions:q} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"


rule plot_interpolation_plane:
    input:
        pattern("plane"),
    output:
        contour=report(pattern("plane_contour"), category="Interpolation",
                       labels={"runs": "{run} → {other}", "interpolation": "{iid}", "figure": "plane"}),
        surface=pattern("plane_surface"),
    log:
        f"{PAIR_DIR}/plot_plane.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --contour {output.contour:q} "
        "--surface {output.surface:q} --log-levels --mark 1 0 'minimum B'"
