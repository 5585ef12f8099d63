"""What an evaluation leaves behind, and the pages built from it.

- :mod:`panollava.outputs.files`: the one writer and the one reader of ``predictions.jsonl``,
  ``predictions.csv`` (written here, read by ``score``'s CSV loader) and ``metrics.json``, written atomically;
  library versions and file digests recorded in them;
- :mod:`panollava.outputs.report_html`: ``report.html`` of one evaluation;
- :mod:`panollava.outputs.leaderboard`: the leaderboard of several evaluations (``compare``).

This package sits below the command layer: it never imports :mod:`panollava.commands` nor :mod:`panollava.cli`
(``tests/test_layout.py`` checks it). Importing it loads no torch.
"""
