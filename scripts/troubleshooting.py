"""Write ``docs/TROUBLESHOOTING.md`` from the tested catalogue of bad inputs and faults (``tests/test_catalogue.py``).

    python scripts/troubleshooting.py          # rewrite the page
    python scripts/troubleshooting.py --check  # exit 1 if the page is stale

The page is generated, never edited by hand: every row is a case that ``tests/test_catalogue.py`` runs, and that
test fails when the page differs from :func:`render` of its ``CASES``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "TROUBLESHOOTING.md"

_EXIT_CODES = {
    0: "0 — accepted (a warning says what was done)",
    2: "2 — refused; nothing that looks like a result is written",
    3: "3 — results written, but a metric failed (or was unavailable in strict mode)",
}

_HEADER = """# Troubleshooting

Every message below comes from a case of `tests/test_catalogue.py`, which runs it and checks the exit status, that
the message names the offending thing and the fix, that no traceback is printed (add `--verbose` to see one) and
that a refused run leaves no `metrics.json`. This page is generated from that catalogue
(`python scripts/troubleshooting.py`); a test fails when the two differ.

Exit statuses of `panollava-cli`:

{codes}

The *message contains* column lists the fragments the test requires (regular expressions). Messages are printed as
one paragraph starting with `error:` (refusals) or as `WARNING` log lines (accepted inputs).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fragments(expect: Sequence[str]) -> str:
    if not expect:
        return "(no message: accepted silently)"
    return " · ".join(f"`{_cell(e)}`" for e in expect)


def render(cases: Sequence[Any]) -> str:
    """The Markdown page for ``cases`` (objects with id, area, situation, exit_code, expect, cause, fix, gap)."""
    lines = [_HEADER.format(codes="\n".join(f"- {v}" for v in _EXIT_CODES.values()))]
    areas: list[str] = []
    for case in cases:
        if case.area not in areas:
            areas.append(case.area)
    for area in areas:
        lines.append(f"\n## {area}\n")
        lines.append("| case | situation | exit | message contains | cause | fix |")
        lines.append("|---|---|---|---|---|---|")
        for case in (c for c in cases if c.area == area):
            gap = f" **Known gap** (the test is a strict xfail): {_cell(case.gap)}." if case.gap else ""
            lines.append(
                f"| `{case.id}` | {_cell(case.situation)}{gap} | {case.exit_code} | {_fragments(case.expect)} | "
                f"{_cell(case.cause)} | {_cell(case.fix)} |"
            )
    lines.append(f"\n{len(cases)} cases.\n")
    return "\n".join(lines)


def load_cases() -> Sequence[Any]:
    """``CASES`` of ``tests/test_catalogue.py`` (imported by path: tests are not a package)."""
    spec = importlib.util.spec_from_file_location("test_catalogue", ROOT / "tests" / "test_catalogue.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("test_catalogue", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.CASES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/TROUBLESHOOTING.md is stale")
    args = parser.parse_args(argv)
    text = render(load_cases())
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if current != text:
            print(f"{DOC} is stale: run python scripts/troubleshooting.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
