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


SLOW_TO_IMPORT = frozenset({"numpy", "PIL", "pandas", "torch", "torchmetrics", "transformers", "lightning", "peft",
                            "py360convert", "openai", "pycocoevalcap.cider", "pycocoevalcap.rouge"})
"""Third-party modules whose import costs start-up time (numpy ~60 ms to lightning ~3 s on the 2-core machine), a
package and everything below it (pycocoevalcap's CIDEr and ROUGE scorers import numpy): the light commands (score,
report, compare, views, judge) and ``panollava.metrics`` must not load them."""

LAZY_REASON = "# optional dependency"
"""The comment that lets a function-level import defer nothing: a package that may be absent (wandb)."""


def _imports(path: Path, name: str, files: set[str]) -> tuple[set[str], list[tuple[int, set[str], str]]]:
    """``(top-level targets, [(line, targets, source line)] of function-level imports)`` of one module; a target is
    a panollava module or a third-party top-level package; ``if TYPE_CHECKING:`` blocks do not count."""
    source = path.read_text(encoding="utf-8")
    top: set[str] = set()
    lazy: list[tuple[int, set[str], str]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in files]
        out = set()
        for full in names:
            parts = full.split(".")
            if parts[0] != "panollava":
                out.add(full)
            else:  # a submodule's import runs its parent packages first
                out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in files)
        return out

    def walk(nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if in_function:
                    lazy.append((node.lineno, targets(node), source.splitlines()[node.lineno - 1].strip()))
                else:
                    top.update(targets(node))
                continue
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for child in ("body", "orelse", "finalbody"):
                walk(getattr(node, child, None) or [], inner)
            for handler in getattr(node, "handlers", None) or []:
                walk(handler.body, inner)

    walk(ast.parse(source, filename=str(path)).body, False)
    return top, lazy


def unjustified_lazy_imports(package: Path = PACKAGE) -> list[str]:
    """Function-level imports that defer no slow package: ``module:line import …`` for each one whose targets'
    top-level import closure adds none of :data:`SLOW_TO_IMPORT` to what the module itself already loads at
    import time (and that does not carry :data:`LAZY_REASON`)."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    parsed = {name: _imports(path, name, set(files)) for name, path in files.items()}
    def slow(module: str) -> set[str]:  # the slow packages that importing ``module`` loads (top-level imports)
        seen, todo, found = set(), [module], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in files:
                todo.extend(parsed[current][0])
            else:  # a third-party module: slow when it or a package above it is
                parts = current.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                             if ".".join(parts[:i]) in SLOW_TO_IMPORT)
        return found

    offenders = []
    for name, (_, lazy) in sorted(parsed.items()):
        own = slow(name)
        for line, targets, text in lazy:
            deferred = set().union(*(slow(t) for t in targets)) - own
            if not deferred and LAZY_REASON not in text:
                offenders.append(f"{name}:{line} {text}")
    return offenders


def test_function_level_imports_only_where_they_defer_a_slow_package(tmp_path):
    """A function-level import must buy start-up time: what it imports loads a package of :data:`SLOW_TO_IMPORT`
    that its module does not load already (or it says why with :data:`LAZY_REASON`). Anything else goes to the top
    of the module, where a reader looks for the dependencies."""
    pkg = tmp_path / "panollava"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy.py").write_text("import torch\n")
    (pkg / "light.py").write_text(
        "import json\n\ndef a():\n    from panollava import heavy\n\ndef b():\n    import shutil\n\n"
        "def c():\n    try:\n        import wandb  # optional dependency\n    except ImportError:\n        pass\n")
    (pkg / "uses_torch.py").write_text("import torch\n\ndef d():\n    from panollava.heavy import torch\n")
    assert unjustified_lazy_imports(pkg) == ["panollava.light:7 import shutil",
                                             "panollava.uses_torch:4 from panollava.heavy import torch"]
    offenders = unjustified_lazy_imports()
    assert not offenders, "function-level imports that defer nothing slow (move them to the top):\n" + "\n".join(
        offenders)
