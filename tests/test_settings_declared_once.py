"""A setting's default is declared once, in ``panollava/schema.py`` (issue 18).

The test reads panollava's source with ``ast`` and fails when a schema field's default literal is restated
elsewhere: as the default of a function parameter of the same name, or as the fallback of ``.get("name", literal)``
(the pattern that let ``fov_deg``'s 90.0 live in five files), or as the default of a class field of the same name
(``ViewConfig.fov_deg = 90.0``). Code that needs a default reads it from the schema
(``ViewSettings.fov_deg``, or a typed object rebuilt from the plain hyper-parameters).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from panollava import schema

PACKAGE = Path(__file__).resolve().parents[1] / "panollava"
GROUPS = (schema.ModelSettings, schema.LoraSettings, schema.PromptSettings, schema.GenerationSettings,
          schema.ViewSettings, schema.EvaluationOptions, *schema.COMMAND_OPTIONS)

# Parameters that share a name, not a meaning, with a schema field (each with the reason).
NOT_THE_SETTING = {
    ("offline/synthetic.py", "seed"): "the generated dataset's seed, not the decoding seed",
    ("offline/synthetic.py", "overwrite"): "rewrite a generated dataset, not an evaluation folder",
    ("metrics/bootstrap.py", "seed"): "the bootstrap's resampling seed, not the decoding seed",
    ("data/datamodule.py", "batch_size"): "the training batch size (evaluation's is eval_batch_size)",
    ("judge/run.py", "seed"): "the seed sent with each judge request, not the decoding seed",
}


def schema_defaults() -> dict[str, set[str]]:
    """Field name → ``repr`` of its default literal(s), for fields whose default is a literal (not None)."""
    out: dict[str, set[str]] = {}
    for group in GROUPS:
        for f in dataclasses.fields(group):
            if f.default is not dataclasses.MISSING and f.default is not None:
                out.setdefault(f.name, set()).add(repr(f.default))
    return out


def restated_defaults(package: Path = PACKAGE) -> list[str]:
    """``file:line what`` for every restated default (see the module docstring)."""
    defaults = schema_defaults()
    hits = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel == "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                positional = a.posonlyargs + a.args
                pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
                pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
                for arg, default in pairs:
                    if (arg.arg in defaults and isinstance(default, ast.Constant)
                            and repr(default.value) in defaults[arg.arg] and (rel, arg.arg) not in NOT_THE_SETTING):
                        hits.append((rel, default.lineno, f"parameter {arg.arg}={default.value!r}"))
            elif isinstance(node, ast.ClassDef):  # a dataclass field restating a setting's default
                for item in node.body:
                    if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                            and item.target.id in defaults and isinstance(item.value, ast.Constant)
                            and repr(item.value.value) in defaults[item.target.id]
                            and (rel, item.target.id) not in NOT_THE_SETTING):
                        hits.append((rel, item.lineno, f"field {node.name}.{item.target.id} = {item.value.value!r}"))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("get", "pop", "setdefault") and len(node.args) == 2):
                key, value = node.args
                if (isinstance(key, ast.Constant) and key.value in defaults and isinstance(value, ast.Constant)
                        and repr(value.value) in defaults[key.value]):
                    hits.append((rel, node.lineno, f".{node.func.attr}({key.value!r}, {value.value!r})"))
    return [f"{rel}:{line} {what}" for rel, line, what in sorted(hits)]


def test_the_finder_sees_a_restated_default(tmp_path):
    (tmp_path / "x.py").write_text("def f(fov_deg=90.0, seed=1):\n    return cfg.get('crop_strategy', 'anyres_e2p')\n"
                                   "class Views:\n    num_views: int = 8\n    seed: int = 3\n")
    assert restated_defaults(tmp_path) == ["x.py:1 parameter fov_deg=90.0", "x.py:2 .get('crop_strategy', "
                                                                           "'anyres_e2p')",
                                           "x.py:4 field Views.num_views = 8"]


def test_no_schema_default_is_restated():
    hits = restated_defaults()
    assert not hits, "schema defaults restated outside panollava/schema.py:\n" + "\n".join(hits)
