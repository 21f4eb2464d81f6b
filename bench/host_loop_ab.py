"""The CPU ("host") Lanczos loop of a git revision against the working tree's, in alternating pairs.

For changes to the host kernel (``core/lanczos_host.py``) that must not make the CPU path slower. One process loads
the host loop as it is at ``--ref`` (``git show``: ``core/lanczos_host.py``, or before it existed the
``_lanczos_host`` of ``core/lanczos.py``) next to the working tree's, registered as a kernel in turn; builds
``objective.hvp_operator(theta)`` for LeNet on the digits (as ``bench/slq_overhead.py`` does), and then, for every
round and starting vector i: m bare HVPs (baseline), then ``slq(..., indices=[i])`` once with each loop, in an
order that alternates from pair to pair. Each SLQ row also records the time spent inside its own HVP calls, in
wall time and in the thread's CPU time.

Reported per loop: ms per k x m SLQ (k times the median row), the non-HVP ms per SLQ and per step (the row's time
outside its HVPs: everything the loop itself costs), the in-run share (non-HVP / total, in wall and CPU time)
and the paired share against the bare HVPs; then the per-pair ratios new / ref of the non-HVP time (wall, CPU)
and of the row's whole CPU time, and whether both loops give bitwise the same nodes and weights. On a shared
machine the wall times take every preemption; CPU times do not, and with ``--threads 1`` the calling thread does
all the work, so those are the figures to read there (they still see other processes' use of the shared caches).

Run: ``python bench/host_loop_ab.py --ref 24fd396 --k 4 --m 30 --threads 1 --rounds 6``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import _common as C

MODULES = ("gradvis_steps/core/lanczos_host.py", "gradvis_steps/core/lanczos.py")  # the kernel's home, newest first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gradvis_steps.cli import memory_budget  # the steps' own parser of --hvp-memory-mb

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p, device=False)
    p.add_argument("--ref", default="HEAD", help="git revision whose host loop is the reference (default HEAD)")
    p.add_argument("--k", type=int, default=4, help="starting vectors (default 4, the default config's)")
    p.add_argument("--m", type=int, default=30, help="Lanczos steps (default 30)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the k starting vectors (default 5)")
    p.add_argument("--batch-size", type=int, default=1024, help="objective batch size (default 1024)")
    p.add_argument("--hvp-memory-mb", type=memory_budget, default=None,
                   help="memory for the HVP operator's kept gradient graphs (default: the objective's)")
    return p.parse_args(argv)


def loop_at(ref: str) -> Any:
    """The host loop of torch CPU tensors at the git revision ``ref`` as a kernel ``(op, v0, m, tol, keep_basis)``:
    its module imported under its own name (its relative imports of ``core/arrays.py`` made absolute)."""
    for module_path in MODULES:
        done = subprocess.run(["git", "show", f"{ref}:{module_path}"], cwd=C.ROOT, capture_output=True, text=True)
        if done.returncode == 0:
            break
    source = done.stdout.replace("from .arrays import", "from gradvis_steps.core.arrays import")
    path = Path(tempfile.mkdtemp(prefix="lanczos_ref_")) / "lanczos_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lanczos_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    if hasattr(module, "host_lanczos"):
        from gradvis_steps.backends.torch.lanczos_graphs import TORCH_HOST_OPS

        return partial(module.host_lanczos, TORCH_HOST_OPS)
    return module._lanczos_host  # (matvec, v0, m, breakdown_tol, keep_basis): the tolerance passes as given


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.device = "cpu"
    malloc_env = C.apply_malloc_env(args)
    threads = C.setup_threads(args.threads, args.blas_threads)
    sync = C.make_sync("cpu")

    import numpy as np
    import torch

    from gradvis_steps.backends.torch.lanczos_graphs import TORCH_HOST_OPS
    from gradvis_steps.backends.torch.objective import TorchObjective
    from gradvis_steps.core.lanczos import register_kernel
    from gradvis_steps.core.lanczos_host import host_lanczos
    from gradvis_steps.core.slq import slq

    loops = {"ref": loop_at(args.ref), "new": partial(host_lanczos, TORCH_HOST_OPS)}
    chosen = [loops["new"]]
    register_kernel(lambda v0: isinstance(v0, torch.Tensor) and v0.device.type == "cpu",
                    lambda *run: chosen[0](*run))
    model, x, y, data_desc = C.load_models_data("lenet", resnet_data="digits", resnet_samples=0)
    memory = {} if args.hvp_memory_mb is None else {"hvp_memory_mb": args.hvp_memory_mb}
    obj = TorchObjective(model, x, y, batch_size=args.batch_size, device="cpu", hvp_mode="double_backprop", **memory)
    theta = obj.initial_point()
    dim, k, m = obj.dim, args.k, args.m
    operator = obj.hvp_operator(theta)
    g = torch.Generator().manual_seed(1)
    pool = [v / v.norm() for v in torch.randn(8, dim, generator=g, dtype=theta.dtype)]
    inside = [0.0, 0.0]  # wall and CPU seconds inside the HVP calls

    def hvp(v: Any) -> Any:
        cpu, start = time.thread_time(), time.perf_counter()
        out = operator(v)
        inside[0] += time.perf_counter() - start
        inside[1] += time.thread_time() - cpu
        return out

    def row(label: str, i: int) -> tuple[float, float, float, float, Any]:
        """Wall seconds of SLQ row i with loop ``label``, its wall seconds inside the HVPs, its CPU seconds in all
        and outside the HVPs, and the row."""
        chosen[0] = loops[label]  # what the registered kernel runs
        try:
            inside[:] = [0.0, 0.0]
            cpu = time.thread_time()
            seconds, part = C.timed(lambda: slq(hvp, dim, k, m, seed=0, like=theta, indices=[i]), sync)
            cpu = time.thread_time() - cpu
        finally:
            chosen[0] = loops["new"]
        return seconds, inside[0], cpu, cpu - inside[1], part

    print(f"[lenet] dim={dim}, {data_desc}, k={k}, m={m}, ref {args.ref}", file=sys.stderr, flush=True)
    for i in range(10):  # warm-up: allocator, oneDNN kernel choice, autograd paths
        operator(pool[i % len(pool)])
    for label in loops:
        row(label, 0)

    pairs = []
    bitwise = True
    for r in range(args.rounds):
        for i in range(k):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            t_base, _ = C.timed(lambda: [hvp(pool[j % len(pool)]) for j in range(m)], sync)
            pair: dict[str, Any] = {"round": r, "vector": i, "t_baseline": t_base}
            parts = {}
            order = ("ref", "new") if (r * k + i) % 2 == 0 else ("new", "ref")
            for label in order:
                t_row, t_inside, cpu_row, cpu_outside, parts[label] = row(label, i)
                pair |= {f"t_{label}": t_row, f"t_inside_{label}": t_inside, f"cpu_{label}": cpu_row,
                         f"cpu_outside_{label}": cpu_outside}
            bitwise &= bool(np.array_equal(parts["ref"].nodes, parts["new"].nodes)
                            and np.array_equal(parts["ref"].weights, parts["new"].weights))
            pair["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / args.threads
            pairs.append(pair)
        last = pairs[-k:]
        print(f"round {r}: " + ", ".join(
            f"{label} {sum(p['t_' + label] for p in last):.3f}s (outside HVPs "
            f"{sum(p['t_' + label] - p['t_inside_' + label] for p in last) * 1e3:.1f} ms)" for label in loops)
            + f", cpu share {min(p['cpu_share'] for p in last):.2f}", file=sys.stderr, flush=True)

    t_hvps = k * C.median([p["t_baseline"] for p in pairs])
    results: dict[str, dict[str, float]] = {}
    rows = []
    for label in loops:
        t_slq = k * C.median([p[f"t_{label}"] for p in pairs])
        non_hvp = k * C.median([p[f"t_{label}"] - p[f"t_inside_{label}"] for p in pairs])
        cpu = k * C.median([p[f"cpu_outside_{label}"] for p in pairs])
        cpu_slq = k * C.median([p[f"cpu_{label}"] for p in pairs])
        results[label] = {"ms_per_slq": t_slq * 1e3, "cpu_ms_per_slq": cpu_slq * 1e3,
                          "non_hvp_ms_per_slq": non_hvp * 1e3,
                          "non_hvp_us_per_step": non_hvp / (k * m) * 1e6,
                          "non_hvp_cpu_us_per_step": cpu / (k * m) * 1e6,
                          "overhead_inrun": non_hvp / t_slq, "overhead_inrun_cpu": cpu / cpu_slq,
                          "overhead_paired": (t_slq - t_hvps) / t_slq}
        r_ = results[label]
        rows.append([label, r_["ms_per_slq"], r_["cpu_ms_per_slq"], r_["non_hvp_ms_per_slq"], r_["non_hvp_us_per_step"],
                     r_["non_hvp_cpu_us_per_step"], r_["overhead_inrun"], r_["overhead_inrun_cpu"],
                     r_["overhead_paired"]])
    ratios = [(p["t_new"] - p["t_inside_new"]) / (p["t_ref"] - p["t_inside_ref"]) for p in pairs]
    cpu_ratios = [p["cpu_outside_new"] / p["cpu_outside_ref"] for p in pairs]
    cpu_total_ratios = [p["cpu_new"] / p["cpu_ref"] for p in pairs]
    print(f"\nLeNet SLQ {k}x{m}, host loop at {args.ref} (ref) vs working tree (new), {len(pairs)} alternating pairs, "
          f"{threads['threads']} thread(s); {t_hvps / (k * m) * 1e3:.2f} ms per HVP")
    C.print_table(["loop", "ms/SLQ", "CPU ms/SLQ", "non-HVP ms/SLQ", "non-HVP us/step", "CPU us/step", "ovh in-run",
                   "in-run CPU", "ovh paired"], rows)
    for name, values in (("non-HVP wall", ratios), ("non-HVP CPU", cpu_ratios), ("row CPU", cpu_total_ratios)):
        quartiles = statistics.quantiles(values, n=4)
        print(f"  {name} time new / ref per pair: median {C.median(values):.3f}, quartiles "
              f"{quartiles[0]:.3f}-{quartiles[2]:.3f}, range {min(values):.3f}-{max(values):.3f}")
    print(f"  nodes and weights bitwise equal: {bitwise}; cpu share min {min(p['cpu_share'] for p in pairs):.2f}")
    payload = {"bench": "host_loop_ab", "environment": C.environment("cpu"), "threads": threads,
               "malloc_env": malloc_env, "args": {key: str(v) for key, v in vars(args).items()}, "dim": dim,
               "t_hvp_each": t_hvps / (k * m), "results": results, "non_hvp_ratio_new_over_ref": ratios,
               "non_hvp_cpu_ratio_new_over_ref": cpu_ratios, "row_cpu_ratio_new_over_ref": cpu_total_ratios,
               "bitwise_equal": bitwise, "pairs": pairs}
    payload["environment"]["load_at_end"] = C.load_snapshot()
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
