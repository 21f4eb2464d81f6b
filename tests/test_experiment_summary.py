"""The experiment summary page: read back with the standard library's HTML parser, its tables hold the
settings file's values, swept keys and differing settings are highlighted, hostile text stays text."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from gradvis_steps import cli, experiment_summary

HOSTILE = "<script>alert('x')</script>"


class Page(HTMLParser):
    """Tables as rows of (text, class) cells, links as (href, text), script elements counted."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[tuple[str, str | None]]]] = []
        self.links: list[tuple[str, str]] = []
        self.headings: list[str] = []
        self.scripts = 0
        self._cell: list[str] | None = None
        self._cls: str | None = None
        self._href: str | None = None
        self._link_text: list[str] = []
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._cls = [], attrs.get("class")
        elif tag == "a":
            self._href, self._link_text = attrs["href"], []
        elif tag in ("h1", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(("".join(self._cell), self._cls))
            self._cell = None
        elif tag == "a":
            self.links.append((self._href, "".join(self._link_text)))
            self._href = None
        elif tag in ("h1", "h3"):
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)
        if self._href is not None:
            self._link_text.append(data)


def settings(tmp_path: Path) -> dict:
    return {
        "name": "lr_sweep",
        "description": f"Learning rates {HOSTILE} & more",
        "runs": {
            "lr0.01": {"lr": 0.01, "epochs": 2, "model": {"name": "lenet", "widths": [6, 16]}},
            HOSTILE: {"lr": 0.1, "epochs": 2, "model": {"name": "lenet", "widths": [6, 16]}},
        },
        "variants": [
            {"swept": ["spectrum.m"], "spectrum": {"m": 20, "k": 10}, "landscape": {"resolution": 25}},
            {"swept": ["spectrum.m"], "spectrum": {"m": 30, "k": 10}, "landscape": {"resolution": 25}},
        ],
        "outputs": [
            {"path": str(tmp_path / "results" / "lr0.01" / "pca contour.png"), "kind": "figure", "run": "lr0.01",
             "label": "PCA landscape"},
            {"path": str(tmp_path / "results" / "x" / "spectra.png"), "kind": "figure", "run": HOSTILE,
             "label": f"density {HOSTILE}"},
            {"path": "javascript:alert(1)", "kind": "figure", "run": None, "label": "compare"},
        ],
    }


def test_page_tables_links_and_escaping(tmp_path):
    data = settings(tmp_path)
    path = tmp_path / "summary.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the order the workflow wrote
    out = tmp_path / "results" / "summary.html"
    assert experiment_summary.main(["--name", "lr_sweep", "--settings", str(path), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    page = Page(text)
    assert page.scripts == 0
    assert page.headings[0] == "Experiment lr_sweep"
    description = text.split('<p class="description">')[1].split("</p>")[0]
    assert "<" not in description and html.unescape(description) == data["description"]

    runs, variants = page.tables
    header = [cell for cell, _ in runs[0]]
    assert header == ["run", "lr", "epochs", "model.name", "model.widths"]
    for row, (run, values) in zip(runs[1:], data["runs"].items(), strict=True):
        assert row[0][0] == run  # the hostile run id comes back as the very same text
        assert row[1] == (str(values["lr"]), "differs")  # the only setting that differs between runs
        assert row[2] == ("2", None) and row[3] == ("lenet", None) and row[4] == ("[6, 16]", None)

    assert [cell for cell, _ in variants[0]] == ["#", "spectrum.m", "spectrum.k", "landscape.resolution"]
    assert [cls for _, cls in variants[0]] == [None, "swept", None, None]
    for number, (row, variant) in enumerate(zip(variants[1:], data["variants"], strict=True), 1):
        assert row == [(str(number), None), (str(variant["spectrum"]["m"]), "swept"), ("10", None), ("25", None)]

    # outputs grouped by run in the runs' order, shared ones last; links relative to the page's folder
    assert page.headings[1:] == ["lr0.01", HOSTILE, "(experiment-wide)"]
    assert page.links[0] == ("lr0.01/pca%20contour.png", "PCA landscape")
    assert page.links[1] == ("x/spectra.png", f"density {HOSTILE}")
    href = page.links[2][0]
    assert ":" not in href and href.endswith("javascript%3Aalert%281%29")  # a path, never a scheme
    assert not list(out.parent.glob(".summary.html*"))


def test_bad_settings_exit_2(tmp_path, capsys):
    def fails(content, name="lr_sweep") -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        capsys.readouterr()
        assert cli.run(experiment_summary.main, ["--name", name, "--settings", str(path),
                                                 "--out", str(tmp_path / "never.html")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "experiment 'lr_sweep', not --name 'other'" in fails({"name": "lr_sweep"}, name="other")
    assert "runs must map" in fails({"runs": ["a", "b"]})
    assert "variant 1: swept must be a list" in fails({"variants": [{"swept": "m"}]})
    assert "output 1 has no path" in fails({"outputs": [{"kind": "figure"}]})
    assert "not valid YAML" in fails("runs: [unclosed")
    assert "expected a mapping" in fails("- 1\n- 2\n")
    capsys.readouterr()
    assert cli.run(experiment_summary.main, ["--name", "x", "--settings", str(tmp_path / "missing.yaml"),
                                             "--out", str(tmp_path / "never.html")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "never.html").exists()


def test_empty_experiment(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("name: solo\ndescription: ''\n")
    out = tmp_path / "solo.html"
    assert experiment_summary.main(["--name", "solo", "--settings", str(path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "No runs." in text and "No analysis variants." in text and "No outputs." in text
    assert 'class="description"' not in text


@pytest.mark.parametrize("value,expected", [({"a": {"b": 1, "c": {"d": 2}}, "e": 3}, {"a.b": 1, "a.c.d": 2, "e": 3}),
                                            ({"a": {}}, {"a": {}})])
def test_flatten(value, expected):
    assert experiment_summary.flatten(value) == expected
