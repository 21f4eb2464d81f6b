"""Grid points evaluated in one vectorized forward pass (vmap) against one by one, in the same process.

Per model, ``evaluate_grid(objective, center, directions, grid, batch_size=--points-per-call)`` over an n x n
plane around the initial parameters (two random directions of the model's scale), as the landscape step runs it,
with three objectives of the same model that differ only in ``grid_batching``:

* ``per_point``: each point loaded into the module and run on its own (the path before vmap);
* ``vmap``: the points of each call in vectorized calls (``backends/torch/batched_points.py``);
* ``auto``: what the landscape step does by default -- its first call times both paths and keeps the faster
  (its choice and its calibration times are reported; the rounds time it after that first call).

The variants run in a shuffled order in each of ``--rounds`` rounds after a warm-up grid each; reported: the
median seconds per point, the 50 x 50 grid they make (2500 points, one rank), and ``vmap/per_point``, the median
of the per-round ratios (below 1: batching pays). Also the largest relative difference of the two paths' losses.
Run: ``python bench/grid_batched.py [--device cuda] [--grid 10]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import _common as C

GRID_50 = 50 * 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--models", default="lenet", help="comma-separated: lenet, resnet20 (default lenet)")
    p.add_argument("--grid", type=int, default=10, help="points per axis of the timed 2-D grid (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--points-per-call", type=int, default=None,
                   help="points per evaluate_many call (default: the landscape step's POINTS_PER_CALL)")
    C.add_model_data_args(p)
    args = p.parse_args(argv)
    C.resolve_model_data_args(args)
    if args.points_per_call is None:
        from gradvis_steps.landscape import POINTS_PER_CALL

        args.points_per_call = POINTS_PER_CALL
    return args


def bench_model(name: str, args: argparse.Namespace, sync: Any) -> dict[str, Any]:
    import numpy as np

    from gradvis_steps.backends.torch.objective import TorchObjective
    from gradvis_steps.core.grid import Grid, evaluate_grid

    model, x, y, data_desc = C.load_models_data(
        name, resnet_data=args.resnet_data, resnet_samples=args.resnet_samples
    )
    modes = ("per_point", "vmap", "auto")
    objectives = {mode: TorchObjective(model, x, y, batch_size=args.batch_size, device=args.device,
                                       grid_batching=mode) for mode in modes}
    center = objectives["vmap"].initial_point()
    dim = objectives["vmap"].dim
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((2, dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions *= float(center.norm())  # a plane of the model's scale, as filter-normalized directions are
    grid = Grid.from_ranges([(-1.0, 1.0), (-1.0, 1.0)], args.grid)
    n_pts = grid.n_points
    print(f"[{name}] dim={dim}, {data_desc}, {args.grid}x{args.grid} grid, {args.points_per_call} points per call, "
          f"{args.rounds} rounds", file=sys.stderr, flush=True)

    def run(mode: str):
        return evaluate_grid(objectives[mode], center, directions, grid, progress=False,
                             batch_size=args.points_per_call)

    warm = {mode: run(mode) for mode in modes}  # warm-up; auto calibrates in its first call
    per_point: dict[str, list[float]] = {mode: [] for mode in modes}
    ratios = []
    order = list(modes)
    shuffle = np.random.default_rng(1)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        times = {mode: C.timed(lambda mode=mode: run(mode), sync)[0] / n_pts for mode in order}
        for mode, t in times.items():
            per_point[mode].append(t)
        ratios.append(times["vmap"] / times["per_point"])
    reference = warm["per_point"].loss
    seconds = {mode: C.median(v) for mode, v in per_point.items()}
    return {
        "model": name,
        "data": data_desc,
        "dim": dim,
        "n_samples": objectives["vmap"].n_samples,
        "grid": f"{args.grid}x{args.grid}",
        "points_per_call": args.points_per_call,
        "rounds": args.rounds,
        "seconds_per_point": seconds,
        "seconds_per_point_min": {mode: min(v) for mode, v in per_point.items()},
        "grid_50x50_seconds": {mode: s * GRID_50 for mode, s in seconds.items()},
        "vmap_over_per_point": C.median(ratios),
        "vmap_over_per_point_rounds": ratios,
        "vmap_points_per_call": objectives["vmap"].grid_batching["points_per_call"],
        "vmap_bytes_per_point": objectives["vmap"].grid_batching["bytes_per_point"],
        "auto_choice": objectives["auto"].grid_batching,
        "max_relative_loss_difference": float(np.max(np.abs(warm["vmap"].loss - reference) / np.abs(reference))),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload, threads, mtag = C.run_models(
        args, "grid_batched", "vectorized grid points (vmap) vs one by one: time per point, same process",
        bench_model,
    )
    print(f"\nGrid points vectorized vs one by one (device {args.device}, {threads['threads']} threads, {mtag})")
    rows = []
    for r in payload["results"]:
        s, g = r["seconds_per_point"], r["grid_50x50_seconds"]
        rows.append([r["model"], r["dim"], r["n_samples"], r["points_per_call"], s["per_point"] * 1e3,
                     s["vmap"] * 1e3, s["auto"] * 1e3, g["per_point"], g["vmap"], r["vmap_over_per_point"],
                     r["auto_choice"]["mode"], r["max_relative_loss_difference"]])
    C.print_table(["model", "dim", "samples", "pts/call", "per_point ms", "vmap ms", "auto ms", "50x50 per_point s",
                   "50x50 vmap s", "vmap/per_point", "auto chose", "max rel diff"], rows)
    for r in payload["results"]:
        choice = r["auto_choice"]
        print(f"  {r['model']}: auto chose {choice['mode']} ({choice['reason']}; calibration seconds per point "
              f"{ {k: round(v * 1e3, 3) for k, v in choice['seconds_per_point'].items()} } ms)")
    payload["environment"]["load_at_end"] = C.load_snapshot()
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
