# Frames in the paper's layout and mp4 videos: training (Figure 1: surface | contour with the trajectory |
# eigenvalue density, per checkpoint) and interpolation (Figure 8: the plane of the two minima with the current
# point | the loss along the line | the density, per point of the line).

VIDEO_DIR = folder_pattern("video")  # for the logs
IVIDEO_DIR = folder_pattern("interpolation_video")


rule moving_frame:
    input:
        trajectory=pattern("trajectory"),
        settings=ancient(settings_pattern("moving")),
    output:
        directory(pattern("moving_planes")),
    log:
        f"{folder_pattern('moving')}/moving_frame.log",
    params:
        args=from_job("moving", lambda cfg: (
            f"--every {cfg['frames']['moving_every']} --which {cfg['directions']['hessian']['which']} "
            f"--count {cfg['directions']['hessian']['count']} --steps {cfg['directions']['hessian']['steps']} "
            f"--pick {' '.join(map(str, cfg['directions']['hessian']['pick']))} "
            f"--resolution {cfg['landscape']['resolution']} --border {cfg['landscape']['border']} "
            f"{eval_args(cfg)} {hvp_args(cfg)}")),
    threads: threads_of("moving")
    resources:
        **resources_of("moving"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.moving_frame --trajectory {input.trajectory:q} "
        "{params.args} --folder-settings {input.settings:q} --out-dir {output:q}"


rule training_frames:
    input:
        planes=video_planes,
        spectra=lambda w: planned("spectra", run=w.run, sid=job("video", w.vid).upstream["spectra"]),
        settings=ancient(settings_pattern("video")),
    output:
        directory(pattern("training_frames")),
    log:
        f"{VIDEO_DIR}/frames.log",
    params:
        args=from_job("video", frame_args),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.frames training --landscape {input.planes:q} --spectra {input.spectra:q} "
        "{params.args} --out-dir {output:q}"


rule training_video:
    input:
        pattern("training_frames"),
    output:
        report(pattern("training_video"), category="Videos",
               labels={"run": "{run}", "video": "training", "id": "{vid}"}),
    log:
        f"{VIDEO_DIR}/video.log",
    params:
        args=from_job("video", lambda cfg: f"--fps {cfg['frames']['fps']}"),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q}"


rule interpolation_frames:
    input:
        line=pattern("interpolation_line"),
        spectra=pattern("interpolation_spectra"),
        plane=pattern("plane"),
    output:
        directory(pattern("interpolation_frames")),
    log:
        f"{IVIDEO_DIR}/frames.log",
    params:
        args=from_job("interpolation_video", frame_args),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.frames interpolation --line {input.line:q} --plane {input.plane:q} "
        "--spectra {input.spectra:q} {params.args} --out-dir {output:q}"


rule interpolation_video:
    input:
        pattern("interpolation_frames"),
    output:
        report(pattern("interpolation_video"), category="Videos",
               labels={"run": "{run} → {other}", "video": "interpolation", "id": "{ivid}"}),
    log:
        f"{IVIDEO_DIR}/video.log",
    params:
        args=from_job("interpolation_video", lambda cfg: f"--fps {cfg['frames']['fps']}"),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q}"
