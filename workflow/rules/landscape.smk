# Loss landscapes along each direction method (Algorithm 1; Algorithm 3 with landscape.mpi_tasks > 1), and their
# figures (`log_levels` adds the suffix _log to the figures' names, so both kinds can sit side by side).

LAND_DIR = folder_pattern("landscape")  # for the logs


rule landscape:
    input:
        trajectory=pattern("trajectory"),
        directions=lambda w: planned("directions", run=w.run, did=job("landscape", w.lid).upstream["directions"]),
        settings=ancient(settings_pattern("landscape")),
    output:
        pattern("landscape"),
    log:
        f"{LAND_DIR}/landscape_{{dims}}d.log",
    params:
        launch=mpi_launcher,
        args=from_job("landscape", lambda cfg: (
            f"--resolution {cfg['landscape']['resolution']} --border {cfg['landscape']['border']} "
            f"--grid-batching {cfg['landscape']['grid_batching']} {eval_args(cfg)}")),
    threads: threads_of("landscape")
    resources:
        **resources_of("landscape", mpi=lambda cfg: cfg["landscape"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.landscape "
        "--trajectory {input.trajectory:q} --directions {input.directions:q} --dims {wildcards.dims} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"


rule plot_landscape_2d:
    input:
        pattern("landscape", dims=2),
    output:
        contour=report(pattern("contour"), category="Landscapes", subcategory="{run}",
                       labels={"run": "{run}", "landscape": "{lid}", "figure": "contour{log}"}),
        surface=report(pattern("surface"), category="Landscapes", subcategory="{run}",
                       labels={"run": "{run}", "landscape": "{lid}", "figure": "surface{log}"}),
    log:
        f"{LAND_DIR}/plot_2d{{log}}.log",
    params:
        log_levels=lambda w: "--log-levels" if w.log else "",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --contour {output.contour:q} "
        "--surface {output.surface:q} {params.log_levels} --title {wildcards.run:q}"


rule landscape_vtk:
    input:
        pattern("landscape", dims=2),
    output:
        pattern("vtk"),
    log:
        f"{LAND_DIR}/vtk.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --vtk {output:q}"


rule plot_landscape_1d:
    input:
        pattern("landscape", dims=1),
    output:
        report(pattern("line"), category="Landscapes", subcategory="{run}",
               labels={"run": "{run}", "landscape": "{lid}", "figure": "line{log}"}),
    log:
        f"{LAND_DIR}/plot_1d{{log}}.log",
    params:
        log_levels=lambda w: "--log-levels" if w.log else "",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --line {output:q} {params.log_levels} "
        "--title {wildcards.run:q}"
