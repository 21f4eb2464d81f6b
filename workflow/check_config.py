"""Check config files as the workflow will, without Snakemake: ``python workflow/check_config.py FILE...``.

Each file is merged over ``config/config.yaml`` (as ``snakemake --configfile FILE`` does), validated against the
schema, planned and pre-flight checked. Exit 0 and a one-line summary per file, or 1 and the first problem of each
file. Unlike Snakemake's own reader, a YAML syntax error is reported with its file, line and column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from experiments import ConfigError, build_plan, deep_merge, load_schema, validate_variant  # noqa: E402
from preflight import load_config_file, preflight  # noqa: E402

ROOT = HERE.parent
#: the schema and the variant check, as build_plan takes them (gradvis_steps.command plans through this module)
SCHEMA = load_schema()
validate = validate_variant


def check(path: Path, base: dict, run_preflight: bool = True) -> str:
    """A line saying what the file plans; ConfigError for the first problem."""
    config = deep_merge(base, load_config_file(path))  # nested mappings merged, as Snakemake does
    plan = build_plan(config, SCHEMA, validate)
    if run_preflight:
        preflight(plan)
    jobs = sum(len(kind) for kind in plan.jobs.values())
    external = f", {len(plan.external)} external run(s)" if plan.external else ""
    return (f"{path}: ok: {len(plan.experiments)} experiment(s), {len(plan.runs)} run(s){external}, {jobs} analysis "
            "folder(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python workflow/check_config.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="config files (YAML)")
    parser.add_argument("--no-preflight", action="store_true",
                        help="only the schema and the planner (no datasets, models or checkpoint counts)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            base = load_config_file(ROOT / "config" / "config.yaml")
            print(check(path, base, not args.no_preflight))
        except (ConfigError, OSError) as error:
            print(f"{path}: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
