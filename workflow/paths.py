"""Where the workflow writes: the kinds of analysis job and the path of every planned file, each written once.

A path is a template under the results folder in the rules' wildcard syntax (``{run}/spectra/{sid}/spectra.h5``):
the rules take their ``output:``/``input:`` patterns from here (prefixed with the results folder), the planner fills
the same templates with a job's values to name its targets, so renaming a folder or a file is one edit here.
Pure Python (no Snakemake objects), imported by the planner, the rules and the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter


@dataclass(frozen=True)
class JobKind:
    """A kind of analysis job: its name in the plan (and in each settings.yaml), the rules' wildcard for its ids,
    and its folder (one per job id) under the results folder."""

    name: str
    wildcard: str
    folder: str


#: every kind of analysis job, in the plan's order; the train/import jobs of a run are not analyses (no id)
JOB_KINDS = (
    JobKind("eigendirections", "eid", "{run}/eigendirections/{eid}"),
    JobKind("directions", "did", "{run}/directions/{did}"),
    JobKind("landscape", "lid", "{run}/landscape/{lid}"),
    JobKind("spectra", "sid", "{run}/spectra/{sid}"),
    JobKind("video", "vid", "{run}/videos/{vid}"),
    JobKind("moving", "mid", "{run}/moving/{mid}"),
    JobKind("interpolation", "iid", "{run}/interpolation/{other}/{iid}"),
    JobKind("interpolation_video", "ivid", "{run}/interpolation/{other}/{iid}/videos/{ivid}"),
)
KIND = {kind.name: kind for kind in JOB_KINDS}

#: folders that are not an analysis job's: a run's (trajectory, train/import logs) and an experiment's (its page)
FOLDERS = {"run": "{run}", "experiment": "experiments/{experiment}", **{kind.name: kind.folder for kind in JOB_KINDS}}

#: every planned file or folder: (the folder it is in, its name there); ``{dims}``, ``{log}``, ``{i}``/``{n}`` and
#: ``{what}`` are the wildcards of the rules that write several of one kind
FILES = {
    "trajectory": ("run", "trajectory.h5"),
    "eigendirections": ("eigendirections", "eigendirections.h5"),
    "directions": ("directions", "directions.h5"),
    "landscape": ("landscape", "landscape_{dims}d.h5"),
    "contour": ("landscape", "contour{log}.png"),
    "surface": ("landscape", "surface{log}.png"),
    "vtk": ("landscape", "surface.vtk"),
    "line": ("landscape", "line{log}.png"),
    "spectrum_chunk": ("spectra", "chunk_{i}of{n}.h5"),
    "spectra": ("spectra", "spectra.h5"),
    "densities": ("spectra", "densities"),
    "moving_planes": ("moving", "landscapes"),
    "training_frames": ("video", "frames"),
    "training_video": ("video", "training.mp4"),
    "interpolation_line": ("interpolation", "line.h5"),
    "interpolation_spectra": ("interpolation", "spectra.h5"),
    "plane_directions": ("interpolation", "plane_directions.h5"),
    "plane": ("interpolation", "plane.h5"),
    "interpolation_line_plot": ("interpolation", "line.png"),
    "plane_contour": ("interpolation", "plane_contour.png"),
    "plane_surface": ("interpolation", "plane_surface.png"),
    "interpolation_frames": ("interpolation_video", "frames"),
    "interpolation_video": ("interpolation_video", "interpolation.mp4"),
    "comparison": ("experiment", "compare/{run}/{what}.png"),
    "experiment_settings": ("experiment", "settings.yaml"),
    "summary": ("experiment", "summary.html"),
}
#: beside every analysis output: what defines its folder (workflow/rules/settings.smk writes it)
SETTINGS = "settings.yaml"


def template(name: str) -> str:
    """The template of a planned file or folder (a key of FILES)."""
    folder, file = FILES[name]
    return f"{FOLDERS[folder]}/{file}"


def settings_template(kind: str) -> str:
    """The template of an analysis folder's settings.yaml."""
    return f"{FOLDERS[kind]}/{SETTINGS}"


def fill(pattern: str, **values: object) -> str:
    """A template with every wildcard given a value; a wildcard left without one is a KeyError naming it."""
    return pattern.format(**{key: values[key] for key in wildcards(pattern)})


def partial(pattern: str, **values: object) -> str:
    """A template with the given wildcards filled and the others kept (a rule's input of one ``dims``, or the
    trajectory of the ``{other}`` run)."""
    return pattern.format(**{key: values.get(key, f"{{{key}}}") for key in wildcards(pattern)})


def path(name: str, **values: object) -> str:
    """The concrete path (under the results folder) of a planned file or folder (a key of FILES), e.g.
    ``path("spectra", run="r", sid="k2-...")`` -> ``r/spectra/k2-.../spectra.h5``."""
    return fill(template(name), **values)


def wildcards(pattern: str) -> list[str]:
    """The wildcard names of a template, in order."""
    return [field for _, field, _, _ in Formatter().parse(pattern) if field is not None]


def run_subfolders() -> dict[str, str]:
    """``{subfolder: kind}`` for the analysis kinds whose folder is ``{run}/<subfolder>/{<wildcard>}`` (one
    settings rule writes their settings.yaml, with the subfolder as a wildcard)."""
    found = {}
    for kind in JOB_KINDS:
        match = re.fullmatch(r"\{run\}/([A-Za-z0-9_.-]+)/\{(\w+)\}", kind.folder)
        if match and match.group(2) == kind.wildcard:
            found[match.group(1)] = kind.name
    return found
