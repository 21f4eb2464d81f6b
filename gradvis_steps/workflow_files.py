"""Where the workflow's files are: the copy packaged in a wheel, or the repository of a clone (editable install).

A wheel carries ``Snakefile``, ``workflow/``, ``config/``, ``profiles/`` and ``envs/`` as ``gradvis_steps/_workflow``
(``setup.py`` copies them at build time); a clone or an editable install has no such folder and uses the repository's
own files. Both layouts are the same, so every path below is relative to the one root.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "_workflow"


def workflow_root() -> Path:
    """The folder holding ``Snakefile``, ``workflow/``, ``config/``, ``profiles/`` and ``envs/``."""
    if (PACKAGED / "Snakefile").is_file():
        return PACKAGED
    root = PACKAGED.parents[1]
    if not (root / "Snakefile").is_file():
        raise FileNotFoundError(f"the gradvis workflow is neither packaged ({PACKAGED}) nor beside the package "
                                f"({root}): reinstall gradvis from its wheel or repository")
    return root


def snakefile() -> Path:
    """The workflow's Snakefile (for ``snakemake -s`` or a Snakemake ``module``)."""
    return workflow_root() / "Snakefile"


def default_config() -> Path:
    """The embedded default config every run's config is merged over."""
    return workflow_root() / "config" / "config.yaml"


def profile(name: str) -> Path | None:
    """A profile shipped with the workflow (``default``, ``slurm``), or None."""
    path = workflow_root() / "profiles" / name
    return path if (path / "config.yaml").is_file() else None
