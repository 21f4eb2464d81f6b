"""Cost of recording every step of a user's training loop (``gradvis_steps.record.Recorder``).

Requirement (issue 24): recording every step of ResNet-20 adds at most 10 % to a CPU training step.

One process, one model: ResNet-20 (the repository's ``resnet20``) on synthetic CIFAR-shaped data (3, 32, 32), batch
``--batch-size`` (default 128), torch SGD with momentum. The two loops are timed in short alternating blocks of
``--steps`` steps, ``--repeats`` rounds (the machine's load drifts over minutes; pairs see the same load):

* baseline: forward, loss, backward, ``optimizer.step()``;
* recorded: the same, with ``rec.record(step)`` before the forward pass and ``rec.batch_loss(loss)`` after it, as a
  user loop that records every point (``every=1``) writes them; the recorder writes to a trajectory file in a
  temporary folder.

Figures: ``overhead_paired = median(recorded step) / median(baseline step) - 1``, and ``overhead_inrun``: the time
spent inside the recorder's calls during the recorded blocks over the baseline step time (immune to drift between
the two blocks). The recorder's time is split into the snapshot (flat float32 parameters and float64 buffers on the
host) and the HDF5 write of the row, each also as a share of a step. Each figure is given in wall time and in the
process's CPU time (``*_cpu*``: all threads' seconds, which other work on a shared machine does not inflate as it
does wall time; ``cpu_share`` = CPU seconds / (wall seconds x threads), well below 1 on a contended machine).

Run: ``python bench/recorder_overhead.py [--json bench/measured/recorder_overhead_cpu.json]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--steps", type=int, default=8, help="steps per timed block (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="alternating baseline/recorded rounds (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each loop first (default 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    malloc_env = C.apply_malloc_env(args)
    C.check_device(args.device)
    threads = C.setup_threads(args.threads, args.blas_threads)
    import torch
    import torch.nn.functional as F

    from gradvis_steps.backends import backend
    from gradvis_steps.data import load_dataset
    from gradvis_steps.record import Recorder

    sync = C.make_sync(args.device)
    n = args.batch_size * 4
    dataset_spec = {"name": "synthetic", "n_train": n, "n_test": 1}
    data = load_dataset(dataset_spec)
    model = backend("torch").build_model({"model": {"name": "resnet20"}}, data).to(args.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.as_tensor(data.x_train).to(args.device)
    y = torch.as_tensor(data.y_train).to(args.device)
    batches = [slice(s, s + args.batch_size) for s in range(0, n, args.batch_size)]

    folder = Path(tempfile.mkdtemp(prefix="recorder_bench_"))
    rec = Recorder(folder / "trajectory.h5", model, model_spec="resnet20", dataset_spec=dataset_spec,
                   optimizer=optimizer)
    inside = {"snapshot": 0.0, "write": 0.0, "snapshot_cpu": 0.0, "write_cpu": 0.0}

    def timed_into(key: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                inside[key] += time.perf_counter() - start
                inside[f"{key}_cpu"] += time.process_time() - cpu
        return wrapper

    rec._snapshot = timed_into("snapshot", rec._snapshot)
    rec.session.writer.append = timed_into("write", rec.session.writer.append)
    step = 0

    def train_step(index: int, record: bool) -> None:
        nonlocal step
        batch = batches[index % len(batches)]
        if record:
            rec.record(step)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        if record:
            rec.batch_loss(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1

    cpu_times: dict[bool, list[float]] = {False: [], True: []}

    def block(record: bool, count: int) -> float:
        """Wall seconds per step (the process's CPU seconds per step go to ``cpu_times``)."""
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            train_step(i, record)
        sync()
        cpu_times[record].append((time.process_time() - cpu) / count)
        return (time.perf_counter() - start) / count

    block(False, args.warmup)
    block(True, args.warmup)
    cpu_times[False].clear()
    cpu_times[True].clear()
    baseline, recorded, shares = [], [], []
    for _ in range(args.repeats):
        baseline.append(block(False, args.steps))
        before = dict(inside)
        recorded.append(block(True, args.steps))
        shares.append({k: (inside[k] - before[k]) / args.steps for k in inside})
        shares[-1]["cpu_share"] = cpu_times[True][-1] / (recorded[-1] * args.threads)
    path = rec.close()
    t_base, t_rec = C.median(baseline), C.median(recorded)
    snapshot = C.median([s["snapshot"] for s in shares])
    write = C.median([s["write"] for s in shares])
    cpu_base, cpu_rec = C.median(cpu_times[False]), C.median(cpu_times[True])
    snapshot_cpu = C.median([s["snapshot_cpu"] for s in shares])
    write_cpu = C.median([s["write_cpu"] for s in shares])
    result = {
        "model": "resnet20", "parameters": rec.layout.size, "batch_size": args.batch_size,
        "baseline_step_s": t_base, "recorded_step_s": t_rec,
        "overhead_paired": t_rec / t_base - 1,
        "overhead_inrun": (snapshot + write) / t_base,
        "snapshot_s": snapshot, "write_s": write,
        "snapshot_share": snapshot / t_base, "write_share": write / t_base,
        "baseline_steps_s": baseline, "recorded_steps_s": recorded,
        "cpu_baseline_step_s": cpu_base, "cpu_recorded_step_s": cpu_rec,
        "overhead_cpu_paired": cpu_rec / cpu_base - 1, "overhead_cpu_inrun": (snapshot_cpu + write_cpu) / cpu_base,
        "snapshot_cpu_s": snapshot_cpu, "write_cpu_s": write_cpu,
        "cpu_baseline_steps_s": cpu_times[False], "cpu_recorded_steps_s": cpu_times[True],
        "cpu_share": C.median([s["cpu_share"] for s in shares]),
        "file_mb": path.stat().st_size / 2**20,
    }
    payload = {"bench": "recorder_overhead", "requirement": "recording every step of ResNet-20 adds <= 10 % to a "
               "CPU training step", "environment": C.environment(args.device), "threads": threads,
               "malloc_env": malloc_env, "args": {k: str(v) for k, v in vars(args).items()}, "results": [result]}
    C.write_json(args.json, payload)
    C.print_table(["clock", "step (s)", "recorded (s)", "paired", "in-run", "snapshot", "write"],
                  [["wall", t_base, t_rec, result["overhead_paired"], result["overhead_inrun"],
                    snapshot / t_base, write / t_base],
                   ["cpu", cpu_base, cpu_rec, result["overhead_cpu_paired"], result["overhead_cpu_inrun"],
                    snapshot_cpu / cpu_base, write_cpu / cpu_base]])
    print(f"resnet20, {rec.layout.size} parameters, batch {args.batch_size}; cpu share {result['cpu_share']:.2f}")
    path.unlink()
    folder.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
