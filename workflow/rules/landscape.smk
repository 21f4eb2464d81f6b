# Loss landscapes along each direction method (Algorithm 1; Algorithm 3 with landscape.mpi_tasks > 1).


rule landscape:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        directions=f"{R}/{{run}}/directions/{{method}}.h5",
    output:
        f"{R}/{{run}}/landscape/{{method}}_{{dims}}d.h5",
    log:
        f"{R}/{{run}}/logs/landscape_{{method}}_{{dims}}d.log",
    params:
        launch=mpi_launcher,
        args=(f"--resolution {LAND['resolution']} --border {LAND['border']} --grid-batching {LAND['grid_batching']} "
              f"{EVAL_ARGS}"),
    threads: RES["threads"]
    resources:
        **mpi_resources(LAND["mpi_tasks"]),
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.launch}python -m gradvis_steps.landscape "
        "--trajectory {input.trajectory:q} --directions {input.directions:q} --dims {wildcards.dims} {params.args} "
        "--out {output:q} > {log:q} 2>&1"


rule plot_landscape_2d:
    input:
        f"{R}/{{run}}/landscape/{{method}}_2d.h5",
    output:
        contour=report(f"{R}/{{run}}/plots/{{method}}_contour.png", category="Landscapes",
                       subcategory="{run}", labels={"run": "{run}", "directions": "{method}", "figure": "contour"}),
        surface=report(f"{R}/{{run}}/plots/{{method}}_surface.png", category="Landscapes",
                       subcategory="{run}", labels={"run": "{run}", "directions": "{method}", "figure": "surface"}),
        vtk=f"{R}/{{run}}/plots/{{method}}_surface.vtk",
    log:
        f"{R}/{{run}}/logs/plot_{{method}}_2d.log",
    params:
        log_levels="--log-levels" if LAND["log_levels"] else "",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --contour {output.contour:q} --surface {output.surface:q} "
        "--vtk {output.vtk:q} {params.log_levels} --title {wildcards.run:q} > {log:q} 2>&1"


rule plot_landscape_1d:
    input:
        f"{R}/{{run}}/landscape/{{method}}_1d.h5",
    output:
        report(f"{R}/{{run}}/plots/{{method}}_line.png", category="Landscapes", subcategory="{run}",
               labels={"run": "{run}", "directions": "{method}", "figure": "line"}),
    log:
        f"{R}/{{run}}/logs/plot_{{method}}_1d.log",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.plot_landscape --landscape {input:q} --line {output:q} --title {wildcards.run:q} > {log:q} 2>&1"
