"""``panollava-cli compare``: print the leaderboard of :func:`panollava.outputs.leaderboard.run_compare`, and its files."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["run_compare_command"]


def run_compare_command(dirs: list[str], output_dir: str | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Leaderboard of evaluations: markdown on stdout, leaderboard.csv and leaderboard.html, with 95 % bootstrap
    intervals (CIDEr-D, METEOR, the judge score) and paired bootstrap p-values against the baseline row, both
    resampling panoramas (the queries of one panorama together), Holm-corrected across the rows compared, with a
    verdict in words and warnings when rows are not comparable. A predictions CSV of the original PanoLLaVA tool
    must be scored first (score).

    Args:
        dirs: Evaluation folders (metrics.json + predictions.jsonl) or run directories (their latest evaluation
            under ./eval_results).
        output_dir: Folder for leaderboard.csv and leaderboard.html (default: the current directory).
        baseline: The evaluation the others are compared with (default: the first).

    Returns:
        What :func:`panollava.outputs.leaderboard.run_compare` returns.
    """
    from panollava.outputs.leaderboard import run_compare

    result = run_compare(dirs, output_dir, baseline)
    for row in result["rows"]:
        if row["picked"] != "evaluation folder":
            print(f"🔎 row {row['row']}: {row['picked']}")
    print(result["markdown"])
    for warning in result["warnings"]:
        print(f"⚠️  {warning}", file=sys.stderr)
    print(f"📁 {result['csv_path']}\n📁 {result['html_path']}")
    return result
