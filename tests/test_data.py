"""Datasets: the embedded digits, CIFAR-10 in its standard python format (and its download),
synthetic data, and a user's own loader through an entry point."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest

from gradvis_steps.data import ArrayDataset, DatasetNotFoundError, download_cifar10, load_dataset
from gradvis_steps.data.cifar10 import MEAN, STD, TEST_BATCH, TRAIN_BATCHES


def test_digits_shapes_and_split(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert abs(float(digits.x_train.mean())) < 1e-5 and abs(float(digits.x_train.std()) - 1) < 1e-5


def test_evaluation_subset_is_deterministic_and_sized(digits):
    x1, y1 = digits.evaluation_subset(0.2, seed=0)
    x2, y2 = digits.evaluation_subset(0.2, seed=0)
    x3, _ = digits.evaluation_subset(0.2, seed=1)
    assert len(x1) == 300 and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert len(digits.evaluation_subset(1.0)[0]) == 1500
    with pytest.raises(ValueError, match="evaluation fraction must be in \\(0, 1\\], got 1.5"):
        digits.evaluation_subset(1.5)


def write_tiny_cifar(root, per_batch=6, seed=0):
    """Write files in CIFAR-10's standard python format; return the raw uint8 data and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    raw = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, handle)
        raw[name] = (data, labels)
    return raw


def test_cifar10_reads_standard_format(tmp_path):
    raw = write_tiny_cifar(tmp_path)
    dataset = load_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert dataset.x_train.shape == (30, 3, 32, 32) and dataset.x_test.shape == (6, 3, 32, 32)
    assert dataset.y_train.tolist() == sum((raw[name][1] for name in TRAIN_BATCHES), [])
    assert dataset.y_test.tolist() == raw[TEST_BATCH][1]
    # pixel (image 7 = batch 2 row 1, channel 2, row 3, col 4): rows are channel-major 32x32 planes
    value = raw["data_batch_2"][0][1, 2 * 1024 + 3 * 32 + 4]
    assert dataset.x_train[7, 2, 3, 4] == pytest.approx((value / 255.0 - MEAN[2]) / STD[2], rel=1e-6)
    # passing the batches folder itself works too
    again = load_dataset({"name": "cifar10", "root": str(tmp_path / "cifar-10-batches-py")})
    assert np.array_equal(again.x_train, dataset.x_train)


def test_cifar10_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset({"name": "cifar10", "root": str(tmp_path / "nowhere")})
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "download: true" in message and "cifar-10-python.tar.gz" in message


@pytest.fixture
def served_archive(tmp_path):
    """A CIFAR-10 style .tar.gz served by an HTTP server on the loopback interface."""
    source = tmp_path / "source"
    raw = write_tiny_cifar(source)
    archive = tmp_path / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(archive.parent))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    yield url, hashlib.md5(archive.read_bytes()).hexdigest(), raw
    server.shutdown()
    server.server_close()


def test_cifar10_download_verifies_checksum(tmp_path, served_archive):
    url, md5, raw = served_archive
    with pytest.raises(ValueError, match="does not match expected"):
        download_cifar10(tmp_path / "bad", url=url, md5="0" * 32)
    assert not (tmp_path / "bad" / "cifar-10-batches-py").exists()
    dataset = load_dataset({"name": "cifar10", "root": str(tmp_path / "data"), "download": True, "url": url,
                            "md5": md5})
    assert dataset.y_test.tolist() == raw[TEST_BATCH][1]
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_synthetic_is_cifar_shaped_and_seeded():
    a = load_dataset({"name": "synthetic", "n_train": 64, "n_test": 8, "seed": 1})
    b = load_dataset({"name": "synthetic", "n_train": 64, "n_test": 8, "seed": 1})
    assert a.input_shape == (3, 32, 32) and a.x_test.shape == (8, 3, 32, 32)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    assert len(np.unique(a.y_train)) > 1


def test_custom_dataset_and_model_entry_points(tmp_path, monkeypatch):
    import torch

    from gradvis_steps.backends.torch.models import build_model

    (tmp_path / "my_project.py").write_text(
        "import numpy as np, torch\n"
        "def load(n=10):\n"
        "    x = np.linspace(0, 1, n * 4, dtype=np.float32).reshape(n, 4)\n"
        "    return {'x_train': x, 'y_train': np.arange(n) % 3, 'num_classes': 3}\n"
        "def net(input_shape, num_classes, hidden=5):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], hidden), torch.nn.Tanh(),\n"
        "                               torch.nn.Linear(hidden, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    dataset = load_dataset({"name": "custom", "entry_point": "my_project:load", "n": 12})
    assert isinstance(dataset, ArrayDataset) and dataset.input_shape == (4,) and dataset.num_classes == 3
    model = build_model({"name": "custom", "entry_point": "my_project:net", "hidden": 7}, (4,), 3)
    assert model(torch.zeros(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_dataset({"name": "custom", "entry_point": "my_project:missing"})
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        load_dataset({"name": "custom", "entry_point": "my_project"})
