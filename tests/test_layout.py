"""Package layout: no import cycle between panollava's modules.

The import graph is read with ``ast`` from the source (nothing is imported): every ``import panollava...`` and
``from panollava... import ...`` statement counts, at the top of a module or inside a function (a lazy import
is still a dependency: ``cli.py`` importing ``commands/demo.py`` in a function while ``demo.py`` imports
``cli.py`` is a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "panollava"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module → panollava modules it imports`` (top-level and function-level imports).

    Args:
        package: the package folder.

    Returns:
        The graph; ``from panollava.x import y`` points at ``panollava.x.y`` when that is a module, else at
        ``panollava.x``.
    """
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 more
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # import panollava.a.b.c → the deepest module known
                    target = target.rpartition(".")[0]
                if target.startswith("panollava") and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None when the graph has none.

    Args:
        graph: ``module → modules it imports``.

    Returns:
        The modules along the cycle, the first repeated at the end.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_lazy_import_cycle(tmp_path):
    pkg = tmp_path / "panollava"
    (pkg / "commands").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("def main():\n    from panollava.commands.demo import run\n")
    (pkg / "commands" / "demo.py").write_text("from panollava import cli\n")
    graph = import_graph(pkg)
    assert graph["panollava.cli"] == {"panollava.commands.demo"}
    assert find_cycle(graph) == ["panollava.cli", "panollava.commands.demo", "panollava.cli"]
    (pkg / "commands" / "demo.py").write_text("from ..console import echo\n")
    (pkg / "console.py").write_text("import logging\n")
    assert import_graph(pkg)["panollava.commands.demo"] == {"panollava.console"}
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_cycle_between_panollava_modules():
    graph = import_graph()
    assert "panollava.schema" in graph["panollava.settings"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def external_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module → top-level names of the non-panollava packages it imports`` (top-level and lazy imports)."""
    out: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
        out[_module_name(path, package)] = names - {"panollava"}
    return out


def test_models_and_families_never_import_lightning():
    """The layers below the Lightning edge (pure torch + transformers) stay testable without Lightning."""
    imports = external_imports()
    assert "lightning" in imports["panollava.captioning"]  # the check reads real imports
    offenders = sorted(m for m, names in imports.items()
                       if m.startswith(("panollava.models", "panollava.families", "panollava.checkpoint_contents"))
                       and names & {"lightning", "pytorch_lightning", "lightning_utilities"})
    assert not offenders, f"these modules import lightning: {offenders}"


def test_engine_layers_never_import_a_family():
    """The data module, the evaluation engine and the writers serve every family through the seam only
    (panollava.families.base), never a family's own modules."""
    graph = import_graph()
    neutral = ("panollava.data", "panollava.evaluation", "panollava.callbacks.eval_writer", "panollava.captioning",
               "panollava.generation", "panollava.outputs", "panollava.metrics")
    chooser = "panollava.evaluation.plan"  # the one place that picks the family a run directory needs
    offenders = sorted(
        f"{m} -> {t}" for m, targets in graph.items() if m.startswith(neutral) and m != chooser
        for t in targets if t.startswith("panollava.families.") and t != "panollava.families.base"
    )
    assert not offenders, "engine layers import a family: " + ", ".join(offenders)


def test_outputs_never_import_the_command_layer():
    """The report and the leaderboard sit below the commands: ``panollava.outputs`` (its lazy imports included)
    never imports ``panollava.commands`` or ``panollava.cli``; the commands import it."""
    graph = import_graph()
    outputs = sorted(m for m in graph if m == "panollava.outputs" or m.startswith("panollava.outputs."))
    assert {"panollava.outputs.files", "panollava.outputs.report_html", "panollava.outputs.leaderboard"} <= set(outputs)
    assert "panollava.outputs.files" in graph["panollava.outputs.leaderboard"]  # the graph is real
    assert "panollava.outputs.leaderboard" in graph["panollava.commands.compare"]
    offenders = sorted(
        f"{m} -> {t}" for m in outputs for t in graph[m]
        if t in ("panollava.cli", "panollava.commands") or t.startswith("panollava.commands.")
    )
    assert not offenders, "the outputs package imports the command layer: " + ", ".join(offenders)
