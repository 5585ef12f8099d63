"""Fixtures for the report and leaderboard tests: headless Chromium, and real evaluation folders.

Imported by conftest.py. ``chromium`` drives Debian's ``chromium`` package (``make test`` and ``.ci/run`` install
it): it loads a page with a URL hash, lets its script run, and returns the DOM. Where Chromium is missing the
tests skip, except under CI (``CI`` or ``PANOLLAVA_REQUIRE_BROWSER`` set), where they fail.

``evaluations`` holds one real ``test --ckpt_dir`` output (the tiny run on the real QuIC-360 sample) and folders
derived from it by replacing the predictions and scoring them again with the real scorer (an "oracle" whose
captions are one of their references, a "mixed" one, and one on another dataset).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PER_SAMPLE = ("bleu_4", "cider", "rouge_l", "meteor")
OFFICIAL = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


class _RowParser(HTMLParser):
    """Collects ``<tr class="row ...">`` attributes in document order, and the ``<body>`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "tr" and "row" in values.get("class", "").split():
            self.rows.append(values)
        elif tag == "body":
            self.body = values


@dataclass
class Page:
    """A page as headless Chromium left it after its script ran."""

    dom: str
    rows: list[dict[str, str]]
    body: dict[str, str]

    @property
    def visible_rows(self) -> list[dict[str, str]]:
        return [r for r in self.rows if "display: none" not in r.get("style", "")]

    def values(self, key: str) -> list[float]:
        return [float(r[f"data-{key}"]) for r in self.visible_rows if r.get(f"data-{key}", "") != ""]


class Chromium:
    """``chromium --headless --no-sandbox``: DOM dumps and screenshots of local pages."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.executable = executable
        self.profile = profile

    def _run(self, *args: str) -> str:
        command = [
            self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={self.profile}", *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}"
        return done.stdout

    def load(self, path: Path, fragment: str = "") -> Page:
        """Open ``file://path#fragment``, run its script, and parse the resulting DOM."""
        dom = self._run("--dump-dom", path.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
        parser = _RowParser()
        parser.feed(dom)
        return Page(dom=dom, rows=parser.rows, body=parser.body)

    def screenshot(self, path: Path, out: Path, fragment: str = "", window: str = "1400,1000") -> Path:
        """Save a PNG of the page as a 1400x1000 window shows it."""
        self._run(f"--screenshot={out.resolve()}", f"--window-size={window}", "--hide-scrollbars",
                  path.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
        assert out.is_file(), out
        return out


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    """Headless Chromium; skips where it is missing, fails under CI."""
    executable = next((shutil.which(name) for name in _BROWSERS if shutil.which(name)), None)
    if executable is None:
        message = "chromium not found: 'make test' installs it (apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("PANOLLAVA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return Chromium(executable, tmp_path_factory.mktemp("chromium-profile"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rescore_evaluation(
    src: Path, dst: Path, predict: Callable[[int, dict[str, Any]], str], dataset: dict[str, Any] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> Path:
    """Copy the evaluation ``src`` to ``dst`` with new predictions, scored again by the real scorer.

    Args:
        src: An evaluation folder written by ``test`` (its provenance is kept).
        dst: The new folder.
        predict: (position, record) → its new prediction.
        dataset: Replaces the ``dataset`` provenance (another CSV).
        records: Replaces the records (the samples of another CSV).
    """
    from panollava.metrics import score_captions
    from panollava.outputs.files import write_json_atomic, write_predictions

    metrics = json.loads((src / "metrics.json").read_text())
    records = [dict(r) for r in (records if records is not None else read_jsonl(src / "predictions.jsonl"))]
    for i, r in enumerate(records):
        r["prediction"] = predict(i, r)
    scores = score_captions({r["sample_id"]: r["prediction"] for r in records},
                            {r["sample_id"]: r["references"] for r in records})
    fresh = scores.to_metrics_json()
    for key in OFFICIAL:
        metrics[key] = fresh[key]
    metrics["num_samples"] = len(records)
    if dataset is not None:
        metrics["dataset"] = dataset
    for r in records:
        r["scores"] = {k: scores.per_sample[r["sample_id"]][k] for k in PER_SAMPLE}
    dst.mkdir(parents=True, exist_ok=True)
    write_predictions(dst, records)
    write_json_atomic(dst / "metrics.json", metrics)
    return dst


@pytest.fixture(scope="session")
def evaluations(tiny_run, shared_data_dir, tmp_path_factory) -> dict[str, Path]:
    """Evaluation folders: ``real`` (``test --ckpt_dir`` of the tiny run on the real sample, written to the
    default ``eval_results/...`` layout under ``cwd``), ``oracle`` (each caption is its first reference),
    ``mixed`` (oracle captions for every other sample, a fixed weak caption for the rest) and
    ``other_dataset`` (the bundled mini QuIC-360 validation CSV, weak captions)."""
    from panollava.cli import main
    from panollava.outputs.files import sha256_file

    cwd = tmp_path_factory.mktemp("evaluations")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        csv_path = shared_data_dir / "quic360-sample" / "test.csv"
        assert main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(csv_path)]) == 0
    finally:
        os.chdir(old)
    (real,) = [p.parent for p in (cwd / "eval_results").rglob("metrics.json")]
    weak = "a room with a table and chairs"
    oracle = rescore_evaluation(real, cwd / "oracle", lambda i, r: r["references"][0])
    mixed = rescore_evaluation(
        real, cwd / "mixed", lambda i, r: r["references"][0] if i % 2 == 0 else weak
    )
    mini = PROJECT_ROOT / "panollava" / "assets" / "quic360-mini" / "val.csv"  # test.csv is the sample's test.csv
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    with mini.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rec = groups.setdefault((row["url"], row["query"]), {
                "sample_id": f"mini-{len(groups)}", "image": row["url"], "query": row["query"], "references": [],
            })
            rec["references"].append(row["annotation"])
    other = rescore_evaluation(
        real, cwd / "other_dataset", lambda i, r: weak, records=list(groups.values()),
        dataset={"path": str(mini), "sha256": sha256_file(mini), "reason": "test fixture",
                 "reference_mode": "grouped"},
    )
    return {"cwd": cwd, "real": real, "oracle": oracle, "mixed": mixed, "other_dataset": other}
