"""Step: an HTML page summing up one experiment (its runs, analysis variants and outputs) for snakemake --report.

    python -m gradvis_steps.experiment_summary --name lr_sweep --settings results/lr_sweep/summary.yaml \\
        --out results/lr_sweep/summary.html

The settings file (written by the workflow) holds::

    name: lr_sweep                      # must match --name
    description: "..."                  # may be empty or missing
    runs: {run-id: {training settings}, ...}
    variants:                           # one per combination of the swept analysis settings
      - {swept: [spectrum.m], spectrum: {m: 20, k: 10}, ...}
    outputs:
      - {path: ../../a/landscape.png, kind: figure, run: a, label: "PCA landscape"}

Output paths are absolute or relative to the settings file's folder (so the file reads the same wherever the
results folder is), and linked relative to the page's folder; PNG figures and mp4 videos are also embedded
(``--embed-mb``), so the page reads alone inside ``snakemake --report``. Nested settings appear as dotted columns
(``spectrum.m``). Settings that differ between runs and the swept keys of the variants are highlighted. Every
text from the settings file is HTML-escaped and every link is a percent-encoded path relative to the page, so a
name such as ``<script>`` comes out as text and a path cannot become a ``javascript:`` link. Plain HTML with
inline CSS: the page stands alone.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from . import cli, step_settings

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.differs { background: #fff4cc; }
.swept { background: #ffe08a; font-weight: bold; }
.description { white-space: pre-wrap; max-width: 60em; }
.kind { color: #666; font-size: 0.85em; }
"""
SHARED = "(experiment-wide)"


@dataclass(frozen=True, kw_only=True)
class SummarySettings:
    """Settings of the experiment_summary step: the experiment's name, the workflow's settings file, the page."""

    name: str
    settings: str
    out: str
    embed_mb: float = 50.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.experiment_summary",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--name", required=True, help="experiment name (the page title)")
    parser.add_argument("--settings", required=True, help="settings file (.yaml) written by the workflow")
    parser.add_argument("--out", required=True, type=cli.output_file, help="HTML page to write")
    parser.add_argument("--embed-mb", type=float,
                        help="embed the PNG figures and mp4 videos among the outputs into the page (so it reads alone, "
                             "e.g. inside snakemake --report) up to this many MB in all; 0: links only")
    return step_settings.use_defaults(parser, SummarySettings)


# --------------------------------------------------------------------------------------------- settings
def load_settings(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """Read and check the settings file; errors name the file and the bad part."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"settings file {os.fspath(path)} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{os.fspath(path)}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping with name, description, runs, variants, outputs; "
                         f"got {type(data).__name__}")
    if "name" in data and str(data["name"]) != name:
        raise ValueError(f"{os.fspath(path)} describes experiment {str(data['name'])!r}, not --name {name!r}")
    description = data.get("description") or ""
    runs = data.get("runs") or {}
    if not isinstance(runs, dict) or not all(isinstance(v, dict) or v is None for v in runs.values()):
        raise ValueError(f"{os.fspath(path)}: runs must map each run id to a mapping of its settings")
    variants = data.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise ValueError(f"{os.fspath(path)}: variants must be a list of mappings")
    for number, variant in enumerate(variants, 1):
        swept = variant.get("swept", [])
        if not isinstance(swept, list):
            raise ValueError(f"{os.fspath(path)}: variant {number}: swept must be a list of setting keys, "
                             f"got {swept!r}")
    outputs = data.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ValueError(f"{os.fspath(path)}: outputs must be a list of mappings with path, kind, run, label")
    for number, output in enumerate(outputs, 1):
        if not output.get("path"):
            raise ValueError(f"{os.fspath(path)}: output {number} has no path: {output!r}")
    return {"name": name, "description": str(description),
            "runs": {str(k): dict(v or {}) for k, v in runs.items()}, "variants": variants, "outputs": outputs}


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The union of the rows' keys, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _cell(tag: str, content: str, css: str | None) -> str:
    """``<tag class="css">content</tag>`` (no class when ``css`` is None); ``content`` already escaped."""
    return f'<{tag} class="{css}">{content}</{tag}>' if css else f"<{tag}>{content}</{tag}>"


def _is_swept(column: str, swept: Iterable[str]) -> bool:
    return any(column == key or column.startswith(f"{key}.") for key in map(str, swept))


def _text(value: Any) -> str:
    """A setting as escaped text: YAML's spelling for lists and mappings, empty for a missing one."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return html.escape(yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip())
    return html.escape(str(value))


def link(path: str, page_folder: Path) -> str:
    """The output's path relative to the page's folder, percent-encoded (no scheme can sneak in), escaped."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(page_folder))
    return html.escape(quote(Path(relative).as_posix(), safe="/"), quote=True)


# --------------------------------------------------------------------------------------------------- page
def runs_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per run, one column per (dotted) setting; settings whose value differs between runs marked."""
    if not runs:
        return "<p>No runs.</p>"
    flat = {run: flatten(settings) for run, settings in runs.items()}
    columns = _columns(flat.values())
    differs = {c for c in columns if len({repr(row.get(c)) for row in flat.values()}) > 1}
    head = "".join(_cell("th", html.escape(c), "differs" if c in differs else None) for c in columns)
    body = []
    for run, row in flat.items():
        cells = "".join(_cell("td", _text(row.get(c)), "differs" if c in differs else None) for c in columns)
        body.append(f"<tr><th>{html.escape(run)}</th>{cells}</tr>")
    return f'<table class="runs"><tr><th>run</th>{head}</tr>\n' + "\n".join(body) + "\n</table>"


def variants_table(variants: list[Mapping[str, Any]]) -> str:
    """One row per analysis variant; the swept settings highlighted (column heading and cells)."""
    if not variants:
        return "<p>No analysis variants.</p>"
    flat = [flatten({k: v for k, v in variant.items() if k != "swept"}) for variant in variants]
    swept = [list(variant.get("swept", [])) for variant in variants]
    columns = _columns(flat)
    swept_anywhere = {c for c in columns if any(_is_swept(c, s) for s in swept)}
    head = "".join(_cell("th", html.escape(c), "swept" if c in swept_anywhere else None) for c in columns)
    body = []
    for number, (row, keys) in enumerate(zip(flat, swept, strict=True), 1):
        cells = "".join(_cell("td", _text(row.get(c)), "swept" if _is_swept(c, keys) else None) for c in columns)
        body.append(f"<tr><th>{number}</th>{cells}</tr>")
    return f'<table class="variants"><tr><th>#</th>{head}</tr>\n' + "\n".join(body) + "\n</table>"


EMBEDDED_TYPES = {".png": ("img", "image/png"), ".mp4": ("video", "video/mp4")}


def embedded(path: str, budget: list[float]) -> str:
    """The figure or video at ``path`` inline (a data URI), while ``budget[0]`` bytes last; else nothing."""
    kind = EMBEDDED_TYPES.get(Path(path).suffix.lower())
    if kind is None or not Path(path).is_file() or Path(path).stat().st_size > budget[0]:
        return ""
    data = Path(path).read_bytes()
    budget[0] -= len(data)
    uri = f"data:{kind[1]};base64,{base64.b64encode(data).decode()}"
    if kind[0] == "img":
        return f'<br><img src="{uri}" alt="{html.escape(Path(path).name)}" style="max-width: 48em">'
    return f'<br><video controls src="{uri}" style="max-width: 48em"></video>'


def outputs_list(outputs: list[Mapping[str, Any]], runs: Iterable[str], page_folder: Path,
                 embed_bytes: float = 0.0) -> str:
    """The outputs grouped by run (runs in the order of the runs table, then others, then shared ones); PNG
    figures and mp4 videos inline while ``embed_bytes`` last."""
    budget = [embed_bytes]
    if not outputs:
        return "<p>No outputs.</p>"
    groups: dict[str, list[Mapping[str, Any]]] = {run: [] for run in runs}
    for output in outputs:
        run = output.get("run")
        groups.setdefault(SHARED if run in (None, "") else str(run), []).append(output)
    if SHARED in groups:
        groups[SHARED] = groups.pop(SHARED)  # last
    parts = []
    for run, items in groups.items():
        if not items:
            continue
        entries = []
        for output in items:
            path = str(output["path"])
            label = output.get("label") or Path(path).name
            kind = f' <span class="kind">({html.escape(str(output["kind"]))})</span>' if output.get("kind") else ""
            inline = embedded(path, budget)
            entries.append(f'<li><a href="{link(path, page_folder)}">{html.escape(str(label))}</a>{kind}{inline}</li>')
        parts.append(f'<h3>{html.escape(run)}</h3>\n<ul class="outputs">\n' + "\n".join(entries) + "\n</ul>")
    return "\n".join(parts)


def render_page(settings: Mapping[str, Any], page_folder: Path, embed_bytes: float = 0.0) -> str:
    """The whole page: title, description, runs, analysis variants, outputs by run."""
    title = html.escape(settings["name"])
    description = (f'<p class="description">{html.escape(settings["description"])}</p>'
                   if settings["description"].strip() else "")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Experiment {title}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Experiment {title}</h1>",
        description,
        f"<h2>Runs ({len(settings['runs'])})</h2>",
        runs_table(settings["runs"]),
        f"<h2>Analysis variants ({len(settings['variants'])})</h2>",
        variants_table(settings["variants"]),
        "<h2>Outputs</h2>",
        outputs_list(settings["outputs"], settings["runs"], page_folder, embed_bytes),
        "</body></html>",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), SummarySettings, argv))
    return 0


def run(settings_: SummarySettings) -> Path:
    """The HTML summary page of one experiment, written to ``settings_.out``; returns its path."""
    args = settings_
    cli.check_outputs(files=(args.out,))
    from .storage.atomic import atomic_path

    settings = load_settings(args.settings, args.name)
    base = Path(args.settings).parent
    for output in settings["outputs"]:
        output["path"] = os.fspath(base / output["path"])  # an absolute path stays as it is
    out = Path(args.out)
    if not args.embed_mb >= 0:
        raise ValueError(f"--embed-mb must be >= 0, got {args.embed_mb}")
    page = render_page(settings, out.parent, args.embed_mb * 1e6)
    with atomic_path(out, ".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"wrote the summary of experiment {args.name!r} ({len(settings['runs'])} run(s), "
          f"{len(settings['variants'])} variant(s), {len(settings['outputs'])} output(s)) to {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
