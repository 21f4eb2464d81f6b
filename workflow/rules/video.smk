# Frames in the paper's layout and mp4 videos: training (Figure 1: surface | contour with the trajectory |
# eigenvalue density, per checkpoint) and interpolation (Figure 8: the plane of the two minima with the current
# point | the loss along the line | the density, per point of the line).

VIDEO_DIR = f"{R}/{{run}}/videos/{{vid}}"
IVIDEO_DIR = f"{PAIR_DIR}/videos/{{ivid}}"


rule moving_frame:
    input:
        trajectory=f"{R}/{{run}}/trajectory.h5",
        settings=ancient(f"{R}/{{run}}/moving/{{mid}}/settings.yaml"),
    output:
        directory(f"{R}/{{run}}/moving/{{mid}}/landscapes"),
    log:
        f"{R}/{{run}}/moving/{{mid}}/moving_frame.log",
    params:
        args=from_job("moving", "mid", lambda cfg: (
            f"--every {cfg['frames']['moving_every']} --which {cfg['directions']['hessian']['which']} "
            f"--count {cfg['directions']['hessian']['count']} --steps {cfg['directions']['hessian']['steps']} "
            f"--pick {' '.join(map(str, cfg['directions']['hessian']['pick']))} "
            f"--resolution {cfg['landscape']['resolution']} --border {cfg['landscape']['border']} "
            f"{eval_args(cfg)} {hvp_args(cfg)}")),
    threads: threads_of("moving", "mid")
    resources:
        **resources_of("moving", "mid"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.moving_frame --trajectory {input.trajectory:q} "
        "{params.args} --folder-settings {input.settings:q} --out-dir {output:q}"


rule training_frames:
    input:
        planes=video_planes,
        spectra=lambda w: f"{R}/{w.run}/spectra/{job('video', w.vid).upstream['spectra']}/spectra.h5",
        settings=ancient(f"{VIDEO_DIR}/settings.yaml"),
    output:
        directory(f"{VIDEO_DIR}/frames"),
    log:
        f"{VIDEO_DIR}/frames.log",
    params:
        args=from_job("video", "vid", frame_args),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.frames training --landscape {input.planes:q} --spectra {input.spectra:q} "
        "{params.args} --out-dir {output:q}"


rule training_video:
    input:
        f"{VIDEO_DIR}/frames",
    output:
        report(f"{VIDEO_DIR}/training.mp4", category="Videos",
               labels={"run": "{run}", "video": "training", "id": "{vid}"}),
    log:
        f"{VIDEO_DIR}/video.log",
    params:
        args=from_job("video", "vid", lambda cfg: f"--fps {cfg['frames']['fps']}"),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q}"


rule interpolation_frames:
    input:
        line=f"{PAIR_DIR}/line.h5",
        spectra=f"{PAIR_DIR}/spectra.h5",
        plane=f"{PAIR_DIR}/plane.h5",
    output:
        directory(f"{IVIDEO_DIR}/frames"),
    log:
        f"{IVIDEO_DIR}/frames.log",
    params:
        args=from_job("interpolation_video", "ivid", frame_args),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.frames interpolation --line {input.line:q} --plane {input.plane:q} "
        "--spectra {input.spectra:q} {params.args} --out-dir {output:q}"


rule interpolation_video:
    input:
        f"{IVIDEO_DIR}/frames",
    output:
        report(f"{IVIDEO_DIR}/interpolation.mp4", category="Videos",
               labels={"run": "{run} → {other}", "video": "interpolation", "id": "{ivid}"}),
    log:
        f"{IVIDEO_DIR}/video.log",
    params:
        args=from_job("interpolation_video", "ivid", lambda cfg: f"--fps {cfg['frames']['fps']}"),
    conda:
        ENV
    shell:
        "python -m gradvis_steps.logged {log:q} "
        "python -m gradvis_steps.video --frames {input:q} {params.args} --out {output:q}"
