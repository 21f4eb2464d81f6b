"""CIFAR-10 read from its standard python format (``cifar-10-batches-py``), with opt-in download.

The folder holds pickled ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a dict with
``b"data"`` (10000 x 3072 uint8, channel-major rows) and ``b"labels"``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .base import ArrayDataset

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
#: The dataset's official archive and its published MD5 checksum.
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
#: Standard per-channel statistics of the CIFAR-10 training set (pixel values scaled to [0, 1]).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
#: What a run needs to know of the dataset before reading it (the workflow's pre-flight check).
TRAIN_SIZE = 50000
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the configuration says."""


def _folder(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    return root if root.name == FOLDER else root / FOLDER


def missing_files(root: str | os.PathLike = "data") -> list[str]:
    """The batch files of the standard python format that are not in ``root`` (or ``root/cifar-10-batches-py``)."""
    folder = _folder(root)
    return [name for name in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / name).is_file()]


def require_files(root: str | os.PathLike = "data") -> None:
    """Raise DatasetNotFoundError, saying where to get them, if any batch file is missing."""
    folder = _folder(root)
    missing = missing_files(folder)
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: looked for {', '.join(missing)} in {folder.resolve()}. "
            f"Get it with `dataset: {{name: cifar10, root: {folder.parent}, download: true}}` in the config, "
            f"or download {URL} (md5 {MD5}) and extract it into {folder.parent.resolve()}."
        )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _normalize(images: np.ndarray) -> np.ndarray:
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((images.astype(np.float32) / 255.0) - mean) / std


def load_cifar10(root: str | os.PathLike = "data", download: bool = False, url: str = URL,
                 md5: str = MD5) -> ArrayDataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` normalized per channel; downloads only if asked."""
    folder = _folder(root)
    if missing_files(folder) and download:
        download_cifar10(folder.parent, url=url, md5=md5)
    require_files(folder)
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = _read_batch(folder / TEST_BATCH)
    return ArrayDataset(
        name="cifar10",
        x_train=_normalize(np.concatenate([x for x, _ in train])),
        y_train=np.concatenate([y for _, y in train]),
        num_classes=NUM_CLASSES,
        x_test=_normalize(x_test),
        y_test=y_test,
        meta={"root": str(folder), "mean": MEAN, "std": STD},
    )


def download_cifar10(root: str | os.PathLike, url: str = URL, md5: str = MD5) -> Path:
    """Download the archive to ``root``, verify its MD5, extract ``cifar-10-batches-py`` atomically."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".cifar10-download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"download from {url}: md5 {digest.hexdigest()} does not match expected {md5}")
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # refuses absolute paths and links out of the folder
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                if any(m.name.startswith(("/", "..")) or ".." in Path(m.name).parts for m in tar):
                    raise ValueError(f"archive from {url} has unsafe member paths")
                tar.extractall(tmp)
        extracted = Path(tmp) / FOLDER
        if not extracted.is_dir():
            raise ValueError(f"archive from {url} has no {FOLDER}/ folder")
        target = root / FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    return target
