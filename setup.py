"""Build step beside pyproject.toml: the workflow's files travel in the wheel as package data.

``Snakefile``, ``workflow/``, ``config/``, ``profiles/`` and ``envs/`` stay where they are in the repository
(the clone's entry); ``build_py`` copies them into the built package as ``gradvis_steps/_workflow/``, so an
installed wheel runs the same files (``gradvis_steps.workflow_files.workflow_root``). An editable install copies
nothing: it uses the repository's files in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "envs"]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake", "*.partial")


class BuildPyWithWorkflow(build_py):
    """build_py, then the workflow's files into ``<build_lib>/gradvis_steps/_workflow``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "gradvis_steps" / "_workflow"
        if target.exists():
            shutil.rmtree(target)
        for name in WORKFLOW_FILES:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=SKIP)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithWorkflow})
