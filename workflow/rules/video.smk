# Frames in the paper's layout (landscape + trajectory | eigenvalue density) and mp4 videos.


rule training_frames:
    input:
        landscape=f"{R}/{{run}}/landscape/{FRAMES['direction']}_2d.h5",
        spectra=f"{R}/{{run}}/spectra.h5",
    output:
        directory(f"{R}/{{run}}/frames/training"),
    log:
        f"{R}/{{run}}/logs/training_frames.log",
    params:
        args=FRAME_ARGS,
    conda:
        ENV
    shell:
        "python -m gradvis_steps.frames training --landscape {input.landscape:q} --spectra {input.spectra:q} {params.args} "
        "--out-dir {output:q} > {log:q} 2>&1"


rule interpolation_frames:
    input:
        line=f"{PAIR_DIR}/line.h5",
        spectra=f"{PAIR_DIR}/spectra.h5",
    output:
        directory(f"{PAIR_DIR}/frames"),
    log:
        f"{PAIR_DIR}/frames.log",
    params:
        args=FRAME_ARGS,
    conda:
        ENV
    shell:
        "python -m gradvis_steps.frames interpolation --line {input.line:q} --spectra {input.spectra:q} {params.args} "
        "--out-dir {output:q} > {log:q} 2>&1"


rule training_video:
    input:
        f"{R}/{{run}}/frames/training",
    output:
        report(f"{R}/{{run}}/training.mp4", category="Videos", labels={"run": "{run}", "video": "training"}),
    log:
        f"{R}/{{run}}/logs/training_video.log",
    params:
        args=f"--fps {FRAMES['fps']}",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q} > {log:q} 2>&1"


rule interpolation_video:
    input:
        f"{PAIR_DIR}/frames",
    output:
        report(f"{PAIR_DIR}/interpolation.mp4", category="Videos",
               labels={"run": "{run} → {other}", "video": "interpolation"}),
    log:
        f"{PAIR_DIR}/video.log",
    params:
        args=f"--fps {FRAMES['fps']}",
    conda:
        ENV
    shell:
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q} > {log:q} 2>&1"
