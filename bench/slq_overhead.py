"""SLQ overhead beyond its Hessian-vector products.

Requirement (issue): everything in SLQ beyond its k*m HVPs (reorthogonalization, tridiagonal solves,
smoothing) must cost <= 3% of the SLQ time, for LeNet on the embedded digits and for ResNet-20.

Per model, in one process (what ``gradvis_steps.spectrum.point_spectrum`` runs for one checkpoint):

* baseline: k*m bare calls of ``objective.hvp_operator(theta)``, the Hessian operator the spectrum step hands SLQ
  (gradient graphs kept; ``--hvp-memory-mb 0``: recomputed per product), on a pool of 8 unit vectors;
* measured: ``slq(hvp, dim, k, m, like=theta)`` + ``spectral_density`` + ``spectrum_summary``, the matvec
  wrapped to also record the time spent inside the HVPs of that very run.

The machine this was written on shares its 2 cores with other work in bursts of minutes, so the two are
timed in short alternating pairs: m bare HVPs, then ``slq(..., indices=[i])`` -- row i of the very same
k x m run (slq treats its starting vectors independently; Algorithm 5 splits them over MPI ranks the same
way) -- for every i and ``--repeats`` rounds. ``t_slq = k * median(row time) + t_smoothing`` (density +
summary on the k rows, median of 5), ``t_hvps = k * median(m bare HVPs)``.

Figures: ``overhead_inrun = (t_slq - t_inside_hvps) / t_slq``, with the time spent inside the SLQ rows' own
HVP calls: the share of everything beyond SLQ's k*m HVPs (reorthogonalization, tridiagonal solves, smoothing),
immune to drift between two timings; and ``overhead_paired = (t_slq - t_hvps) / t_slq`` against the same
number of bare HVPs, which also counts how much slower the HVPs themselves run inside SLQ, on the caches the
rest of each step leaves them (``hvp_inside_vs_bare``, summed over the pairs). The JSON also has
``overhead_paired_min`` from the fastest row and fastest baseline, a noisier statistic. ``cpu share`` is the
process's CPU time / (wall * threads) over a pair; well below ~0.9 means the machine was contended.

On a CUDA device (``--device cuda``) both figures are measured for both Lanczos loops in the same pairs: the
torch backend's CUDA-graph loop (one graph launch per step, the default) and the generic device loop (about 25
kernel launches per step, ``*_eager``). No sync surrounds an HVP, so there ``t_inside_hvps`` is the CPU's time
issuing them and the in-run figure the CPU-side cost of everything else: what the wall time pays while the GPU
keeps up with the CPU (a launch-bound model such as LeNet). The prediction with the nearly free matvec exposes
the step's GPU time too, so on a GPU it is an upper bound. ``first_row_seconds`` vs ``second_row_seconds``
shows the one-off cost of capturing the graphs.

Because HVPs of a big model are slow on 2 CPU cores, ResNet-20 runs a smaller (k, m) by default; the
overhead at the target (``--target-k``/``--target-m``, default 10 x 80) is then *predicted*: the same
``slq`` driven by a nearly free diagonal matvec measures the non-HVP cost at any (k, m) directly, and
``predicted = cost / (cost + k*m*t_hvp)``. The prediction is also made at the measured (k, m), so it can
be checked against the direct figure. ``floor`` is the share that the two basis passes alone (``V_j w`` and
``w -= V_j^T c`` for j = 1..m-1, caches swept by 64 MiB before each step as an HVP sweeps them) would take of
one starting vector's time: what any full reorthogonalization pays on this machine. Finally the per-HVP time
of ``hvp_mode="forward_over_reverse"``
is reported as a ratio to the default ``double_backprop``.

Run: ``python bench/slq_overhead.py [--device cuda] [--json out.json]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gradvis_steps.cli import memory_budget  # the steps' own parser of --hvp-memory-mb

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--models", default="lenet,resnet20", help="comma-separated: lenet, resnet20")
    p.add_argument("--k", type=int, default=10, help="LeNet: starting vectors (default 10)")
    p.add_argument("--m", type=int, default=80, help="LeNet: Lanczos steps (default 80)")
    p.add_argument("--resnet-k", type=int, default=None, help="ResNet-20: starting vectors (cpu 2, cuda 10)")
    p.add_argument("--resnet-m", type=int, default=None, help="ResNet-20: Lanczos steps (cpu 20, cuda 80)")
    p.add_argument("--target-k", type=int, default=10, help="(k, m) the overhead is predicted at (default 10)")
    p.add_argument("--target-m", type=int, default=80, help="(default 80)")
    p.add_argument("--resnet-data", choices=("digits", "synthetic"), default=None,
                   help="ResNet-20 input: digits subset (1,8,8) (cpu default) or synthetic CIFAR (cuda default)")
    p.add_argument("--resnet-samples", type=int, default=None,
                   help="samples of the synthetic CIFAR set (cpu 256, cuda 1024)")
    p.add_argument("--batch-size", type=int, default=1024, help="objective batch size (default 1024)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved baseline/SLQ rounds (default 3)")
    p.add_argument("--mode-repeats", type=int, default=8, help="HVPs per mode for the mode ratio (default 8)")
    p.add_argument("--no-predict", action="store_true", help="skip the diagonal-matvec prediction")
    p.add_argument("--hvp-memory-mb", type=memory_budget, default=None,
                   help="memory for the gradient graphs the HVP operator keeps (default: the objective's;\n"
                        "0: every HVP recomputes the forward pass and the gradient, as before they were kept)")
    args = p.parse_args(argv)
    cuda = str(args.device).startswith("cuda")
    args.resnet_k = args.resnet_k or (10 if cuda else 2)
    args.resnet_m = args.resnet_m or (80 if cuda else 20)
    args.resnet_data = args.resnet_data or ("synthetic" if cuda else "digits")
    args.resnet_samples = args.resnet_samples or (1024 if cuda else 256)
    return args


def run_slq(matvec: Any, dim: int, k: int, m: int, like: Any) -> Any:
    """What ``point_spectrum`` does for one checkpoint (serial): SLQ, density, summary."""
    from gradvis_steps.core.slq import slq, spectral_density, spectrum_summary

    result = slq(matvec, dim, k, m, seed=0, like=like)
    spectral_density(result)
    return spectrum_summary(result, 1e-6)


def predicted_cost(dim: int, k: int, m: int, like: Any, sync: Any, repeats: int) -> dict[str, float]:
    """Non-HVP seconds of ``run_slq`` at (k, m), measured with an almost free diagonal matvec.

    The diagonal has distinct entries in [0.1, 10] (no Lanczos breakdown); its own cost (one multiply per
    step) is measured and subtracted.
    """
    import torch

    g = torch.Generator().manual_seed(7)
    diag = (0.1 + 9.9 * torch.rand(dim, generator=g, dtype=torch.float64)).to(device=like.device, dtype=like.dtype)

    def matvec(v: Any) -> Any:
        return diag * v

    v = C.unit_vectors(dim, 1, like)[0]
    run_slq(matvec, dim, 1, m, like)  # warm-up (and, on CUDA, the capture of this (n, m)'s step graphs)
    t_mv = C.median([C.timed(lambda: [matvec(v) for _ in range(50)], sync)[0] / 50 for _ in range(3)])
    totals = [C.timed(lambda: run_slq(matvec, dim, k, m, like), sync)[0] for _ in range(repeats)]
    total = min(totals)  # deterministic work: other load on the machine only ever adds time
    return {"seconds_total": total, "seconds_matvecs": k * m * t_mv, "seconds_non_hvp": max(total - k * m * t_mv, 0.0)}


def cold_basis_floor(dim: int, m: int, like: Any, sync: Any, evict_mb: int = 64, repeats: int = 3) -> float:
    """Seconds per starting vector of the two passes over the basis that any full reorthogonalization makes each
    step (coefficients ``V_j w``, then ``w -= V_j^T c``, through the same calls as the host Lanczos loop), each
    step's passes timed after sweeping ``evict_mb`` MiB through the caches as an HVP does between Lanczos steps.
    A floor: no other vector work, no Python."""
    import torch

    from gradvis_steps.backends.torch.lanczos_graphs import TORCH_HOST_OPS as ops
    V = torch.randn(m, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(like)
    V /= V.norm(dim=1, keepdim=True)
    w0 = C.unit_vectors(dim, 1, like)[0]
    c = torch.empty((1, m), dtype=like.dtype, device=like.device)
    sweep = torch.zeros(evict_mb * 2**18, dtype=torch.float32, device=like.device)

    def passes(Vj: Any, w: Any, cj: Any) -> None:
        ops.mm(Vj, w.view(-1, 1), out=cj.view(-1, 1))
        line = w.view(1, -1)
        ops.addmm(line, cj, Vj, beta=1.0, alpha=-1.0, out=line)

    totals = []
    for _ in range(repeats):
        total = 0.0
        for j in range(1, m):
            w = w0.clone()
            sweep.add_(1.0)
            seconds, _ = C.timed(lambda Vj=V[:j], w=w, cj=c[:, :j]: passes(Vj, w, cj), sync)
            total += seconds
        totals.append(total)
    return min(totals)


def bench_model(name: str, args: argparse.Namespace, sync: Any) -> dict[str, Any]:
    import torch

    from gradvis_steps.backends.torch.objective import TorchObjective

    model, x, y, data_desc = C.load_models_data(
        name, resnet_data=args.resnet_data, resnet_samples=args.resnet_samples
    )
    k, m = (args.k, args.m) if name == "lenet" else (args.resnet_k, args.resnet_m)
    memory = {} if args.hvp_memory_mb is None else {"hvp_memory_mb": args.hvp_memory_mb}
    obj = TorchObjective(model, x, y, batch_size=args.batch_size, device=args.device, hvp_mode="double_backprop",
                         **memory)
    theta = obj.initial_point()
    dim = obj.dim
    pool = C.unit_vectors(dim, 8, theta)
    operator = obj.hvp_operator(theta)  # what point_spectrum hands SLQ: H(theta) through the kept gradient graphs
    print(f"[{name}] dim={dim}, {data_desc}, k={k}, m={m}", file=sys.stderr, flush=True)

    from gradvis_steps.backends.torch import set_cuda_graphs
    from gradvis_steps.core.slq import SLQResult, slq, spectral_density, spectrum_summary

    cuda = str(args.device).startswith("cuda")
    inside = [0.0]

    def hvp(v: Any) -> Any:  # the matvec SLQ calls; records the time spent inside the HVPs
        start = time.perf_counter()
        out = operator(v)
        inside[0] += time.perf_counter() - start
        return out

    # No sync around the HVPs: on a GPU one would expose the device queue that the Lanczos step's kernels hide in
    # (they run while the CPU already issues the next HVP). There "inside" is the CPU's time issuing the HVPs, so
    # the in-run figure is the CPU-side cost of the rest, which is what the wall time pays while the GPU keeps up
    # (a launch-bound model like LeNet); the paired figure counts everything. Both are measured for both Lanczos
    # loops in the same pairs: the CUDA-graph loop (default) and the generic one of ~25 launches per step.
    variants = [("slq", True), ("slq_eager", False)] if cuda else [("slq", True)]

    # warm-up: allocator, oneDNN/cuDNN kernel choice, autograd paths (the first HVPs are up to 50x slower), and
    # (CUDA) the capture of the Lanczos step's graphs for this (n, m), timed against a second, replayed row
    for i in range(10):
        operator(pool[i % len(pool)])
    run_slq(hvp, dim, 1, min(m, 8), theta)
    first_row, _ = C.timed(lambda: slq(hvp, dim, k, m, seed=0, like=theta, indices=[0]), sync)
    second_row, _ = C.timed(lambda: slq(hvp, dim, k, m, seed=0, like=theta, indices=[0]), sync)

    # Measured in pairs, one per starting vector and round: m bare HVPs, then slq(indices=[i]) (row i of the
    # very same k x m run: slq treats its starting vectors independently, Algorithm 5 splits them the same
    # way). Short alternating pairs keep drift and bursts of load on a shared machine out of the ratio.
    pairs = []
    for r in range(args.repeats):
        parts = []
        for i in range(k):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            inside[0] = 0.0
            t_base, _ = C.timed(lambda: [hvp(pool[j % len(pool)]) for j in range(m)], sync)
            pair = {"round": r, "vector": i, "t_baseline": t_base, "t_inside_baseline": inside[0]}
            for label, graphs in variants:
                inside[0] = 0.0
                previous = set_cuda_graphs(graphs)
                try:
                    t_slq, part = C.timed(lambda i=i: slq(hvp, dim, k, m, seed=0, like=theta, indices=[i]), sync)
                finally:
                    set_cuda_graphs(previous)
                pair[f"t_{label}"] = t_slq
                pair[f"t_inside_{label}"] = inside[0]
                if label == "slq":
                    parts.append(part)
            pair["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / args.threads
            pairs.append(pair)
        last = pairs[-k:]
        print(f"[{name}] round {r}: baseline {sum(p['t_baseline'] for p in last):.3f}s, "
              + ", ".join(f"{label} {sum(p['t_' + label] for p in last):.3f}s" for label, _ in variants)
              + f" (inside HVPs {sum(p['t_inside_slq'] for p in last):.3f}s)"
              + f", cpu share {min(p['cpu_share'] for p in last):.2f}", file=sys.stderr, flush=True)
    result = SLQResult.concatenate(parts)

    def smoothing() -> dict[str, float]:
        spectral_density(result)
        return spectrum_summary(result, 1e-6)

    t_smooth = C.median([C.timed(smoothing, sync)[0] for _ in range(5)])
    summary = smoothing()
    base = [p["t_baseline"] for p in pairs]
    slq_t = [p["t_slq"] for p in pairs]
    t_hvps = k * C.median(base)  # k*m HVPs
    t_slq = k * C.median(slq_t) + t_smooth  # slq(k, m) + spectral_density + spectrum_summary
    t_slq_min = k * min(slq_t) + t_smooth
    out: dict[str, Any] = {
        "model": name,
        "data": data_desc,
        "dim": dim,
        "k": k,
        "m": m,
        "n_hvps": k * m,
        "pairs": pairs,
        "t_hvp_each": t_hvps / (k * m),
        "t_baseline": t_hvps,
        "t_slq": t_slq,
        "t_smoothing": t_smooth,
        "overhead_paired": (t_slq - t_hvps) / t_slq,
        "overhead_paired_min": (t_slq_min - k * min(base)) / t_slq_min,
        "overhead_inrun": (k * C.median([p["t_slq"] - p["t_inside_slq"] for p in pairs]) + t_smooth) / t_slq,
        "overhead_inrun_tail_corrected": _inrun_corrected(pairs, "slq", k, t_smooth, t_slq),
        "smoothing_share": t_smooth / t_slq,
        # how much slower the HVPs run inside the SLQ rows than the bare ones of the same pairs (summed over all
        # pairs): the part of paired - in-run that is the HVPs' own, from the caches the rest of a step leaves them
        "hvp_inside_vs_bare": sum(p["t_inside_slq"] for p in pairs) / sum(p["t_inside_baseline"] for p in pairs),
        "cpu_share_min": min(p["cpu_share"] for p in pairs),
        "first_row_seconds": first_row,
        "second_row_seconds": second_row,
        "lambda_max": summary["lambda_max"],
    }
    if cuda:  # the generic device loop, timed in the same pairs
        eager = k * C.median([p["t_slq_eager"] for p in pairs]) + t_smooth
        out["t_slq_eager"] = eager
        out["overhead_paired_eager"] = (eager - t_hvps) / eager
        extra = [p["t_slq_eager"] - p["t_inside_slq_eager"] for p in pairs]
        out["overhead_inrun_eager"] = (k * C.median(extra) + t_smooth) / eager
        out["overhead_inrun_tail_corrected_eager"] = _inrun_corrected(pairs, "slq_eager", k, t_smooth, eager)
    t_hvp = t_hvps / (k * m)

    if not args.no_predict:
        at_measured = predicted_cost(dim, k, m, theta, sync, max(2, args.repeats))
        out["predicted_overhead_measured_km"] = _share(at_measured["seconds_non_hvp"], k * m * t_hvp)
        out["non_hvp_seconds_measured_km"] = at_measured["seconds_non_hvp"]
        tk, tm = args.target_k, args.target_m
        if (tk, tm) != (k, m):
            at_target = predicted_cost(dim, tk, tm, theta, sync, 2)
        else:
            at_target = at_measured
        out["target_k"], out["target_m"] = tk, tm
        out["non_hvp_seconds_target_km"] = at_target["seconds_non_hvp"]
        out["predicted_overhead_target_km"] = _share(at_target["seconds_non_hvp"], tk * tm * t_hvp)
        if cuda:
            previous = set_cuda_graphs(False)
            try:
                eager = predicted_cost(dim, tk, tm, theta, sync, 2)
            finally:
                set_cuda_graphs(previous)
            out["non_hvp_seconds_target_km_eager"] = eager["seconds_non_hvp"]
            out["predicted_overhead_target_km_eager"] = _share(eager["seconds_non_hvp"], tk * tm * t_hvp)

    floor = cold_basis_floor(dim, m, theta, sync)
    out["cold_basis_floor_seconds_per_vector"] = floor
    out["cold_basis_floor_share"] = _share(floor, m * t_hvp)

    # HVP modes: alternate the two objectives, median per-HVP time each
    other = TorchObjective(model, x, y, batch_size=args.batch_size, device=args.device,
                           hvp_mode="forward_over_reverse")
    for i in range(5):
        other.hvp(theta, pool[i % len(pool)])
    times: dict[str, list[float]] = {"double_backprop": [], "forward_over_reverse": [], "operator": []}
    for i in range(args.mode_repeats):
        v = pool[i % len(pool)]
        times["double_backprop"].append(C.timed(lambda v=v: obj.hvp(theta, v), sync)[0])
        times["forward_over_reverse"].append(C.timed(lambda v=v: other.hvp(theta, v), sync)[0])
        times["operator"].append(C.timed(lambda v=v: operator(v), sync)[0])
    a, b = obj.hvp(theta, pool[0]), other.hvp(theta, pool[0])
    out["hvp_seconds_double_backprop"] = C.median(times["double_backprop"])
    out["hvp_seconds_forward_over_reverse"] = C.median(times["forward_over_reverse"])
    out["hvp_mode_ratio_for_over_db"] = out["hvp_seconds_forward_over_reverse"] / out["hvp_seconds_double_backprop"]
    out["hvp_modes_rel_diff"] = float((a - b).norm() / a.norm())
    # the operator SLQ runs on (gradient graphs kept: one backward pass per batch and product) against a plain
    # double-backprop HVP (forward, gradient, backward through it), alternated; equal to the bit
    out["hvp_operator_vs_recomputed"] = C.median(times["operator"]) / out["hvp_seconds_double_backprop"]
    out["hvp_operator_bitwise_equal"] = bool(torch.equal(operator(pool[0]), a))
    out["hvp_graph_mb"] = operator.graph_bytes / 2**20
    out["hvp_kept_batches"] = f"{operator.kept_batches}/{len(obj.reduction.batches())}"
    return out


def _inrun_corrected(pairs: list[dict[str, Any]], label: str, k: int, t_smooth: float, t_total: float) -> float:
    """In-run share with the baseline's own time outside its HVP calls subtracted pair by pair: on a GPU that is
    the wait for the device queue to drain at the end (paid by both timings alike), on a CPU the loop's own
    bookkeeping; what remains is the time the SLQ row spends outside its HVPs beyond that."""
    extra = [(p[f"t_{label}"] - p[f"t_inside_{label}"]) - (p["t_baseline"] - p["t_inside_baseline"]) for p in pairs]
    return (k * C.median(extra) + t_smooth) / t_total


def _share(non_hvp: float, hvp: float) -> float:
    return non_hvp / (non_hvp + hvp) if non_hvp + hvp > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload, threads, mtag = C.run_models(args, "slq_overhead", "non-HVP share of SLQ time <= 0.03", bench_model)

    print(f"\nSLQ overhead beyond its HVPs (device {args.device}, {threads['threads']} threads, {mtag}; bound 0.03)")
    nan = float("nan")
    rows = []
    for r in payload["results"]:
        rows.append([
            r["model"], r["dim"], f"{r['k']}x{r['m']}", r["t_hvp_each"] * 1e3, r["t_slq"], r["overhead_paired"],
            r["overhead_inrun"], r["smoothing_share"],
            r.get("predicted_overhead_measured_km", nan), f"{r.get('target_k', '-')}x{r.get('target_m', '-')}",
            r.get("predicted_overhead_target_km", nan), r["cold_basis_floor_share"], r["hvp_mode_ratio_for_over_db"],
            r["cpu_share_min"],
        ])
    C.print_table(
        ["model", "dim", "k x m", "ms/HVP", "slq s", "ovh paired", "ovh in-run", "smoothing",
         "ovh pred", "target", "ovh pred@target", "floor", "fwd/rev HVP", "cpu share"],
        rows,
    )
    for r in payload["results"]:
        print(f"  {r['model']}: {r['data']}; forward_over_reverse vs double_backprop rel. diff "
              f"{r['hvp_modes_rel_diff']:.1e}; first slq row {r['first_row_seconds']:.3f}s, "
              f"second {r['second_row_seconds']:.3f}s; HVPs inside SLQ / bare {r['hvp_inside_vs_bare']:.4f}")
        print(f"  {r['model']}: HVP operator (gradient graphs kept: {r['hvp_graph_mb']:.1f} MB, batches "
              f"{r['hvp_kept_batches']}) / recomputing HVP {r['hvp_operator_vs_recomputed']:.3f}, bitwise equal "
              f"{r['hvp_operator_bitwise_equal']}")
        if "overhead_paired_eager" in r:
            print(f"  {r['model']}: CUDA-graph loop in-run, tail-corrected {r['overhead_inrun_tail_corrected']:.4f}; "
                  f"generic device loop (CUDA graphs off) in the same pairs: paired "
                  f"{r['overhead_paired_eager']:.4f}, in-run {r['overhead_inrun_eager']:.4f}, tail-corrected "
                  f"{r['overhead_inrun_tail_corrected_eager']:.4f}, predicted at target "
                  f"{r.get('predicted_overhead_target_km_eager', nan):.4f}")
    payload["environment"]["load_at_end"] = C.load_snapshot()
    print(f"  load at start {payload['environment']['load_at_start']}, at end {payload['environment']['load_at_end']}; "
          "cpu share = process CPU time / (wall * threads), < ~0.9 means the machine was contended")
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
