"""Compare two results folders bit for bit: the guard of a refactoring that must not change any number.

    python tools/same_results.py results-before results-after

Every HDF5 file under either folder is paired by its relative path; every dataset is compared as raw bytes (same
dtype, shape and bits: NaN payloads and signed zeros count), and the attributes of files, groups and datasets are
compared too. Exit status 0 when every file exists on both sides and every dataset is equal; 1 otherwise. Attribute
differences are listed but pass when they are only in provenance (strings naming versions, times, hosts, paths:
``--strict-attributes`` makes them fail too). Other files (PNG, MP4, YAML, logs) are counted, not compared: figures
and logs carry timestamps and renderer details.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5")


def hdf5_files(folder: Path) -> set[Path]:
    """Relative paths of the HDF5 files under ``folder`` (hidden temporaries and ``.partial`` files excluded)."""
    return {path.relative_to(folder) for path in folder.rglob("*") if path.suffix in HDF5_SUFFIXES
            and path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)}


def _objects(file: h5py.File) -> Iterator[tuple[str, h5py.HLObject]]:
    yield "/", file
    found: list[tuple[str, h5py.HLObject]] = []
    file.visititems(lambda name, obj: found.append((name, obj)))
    yield from found


def _same_bits(a: object, b: object) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":  # variable-length strings: compare the values
        return all(x == y for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return a.tobytes() == b.tobytes()


def compare_files(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(dataset differences, attribute differences) between two HDF5 files, one line each."""
    datasets, attributes = [], []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        objects_a, objects_b = dict(_objects(fa)), dict(_objects(fb))
        for name in sorted(objects_a.keys() ^ objects_b.keys()):
            datasets.append(f"{name}: only in {'the first' if name in objects_a else 'the second'}")
        for name in sorted(objects_a.keys() & objects_b.keys()):
            obj_a, obj_b = objects_a[name], objects_b[name]
            if isinstance(obj_a, h5py.Dataset) != isinstance(obj_b, h5py.Dataset):
                datasets.append(f"{name}: a dataset on one side only")
                continue
            if isinstance(obj_a, h5py.Dataset) and not _same_bits(obj_a[()], obj_b[()]):
                datasets.append(f"{name}: {obj_a.dtype}{obj_a.shape} vs {obj_b.dtype}{obj_b.shape}, values differ")
            for key in sorted(set(obj_a.attrs) | set(obj_b.attrs)):
                if key not in obj_a.attrs or key not in obj_b.attrs:
                    attributes.append(f"{name}@{key}: only in {'the first' if key in obj_a.attrs else 'the second'}")
                elif not _same_bits(obj_a.attrs[key], obj_b.attrs[key]):
                    attributes.append(f"{name}@{key}: {_short(obj_a.attrs[key])} vs {_short(obj_b.attrs[key])}")
    return datasets, attributes


def _short(value: object) -> str:
    text = repr(value.decode() if isinstance(value, bytes) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare_folders(first: Path, second: Path, *, strict_attributes: bool = False, show_attributes: bool = False,
                    out=sys.stdout) -> int:
    """Print every difference between the HDF5 results of two folders (attributes counted by name unless
    ``show_attributes``); 0 when their numbers are equal bitwise."""
    files_a, files_b = hdf5_files(first), hdf5_files(second)
    failed = False
    for rel in sorted(files_a ^ files_b):
        print(f"{rel}: only in {first if rel in files_a else second}", file=out)
        failed = True
    same, attribute_names = 0, Counter()
    for rel in sorted(files_a & files_b):
        datasets, attributes = compare_files(first / rel, second / rel)
        for line in datasets:
            print(f"{rel}:{line}", file=out)
        for line in attributes:
            if show_attributes:
                print(f"{rel}:{line} (attribute)", file=out)
            attribute_names[line.split("@", 1)[1].split(":", 1)[0]] += 1
        failed |= bool(datasets) or (strict_attributes and bool(attributes))
        same += not datasets
    if attribute_names:
        print("attributes that differ (name: times): " + ", ".join(f"{k}: {n}" for k, n in
                                                                  sorted(attribute_names.items())), file=out)
    others = sum(1 for p in first.rglob("*") if p.is_file() and p.suffix not in HDF5_SUFFIXES)
    print(f"{same} of {len(files_a & files_b)} HDF5 files in both folders hold bitwise-equal datasets; "
          f"{len(files_a ^ files_b)} files on one side only; {others} other files not compared", file=out)
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--strict-attributes", action="store_true", help="attribute differences fail too")
    parser.add_argument("--show-attributes", action="store_true", help="list each attribute that differs")
    args = parser.parse_args(argv)
    for folder in (args.first, args.second):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    return compare_folders(args.first, args.second, strict_attributes=args.strict_attributes,
                           show_attributes=args.show_attributes)


if __name__ == "__main__":
    sys.exit(main())
