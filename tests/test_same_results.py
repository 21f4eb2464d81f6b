"""tools/same_results.py, the bitwise guard of refactorings: equal folders pass, one changed bit fails."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("same_results", ROOT / "tools" / "same_results.py")
same_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_results)


def write(folder: Path, loss: np.ndarray, version: str = "1.0") -> None:
    (folder / "run").mkdir(parents=True)
    with h5py.File(folder / "run" / "landscape.h5", "w") as file:
        file["loss"] = loss
        file["grid/x"] = np.linspace(-1, 1, loss.shape[0])
        file.attrs["gradvis_version"] = version
    (folder / "run" / "contour.png").write_bytes(b"not compared")


def compare(a: Path, b: Path, **kw) -> tuple[int, str]:
    out = io.StringIO()
    return same_results.compare_folders(a, b, out=out, **kw), out.getvalue()


def test_equal_folders_pass_and_provenance_attributes_are_listed_only(tmp_path):
    loss = np.array([[0.5, np.nan], [-0.0, 2.0]], dtype=np.float32)
    write(tmp_path / "a", loss)
    write(tmp_path / "b", loss.copy(), version="1.1")
    status, text = compare(tmp_path / "a", tmp_path / "b")
    assert status == 0 and "gradvis_version: 1" in text and "1 of 1 HDF5 files" in text
    assert compare(tmp_path / "a", tmp_path / "b", strict_attributes=True)[0] == 1


def test_one_bit_a_signed_zero_or_a_missing_file_fails(tmp_path):
    loss = np.array([[0.5, 1.0], [0.0, 2.0]], dtype=np.float32)
    write(tmp_path / "a", loss)
    changed = loss.copy()
    changed.view(np.uint32)[0, 0] ^= 1  # the last bit of one value
    write(tmp_path / "b", changed)
    status, text = compare(tmp_path / "a", tmp_path / "b")
    assert status == 1 and "run/landscape.h5:loss" in text
    zero = loss.copy()
    zero[1, 0] = -0.0
    write(tmp_path / "c", zero)
    assert compare(tmp_path / "a", tmp_path / "c")[0] == 1
    write(tmp_path / "d", loss.astype(np.float64))
    assert compare(tmp_path / "a", tmp_path / "d")[0] == 1
    (tmp_path / "a" / "run" / "extra.h5").write_bytes((tmp_path / "a" / "run" / "landscape.h5").read_bytes())
    status, text = compare(tmp_path / "a", tmp_path / "a")
    assert status == 0
    status, text = compare(tmp_path / "a", tmp_path / "c")
    assert status == 1 and "run/extra.h5: only in" in text
