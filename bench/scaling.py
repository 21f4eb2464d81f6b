"""Strong scaling of the MPI schemes and the landscape's fixed overhead (paper section 3.1: eqs. 9-11, Table 1,
Figures 2-3), in one command:

    PATH=.venv/bin:$PATH python bench/scaling.py --ranks 1 2 --repeats 3 --json bench/measured/scaling_cpu.json \\
        --plot bench/measured/scaling_cpu.png

It trains a small LeNet on the digits (one epoch) and draws random directions, then, for every rank count p of
``--ranks``, starts ``mpiexec -n p`` (p = 1: plain python) once per scheme and times ``--repeats`` runs of the real
step modules inside it (after one untimed warm-up run; each run between two barriers, the time rank 0 sees):

- ``grid``: the landscape step (Algorithm 3) on a ``--resolution``-squared grid;
- ``iteration``: the spectrum step, ``--parallel iteration`` (Algorithm 5);
- ``data``: the spectrum step, ``--parallel data`` (Algorithm 4);
- ``hybrid``: the spectrum step, ``--parallel hybrid --ranks-per-group D`` for every D dividing p with 1 < D < p
  (D = 1 and D = p are the two pure schemes above; the best D is reported).

Every rank runs one thread (``OMP_NUM_THREADS=1``), so p ranks use p cores. From the run times: the speedup
``S = T1 / Tp`` (eq. 9, T1 the one-rank time of the same step), its standard deviation (eq. 10, from the spread of
the repeats), and a weighted least-squares fit of Amdahl's law ``S = 1 / ((1 - f) + f / p)`` (eq. 11) giving the
parallel fraction f with its standard error. Table 1: serial landscape runs for N = ``--table-n`` split into the
grid evaluation (the step's own ``grid_seconds``) and the fixed overhead alpha (the rest of the step: reading,
normalization, the trajectory's projection, writing). Results: a markdown table on stdout, ``--json``, and a plot
like Figures 2-3 (``--plot``).

Next to the fit, the "parallel share of the one-rank run": the time the one-rank run spends in the part a scheme
divides over its ranks (the grid evaluation; the SLQ of the point; for data parallel only the size-weighted batch
sums of the gradient and Hessian products, the Lanczos vector work being repeated on every rank) over the step's
whole time: Amdahl's f as a profile predicts it, free of the contention that a shared machine adds to runs of
several ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import numpy as np

SCHEMES = ("grid", "iteration", "data", "hybrid")
#: launcher variables removed before starting a run, so the driver's own environment never looks like a rank's
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


# ------------------------------------------------------------------------------------------------- worker side
def worker(args: argparse.Namespace) -> int:
    """One mpiexec job: a warm-up run and ``--repeats`` timed runs of one scheme's step; rank 0 writes the times."""
    import torch

    torch.set_num_threads(1)
    from gradvis_steps import landscape, spectrum
    from gradvis_steps.backends.torch.reduction import BatchReduction
    from gradvis_steps.core.parallel import world

    comm = world()
    work = Path(args.workdir)
    # time inside the size-weighted batch sums: the only work Algorithm 4 divides over the ranks
    batch_time, plain_mean = [0.0], BatchReduction.mean

    def timed_mean(self: BatchReduction, like: object, per_batch: object) -> object:
        start = time.perf_counter()
        try:
            return plain_mean(self, like, per_batch)
        finally:
            batch_time[0] += time.perf_counter() - start

    BatchReduction.mean = timed_mean
    common = ["--eval-fraction", str(args.eval_fraction), "--batch-size", str(args.batch_size), "--device",
              args.device, "--no-progress"]
    times, extra = [], {}
    for run in range(args.repeats + 1):
        out = work / f"{args.worker}_{args.ranks_per_group}_p{comm.size}_r{comm.rank}_{run}.h5"
        if args.worker == "grid":
            module = landscape
            argv = ["--trajectory", str(work / "trajectory.h5"), "--directions", str(work / "random.h5"),
                    "--resolution", str(args.resolution), "--grid-batching", "per_point", "--out", str(out), *common]
        else:
            module = spectrum
            how = ["--parallel", args.worker]
            if args.worker == "hybrid":
                how += ["--ranks-per-group", str(args.ranks_per_group)]
            argv = ["--trajectory", str(work / "trajectory.h5"), "--iterations", str(args.iteration), "--k",
                    str(args.k), "--m", str(args.m), "--group-size", "1", "--hvp-mode", "double_backprop", *how,
                    "--out", str(out), *common]
        comm.barrier()
        batch_time[0] = 0.0
        start = time.perf_counter()
        assert module.main(argv) == 0
        comm.barrier()
        if run > 0:  # run 0 warms caches, the allocator and lazy imports
            times.append(time.perf_counter() - start)
        if comm.rank == 0 and run > 0:
            # the parallel parts a one-rank run implies: the grid (Algorithm 3), the SLQ of the point (Algorithm 5),
            # the batch sums inside it (Algorithm 4)
            if args.worker == "grid":
                from gradvis_steps.storage.landscape import load_landscape

                extra.setdefault("grid_seconds", []).append(load_landscape(out).provenance["grid_seconds"])
            else:
                from gradvis_steps.storage.spectra import load_spectra

                extra.setdefault("slq_seconds", []).append(load_spectra(out).entries[args.iteration].seconds)
                extra.setdefault("batch_seconds", []).append(batch_time[0])
        if comm.rank == 0:
            out.unlink(missing_ok=True)
    if comm.rank == 0:
        Path(args.result).write_text(json.dumps({"times": times, **extra}))
    return 0


# ------------------------------------------------------------------------------------------------- driver side
def prepare(work: Path, python: str, env: dict[str, str]) -> None:
    """The small run every scheme evaluates: LeNet on the digits, one epoch of batch 256; random directions."""
    for argv in (["-m", "gradvis_steps.train", "--model", "lenet", "--epochs", "1", "--batch-size", "256", "--lr",
                  "0.05", "--no-progress", "--out", str(work / "trajectory.h5")],
                 ["-m", "gradvis_steps.directions", "--trajectory", str(work / "trajectory.h5"), "--method",
                  "random", "--out", str(work / "random.h5")]):
        subprocess.run([python, *argv], env=env, cwd=C.ROOT, check=True, capture_output=True, text=True)


def launch(args: argparse.Namespace, scheme: str, ranks: int, work: Path, env: dict[str, str], *,
           ranks_per_group: int = 1, resolution: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Run one scheme at ``ranks`` ranks (one mpiexec job) and return rank 0's record of its timed runs."""
    result = work / f"result_{scheme}_{ranks}_{ranks_per_group}_{resolution}.json"
    launcher = [] if ranks == 1 else [args.mpiexec, "-n", str(ranks)]
    cmd = [*launcher, sys.executable, str(Path(__file__).resolve()), "--worker", scheme, "--workdir", str(work),
           "--result", str(result), "--ranks-per-group", str(ranks_per_group),
           "--resolution", str(resolution or args.resolution), "--repeats", str(repeats or args.repeats),
           "--k", str(args.k), "--m", str(args.m), "--iteration", str(args.iteration),
           "--eval-fraction", str(args.eval_fraction), "--batch-size", str(args.batch_size), "--device", args.device]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, cwd=C.ROOT, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # the 1-minute load average around the job: more than the cores in use means other work shared them
    record = {**json.loads(result.read_text()), "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(f"  {scheme:9s} p={ranks:2d} D={ranks_per_group:2d}: {statistics.mean(record['times']):.3f} s "
          f"(sd {stdev(record['times']):.3f}; load {load_before:.1f} -> {record['load_after']:.1f})", file=sys.stderr)
    return record


def stdev(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def speedup(t1: list[float], tp: list[float]) -> tuple[float, float]:
    """Eq. 9 ``S = T1 / Tp`` from mean times, and eq. 10's standard deviation from the times' spreads."""
    m1, mp, s1, sp = statistics.mean(t1), statistics.mean(tp), stdev(t1), stdev(tp)
    return m1 / mp, float(np.sqrt((s1 / mp) ** 2 + (m1 / mp**2 * sp) ** 2))


def amdahl(p: np.ndarray, f: float) -> np.ndarray:
    """Eq. 11: the speedup of p ranks when a fraction f of the one-rank time is parallel."""
    return 1.0 / ((1.0 - f) + f / p)


def fit_fraction(ranks: list[int], speedups: list[float], sigmas: list[float]) -> tuple[float, float] | None:
    """Weighted least-squares fit of eq. 11 to the measured speedups: ``(f, standard error of f)``; None without a
    rank count above 1. Points whose eq. 10 spread is zero get the smallest nonzero one (or 1e-3)."""
    if max(ranks) < 2:
        return None
    from scipy.optimize import curve_fit

    sig = np.asarray(sigmas, dtype=float)
    floor = sig[sig > 0].min() if (sig > 0).any() else 1e-3
    sig = np.where(sig > 0, sig, floor)
    (f,), cov = curve_fit(amdahl, np.asarray(ranks, float), np.asarray(speedups, float), p0=[0.9], sigma=sig,
                          absolute_sigma=True, bounds=(-1.0, 1.0))
    return float(f), float(np.sqrt(cov[0, 0]))


def proper_divisors(p: int) -> list[int]:
    """Group sizes D of a real hybrid at p ranks: D divides p, 1 < D < p."""
    return [d for d in range(2, p) if p % d == 0]


def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Speedups (eqs. 9-10) against each scheme's one-rank time and the Amdahl fits (eq. 11)."""
    summary: dict[str, Any] = {}
    for scheme, by_p in runs.items():
        base = "grid" if scheme == "grid" else "iteration"  # at one rank every SLQ mode is the serial run
        if 1 not in runs.get(base, {}):
            continue
        t1 = runs[base][1]["times"]
        rows = []
        for p in sorted(by_p):
            s, sigma = speedup(t1, by_p[p]["times"])
            rows.append({"ranks": p, "ranks_per_group": by_p[p].get("ranks_per_group", 1),
                         "mean_s": statistics.mean(by_p[p]["times"]), "sd_s": stdev(by_p[p]["times"]),
                         "speedup": s, "speedup_sd": sigma})
        if scheme != "hybrid" and 1 not in by_p:
            rows.insert(0, {"ranks": 1, "ranks_per_group": 1, "mean_s": statistics.mean(t1), "sd_s": stdev(t1),
                            "speedup": 1.0, "speedup_sd": speedup(t1, t1)[1]})
        fit = fit_fraction([r["ranks"] for r in rows], [r["speedup"] for r in rows],
                           [r["speedup_sd"] for r in rows]) if scheme != "hybrid" else None
        one = runs[base][1]
        part = {"grid": "grid_seconds", "iteration": "slq_seconds", "data": "batch_seconds"}.get(scheme)
        implied = statistics.mean(one[part]) / statistics.mean(t1) if part and part in one else None
        summary[scheme] = {"rows": rows, "parallel_fraction": None if fit is None else fit[0],
                           "parallel_fraction_sd": None if fit is None else fit[1],
                           "one_rank_profile_fraction": implied}
    return summary


def markdown(summary: dict[str, Any], table1: list[dict]) -> str:
    """The scaling table, the fits and Table 1 as markdown."""
    lines = ["| scheme | ranks | D | time (s) | sd (s) | speedup S (eq. 9) | sd S (eq. 10) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for scheme, entry in summary.items():
        for r in entry["rows"]:
            lines.append(f"| {scheme} | {r['ranks']} | {r['ranks_per_group']} | {r['mean_s']:.3f} | {r['sd_s']:.3f} "
                         f"| {r['speedup']:.3f} | {r['speedup_sd']:.3f} |")
    lines += ["", "| scheme | parallel fraction f (eq. 11 fit) | parallel share of the one-rank run |",
              "|---|---:|---:|"]
    for scheme, entry in summary.items():
        f, sd = entry["parallel_fraction"], entry["parallel_fraction_sd"]
        if scheme == "hybrid":
            text = "n/a (compared with the pure schemes per rank count)"
        else:
            text = "n/a (one rank count)" if f is None else f"{100 * f:.1f} +- {100 * sd:.1f} %"
        implied = entry.get("one_rank_profile_fraction")
        lines.append(f"| {scheme} | {text} | " + ("" if implied is None else f"{100 * implied:.1f} %") + " |")
    if table1:
        lines += ["", "Table 1 (serial landscape, seconds, mean of the repeats):", "",
                  "| | " + " | ".join(f"N={row['n']}" for row in table1) + " |",
                  "|---|" + "---:|" * len(table1),
                  "| grid part N^2 T_inference n_b | " + " | ".join(f"{row['grid_s']:.3f}" for row in table1) + " |",
                  "| overhead alpha | " + " | ".join(f"{row['alpha_s']:.3f}" for row in table1) + " |"]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Speedup against ranks with eq. 10 error bars and the eq. 11 fits, like the paper's Figures 2-3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    top = max(r["ranks"] for entry in summary.values() for r in entry["rows"])
    p = np.linspace(1, top, 100)
    ax.plot(p, p, "k:", label="ideal")
    for scheme, entry in summary.items():
        rows = entry["rows"]
        if not rows:  # e.g. the hybrid without a rank count that has a proper group size
            continue
        f, sd = entry["parallel_fraction"], entry["parallel_fraction_sd"]
        label = scheme + ("" if f is None else f" (f = {100 * f:.1f} ± {100 * sd:.1f} %)")
        bars = ax.errorbar([r["ranks"] for r in rows], [r["speedup"] for r in rows],
                           yerr=[r["speedup_sd"] for r in rows], fmt="o", capsize=3, label=label)
        if entry["parallel_fraction"] is not None:
            ax.plot(p, amdahl(p, entry["parallel_fraction"]), "-", color=bars[0].get_color(), alpha=0.6)
    ax.set_xlabel("ranks p")
    ax.set_ylabel("speedup S = T1 / Tp")
    ax.set_title("strong scaling (lines: Amdahl fit, eq. 11)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def driver(args: argparse.Namespace) -> int:
    """Prepare the run, launch every scheme at every rank count, then Table 1; print, save, plot."""
    if args.mpiexec is None and max(args.ranks) > 1:
        raise SystemExit("mpiexec not found: put the venv's bin on PATH or pass --mpiexec")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(C.ROOT), os.environ.get("PYTHONPATH")]))}
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gradvis_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"preparing the run in {work}", file=sys.stderr)
    prepare(work, sys.executable, env)
    runs: dict[str, dict[int, dict]] = {scheme: {} for scheme in args.schemes}
    for p in args.ranks:
        for scheme in args.schemes:
            if scheme == "hybrid":
                best = None
                for d in proper_divisors(p):
                    record = {**launch(args, scheme, p, work, env, ranks_per_group=d), "ranks_per_group": d}
                    if best is None or statistics.mean(record["times"]) < statistics.mean(best["times"]):
                        best = record
                if best is not None:
                    runs[scheme][p] = best
            elif not (p == 1 and scheme == "data"):  # one rank: data parallel is the serial run
                record = launch(args, scheme, p, work, env)
                runs[scheme][p] = {**record, "ranks_per_group": p if scheme == "data" else 1}
    table1 = []
    for n in args.table_n:
        record = launch(args, "grid", 1, work, env, resolution=n)
        grid, total = statistics.mean(record["grid_seconds"]), statistics.mean(record["times"])
        table1.append({"n": n, "total_s": total, "grid_s": grid, "alpha_s": total - grid,
                       "grid_sd_s": stdev(record["grid_seconds"])})
    summary = analyse(runs)
    text = markdown(summary, table1)
    print(text)
    hybrid_check = []
    for row in summary.get("hybrid", {}).get("rows", []):
        pure = [r["mean_s"] for s in ("iteration", "data") for r in summary.get(s, {}).get("rows", [])
                if r["ranks"] == row["ranks"]]
        hybrid_check.append({"ranks": row["ranks"], "hybrid_s": row["mean_s"], "best_pure_s": min(pure, default=None)})
    record = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
              "cpu_count": os.cpu_count(), "runs": runs, "summary": summary, "table1": table1,
              "hybrid_vs_best_pure": hybrid_check, "seconds": time.perf_counter() - started, "markdown": text}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, default=str))
    if args.plot:
        plot(summary, args.plot)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts p (1 must be one)")
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per scheme and rank count")
    parser.add_argument("--resolution", type=int, default=30, help="grid points per axis of the grid scheme")
    parser.add_argument("--table-n", type=int, nargs="*", default=[2, 10, 50, 100],
                        help="grid sizes N of Table 1 (none: skip it)")
    parser.add_argument("--k", type=int, default=8, help="SLQ starting vectors (iteration parallel scales to k ranks)")
    parser.add_argument("--m", type=int, default=20, help="Lanczos steps per vector")
    parser.add_argument("--iteration", type=int, default=6, help="checkpoint of the SLQ runs")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="evaluation subset of the digits")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="evaluation batch (data parallel needs at least as many batches as ranks)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (ranks share the node's GPUs)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mpiexec job")
    parser.add_argument("--mpiexec", default=shutil.which("mpiexec", path=str(Path(sys.executable).parent))
                        or shutil.which("mpiexec"), help="MPI launcher")
    parser.add_argument("--workdir", default=None, help="keep the run's files here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write all times, speedups and fits here")
    parser.add_argument("--plot", type=Path, default=None, help="write the speedup plot (png) here")
    # internal: one mpiexec job of the driver
    parser.add_argument("--worker", choices=SCHEMES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--ranks-per-group", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        return worker(args)
    if 1 not in args.ranks:
        raise SystemExit("--ranks must include 1: every speedup is against the one-rank time (eq. 9)")
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
