"""Shared helpers of the benchmark scripts (not a test suite: every figure is a ratio measured in one process).

Each bench is run as ``python bench/<name>.py``; this module puts the repository root on ``sys.path`` so
the scripts work from a plain checkout (no ``pip install -e .`` needed) and gives them the same thread,
device, timing and JSON conventions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: glibc malloc settings that keep freed memory in the process: no mmap per large tensor, no trimming, so
#: the steady state takes no page faults (each fault costs microseconds in a VM; see bench/README.md).
MALLOC_NO_TRIM = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def add_common_args(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """``--threads`` (torch intra-op and BLAS threads, default 2), ``--json PATH``, ``--malloc-no-trim`` and
    optionally ``--device``."""
    parser.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (default 2, the CI machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    parser.add_argument("--malloc-no-trim", action="store_true",
                        help="re-run this process with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ at\n"
                             "1 GiB (freed tensors stay in the heap: no page faults in the steady state)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is; by default the bench calls\n"
                             "gradvis_steps.cli.keep_freed_memory() as the model-evaluating steps do")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="threads of numpy's/scipy's BLAS (default: --threads). Their idle threads spin\n"
                             "for ~0.1 s after a call, halving torch's speed on 2 cores (bench/README.md)")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda / cuda:0")


def apply_malloc_env(args: argparse.Namespace) -> dict[str, str]:
    """With ``--malloc-no-trim``, re-exec this script once with :data:`MALLOC_NO_TRIM` in the environment
    (glibc reads it only at start-up). Returns the malloc variables in effect."""
    if getattr(args, "malloc_no_trim", False) and any(os.environ.get(k) != v for k, v in MALLOC_NO_TRIM.items()):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_NO_TRIM})
    info = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    if not getattr(args, "default_malloc", False):
        from gradvis_steps.cli import keep_freed_memory

        info["keep_freed_memory"] = str(keep_freed_memory())
    return info


def setup_threads(threads: int, blas_threads: int | None = None) -> dict[str, Any]:
    """Pin torch to ``threads`` and the host BLAS pools (numpy/scipy OpenBLAS, via threadpoolctl when present)
    to ``blas_threads`` (default ``threads``). torch's own OpenMP pool is left at ``threads``."""
    blas = int(threads if blas_threads is None else blas_threads)
    info: dict[str, Any] = {"threads": int(threads), "blas_threads": blas}
    try:
        import torch

        torch.set_num_threads(int(threads))
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas, user_api="blas")
        info["blas_limited"] = True
    except ImportError:
        info["blas_limited"] = False
    return info


def environment(device: str | None = None) -> dict[str, Any]:
    """Where the figures were measured (machine, versions, device)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch

        env["torch"] = torch.__version__
        if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        pass
    if device is not None:
        env["device"] = str(device)
    env["load_at_start"] = load_snapshot()
    return env


def load_snapshot() -> dict[str, Any]:
    """Load average and (Linux PSI) CPU pressure now: other work on the machine makes timings noisy.

    ``cpu_some_avg10`` is the share of the last 10 s in which some runnable task waited for a CPU (percent).
    """
    snap: dict[str, Any] = {}
    try:
        snap["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        text = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        snap["cpu_some_avg10"] = float(text.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return snap


def make_sync(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available here")


def run_models(
    args: argparse.Namespace,
    bench: str,
    requirement: str,
    bench_model: Callable[[str, argparse.Namespace, Callable[[], None]], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The torch benches' common driver: malloc setting, device check, thread pinning, then ``bench_model`` for
    each of ``--models``, the JSON rewritten after every model (a timeout keeps what finished). Returns the
    payload, the thread settings and a one-line description of the malloc setting."""
    malloc_env = apply_malloc_env(args)
    mtag = "malloc " + (" ".join(f"{k}={v}" for k, v in malloc_env.items()) if malloc_env else "default")
    check_device(args.device)
    threads = setup_threads(args.threads, args.blas_threads)
    sync = make_sync(args.device)
    payload: dict[str, Any] = {
        "bench": bench,
        "requirement": requirement,
        "environment": environment(args.device),
        "threads": threads,
        "malloc_env": malloc_env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [],
    }
    for name in [s.strip() for s in args.models.split(",") if s.strip()]:
        payload["results"].append(bench_model(name, args, sync))
        write_json(args.json, payload)
    return payload, threads, mtag


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    """Wall-clock seconds of ``fn()`` including the device work it queued, and its return value."""
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - start, value


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` (if given) atomically, creating the folder."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def unit_vectors(dim: int, count: int, like: Any, seed: int = 1) -> list[Any]:
    """``count`` random unit vectors (float64 stream of ``seed``) on ``like``'s device and dtype."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        v = torch.randn(dim, generator=g, dtype=torch.float64)
        out.append((v / v.norm()).to(device=like.device, dtype=like.dtype))
    return out


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    """``--resnet-data``, ``--resnet-samples`` and ``--batch-size`` of the grid benches."""
    p.add_argument("--resnet-data", choices=("digits", "synthetic"), default=None,
                   help="ResNet-20 input: digits subset (1,8,8) (cpu default) or synthetic CIFAR (cuda default)")
    p.add_argument("--resnet-samples", type=int, default=None,
                   help="samples of the synthetic CIFAR set (cpu 256, cuda 1024)")
    p.add_argument("--batch-size", type=int, default=1024, help="objective batch size (default 1024)")


def resolve_model_data_args(args: argparse.Namespace) -> None:
    """Device-dependent defaults of :func:`add_model_data_args`."""
    cuda = str(args.device).startswith("cuda")
    args.resnet_data = args.resnet_data or ("synthetic" if cuda else "digits")
    args.resnet_samples = args.resnet_samples or (1024 if cuda else 256)


def load_models_data(
    which: str, *, resnet_data: str, resnet_samples: int, fraction: float = 0.2, seed: int = 0
) -> tuple[Any, Any, Any, str]:
    """``(model, x, y, description)`` for ``which`` in {lenet, resnet20}.

    LeNet runs on the embedded digits, evaluation subset ``fraction`` (20% = 300 samples). ResNet-20 runs
    either on the same digits subset (input (1, 8, 8)) or on ``resnet_samples`` synthetic CIFAR-shaped
    samples (3, 32, 32). Models are seeded so every run sees the same weights.
    """
    import torch

    from gradvis_steps.data import load_dataset

    torch.manual_seed(seed)
    if which == "lenet" or resnet_data == "digits":
        ds = load_dataset("digits")
        x, y = ds.evaluation_subset(fraction, seed)
        desc = f"digits {tuple(ds.input_shape)}, eval subset {fraction:g} = {len(x)} samples"
    else:
        ds = load_dataset({"name": "synthetic", "n_train": int(resnet_samples), "n_test": 1, "seed": seed})
        x, y = ds.x_train, ds.y_train
        desc = f"synthetic CIFAR-shaped {tuple(ds.input_shape)}, {len(x)} samples"
    return bench_model(which, ds), x, y, desc


def bench_model(which: str, dataset: Any) -> Any:
    """The benches' LeNet or ResNet-20 for ``dataset``'s input shape and classes (seed torch first)."""
    from gradvis_steps.backends.torch.models import LeNet, resnet20

    if which == "lenet":
        return LeNet(dataset.input_shape, dataset.num_classes)
    if which == "resnet20":
        return resnet20(dataset.input_shape, dataset.num_classes)
    raise SystemExit(f"unknown model {which!r} (lenet, resnet20)")
