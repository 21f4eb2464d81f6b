"""Our Hessian products and SLQ side by side with PyHessian's, in one process.

Per model (LeNet and ResNet-20 on synthetic CIFAR-shaped data, shape (3, 32, 32)), one seeded model, one set of
weights, one copy of the data on one device (``--device cpu|cuda``) are handed to both tools:

* ours: ``TorchObjective(model, x, y, batch_size=B, device=...)``, which evaluates its own eval-mode copy;
* PyHessian 0.1: ``hessian(model, nn.CrossEntropyLoss(), dataloader=batches)``, where ``batches`` is a list of
  ``(x_b, y_b)`` device tensors, the same B-sample batches in the same order (no ``DataLoader``: it would add
  collation and host-to-device copies to PyHessian's time only). PyHessian puts the model in eval mode too.

Both tools take the mean cross-entropy over all samples: PyHessian weights each batch's HVP by its size and
divides by the total, ours sums over samples and divides by their number. ``--samples`` must be a multiple of
``--batch-size`` so the batches are equal and the two reductions run over the same batches; the bench checks that
the two mean losses and one HVP agree before timing anything.

Figures (medians over ``--repeats`` alternating rounds after a warm-up, device synchronized around each call):
the plain model's forward pass + loss over all batches (the unit the others are quoted in), our ``evaluate``
(loss + accuracy), our gradient, a plain autograd gradient; the time per Hessian-vector product of each of our
``hvp_mode``s through ``objective.hvp`` (forward, gradient with graph, backward through it, per batch) and through
the kept-graph operator ``objective.hvp_operator(theta)(v)`` (one backward pass per batch), PyHessian's
``dataloader_hv_product``; when the operator has ``matmat``, the per-vector time of one ``(g, n)`` block
(``--group-size``, default 10). Then SLQ with k starting vectors of m steps: ours ``slq(op, dim, k, m, like=theta)``
(and with ``group_size=g`` when ``slq`` takes it, on the ``hvp_mode="auto"`` objective when that mode exists),
PyHessian's ``density(iter=m, n_v=k')``, timed with ``k' = --pyhessian-k`` vectors (default: k for LeNet, 1 for
ResNet-20) and scaled by k / k' (its starting vectors are independent, so its time is linear in k). Reported:
``PyHessian SLQ / our SLQ``.

Largest eigenvalue: both from the same number of Lanczos steps (``--top-m``, default m): ours
``ritz_pairs(op, v0, top_m, 1)`` (with its true residual), PyHessian's largest node of its ``density`` rows (the
timed run when ``top_m == m``). They must agree to 1e-4 relative.

PyHessian 0.1 calls ``torch.eig``, removed from torch; this bench replaces it (for this process) with
``torch.linalg.eigh`` (T is symmetric tridiagonal: same eigenvalues, eigenvectors as columns).

Run: ``python bench/pyhessian_compare.py --device cuda --models lenet resnet20 --json out.json`` (``--help``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from typing import Any

import _common as C

TOP_RTOL = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gradvis_steps.cli import memory_budget  # the steps' own parser of --hvp-memory-mb

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"], help="lenet and/or resnet20")
    p.add_argument("--samples", type=int, default=2048, help="synthetic CIFAR-shaped samples (default 2048)")
    p.add_argument("--batch-size", type=int, default=512, help="batch size of both tools (default 512)")
    p.add_argument("--k", type=int, default=10, help="SLQ starting vectors (default 10)")
    p.add_argument("--m", type=int, default=80, help="Lanczos steps per vector (default 80)")
    p.add_argument("--pyhessian-k", type=int, default=None,
                   help="starting vectors PyHessian's SLQ is timed on, scaled to k (default: k for lenet,\n"
                        "1 for resnet20)")
    p.add_argument("--top-m", type=int, default=None, help="Lanczos steps of the largest-eigenvalue check (default m)")
    p.add_argument("--group-size", type=int, default=10, help="block size of the batched path, when present")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds of the per-call timings (default 5)")
    p.add_argument("--no-calls", action="store_true",
                   help="skip the per-call timings (ResNet-20 on 2 cores: about 10 min): SLQ and the largest\n"
                        "eigenvalue only")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the data (default 0)")
    p.add_argument("--hvp-memory-mb", type=memory_budget, default=None,
                   help="memory (MiB, or auto) for the gradient graphs our operator keeps (default: the\n"
                        "objective's, auto); batches beyond it are recomputed per product (the table says how\n"
                        "many were kept)")
    args = p.parse_args(argv)
    args.models = [name for item in args.models for name in item.split(",") if name]
    if args.samples % args.batch_size:
        p.error(f"--samples {args.samples} must be a multiple of --batch-size {args.batch_size} (equal batches)")
    args.top_m = args.top_m or args.m
    return args


def patch_torch_eig() -> None:
    """PyHessian 0.1's ``density`` calls ``torch.eig(T, eigenvectors=True)`` (gone since torch 2.0): eigenvalues as
    (n, 2) real/imaginary columns, eigenvectors as columns. T is symmetric, so ``eigh`` gives the same."""
    import torch

    def eig(matrix: Any, eigenvectors: bool = False) -> tuple[Any, Any]:
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig


def build(name: str, samples: int, seed: int) -> tuple[Any, Any, Any]:
    import torch

    from gradvis_steps.data import load_dataset

    ds = load_dataset({"name": "synthetic", "n_train": samples, "n_test": 1, "seed": seed})
    torch.manual_seed(seed)
    return C.bench_model(name, ds), ds.x_train, ds.y_train


def make_objective(model: Any, x: Any, y: Any, args: argparse.Namespace, mode: str) -> Any | None:
    """Our objective in ``mode``, or None when this checkout does not have that mode (``auto``)."""
    from gradvis_steps.backends.torch.objective import TorchObjective

    memory = {} if args.hvp_memory_mb is None else {"hvp_memory_mb": args.hvp_memory_mb}
    try:
        return TorchObjective(model, x, y, batch_size=args.batch_size, device=args.device, hvp_mode=mode, **memory)
    except ValueError as error:
        if "hvp_mode" in str(error):
            return None
        raise


def bench_model(name: str, args: argparse.Namespace, sync: Any, out: dict[str, Any], save: Any) -> None:
    """Fills ``out`` step by step, calling ``save()`` (the JSON) after each part: a timeout keeps what finished."""
    import torch
    from pyhessian import hessian

    from gradvis_steps.core.lanczos import ritz_pairs
    from gradvis_steps.core.slq import slq, starting_vector

    model, x, y = build(name, args.samples, args.seed)
    k, m, g = args.k, args.m, args.group_size
    pk = args.pyhessian_k or (k if name == "lenet" else 1)
    pk = min(pk, k)
    notes: list[str] = []

    objectives = {mode: make_objective(model, x, y, args, mode)
                  for mode in ("double_backprop", "forward_over_reverse", "auto")}
    if objectives["auto"] is None:
        notes.append("hvp_mode='auto' not in this checkout: skipped")
    objectives = {mode: obj for mode, obj in objectives.items() if obj is not None}
    obj = objectives["double_backprop"]
    theta = obj.initial_point()
    dim = obj.dim

    # PyHessian's side: the very model (its weights are the objective's initial point), the same batches
    device = torch.device(args.device)
    model = model.to(device).eval()
    criterion = torch.nn.CrossEntropyLoss()
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    batches = [(xt[s:s + args.batch_size], yt[s:s + args.batch_size]) for s in range(0, len(xt), args.batch_size)]
    hc = hessian(model, criterion, dataloader=batches, cuda=device.type == "cuda")
    params = hc.params
    if sum(p.numel() for p in params) != dim:
        raise SystemExit(f"{name}: PyHessian sees {sum(p.numel() for p in params)} parameters, we see {dim}")

    def as_list(v: Any) -> list[Any]:  # a flat vector as PyHessian's list of parameter-shaped views
        views, start = [], 0
        for p in params:
            views.append(v[start:start + p.numel()].view_as(p))
            start += p.numel()
        return views

    def flat(vs: Any) -> Any:
        return torch.cat([v.reshape(-1) for v in vs])

    print(f"[{name}] dim={dim}, {len(x)} samples in {len(batches)} batches of {args.batch_size}, k={k}, m={m}, "
          f"device {args.device}", file=sys.stderr, flush=True)

    # --- same definitions: mean loss and one HVP ------------------------------------------------------------------
    with torch.no_grad():
        pyh_loss = sum(float(criterion(model(xb), yb)) * len(xb) for xb, yb in batches) / len(xt)
    our_loss = obj.evaluate(theta).loss
    pool = C.unit_vectors(dim, max(8, g), theta)
    operators = {mode: o.hvp_operator(theta) for mode, o in objectives.items()}
    op = operators["double_backprop"]
    ours_hv = op(pool[0])
    _, pyh_hv = hc.dataloader_hv_product(as_list(pool[0]))
    hvp_rel = float((flat(pyh_hv) - ours_hv).norm() / ours_hv.norm())
    out.update({
        "model": name, "dim": dim, "samples": len(xt), "batch_size": args.batch_size, "batches": len(batches),
        "k": k, "m": m, "group_size": g, "pyhessian_k": pk,
        "loss_ours": our_loss, "loss_pyhessian": pyh_loss, "loss_rel_diff": abs(our_loss - pyh_loss) / abs(our_loss),
        "hvp_rel_diff": hvp_rel, "notes": notes, "complete": False,
    })
    print(f"[{name}] mean loss ours {our_loss:.8g}, PyHessian {pyh_loss:.8g} (rel {out['loss_rel_diff']:.1e}); "
          f"HVP rel diff {hvp_rel:.1e}", file=sys.stderr, flush=True)
    if out["loss_rel_diff"] > 1e-5 or hvp_rel > 1e-3:
        raise SystemExit(f"{name}: the two tools do not compute the same loss/Hessian "
                         f"(loss rel {out['loss_rel_diff']:.1e}, HVP rel {hvp_rel:.1e})")

    # --- per-call timings, alternating rounds -------------------------------------------------------------------
    def forward() -> None:
        with torch.no_grad():
            for xb, yb in batches:
                criterion(model(xb), yb)

    def autograd_gradient() -> None:
        model.zero_grad(set_to_none=True)
        for xb, yb in batches:
            (criterion(model(xb), yb) * (len(xb) / len(xt))).backward()
        model.zero_grad(set_to_none=True)

    cpu0, wall0 = time.process_time(), time.perf_counter()

    def per_call_timings() -> None:
        calls: dict[str, tuple[Any, int]] = {  # label -> (function of a round index, vectors per call)
            "forward (plain model + loss)": (lambda i: forward(), 0),
            "ours evaluate (loss + accuracy)": (lambda i: obj.evaluate(theta), 0),
            "ours gradient": (lambda i: obj.grad(theta), 0),
            "plain autograd gradient": (lambda i: autograd_gradient(), 0),
        }
        for mode, o in objectives.items():
            calls[f"ours hvp {mode}"] = (lambda i, o=o: o.hvp(theta, pool[i % len(pool)]), 1)
        for mode, operator in operators.items():
            kind = "kept graphs" if operator.kept_batches else "recomputed"
            calls[f"ours operator {mode} ({kind} {operator.kept_batches}/{len(batches)})"] = (
                lambda i, operator=operator: operator(pool[i % len(pool)]), 1)
        block = torch.stack(pool[:g])
        matmat_modes = [mode for mode, operator in operators.items() if hasattr(operator, "matmat")]
        for mode in matmat_modes:
            calls[f"ours operator.matmat {mode} (g={g}), per vector"] = (
                lambda i, operator=operators[mode]: operator.matmat(block), g)
        if not matmat_modes:
            notes.append("operator.matmat not in this checkout: batched HVP skipped")
        else:
            mm = operators[matmat_modes[0]].matmat(block)
            out["matmat_rel_diff"] = float(max((mm[j] - op(pool[j])).norm() / op(pool[j]).norm() for j in range(g)))
        calls["PyHessian dataloader_hv_product"] = (lambda i: hc.dataloader_hv_product(as_list(pool[i % len(pool)])), 1)

        for fn, _ in calls.values():  # warm-up: allocator, cuDNN/oneDNN kernel choice, autograd paths
            for i in range(2):
                fn(i)
        times: dict[str, list[float]] = {label: [] for label in calls}
        for r in range(args.repeats):
            for label, (fn, _) in calls.items():
                times[label].append(C.timed(lambda fn=fn, r=r: fn(r), sync)[0])
        t_forward = C.median(times["forward (plain model + loss)"])
        rows = []
        for label, (_, per) in calls.items():
            seconds = C.median(times[label]) / max(per, 1)
            rows.append({"what": label, "seconds": seconds, "per_forward": seconds / t_forward})
        out["calls"] = rows
        per_call = {row["what"]: row["seconds"] for row in rows}
        out["pyhessian_hvp_over_ours_operator"] = (per_call["PyHessian dataloader_hv_product"]
                                                   / next(v for key, v in per_call.items()
                                                          if key.startswith("ours operator double_backprop")))
        print(f"[{name}] per-call timings done", file=sys.stderr, flush=True)
        save()

    if not args.no_calls:
        per_call_timings()

    # --- SLQ (PyHessian first: the JSON then holds it even if our runs are cut by a timeout) ---------------------
    hc.density(iter=min(m, 4), n_v=1)  # warm-up
    seconds, (pyh_nodes, _) = C.timed(lambda: hc.density(iter=m, n_v=pk), sync)
    scaled = seconds * k / pk
    slq_runs: list[dict[str, Any]] = [{"tool": "PyHessian", "what": f"density(iter={m}, n_v={pk})" + (
        f", time scaled x{k}/{pk}" if pk != k else ""), "k_timed": pk, "seconds_timed": seconds, "seconds": scaled}]
    if pk != k:
        notes.append(f"PyHessian SLQ timed on k={pk} and scaled to k={k}")
    out["slq"] = slq_runs
    save()
    # warm-up; on CUDA one whole row, which captures the Lanczos step graphs of (dim, m) for the timed run
    warm_m = m if device.type == "cuda" else min(m, 8)
    slq(op, dim, 1, warm_m, like=theta)
    seconds, ours = C.timed(lambda: slq(op, dim, k, m, like=theta), sync)
    slq_runs.append({"tool": "ours", "what": "slq(hvp_operator(theta)) double_backprop", "k_timed": k,
                     "seconds_timed": seconds, "seconds": seconds})
    out["slq_ratio_pyhessian_over_ours"] = scaled / seconds
    save()

    # --- largest eigenvalue from the same number of Lanczos steps ---------------------------------------------------
    tm = args.top_m
    ritz = ritz_pairs(op, starting_vector(dim, 0, 0, like=theta), tm, 1)
    if tm != m:
        pyh_nodes, _ = hc.density(iter=tm, n_v=1)
    pyh_top = float(max(max(row) for row in pyh_nodes))
    ours_top = float(ritz.values[0])
    out["top"] = {
        "steps": tm, "ours_ritz_pairs": ours_top, "ours_residual": float(ritz.residuals[0]),
        "ours_slq_max_node": float(ours.nodes.max()), "pyhessian_density_max_node": pyh_top,
        "rel_diff": abs(ours_top - pyh_top) / abs(ours_top), "rtol": TOP_RTOL,
    }
    out["top"]["agree"] = out["top"]["rel_diff"] <= TOP_RTOL
    save()

    # --- the batched path (last: the figures above survive if a timeout cuts it) -----------------------------------
    if "group_size" in inspect.signature(slq).parameters:
        gmode = "auto" if "auto" in operators else "double_backprop"
        gop = operators[gmode]
        slq(gop, dim, 1, warm_m, like=theta, group_size=g)  # warm-up
        seconds, grouped = C.timed(lambda: slq(gop, dim, k, m, like=theta, group_size=g), sync)
        slq_runs.append({"tool": "ours", "what": f"slq(..., group_size={g}) {gmode}", "k_timed": k,
                         "seconds_timed": seconds, "seconds": seconds})
        out["slq_ratio_pyhessian_over_ours_grouped"] = scaled / seconds
        out["grouped_top_node"] = float(grouped.nodes.max())
    else:
        notes.append("slq has no group_size in this checkout: grouped SLQ skipped")
    for run in slq_runs:
        run["pyhessian_over_this"] = scaled / run["seconds"]
    print(f"[{name}] SLQ and largest eigenvalue done", file=sys.stderr, flush=True)
    # process CPU time / (wall * threads) over the timings: well below ~0.9 on a CPU run means a contended machine
    out["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / args.threads
    out["complete"] = True
    save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    patch_torch_eig()
    try:
        import pyhessian  # noqa: F401 - fail early with a clear message
    except ImportError:
        raise SystemExit("pyhessian is not installed: pip install --no-deps pyhessian (bench/README.md)") from None
    malloc_env = C.apply_malloc_env(args)
    mtag = "malloc " + (" ".join(f"{k}={v}" for k, v in malloc_env.items()) if malloc_env else "default")
    C.check_device(args.device)
    threads = C.setup_threads(args.threads, args.blas_threads)
    sync = C.make_sync(args.device)
    payload: dict[str, Any] = {
        "bench": "pyhessian_compare",
        "requirement": "PyHessian SLQ / our SLQ on the same model, data and device; largest Ritz values agree to 1e-4",
        "environment": C.environment(args.device), "threads": threads, "malloc_env": malloc_env,
        "args": {k: str(v) for k, v in vars(args).items()}, "results": [],
    }
    for name in args.models:
        out: dict[str, Any] = {"model": name, "complete": False}
        payload["results"].append(out)
        bench_model(name, args, sync, out, lambda: C.write_json(args.json, payload))

    print(f"\nOurs vs PyHessian (device {args.device}, {threads['threads']} threads, {mtag})")
    for r in payload["results"]:
        print(f"\n{r['model']}: dim {r['dim']}, {r['samples']} synthetic CIFAR-shaped samples, {r['batches']} "
              f"batches of {r['batch_size']}; mean loss rel diff {r['loss_rel_diff']:.1e}, HVP rel diff "
              f"{r['hvp_rel_diff']:.1e}")
        if "calls" in r:
            C.print_table(["per call", "ms", "/ forward"],
                          [[c["what"], c["seconds"] * 1e3, c["per_forward"]] for c in r["calls"]])
            print(f"PyHessian HVP / our kept-graph operator HVP: {r['pyhessian_hvp_over_ours_operator']:.3g}")
        C.print_table([f"SLQ k={r['k']} m={r['m']}", "k timed", "s timed", "s (k vectors)", "PyHessian / this"],
                      [[s["tool"] + ": " + s["what"], s["k_timed"], s["seconds_timed"], s["seconds"],
                        s["pyhessian_over_this"]] for s in r["slq"]])
        t = r["top"]
        print(f"largest eigenvalue, {t['steps']} Lanczos steps each: ours (ritz_pairs) {t['ours_ritz_pairs']:.8g} "
              f"(residual {t['ours_residual']:.1e}), PyHessian (density max node) {t['pyhessian_density_max_node']:.8g}"
              f": rel diff {t['rel_diff']:.1e} -> {'agree' if t['agree'] else 'DO NOT AGREE'} to {t['rtol']:g}")
        print(f"cpu share {r['cpu_share']:.2f} (process CPU time / (wall * threads); < ~0.9 on a CPU run: contended)")
        for note in r["notes"]:
            print(f"note: {note}")
    payload["environment"]["load_at_end"] = C.load_snapshot()
    print(f"load at start {payload['environment']['load_at_start']}, at end {payload['environment']['load_at_end']}")
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
