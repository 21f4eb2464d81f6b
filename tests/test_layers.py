"""The package's layers, read from its source with ``ast``: no import loops, and ``core`` below the rest.

Every import statement counts, at any level: module top, inside functions, under ``if TYPE_CHECKING``. The graph
links a module to the modules its statements name (``from . import x`` names the submodule ``x``; ``from .m import
f`` names ``m``); the package ``__init__`` files an import runs on the way are not counted, since a package that
imports its own submodules is how packages work.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import gradvis_steps

PACKAGE = Path(gradvis_steps.__file__).parent

def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the import statements of module ``name`` (file ``path``) name, at every level."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this module's package, 2 its parent, ...
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
            named.update(submodules)
            if len(submodules) < len(node.names):  # names defined in the module itself
                named.add(source)
    return {other for other in named if other in modules and other != name}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports."""
    modules = modules_of(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_loop(graph: dict[str, set[str]], allowed: set[tuple[str, str]] = frozenset()) -> list[str] | None:
    """One loop of ``graph`` (``[a, b, ..., a]``: a imports b, ... imports a), or None; ``allowed`` edges are left
    out."""
    try:
        # graphlib's predecessors are our imports: a module must come after what it imports
        graphlib.TopologicalSorter({m: deps - {d for a, d in allowed if a == m} for m, deps in graph.items()}).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))
    return None


def step_modules(root: Path, package: str) -> set[str]:
    """The package's step modules: its top-level modules with a module-level ``main`` (``python -m`` entry)."""
    steps = set()
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            steps.add(f"{package}.{path.stem}")
    return steps


# ------------------------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_the_graph_sees_function_level_type_checking_and_relative_imports(tmp_path):
    root = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "def f():\n    from .sub import c\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "sub/__init__.py": "from .. import b\n",
        "sub/c.py": "import pkg.b\nfrom ..a import f\nfrom . import d\n",
        "sub/d.py": "import os\nimport numpy\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.c"}, "pkg.b": {"pkg.a"}, "pkg.sub": {"pkg.b"},
                     "pkg.sub.c": {"pkg.b", "pkg.a", "pkg.sub.d"}, "pkg.sub.d": set()}
    assert _is_loop(graph, import_loop(graph))  # a -> c -> a, or a -> c -> b -> a
    loop = import_loop(graph, {("pkg.sub.c", "pkg.a")})
    assert _is_loop(graph, loop) and ("pkg.sub.c", "pkg.a") not in zip(loop, loop[1:], strict=False)
    assert import_loop(graph, {("pkg.sub.c", "pkg.a"), ("pkg.b", "pkg.a")}) is None


def _is_loop(graph: dict[str, set[str]], loop: list[str] | None) -> bool:
    """Whether ``loop`` is ``[a, b, ..., a]`` with each module importing the next one in ``graph``."""
    return loop is not None and len(loop) > 2 and loop[0] == loop[-1] and \
        all(b in graph[a] for a, b in zip(loop, loop[1:], strict=False))


def test_step_modules_are_the_top_level_ones_with_a_main(tmp_path):
    root = _write(tmp_path / "pkg", {"__init__.py": "", "step.py": "def main(argv=None):\n    return 0\n",
                                     "helper.py": "def run():\n    def main():\n        pass\n",
                                     "core/inner.py": "def main():\n    pass\n"})
    assert step_modules(root, "pkg") == {"pkg.step"}


# ----------------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE, "gradvis_steps")


def test_no_module_imports_one_that_imports_it_back(graph):
    assert "gradvis_steps.backends.torch.objective" in graph  # the package was read
    loop = import_loop(graph)
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_core_imports_neither_rendering_storage_backends_nor_steps(graph):
    steps = step_modules(PACKAGE, "gradvis_steps")
    assert {"gradvis_steps.landscape", "gradvis_steps.spectrum", "gradvis_steps.train"} <= steps
    above = ("gradvis_steps.render", "gradvis_steps.storage", "gradvis_steps.backends")
    bad = {name: sorted(m for m in imports if m in steps or m.startswith(tuple(f"{a}." for a in above))
                        or m in above)
           for name, imports in graph.items() if name.startswith("gradvis_steps.core.")}
    assert {name: found for name, found in bad.items() if found} == {}
    assert sum(name.startswith("gradvis_steps.core.") for name in graph) > 10


def test_storage_and_rendering_import_no_step_and_storage_no_rendering(graph):
    steps = step_modules(PACKAGE, "gradvis_steps")
    for name, imports in graph.items():
        if name.startswith(("gradvis_steps.storage", "gradvis_steps.render")):
            assert not imports & steps, f"{name} imports the step module(s) {sorted(imports & steps)}"
        if name.startswith("gradvis_steps.storage"):
            rendering = sorted(m for m in imports if m.startswith("gradvis_steps.render"))
            assert not rendering, f"{name} imports {rendering}"


def test_the_torch_strategies_do_not_import_the_objective(graph):
    """The Hessian operator, the grid evaluator and the plane shortcut get what they need passed in."""
    for strategy in ("point_hvp", "batched_points", "plane", "reduction"):
        imports = graph[f"gradvis_steps.backends.torch.{strategy}"]
        assert "gradvis_steps.backends.torch.objective" not in imports, strategy


def test_the_hessian_operator_works_from_what_it_is_given():
    """No objective: a loss function and the batches are enough; products against autograd's dense Hessian."""
    import torch

    from gradvis_steps.backends.torch.point_hvp import TorchHessianOperator
    from gradvis_steps.backends.torch.reduction import BatchReduction

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(11, 3, generator=generator, dtype=torch.float64), torch.randn(11, generator=generator,
                                                                                      dtype=torch.float64)
    scale = torch.ones(1, dtype=torch.float64)  # a "buffer" the loss reads besides theta

    def loss_sum(theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(xb @ theta[:12].view(3, 4)) * scale
        return ((hidden @ theta[12:] - yb) ** 2).sum()

    theta = torch.randn(16, generator=generator, dtype=torch.float64)
    dense = torch.autograd.functional.hessian(lambda t: loss_sum(t, x, y) / len(x), theta)
    V = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    reduction = BatchReduction(x, y, batch_size=4)  # batches of 4, 4 and 3
    for budget, mode in ((float("inf"), "double_backprop"), (0.0, "double_backprop"),
                         (float("inf"), "forward_over_reverse")):
        operator = TorchHessianOperator(loss_sum, reduction, theta, budget, mode, buffers={"scale": scale})
        assert operator.kept_batches == (3 if budget and mode == "double_backprop" else 0)
        torch.testing.assert_close(operator(V[0]), dense @ V[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(operator.matmat(V), V @ dense, rtol=1e-12, atol=1e-12)
    scale.mul_(2.0)
    with pytest.raises(RuntimeError, match="batch-norm statistics changed"):
        operator(V[0])
