"""Cost of one landscape grid point relative to one forward pass over the evaluation subset.

Requirement (issue): on CPU a grid point costs <= 1.02x one forward pass over the evaluation subset.

Per model, in one process, over ``--rounds`` interleaved rounds (median per-point time of each variant):

* baseline ``forward``: the user's model itself (a separate eval-mode copy, ``torch.no_grad``) run over the
  evaluation subset in the objective's batches, summing the cross-entropy, one host sync per pass -- what
  "one forward pass over the evaluation subset" costs without gradvis;
* ``model@point``: the same plain model, but as a grid point needs it: its weights first set in place to the
  point (``copy_`` per parameter), then loss *and* accuracy, one host sync -- what any grid evaluation must
  do, without gradvis (a new point defeats the weight caches of oneDNN/cuDNN; the accuracy adds an argmax);
* ``grid``: ``evaluate_grid(objective, center, directions, grid, batch_size=16, progress=False)`` over an
  n x n grid, as the landscape step runs it (numpy directions converted once; each point formed in place by
  ``TorchObjective.evaluate_many``, loss and accuracy, one host sync per 16 points) -- the measured figure;
* ``grid+tqdm``: the same with the progress bar on (written to /dev/null);
* ``grid b=1``: ``evaluate_grid`` one point per objective call (a host sync per point);
* ``evaluate``: ``objective.evaluate(theta)`` at one fixed vector (copy into the model + forward + sync);
* ``points``: ``evaluate(center + a*d1 + b*d2)`` by hand (three new model-sized tensors per point);
* ``axpy``: only forming the points ``center + a*d1 + b*d2`` (no evaluation).

The order of the variants is shuffled in every round (seeded), so none always runs on a cache the
previous one warmed. Ratios are per-point time / baseline per-pass time.
Run: ``python bench/grid_point_cost.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--models", default="lenet,resnet20", help="comma-separated: lenet, resnet20")
    p.add_argument("--grid", type=int, default=10, help="points per axis of the 2-D grid (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: lenet 25, resnet20 12)")
    C.add_model_data_args(p)
    args = p.parse_args(argv)
    C.resolve_model_data_args(args)
    return args


def bench_model(name: str, args: argparse.Namespace, sync: Any) -> dict[str, Any]:
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F

    from gradvis_steps.backends.torch.objective import TorchObjective
    from gradvis_steps.core.grid import Grid, evaluate_grid

    model, x, y, data_desc = C.load_models_data(
        name, resnet_data=args.resnet_data, resnet_samples=args.resnet_samples
    )
    obj = TorchObjective(model, x, y, batch_size=args.batch_size, device=args.device)
    center = obj.initial_point()
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((2, obj.dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions *= float(center.norm())  # a plane of the model's scale, as filter-normalized directions are
    grid = Grid.from_ranges([(-1.0, 1.0), (-1.0, 1.0)], args.grid)
    coeffs = grid.points()
    n_pts = len(coeffs)
    d_torch = [obj.from_numpy(d) for d in directions]
    rounds = args.rounds or (25 if name == "lenet" else 12)
    print(f"[{name}] dim={obj.dim}, {data_desc}, {args.grid}x{args.grid} grid, {rounds} rounds",
          file=sys.stderr, flush=True)

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole bench

    plain = copy.deepcopy(model).to(args.device).eval()
    batches = [(obj.x[i:i + args.batch_size], obj.y[i:i + args.batch_size])
               for i in range(0, obj.n_samples, args.batch_size)]

    def v_forward() -> None:
        with torch.no_grad():
            for _ in range(n_pts):
                total = 0.0
                for xb, yb in batches:
                    total = total + F.cross_entropy(plain(xb), yb, reduction="sum")
                float(total)

    plain_params = list(plain.parameters())
    point_views = [center[spec.slice].view(spec.shape) for spec in obj.layout]

    def v_model_at_point() -> None:
        with torch.no_grad():
            for _ in range(n_pts):
                for param, value in zip(plain_params, point_views, strict=True):
                    param.copy_(value)
                total_loss = total_correct = 0.0
                for xb, yb in batches:
                    logits = plain(xb)
                    total_loss = total_loss + F.cross_entropy(logits, yb, reduction="sum")
                    total_correct = total_correct + (logits.argmax(dim=1) == yb).sum()
                torch.stack([total_loss.double(), total_correct.double()]).tolist()

    def v_evaluate() -> None:
        for _ in range(n_pts):
            obj.evaluate(center)

    def v_grid() -> None:
        evaluate_grid(obj, center, directions, grid, progress=False, batch_size=16)

    def v_grid_tqdm() -> None:
        with contextlib.redirect_stderr(devnull):
            evaluate_grid(obj, center, directions, grid, progress=True, batch_size=16)

    def v_grid_b1() -> None:
        evaluate_grid(obj, center, directions, grid, progress=False, batch_size=1)

    def v_points() -> None:
        for a, b in coeffs:
            obj.evaluate(center + float(a) * d_torch[0] + float(b) * d_torch[1])

    def v_axpy() -> None:
        for a, b in coeffs:
            center + float(a) * d_torch[0] + float(b) * d_torch[1]  # noqa: B018 - the cost is the point

    variants = {"forward": v_forward, "model@point": v_model_at_point, "grid": v_grid, "grid+tqdm": v_grid_tqdm,
                "grid b=1": v_grid_b1,
                "evaluate": v_evaluate, "points": v_points, "axpy": v_axpy}
    for fn in variants.values():  # warm-up
        fn()
    per_point: dict[str, list[float]] = {key: [] for key in variants}
    ratios: dict[str, list[float]] = {key: [] for key in variants}
    shares = []
    order = list(variants)
    shuffle = np.random.default_rng(1)
    for _ in range(rounds):
        shuffle.shuffle(order)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        times = {key: C.timed(variants[key], sync)[0] / n_pts for key in order}
        shares.append((time.process_time() - cpu0) / (time.perf_counter() - wall0) / args.threads)
        for key, t in times.items():
            per_point[key].append(t)
            ratios[key].append(t / times["forward"])
    base = C.median(per_point["forward"])
    out: dict[str, Any] = {
        "model": name,
        "data": data_desc,
        "dim": obj.dim,
        "n_samples": obj.n_samples,
        "grid": f"{args.grid}x{args.grid}",
        "rounds": rounds,
        "seconds_per_point": {key: C.median(v) for key, v in per_point.items()},
        "seconds_per_point_min": {key: min(v) for key, v in per_point.items()},
        # ratio of medians, and median of the per-round ratios (the two agree when the machine is quiet)
        "ratio": {key: C.median(v) / base for key, v in per_point.items()},
        "ratio_median_of_rounds": {key: C.median(v) for key, v in ratios.items()},
        "ratio_min": {key: min(v) / min(per_point["forward"]) for key, v in per_point.items()},
        "cpu_share_min": min(shares),
    }
    out["holds"] = bool(out["ratio_median_of_rounds"]["grid"] <= 1.02)
    out["grid_vs_model_at_point"] = C.median(
        [g / m for g, m in zip(per_point["grid"], per_point["model@point"], strict=True)])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload, threads, mtag = C.run_models(
        args, "grid_point_cost", "grid point time / one forward pass over the evaluation subset <= 1.02", bench_model
    )
    print(f"\nGrid point cost / one forward pass (device {args.device}, {threads['threads']} threads, {mtag}; "
          "bound 1.02)")
    keys = ["model@point", "grid", "grid+tqdm", "grid b=1", "evaluate", "points", "axpy"]
    rows = []
    for r in payload["results"]:
        rows.append([r["model"], r["dim"], r["n_samples"], r["seconds_per_point"]["forward"] * 1e3]
                    + [r["ratio_median_of_rounds"][k] for k in keys]
                    + [r["ratio_min"]["grid"], r["grid_vs_model_at_point"], r["cpu_share_min"]])
    C.print_table(["model", "dim", "samples", "forward ms"] + [f"{k}/fwd" for k in keys]
                  + ["grid/fwd (min)", "grid/model@point", "cpu share"], rows)
    for r in payload["results"]:
        print(f"  {r['model']}: {r['data']}; requirement grid/forward <= 1.02 "
              f"{'holds' if r['holds'] else 'VIOLATED'} ({r['ratio_median_of_rounds']['grid']:.4f})")
    payload["environment"]["load_at_end"] = C.load_snapshot()
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
