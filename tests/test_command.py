"""The ``gradvis`` command as a user gets it: a wheel installed into a fresh virtualenv outside the repository, run
from an empty folder of their own with no virtualenv active; the packaged workflow as a Snakemake module; and the
command's one-line errors.

The fresh venv holds only the wheel (``--no-deps``): its heavy dependencies (torch, snakemake, h5py, ...) come from
this test's own environment through a ``.pth`` file, since installing torch again would take minutes and a network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import h5py
import numpy as np
import pytest

from gradvis_steps import command, entry_points

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".pytest_cache", ".hypothesis", ".ruff_cache"}


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (virtualenvs and tool caches left out)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not (Path(dirpath, d) / "pyvenv.cfg").exists()]
        for name in filenames:
            path = Path(dirpath, name)
            stat = path.lstat()
            files[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _user_env(extra_path: str | None = None) -> dict[str, str]:
    """A user's shell: no virtualenv active, no venv's bin on PATH, no PYTHONPATH (which would shadow the wheel)."""
    venv_bins = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in venv_bins]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(([extra_path] if extra_path else []) + path)
    return env


def _build_isolation() -> list[str]:
    """Build with this environment's setuptools where it is new enough (offline, fast); else let pip fetch the
    build requirements of pyproject.toml (a venv of Python 3.12+ has no setuptools of its own)."""
    try:
        import setuptools
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 77 else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The fresh venv with the wheel built from this repository's files (built in a copy: pip's in-tree build would
    write build/ and *.egg-info into the repository)."""
    work = tmp_path_factory.mktemp("install")
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git to list the repository's files")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / "src" / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_build_isolation(), "-q", ".",
                            "-w", str(work / "dist")], cwd=work / "src", capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = next((work / "dist").glob("gradvis-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, env=_user_env())
    fresh = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(fresh) / "gradvis_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    return venv


def _installed_package(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages/gradvis_steps"))


def _gradvis(venv: Path, folder: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "gradvis"), *args], cwd=folder, env=_user_env(), capture_output=True,
                          text=True, timeout=timeout)


def _check_results(folder: Path, venv: Path) -> h5py.File:
    """The example's run, trained by the installed package on the folder's own model and dataset."""
    [path] = (folder / "results").glob("*/trajectory.h5")  # the example config's one run
    trajectory = h5py.File(path, "r")
    config = trajectory.attrs["config"]
    assert '"entry_point": "mydata:blobs"' in config and '"entry_point": "mymodels:mlp"' in config
    # 128 samples in batches of 32 for 2 epochs: 8 iterations, a checkpoint after each
    assert list(trajectory["iteration"][:]) == list(range(9))
    assert trajectory.attrs["provenance"].split('"command": ["')[1].startswith(str(_installed_package(venv)))
    for method in ("random", "pca"):
        assert len(list((path.parent / "landscape").glob(f"{method}-r3-*/contour.png"))) == 1
    assert (folder / "results" / "experiments" / "main" / "summary.html").is_file()
    return trajectory


def test_wheel_init_run_and_module_from_a_folder_of_ones_own(installed, tmp_path):
    package = _installed_package(installed)
    assert (package / "_workflow" / "Snakefile").is_file()  # the workflow travels in the wheel
    package_before, repository_before = _listing(package), _listing(ROOT)

    project = tmp_path / "project"
    project.mkdir()
    result = _gradvis(installed, project, "init", "--example")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in project.iterdir()) == ["config", "mydata.py", "mymodels.py"]
    result = _gradvis(installed, project, "run", "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"(\d+) of \1 steps \(100%\) done", result.stderr), result.stderr[-3000:]
    ran = _check_results(project, installed)

    # The same config through a Snakefile of one's own that uses gradvis as a Snakemake module.
    snakefile = _gradvis(installed, project, "path").stdout.strip()
    assert Path(snakefile) == package / "_workflow" / "Snakefile"
    module = tmp_path / "module"
    module.mkdir()
    for name in ("config", "mydata.py", "mymodels.py"):
        (shutil.copytree if name == "config" else shutil.copy)(project / name, module / name)
    (module / "Snakefile").write_text(f'configfile: "config/config.yaml"\nmodule gradvis:\n    snakefile: '
                                      f'"{snakefile}"\n    config: config\nuse rule * from gradvis\n')
    result = subprocess.run([str(installed / "bin" / "python"), "-m", "snakemake", "--cores", "2"], cwd=module,
                            env=_user_env(str(installed / "bin")), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = _check_results(module, installed)
    # the same training, bitwise, whichever way the workflow was started
    assert np.array_equal(ran["params"][:], again["params"][:])

    assert _listing(package) == package_before, "the run wrote into the installed package"
    assert _listing(ROOT) == repository_before, "the run wrote into the repository"


def test_an_entry_point_that_does_not_import_is_one_line_saying_where_it_looked(installed, tmp_path):
    assert _gradvis(installed, tmp_path, "init", "--example").returncode == 0
    config = tmp_path / "config" / "config.yaml"
    config.write_text(config.read_text().replace("mydata:blobs", "mysets:blobs"))
    result = _gradvis(installed, tmp_path, "run", "--cores", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gradvis: error: ")
    assert "cannot import module 'mysets'" in result.stderr
    assert f"searched the folder {tmp_path}, PYTHONPATH=(not set)" in result.stderr
    assert not (tmp_path / "results").exists()
    # a model module that does not import, beside a custom dataset (whose shape the pre-flight cannot know)
    config.write_text(config.read_text().replace("mysets:blobs", "mydata:blobs").replace("mymodels:", "mynets:"))
    result = _gradvis(installed, tmp_path, "run", "--cores", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "models.mlp" in result.stderr and "cannot import module 'mynets'" in result.stderr
    assert f"searched the folder {tmp_path}" in result.stderr and not (tmp_path / "results").exists()


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    """An empty folder as the working directory; sys.path and the user's modules restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("mydata", "mymodels"):
        sys.modules.pop(name, None)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert command.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradvis: error: "), err
    return err


def test_a_missing_config_is_one_line(in_folder, capsys):
    err = _one_line_error(capsys, ["run"])
    assert f"no config: {in_folder / 'config' / 'config.yaml'} does not exist" in err and "gradvis init" in err
    err = _one_line_error(capsys, ["run", "mine.yaml", "--cores", "1"])
    assert f"config file mine.yaml not found (looked for {in_folder / 'mine.yaml'})" in err
    assert not (in_folder / ".snakemake").exists()


def test_profile_slurm_without_its_plugin_is_one_line(in_folder, capsys, monkeypatch):
    assert command.main(["init", "--example"]) == 0
    monkeypatch.setattr(command, "slurm_plugin_installed", lambda: False)
    err = _one_line_error(capsys, ["run", "--profile", "slurm"])
    assert "the slurm executor (profile slurm) needs the plugin snakemake-executor-plugin-slurm" in err
    assert "pip install snakemake-executor-plugin-slurm" in err
    err = _one_line_error(capsys, ["run", "--cores", "1", "--", "--executor", "slurm"])
    assert "the slurm executor needs the plugin" in err
    err = _one_line_error(capsys, ["run", "--profile", "nowhere"])
    assert "profile 'nowhere' is neither a folder with a config.yaml nor one of gradvis's profiles (default, slurm)" \
        in err


def test_init_keeps_files_and_check_reads_the_folder(in_folder, capsys):
    assert command.main(["init", "--example"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, ["init"])
    assert f"{in_folder / 'config' / 'config.yaml'} exist(s); keep it, or overwrite with --force" in err
    # check: the example's entry points import from this folder; the plan has its one run
    assert command.main(["check", "config/config.yaml"]) == 0
    assert capsys.readouterr().out.startswith("config/config.yaml: ok: 1 experiment(s), 1 run(s), ")
    (in_folder / "bad.yaml").write_text("landscape: {resolution: 1}\n")
    err = _one_line_error(capsys, ["check", "bad.yaml"])
    assert "gradvis: error: bad.yaml: " in err and "resolution" in err
    # the plain init: the embedded default config, commented, which checks as it is
    assert command.main(["init", "--force"]) == 0
    text = (in_folder / "config" / "config.yaml").read_text()
    assert text.endswith((ROOT / "config" / "config.yaml").read_text()) and text.startswith("# gradvis config")
    capsys.readouterr()
    assert command.main(["check", "config/config.yaml"]) == 0, capsys.readouterr().err


def test_an_entry_point_outside_the_path_says_the_folder_was_not_searched(in_folder, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(in_folder))])
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    (in_folder / "mynets_x.py").write_text("def net(): pass\n")
    with pytest.raises(ValueError, match="cannot import module 'mynets_x'") as error:
        entry_points.load_entry_point("mynets_x:net")
    assert (f"searched PYTHONPATH=/nowhere and the installed packages, not the folder {in_folder}"
            in str(error.value))
    # a module that is found but fails on an import of its own: Python's error, nothing about where it looked
    (in_folder / "broken_x.py").write_text("import no_such_dependency_x\n")
    monkeypatch.syspath_prepend(str(in_folder))
    with pytest.raises(ValueError, match="No module named 'no_such_dependency_x'\\)$"):
        entry_points.load_entry_point("broken_x:net")


def test_without_snakemake_is_one_line(in_folder, capsys, monkeypatch):
    assert command.main(["init", "--example"]) == 0
    monkeypatch.setattr(command, "snakemake_installed", lambda: False)
    for argv in (["run"], ["report"], ["unlock"], ["check", "config/config.yaml"]):
        err = _one_line_error(capsys, argv)
        assert f"this needs Snakemake, which {sys.executable} cannot import" in err
        assert "pip install 'gradvis[workflow]'" in err
