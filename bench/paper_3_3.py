"""The paper's section 3.3 experiment end to end, timed per stage: LeNet's first epoch, a checkpoint every iteration,
the landscape along the two top Hessian eigenvectors, the eigenvalue density at every checkpoint, frames, video.

Stages, each one step module run as its own process as the workflow runs them (``Snakefile``,
``workflow/rules/*.smk``), on synthetic CIFAR-shaped data (``--dataset synthetic``: real CIFAR-10 cannot be fetched
on a machine without network):

1. ``train``: LeNet, 1 epoch over ``--samples`` (default 50,000, CIFAR-10's training set: 196 iterations, 197
   checkpoints), batch 256, lr 0.01, momentum 0.9, ``--checkpoint-every 1``;
2. ``eigendirections`` at the last checkpoint (the two largest, ``--eig-steps`` Lanczos steps) and ``directions
   --method hessian --pick 0 1``;
3. ``landscape``: ``--resolution`` x ``--resolution`` grid (paper: 50) with a 40 % border around the projected
   trajectory, on 20 % of the samples (10,000 of 50,000); ``plot_landscape`` (contour, surface);
4. ``spectrum``: SLQ with ``--k`` x ``--m`` (paper: 10 x 80) on 20 % of the samples, at every checkpoint, or at
   ``--checkpoints N`` of them spread evenly (first and last included); ``--extra-spectrum-args`` are appended to
   its command line (e.g. ``--extra-spectrum-args='--group-size 10 --hvp-mode auto'`` once the step has those
   options; the ``=`` is needed because the value starts with dashes);
5. ``frames`` (one per checkpoint with a spectrum) and ``video`` (mp4; ffmpeg from PATH or imageio-ffmpeg).

Projection to all checkpoints (when ``--checkpoints`` < all, or the spectrum stage was cut by the deadline): the
spectrum step stores each checkpoint's SLQ seconds; the stage's other time (start-up, data, objective, files) is
kept once, the first checkpoint's SLQ time once (warm-up, graph capture) and the mean of the others is counted for
every remaining checkpoint. Frames: the ``startup_plot`` probe's time once (a process importing matplotlib and the
renderer), the rest linear in the frames; video: linear. ``startup`` is a process that imports torch and gradvis,
builds the dataset and (on CUDA) makes a context: the fixed cost of each model-evaluating stage's process. Both
probes are reported, not counted in the totals.

``--deadline-s``: every stage gets at most the time left minus ``--reserve-s`` for the stages after it; the spectrum
stage, if cut, leaves the checkpoints it finished (its ``.partial`` file), which the projection and the frames use.
Results (per stage: seconds, exit status, projection) go to ``--json`` after every stage.

Run (CPU smoke): ``python bench/paper_3_3.py --samples 1000 --checkpoints 3 --resolution 5 --k 2 --m 10``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--samples", type=int, default=50000,
                   help="training samples (default 50000 as CIFAR-10: 196 iterations at batch 256;\n"
                        "20%% of them, 10,000, are the evaluation subset)")
    p.add_argument("--checkpoints", type=int, default=None,
                   help="SLQ at N checkpoints spread evenly (default: all), the rest projected")
    p.add_argument("--resolution", type=int, default=50, help="grid points per axis (paper: 50)")
    p.add_argument("--k", type=int, default=10, help="SLQ starting vectors (paper: 10)")
    p.add_argument("--m", type=int, default=80, help="Lanczos steps (paper: 80)")
    p.add_argument("--eig-steps", type=int, default=40, help="Lanczos steps of the eigendirections (default 40)")
    p.add_argument("--eval-batch-size", type=int, default=1024, help="evaluation batch size (default 1024)")
    p.add_argument("--extra-spectrum-args", default="",
                   help="appended to the spectrum step's command line; give it with '=' as it starts with\n"
                        "dashes: --extra-spectrum-args='--group-size 10 --hvp-mode auto'")
    p.add_argument("--deadline-s", type=float, default=None, help="overall deadline in seconds (default none)")
    p.add_argument("--reserve-s", type=float, default=45.0,
                   help="with --deadline-s: time kept for the stages after the spectrum (default 45)")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the files (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each step (default: unset, torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    return p.parse_args(argv)


class Runner:
    """Runs the stages under an optional deadline, recording each one's wall time and exit status."""

    def __init__(self, args: argparse.Namespace, work: Path, payload: dict[str, Any]) -> None:
        self.args = args
        self.work = work
        self.payload = payload
        self.start = time.perf_counter()
        self.env = dict(os.environ)
        root = str(C.ROOT)
        self.env["PYTHONPATH"] = root + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.env["PYTHONUNBUFFERED"] = "1"
        if args.threads:
            self.env["OMP_NUM_THREADS"] = str(args.threads)

    def left(self) -> float:
        if self.args.deadline_s is None:
            return float("inf")
        return self.args.deadline_s - (time.perf_counter() - self.start)

    def run(self, stage: str, cmd: list[str], reserve: float = 0.0) -> dict[str, Any]:
        budget = self.left() - reserve
        record: dict[str, Any] = {"stage": stage, "command": shlex.join(cmd)}
        if budget < 5:
            record.update(skipped=True, reason="deadline")
            print(f"--- {stage}: SKIPPED (deadline)", file=sys.stderr, flush=True)
            self.payload["stages"].append(record)
            return record
        print(f"--- {stage}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        log = self.work / f"{stage}.log"
        t0 = time.perf_counter()
        with log.open("w") as fh:
            try:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=C.ROOT,
                                    timeout=None if budget == float("inf") else budget).returncode
                timed_out = False
            except subprocess.TimeoutExpired:
                rc, timed_out = None, True
        record.update(seconds=time.perf_counter() - t0, rc=rc, timed_out=timed_out)
        status = "TIMED OUT" if timed_out else ("ok" if rc == 0 else f"FAILED rc={rc}")
        print(f"    {stage}: {status} in {record['seconds']:.1f}s", file=sys.stderr, flush=True)
        if rc not in (0, None):
            print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
        self.payload["stages"].append(record)
        C.write_json(self.args.json, self.payload)
        return record


def step(module: str, *args: Any) -> list[str]:
    return [sys.executable, "-m", f"gradvis_steps.{module}", *(str(a) for a in args)]


def evenly(total: int, count: int | None) -> list[int]:
    """``count`` indices of ``range(total)`` spread evenly, first and last included (all when count is None)."""
    if count is None or count >= total:
        return list(range(total))
    if count <= 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import h5py

    work = args.workdir or Path(tempfile.mkdtemp(prefix="paper_3_3-"))
    work.mkdir(parents=True, exist_ok=True)
    dev = args.device
    payload: dict[str, Any] = {
        "bench": "paper_3_3",
        "requirement": "paper section 3.3 end to end on synthetic CIFAR-shaped data, timed per stage",
        "environment": C.environment(dev),
        "args": {k: str(v) for k, v in vars(args).items()},
        "stages": [],
    }
    runner = Runner(args, work, payload)
    data_opts = ["--dataset", "synthetic", "--dataset-option", f"n_train={args.samples}",
                 "--dataset-option", "n_test=1"]
    evaluation = ["--eval-fraction", "0.2", "--eval-seed", "0", "--batch-size", args.eval_batch_size,
                  "--dtype", "float32", "--device", dev, "--no-progress"]
    traj, eig, dirs = work / "trajectory.h5", work / "eigendirections.h5", work / "directions.h5"
    land, spectra, frames, video = work / "landscape.h5", work / "spectra.h5", work / "frames", work / "training.mp4"

    # the fixed cost of a stage's process: interpreter, torch + gradvis imports, the dataset, a CUDA context
    probe = ("import sys, torch; import gradvis_steps.backends.torch; from gradvis_steps.data import load_dataset; "
             f"load_dataset({{'name': 'synthetic', 'n_train': {args.samples}, 'n_test': 1}}); "
             f"torch.zeros(1, device={dev!r}).sum().item()")
    runner.run("startup", [sys.executable, "-c", probe])
    # the same for the frames step: matplotlib and the renderer, no torch
    plot_startup = runner.run("startup_plot", [sys.executable, "-c", "import matplotlib.pyplot; "
                                               "import gradvis_steps.render.frames, gradvis_steps.storage.spectra"])
    train = runner.run("train", step(
        "train", *data_opts, "--model", "lenet", "--seed", 0, "--epochs", 1, "--batch-size", 256, "--lr", 0.01,
        "--momentum", 0.9, "--checkpoint-every", 1, "--device", dev, "--no-progress", "--out", traj))
    if train.get("rc") != 0:
        C.write_json(args.json, payload)
        raise SystemExit("training failed: nothing else can run")
    with h5py.File(traj, "r") as f:
        iterations = [int(i) for i in f["iteration"][()]]
    total = len(iterations)
    chosen = [iterations[i] for i in evenly(total, args.checkpoints)]
    payload.update(checkpoints_total=total, checkpoints_chosen=chosen)
    print(f"    {total} checkpoints; SLQ at {len(chosen)} of them", file=sys.stderr, flush=True)

    runner.run("eigendirections", step("eigendirections", "--trajectory", traj, "--which", "largest", "--count", 2,
                                       "--steps", args.eig_steps, *evaluation, "--out", eig), reserve=args.reserve_s)
    runner.run("directions", step("directions", "--trajectory", traj, "--method", "hessian", "--eigendirections", eig,
                                  "--pick", 0, 1, "--out", dirs), reserve=args.reserve_s)
    runner.run("landscape", step("landscape", "--trajectory", traj, "--directions", dirs, "--dims", 2,
                                 "--resolution", args.resolution, "--border", 0.4, *evaluation, "--out", land),
               reserve=args.reserve_s)
    runner.run("plot_landscape", step("plot_landscape", "--landscape", land, "--contour", work / "contour.png",
                                      "--surface", work / "surface.png"), reserve=args.reserve_s)
    spec = runner.run("spectrum", step("spectrum", "--trajectory", traj, "--iterations", *chosen, "--k", args.k,
                                       "--m", args.m, *evaluation, "--out", spectra,
                                       *shlex.split(args.extra_spectrum_args)), reserve=args.reserve_s)
    partial = spectra.with_name(spectra.name + ".partial")
    if not spectra.exists() and partial.exists():  # cut by the deadline: keep the checkpoints it finished
        shutil.copyfile(partial, spectra)
    done_seconds: list[float] = []
    if spectra.exists():
        from gradvis_steps.storage.spectra import load_spectra

        entries = load_spectra(spectra).entries
        done_seconds = [float(entries[it].seconds) for it in sorted(entries)]
    spec["checkpoints_done"] = len(done_seconds)
    spec["slq_seconds_per_checkpoint"] = done_seconds
    if done_seconds and "seconds" in spec:
        first, rest = done_seconds[0], done_seconds[1:]
        per = sum(rest) / len(rest) if rest else first
        other = spec["seconds"] - sum(done_seconds)
        spec["projected_seconds_all"] = other + first + per * (total - 1)
        spec["slq_seconds_first"], spec["slq_seconds_mean_after_first"] = first, per
    fr: dict[str, Any] = {}
    vid: dict[str, Any] = {}
    if done_seconds:
        fr = runner.run("frames", step("frames", "training", "--landscape", land, "--spectra", spectra,
                                       "--out-dir", frames, "--dpi", 80, "--log-scale"))
        vid = runner.run("video", step("video", "--frames", frames, "--fps", 8, "--out", video))
        scale = total / len(done_seconds)
        if fr.get("rc") == 0:  # the plotting process's start-up once, the rest per frame
            fixed = min(plot_startup.get("seconds", 0.0), fr["seconds"])
            fr["projected_seconds_all"] = fixed + (fr["seconds"] - fixed) * scale
        if vid.get("rc") == 0:  # linear in the frames (its start-up is a fraction of a second)
            vid["projected_seconds_all"] = vid["seconds"] * scale
        if video.exists():
            from gradvis_steps.render.video import count_frames

            payload["video"] = {"path": str(video), "bytes": video.stat().st_size, "frames": count_frames(video)}

    # summary
    rows = []
    measured = projected = 0.0
    for rec in payload["stages"]:
        if rec["stage"].startswith("startup"):
            rows.append([rec["stage"], rec.get("seconds", float("nan")), "-", "probe"])
            continue
        sec = rec.get("seconds", float("nan"))
        proj = rec.get("projected_seconds_all", sec)
        if "seconds" in rec:
            measured += sec
            projected += proj
        state = "skipped" if rec.get("skipped") else ("TIMED OUT" if rec.get("timed_out") else
                                                     ("ok" if rec.get("rc") == 0 else f"rc={rec.get('rc')}"))
        rows.append([rec["stage"], sec, proj, state])
    payload["measured_seconds"] = measured
    payload["projected_seconds_all_checkpoints"] = projected
    print(f"\nPaper section 3.3 on synthetic CIFAR-shaped data (device {dev}): {args.samples} samples, "
          f"{total} checkpoints, SLQ {args.k}x{args.m} at {len(done_seconds)} of them, grid "
          f"{args.resolution}x{args.resolution}" + (f", spectrum extra args {args.extra_spectrum_args!r}"
                                                    if args.extra_spectrum_args else ""))
    C.print_table(["stage", "seconds", f"projected to {total} checkpoints", "status"], rows)
    print(f"total: {measured:.1f}s measured, {projected:.1f}s projected to all {total} checkpoints")
    if done_seconds:
        print(f"SLQ per checkpoint: first {spec['slq_seconds_first']:.3f}s, then "
              f"{spec['slq_seconds_mean_after_first']:.3f}s on average (the step's own timing)")
    if not done_seconds:
        print("no checkpoint's spectrum finished (deadline or failure): nothing projected, no frames")
    if "video" in payload:
        print(f"video: {payload['video']['frames']} frames, {payload['video']['bytes']} bytes")
    payload["environment"]["load_at_end"] = C.load_snapshot()
    C.write_json(args.json, payload)
    if args.workdir is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"files in {work}")
    failed = [r["stage"] for r in payload["stages"] if r.get("rc") not in (0, None) or r.get("skipped")]
    return 1 if failed or not done_seconds else 0


if __name__ == "__main__":
    raise SystemExit(main())
