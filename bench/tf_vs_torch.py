"""TensorFlow backend beside the torch backend on the same model (CPU): loss, gradient, HVP and SLQ per call.

Issue 17 asks for "TF HVP / TF gradient and TF SLQ time beside torch's on the same model (CPU)", and item 4 for
the cost of converting vectors at the TF operator's edge (the core Lanczos/SLQ loops run on numpy; each product
converts its vector to a tensor and back). Per model, both objectives are built from the same run config over the
same evaluation samples (synthetic CIFAR-shaped data by default) in float32; each backend's model has its own
seeded initial weights (timing does not depend on the values). Each backend runs in a process of its own (in one
process the two frameworks' thread pools spin against each other on few cores: torch ran several times slower beside
TensorFlow than alone), the processes alternating for ``--rounds`` rounds (the machine is shared); each process times,
after a warm-up, the median of ``--repeats`` calls of: one loss evaluation, one gradient, one ``objective.hvp``
and one product of the operator the spectrum step uses (``hvp_operator(theta)``: torch keeps gradient graphs
between products, TF re-runs the traced forward-over-reverse function), and one ``slq`` (k x m) on that operator
(timed once per process). For TF it also times the edge
conversion alone (``tf.convert_to_tensor`` of a numpy vector of the model's size and ``.numpy()`` of a tensor) and
reports it as a share of one operator product.

Figures: the median over the rounds of each process's medians; ``operator/grad`` within each backend, ``tf/torch``
per quantity, and the CPU pressure (PSI ``cpu some avg10``) at each process's start: above a few percent, other work
competed for the cores and the ratios are rough.

Run: ``python bench/tf_vs_torch.py [--models lenet,resnet20] [--samples 512] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import _common as C

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MODELS: dict[str, dict[str, Any]] = {
    "lenet": {"name": "lenet"},
    "resnet20": {"name": "resnet20"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p, device=False)
    p.add_argument("--models", default="lenet", help="comma-separated: lenet, resnet20 (default lenet)")
    p.add_argument("--samples", type=int, default=512, help="evaluation samples (default 512)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--k", type=int, default=2, help="SLQ starting vectors (default 2)")
    p.add_argument("--m", type=int, default=20, help="SLQ Lanczos steps (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per quantity in one process (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="alternating torch/TF process pairs (default 2)")
    p.add_argument("--only", choices=("torch", "tf"), help=argparse.SUPPRESS)  # one backend's process
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # where that process writes its figures
    return p.parse_args(argv)


def measure(name: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """One backend's median seconds per call on one model (run in a process of its own)."""
    import numpy as np

    from gradvis_steps.core.slq import slq
    from gradvis_steps.data import load_dataset

    dataset = load_dataset({"name": "synthetic", "n_train": args.samples, "n_test": 1})
    config = {"model": MODELS[name], "dataset": {"name": "synthetic"}, "train": {"seed": 0}}
    x, y = dataset.x_train, dataset.y_train
    if key == "tf":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from gradvis_steps.backends.tensorflow import TFObjective, model_for

        objective = TFObjective(model_for(config, dataset), x, y, batch_size=args.batch_size)
    else:
        from gradvis_steps.backends.torch import TorchObjective, model_for

        objective = TorchObjective(model_for(config, dataset), x, y, batch_size=args.batch_size)
    dim = objective.dim
    v_host = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    theta, v = objective.initial_point(), objective.from_numpy(v_host)
    operator = objective.hvp_operator(theta)
    calls = {
        "loss": lambda: objective.loss(theta),
        "grad": lambda: objective.grad(theta),
        "hvp": lambda: objective.hvp(theta, v),
        "operator": lambda: operator(v),
        "slq": lambda: slq(operator, dim, args.k, args.m, seed=0, like=theta),
    }
    if key == "tf":
        import tensorflow as tf

        def edge() -> None:
            for _ in range(100):
                tf.convert_to_tensor(v_host).numpy()

        calls["edge x100"] = edge
    sync = C.make_sync("cpu")
    seconds = {}
    for what, fn in calls.items():
        fn()  # warm-up: tracing, allocator growth
        seconds[what] = C.median([C.timed(fn, sync)[0] for _ in range(args.repeats if what != "slq" else 1)])
    if "edge x100" in seconds:
        seconds["edge"] = seconds.pop("edge x100") / 100
    return {"dim": dim, "seconds": seconds, "load_at_start": C.load_snapshot()}


def run_process(name: str, key: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """:func:`measure` in a fresh process (this script with ``--only``)."""
    out = folder / f"{name}-{key}.json"
    command = [sys.executable, __file__, "--only", key, "--out", str(out), "--models", name, "--threads",
               str(args.threads), "--samples", str(args.samples), "--batch-size", str(args.batch_size), "--k",
               str(args.k), "--m", str(args.m), "--repeats", str(args.repeats)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"torch": [], "tf": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for key in rounds:
                rounds[key].append(run_process(name, key, args, Path(folder)))
    dim = rounds["torch"][0]["dim"]
    assert rounds["tf"][0]["dim"] == dim
    med = {key: {what: C.median([r["seconds"][what] for r in runs]) for what in runs[0]["seconds"]}
           for key, runs in rounds.items()}
    ratios = {what: med["tf"][what] / med["torch"][what] for what in med["torch"]}
    result = {
        "model": name, "dim": dim, "samples": args.samples, "batch_size": args.batch_size, "k": args.k, "m": args.m,
        "seconds": med,
        "tf_over_torch": ratios,
        "operator_over_grad": {key: med[key]["operator"] / med[key]["grad"] for key in med},
        "edge_share_of_tf_product": med["tf"]["edge"] / med["tf"]["operator"],
        "load_at_process_start": {key: [r["load_at_start"] for r in runs] for key, runs in rounds.items()},
    }
    print(f"\n{name}: {dim} parameters, {args.samples} samples in batches of {args.batch_size}, "
          f"SLQ {args.k} x {args.m}, {args.rounds} rounds")
    print(f"{'':10s} {'torch ms':>10s} {'tf ms':>10s} {'tf/torch':>9s}")
    for what in med["torch"]:
        print(f"{what:10s} {1e3 * med['torch'][what]:10.2f} {1e3 * med['tf'][what]:10.2f} {ratios[what]:9.2f}")
    print(f"operator/grad: torch {result['operator_over_grad']['torch']:.2f}, "
          f"tf {result['operator_over_grad']['tf']:.2f}")
    print(f"TF edge conversion (numpy -> tensor -> numpy of {dim} floats): {1e6 * med['tf']['edge']:.1f} us = "
          f"{100 * result['edge_share_of_tf_product']:.2f} % of one TF operator product")
    pressure = [snap.get("cpu_some_avg10") for runs in result["load_at_process_start"].values() for snap in runs]
    print(f"CPU pressure (some avg10, %) at the processes' start: {pressure}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    malloc_env = C.apply_malloc_env(args)
    threads = C.setup_threads(args.threads, args.blas_threads)
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    for name in names:
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r}; accepted: {sorted(MODELS)}")
    if args.only:
        args.out.write_text(json.dumps(measure(names[0], args.only, args)))
        return 0
    payload: dict[str, Any] = {
        "bench": "tf_vs_torch",
        "requirement": "TF HVP / TF gradient and TF SLQ time beside torch's on the same model (CPU); the cost of "
                       "numpy vectors at the TF operator's edge",
        "environment": {**C.environment("cpu"), "tensorflow": _version("tensorflow-cpu") or _version("tensorflow")},
        "threads": {**threads, "tf_intra_op": args.threads, "tf_inter_op": 1},
        "malloc_env": malloc_env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [],
    }
    for name in names:
        payload["results"].append(bench_model(name, args))
        C.write_json(args.json, payload)
    return 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
