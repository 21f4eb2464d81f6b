# Loss landscapes along each direction method (Algorithm 1; Algorithm 3 with landscape.mpi_tasks > 1), and their
# figures (`log_levels` adds the suffix _log to the figures' names, so both kinds can sit side by side).

LAND_DIR = f"{R}/{{run}}/landscape/{{lid}}"


rule landscape:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        directions=lambda w: f"{R}/{w.run}/directions/{job('landscape', w.lid).upstream['directions']}/directions.h5",
        settings=ancient(f"{LAND_DIR}/settings.yaml"),
    output:
        f"{LAND_DIR}/landscape_{{dims}}d.h5",
    log:
        f"{LAND_DIR}/landscape_{{dims}}d.log",
    params:
        launch=mpi_launcher,
        args=from_job("landscape", "lid", lambda cfg: (
            f"--resolution {cfg['landscape']['resolution']} --border {cfg['landscape']['border']} "
            f"--grid-batching {cfg['landscape']['grid_batching']} {eval_args(cfg)}")),
    threads: threads_of("landscape", "lid")
    resources:
        **resources_of("landscape", "lid", mpi=lambda cfg: cfg["landscape"]),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "{params.launch}python -m gradvis_steps.landscape "
        "--trajectory {input.trajectory:q} --directions {input.directions:q} --dims {wildcards.dims} {params.args} "
        "--folder-settings {input.settings:q} --out {output:q}"


rule plot_landscape_2d:
    input:
        f"{LAND_DIR}/landscape_2d.h5",
    output:
        contour=report(f"{LAND_DIR}/contour{{log}}.png", category="Landscapes", subcategory="{run}",
                       labels={"run": "{run}", "landscape": "{lid}", "figure": "contour{log}"}),
        surface=report(f"{LAND_DIR}/surface{{log}}.png", category="Landscapes", subcategory="{run}",
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
        f"{LAND_DIR}/landscape_2d.h5",
    output:
        f"{LAND_DIR}/surface.vtk",
    log:
        f"{LAND_DIR}/vtk.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --vtk {output:q}"


rule plot_landscape_1d:
    input:
        f"{LAND_DIR}/landscape_1d.h5",
    output:
        report(f"{LAND_DIR}/line{{log}}.png", category="Landscapes", subcategory="{run}",
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
