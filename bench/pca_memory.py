"""Peak memory of the streamed trajectory PCA, in model-sized float32 vectors.

Requirement (issue): PCA peak memory <= 4 model-sized float32 vectors + n^2 floats beyond the baseline.

A synthetic trajectory of n checkpoints x N float32 parameters is written row by row to an HDF5 file
(dataset ``params``, chunks (1, N), in a temporary folder), then for each ``--block-sizes`` value a fresh
child process opens it and runs ``trajectory_pca(lambda i: ds[i], n, block_size=b)`` under ``tracemalloc``
(numpy's allocations are traced). Reported per block size:

* ``units = (peak - baseline - n^2 * 8 bytes) / (4 N)``: model-sized float32 vectors beyond the baseline
  (taken after the file is opened), the issue's bound being 4 model-sized vectors; a constant below 256 KiB
  (library buffers, not proportional to N: 0.016 units at N = 10^6, 0.001 at 4 x 10^6) is not counted against it;
* ``units_without_output``: the same without the returned ``components`` (n_components vectors in the
  checkpoints' dtype, 1 unit each for float32), i.e. the working memory alone;
* ``gram_phase_units``: the peak of the first phase alone (reference as stored + ``gram_matrix``), measured
  in a separate call after the full run;
* ``rss_units``: the same from the process's resident-set high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``; includes what the HDF5 library allocates itself, which tracemalloc does not see);
* the seconds the PCA took, and whether all block sizes gave the same components.

Run: ``python bench/pca_memory.py [--n 200 --dim 2000000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p, device=False)
    p.add_argument("--n", type=int, default=100, help="checkpoints (default 100)")
    p.add_argument("--dim", type=int, default=1_000_000, help="parameters per checkpoint (default 1,000,000)")
    p.add_argument("--block-sizes", default="1,2,8",
                   help="comma-separated block sizes (default 1,2,8; trajectory_pca's default is 2)")
    p.add_argument("--n-components", type=int, default=2, help="components (default 2)")
    p.add_argument("--dir", type=Path, default=None, help="folder for the HDF5 file (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--block-size", type=int, default=8, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_trajectory(path: Path, n: int, dim: int, seed: int = 0) -> float:
    """A drifting trajectory: theta_i = theta_0 + s_i u + t_i w + small noise, float32, one row at a time."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    theta0 = (0.05 * rng.standard_normal(dim)).astype(np.float32)
    u = rng.standard_normal(dim).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("params", shape=(n, dim), dtype="float32", chunks=(1, dim))
        for i in range(n):
            s = i / max(n - 1, 1)
            row = theta0 + np.float32(0.02 * s) * u + np.float32(0.005 * np.sin(6 * s)) * w
            row += (1e-3 * rng.standard_normal(dim)).astype(np.float32)
            ds[i] = row
    return time.perf_counter() - start


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process; prints a JSON line."""
    import tracemalloc

    import h5py
    import numpy as np

    from gradvis_steps.core.pca import gram_matrix, trajectory_pca

    C.setup_threads(args.threads, args.blas_threads)
    f = h5py.File(args.file, "r")
    ds = f["params"]
    n, dim = ds.shape
    ds[0]  # noqa: B018 - touch the file once, so opening costs are in the baseline
    unit = 4.0 * dim
    gram = n * n * 8

    def get(i: int) -> np.ndarray:
        return ds[i]

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    rss0 = _status_kib("VmRSS")
    hwm_reset = _reset_hwm()
    start = time.perf_counter()
    res = trajectory_pca(get, n, n_components=args.n_components, block_size=args.block_size)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm = _status_kib("VmHWM")

    # Then phase 1 alone, as trajectory_pca runs it: the reference as stored, then the Gram matrix
    # (after the full run, so that the RSS high-water mark above is not lowered by memory reused from here).
    gc.collect()
    tracemalloc.start()
    gram_base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    reference = np.asarray(get(n - 1))
    gram_matrix(get, np.arange(n), reference, args.block_size)
    gram_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del reference

    out_bytes = res.components.nbytes
    rss_units = (hwm - rss0) * 1024.0 / unit if (hwm_reset and hwm is not None and rss0 is not None) else None
    return {
        "block_size": args.block_size,
        "n": n,
        "dim": dim,
        "seconds": seconds,
        "peak_bytes": peak - base,
        "units": (peak - base - gram) / unit,
        "units_without_output": (peak - base - gram - out_bytes) / unit,
        "output_units": out_bytes / unit,
        "gram_phase_units": (gram_peak - gram_base - gram) / unit,
        "rss_units": rss_units,
        "explained_variance_ratio": res.explained_variance_ratio.tolist(),
        "components_head": res.components[:, :8].tolist(),
        "components_checksum": [float(np.dot(c, np.linspace(-1, 1, dim))) for c in res.components],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    threads = C.setup_threads(args.threads, args.blas_threads)
    block_sizes = [int(b) for b in args.block_sizes.split(",") if b.strip()]
    payload: dict[str, Any] = {
        "bench": "pca_memory",
        "requirement": "peak - baseline - n^2 floats <= 4 model-sized float32 vectors",
        "environment": C.environment(),
        "threads": threads,
        "args": {k: str(v) for k, v in vars(args).items()},
        "file_gib": args.n * args.dim * 4 / 2**30,
        "results": [],
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gradvis-pca-bench-") as tmp:
        path = Path(tmp) / "trajectory.h5"
        print(f"writing {args.n} x {args.dim} float32 ({payload['file_gib']:.2f} GiB) to {path}", file=sys.stderr)
        payload["write_seconds"] = write_trajectory(path, args.n, args.dim)
        for b in block_sizes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--file", str(path), "--block-size",
                   str(b), "--n-components", str(args.n_components), "--threads", str(args.threads)]
            if args.blas_threads is not None:
                cmd += ["--blas-threads", str(args.blas_threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"child for block_size={b} failed:\n{proc.stderr}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"block_size {b}: {result['units']:.2f} units, {result['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
            payload["results"].append(result)
            C.write_json(args.json, payload)

    ref = payload["results"][0]
    for r in payload["results"]:
        r["same_as_first"] = bool(all(
            abs(abs(a) - abs(b)) <= 1e-6 * max(1.0, abs(a))
            for a, b in zip(r["components_checksum"], ref["components_checksum"], strict=True)
        ))
        r["holds"] = bool(r["peak_bytes"] - 8 * args.n**2 <= 4 * (4 * args.dim) + 256 * 1024)
    print(f"\nPCA peak memory beyond baseline, minus n^2 float64, in model-sized float32 vectors (4 N bytes); "
          f"n={args.n}, N={args.dim}, {args.n_components} components, {threads['threads']} threads; bound 4")
    rows = [[r["block_size"], r["units"], r["units_without_output"], r["output_units"], r["gram_phase_units"],
             "n/a" if r["rss_units"] is None else r["rss_units"], r["seconds"], r["same_as_first"],
             "holds" if r["holds"] else "VIOLATED"] for r in payload["results"]]
    C.print_table(["block_size", "units (tracemalloc)", "without output", "output", "Gram phase", "units (RSS)",
                   "seconds",
                   "same result", "bound 4"], rows)
    C.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
