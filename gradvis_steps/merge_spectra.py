"""Step: gather spectra files of one run (the scatter jobs' chunks) into one file.

    python -m gradvis_steps.merge_spectra --inputs spectra/chunk_1of2.h5 spectra/chunk_2of2.h5 --out spectra.h5
"""

from __future__ import annotations

import argparse
import sys

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.merge_spectra", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="spectra files (.h5) with disjoint checkpoints")
    parser.add_argument("--out", required=True, type=cli.output_file, help="merged spectra file to write (.h5)")
    args = parser.parse_args(argv)
    from .storage.spectra import merge_spectra, save_spectra

    merged = merge_spectra(args.inputs)
    save_spectra(merged, args.out)
    skipped = f" ({len(merged.skipped)} skipped as non-finite)" if merged.skipped else ""
    print(f"merged {len(args.inputs)} file(s), {len(merged.entries)} checkpoints{skipped}, into {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
