"""The ``gradvis`` command: the packaged workflow run from a folder of one's own.

``gradvis init [DIR] [--example]`` writes a config (and an example model and dataset module) into a folder;
``gradvis run [CONFIG]`` runs the workflow with that folder as Snakemake's working directory (results and logs land
there), the folder on PYTHONPATH (its modules import as entry points) and this installation's interpreter first on
PATH (every job's ``python`` is this one; no activated virtualenv needed). ``check``, ``report``, ``unlock`` and
``path`` complete it. Problems found before Snakemake starts are one line, ``gradvis: error: ...``, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from . import workflow_files
from .entry_points import load_entry_point

PROG = "gradvis"
CONFIG = Path("config") / "config.yaml"  # Snakemake's convention for a project folder (what `init` writes)
TEMPLATE = Path(__file__).resolve().parent / "project_template"
SLURM_PLUGIN = "snakemake_executor_plugin_slurm"


class CommandError(Exception):
    """A problem the user can fix, printed as one line ``gradvis: error: ...`` (exit status 2)."""


def main(argv: list[str] | None = None) -> int:
    """Entry of the console script; returns the exit status (Snakemake's own for the subcommands that run it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after `--` goes to snakemake unchanged
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = _parser()
    args = parser.parse_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"'{args.command}' passes no options to snakemake (got: -- {' '.join(extra)})")
    try:
        return args.handler(args, extra)
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The gradvis workflow (loss landscapes, Hessian spectra, "
                                     "trajectories) run from a folder of your own: gradvis init, then gradvis run.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="write a commented config (and with --example a model and dataset)")
    init.add_argument("folder", nargs="?", type=Path, default=Path("."), help="the project folder (default: here)")
    init.add_argument("--example", action="store_true",
                      help="a tiny example instead: mymodels.py, mydata.py and a config using them")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(handler=_init)

    def snakemake_command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=f"{text}. Options after `--` go to snakemake.")
        sub.add_argument("config", nargs="?", type=Path, default=None,
                         help=f"config file, merged over the embedded default (default: {CONFIG})")
        sub.set_defaults(takes_extra=True)
        return sub

    run = snakemake_command("run", "run the workflow in this folder (results and logs land here)")
    run.add_argument("--cores", default=None, help="local cores for the jobs (default: all; none with a --profile)")
    run.add_argument("--profile", default=None,
                     help="a Snakemake profile: a folder, or one of gradvis's (slurm: submit jobs with sbatch)")
    run.set_defaults(handler=_run)

    report = snakemake_command("report", "the HTML report of the results in this folder")
    report.add_argument("--out", type=Path, default=None, help="the report file (default: <results>/report.html)")
    report.set_defaults(handler=_report)

    unlock = snakemake_command("unlock", "remove the locks a killed run left: Snakemake's in this folder and "
                               "gradvis's in the results folder (<results>/.gradvis.lock)")
    unlock.set_defaults(handler=_unlock)

    check = commands.add_parser("check", help="check config files as the workflow will, without running anything")
    check.add_argument("configs", nargs="+", type=Path, help="config files (YAML)")
    check.add_argument("--no-preflight", action="store_true",
                       help="only the schema and the planner (no datasets, models or checkpoint counts)")
    check.set_defaults(handler=_check)

    path = commands.add_parser("path", help="where the workflow's files are (e.g. for a Snakemake module)")
    which = path.add_mutually_exclusive_group()
    which.add_argument("--root", action="store_true", help="the folder holding Snakefile, workflow/, config/, ...")
    which.add_argument("--config", action="store_true", help="the embedded default config")
    path.set_defaults(handler=_path)
    return parser


def _init(args: argparse.Namespace, extra: list[str]) -> int:
    folder = args.folder.resolve()
    config_text = (TEMPLATE / "example.yaml").read_text() if args.example else _commented_default()
    files = {folder / CONFIG: config_text}
    if args.example:
        files.update({folder / name: (TEMPLATE / name).read_text() for name in ("mymodels.py", "mydata.py")})
    existing = [str(path) for path in files if path.exists()]
    if existing and not args.force:
        raise CommandError(f"{', '.join(existing)} exist(s); keep it, or overwrite with --force")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
        print(f"wrote {path}")
    print(f"next: cd {folder} && {PROG} run --cores 2")
    return 0


def _commented_default() -> str:
    return ("# gradvis config (written by `gradvis init`): merged over the embedded default, which is the copy below;\n"
            "# delete what you keep as it is. Every key is explained in the repository's config/README.md.\n"
            "# Custom datasets and models: {name: custom, entry_point: \"mymodule:function\", ...} with mymodule.py\n"
            "# in this folder (`gradvis init --example` writes one of each).\n\n"
            + workflow_files.default_config().read_text())


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    folder = Path.cwd()
    config = _config_path(args.config, folder)
    profile = _profile_args(args.profile, extra)
    _check_results_lock(config, folder, extra)
    _precheck(config, folder)
    cores = args.cores if args.cores is not None else (None if args.profile else "all")
    return _snakemake(folder, config, [*(["--cores", str(cores)] if cores else []), *profile, *extra])


def _report(args: argparse.Namespace, extra: list[str]) -> int:
    folder = Path.cwd()
    config = _config_path(args.config, folder)
    out = args.out
    if out is None:
        out = _results_folder(config, folder) / "report.html"
    # reads the results: a run that owns the folder meanwhile is reported, not a reason to stop
    return _snakemake(folder, config, ["--cores", "1", "--report", str(out), *extra], {"GRADVIS_LOCK": "warn"})


def _unlock(args: argparse.Namespace, extra: list[str]) -> int:
    folder = Path.cwd()
    config = _config_path(args.config, folder)
    results = _results_folder(config, folder)
    lock = _workflow_module("results_lock")
    record = lock.clear(results)
    if record is not None:
        alive = lock.alive(record)
        note = " (that process is still running: stop it, or two runs will write the folder)" if alive else ""
        print(f"removed the lock of {(folder / results).resolve()} held by {lock.describe(record)}{note}")
    return _snakemake(folder, config, ["--cores", "1", "--unlock", *extra], {"GRADVIS_LOCK": "warn"})


def _check_results_lock(config: Path, folder: Path, extra: list[str]) -> None:
    """A run on a results folder that another run owns stops here at once (the workflow would stop it too, after
    Snakemake has started): not for a dry run, nor with force_unlock, which the workflow handles."""
    dry = any(word in ("-n", "--dry-run", "--dryrun") or (word[:1] == "-" and word[1:2] != "-" and "n" in word)
              for word in extra)
    if dry or any(word.replace(" ", "").startswith("force_unlock=") for word in extra):
        return
    try:
        results = folder / _results_folder(config, folder)
    except (OSError, _workflow_module("experiments").ConfigError, KeyError, TypeError):
        return  # the config's own problem: the pre-check names it
    lock = _workflow_module("results_lock")
    record = lock.holder(results)
    if record is not None:
        raise CommandError(lock.in_use_message(results, record))


def _results_folder(config: Path, folder: Path) -> Path:
    """The results folder a run with ``config`` in ``folder`` writes (as given: relative to ``folder``)."""
    deep_merge = _workflow_module("experiments").deep_merge
    return Path(deep_merge(_base_config(config, folder), _load(config))["results"])


def _check(args: argparse.Namespace, extra: list[str]) -> int:
    """Each file as ``workflow/check_config.py`` checks it, over the same base config a run in this folder uses."""
    folder = Path.cwd()
    _require_snakemake()
    check_config = _workflow_module("check_config")
    _on_path(folder)
    failed = False
    for path in args.configs:
        try:
            print(check_config.check(path, _base_config(path, folder), not args.no_preflight))
        except (check_config.ConfigError, OSError) as error:
            print(f"{PROG}: error: {path}: {error}", file=sys.stderr)
            failed = True
    return 2 if failed else 0


def _path(args: argparse.Namespace, extra: list[str]) -> int:
    if args.root:
        print(workflow_files.workflow_root())
    elif args.config:
        print(workflow_files.default_config())
    else:
        print(workflow_files.snakefile())
    return 0


def _config_path(config: Path | None, folder: Path) -> Path:
    """The run's config file, absolute; a missing one is a CommandError saying where it was looked for."""
    _require_snakemake()
    if config is None:
        if not (folder / CONFIG).is_file():
            raise CommandError(f"no config: {folder / CONFIG} does not exist; write one with `{PROG} init` "
                               f"(or `{PROG} init --example`), or name yours: {PROG} run FILE")
        return (folder / CONFIG).resolve()
    path = config if config.is_absolute() else folder / config
    if not path.is_file():
        raise CommandError(f"config file {config} not found (looked for {path})")
    return path.resolve()


def _base_config(config: Path, folder: Path) -> dict[str, Any]:
    """What ``config`` is merged over in a run: the embedded default, and the folder's ``config/config.yaml`` when
    that is another file (Snakemake reads it through the Snakefile's ``configfile:``; ``--configfile`` wins)."""
    deep_merge = _workflow_module("experiments").deep_merge
    base = _load(workflow_files.default_config())
    own = folder / CONFIG
    if own.is_file() and own.resolve() != config.resolve():
        base = deep_merge(base, _load(own))
    return base


def _load(path: Path) -> dict[str, Any]:
    """A config file through the workflow's own reader (a YAML error names its line)."""
    return _workflow_module("preflight").load_config_file(path)


def _precheck(config: Path, folder: Path) -> None:
    """The workflow's checks (schema, plan, pre-flight) in this process, so that their first problem is one line
    here instead of a Snakemake traceback: a config error, an entry point that does not import."""
    check_config = _workflow_module("check_config")
    _on_path(folder)
    try:
        base = _base_config(config, folder)
        check_config.check(config, base)
        _import_custom_models(check_config, config, base)
    except (check_config.ConfigError, OSError) as error:
        raise CommandError(f"{config}: {error}") from None


def _import_custom_models(check_config: Any, config: Path, base: dict[str, Any]) -> None:
    """Each run's custom model entry point imports. The pre-flight builds a model only for a dataset of known shape,
    so with a custom dataset a model module that does not import would fail only in the train job."""
    merged = _workflow_module("experiments").deep_merge(base, _load(config))
    plan = check_config.build_plan(merged, check_config.SCHEMA, check_config.validate)
    for run in plan.runs.values():
        key = run["settings"]["model"]
        spec = run["execution"]["models"][key]
        if spec.get("name") == "custom" and spec.get("entry_point"):
            try:
                load_entry_point(spec["entry_point"])
            except ValueError as error:
                raise check_config.ConfigError(f"models.{key} {spec}: {error}") from None


def _profile_args(name: str | None, extra: list[str]) -> list[str]:
    """``--profile PATH`` for a profile folder or one of gradvis's; a SLURM executor needs its plugin installed."""
    executor = _option(extra, "--executor", "-e")
    args: list[str] = []
    if name is not None:
        path = Path(name)
        if not (path / "config.yaml").is_file():
            path = workflow_files.profile(name)
            if path is None:
                shipped = sorted(p.name for p in (workflow_files.workflow_root() / "profiles").iterdir())
                raise CommandError(f"profile {name!r} is neither a folder with a config.yaml nor one of gradvis's "
                                   f"profiles ({', '.join(shipped)})")
        args = ["--profile", str(path.resolve())]
        executor = executor or _profile_executor(path)
    if executor == "slurm" and not slurm_plugin_installed():
        raise CommandError(f"the slurm executor{f' (profile {name})' if name else ''} needs the plugin "
                           f"snakemake-executor-plugin-slurm, which {sys.executable} cannot import: "
                           f"{Path(sys.executable).parent / 'pip'} install snakemake-executor-plugin-slurm")
    return args


def slurm_plugin_installed() -> bool:
    """Whether this interpreter can import Snakemake's SLURM executor plugin (``--profile slurm`` needs it)."""
    return importlib.util.find_spec(SLURM_PLUGIN) is not None


def _profile_executor(path: Path) -> str | None:
    try:
        settings = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return settings.get("executor") if isinstance(settings, dict) else None


def _option(words: list[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among snakemake's options, or None."""
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def snakemake_installed() -> bool:
    """Whether this interpreter can import Snakemake (the package's ``workflow`` extra)."""
    return importlib.util.find_spec("snakemake") is not None


def _require_snakemake() -> None:
    """run, report and unlock start Snakemake, and check validates with its schema validator."""
    if not snakemake_installed():
        raise CommandError(f"this needs Snakemake, which {sys.executable} cannot import: install gradvis with its "
                           "workflow extra, e.g. pip install 'gradvis[workflow]' (or pip install snakemake)")


def _snakemake(folder: Path, config: Path, options: list[str], env_extra: dict[str, str] | None = None) -> int:
    """Snakemake of this interpreter on the packaged Snakefile, in ``folder``; its exit status."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's bin/python is a link out of the venv
    env = {**os.environ, **(env_extra or {})}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")]).rstrip(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow_files.snakefile()),
               "--directory", str(folder), "--configfile", str(config), *options]
    if shutil.which("python", path=env["PATH"]) is None:  # e.g. a python3-only installation: jobs call `python`
        raise CommandError(f"no `python` in {bin_dir} for the jobs to run; link it: ln -s {sys.executable} "
                           f"{bin_dir / 'python'}")
    return subprocess.run(command, cwd=folder, env=env).returncode


def _workflow_module(name: str) -> Any:
    """A module of the workflow's ``workflow/`` folder (check_config, preflight, experiments), imported once."""
    path = str(workflow_files.workflow_root() / "workflow")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


def _on_path(folder: Path) -> None:
    """The folder's modules import as entry points here, as in the jobs (PYTHONPATH)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
