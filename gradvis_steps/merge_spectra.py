"""Step: gather spectra files of one run (the scatter jobs' chunks) into one file.

    python -m gradvis_steps.merge_spectra --inputs spectra/chunk_1of2.h5 spectra/chunk_2of2.h5 --out spectra.h5
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import cli, step_settings

if TYPE_CHECKING:
    from .storage.spectra import Spectra


@dataclass(frozen=True, kw_only=True)
class MergeSpectraSettings:
    """Settings of the merge_spectra step: the spectra files (disjoint checkpoints) and the merged file to write."""

    inputs: tuple[str, ...]
    out: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.merge_spectra", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="spectra files (.h5) with disjoint checkpoints")
    parser.add_argument("--out", required=True, type=cli.output_file, help="merged spectra file to write (.h5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), MergeSpectraSettings, argv))
    return 0


def run(settings: MergeSpectraSettings) -> Spectra:
    """Merge ``settings.inputs`` into ``settings.out``; returns the merged spectra."""
    args = settings
    cli.check_outputs(files=(args.out,))
    from .storage.spectra import merge_spectra, save_spectra

    merged = merge_spectra(list(args.inputs))
    save_spectra(merged, args.out)
    skipped = f" ({len(merged.skipped)} skipped as non-finite)" if merged.skipped else ""
    print(f"merged {len(args.inputs)} file(s), {len(merged.entries)} checkpoints{skipped}, into {args.out}",
          file=sys.stderr)
    return merged


if __name__ == "__main__":
    sys.exit(cli.run(main))
