"""The one empty-reference policy (issue 17): real data as it is.

An empty or missing-value annotation among a sample's references is dropped with a warning naming its lines and
saying how many references the affected samples keep; a sample left with none is an error naming it; an empty
query stays an error. The same policy holds for ``test``, training data and ``score`` (CSV and JSONL). The
official QuIC-360 ``test.csv`` has three empty annotation cells (lines 1967, 3380 and 4170) and evaluates as it is.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from panollava.cli import main
from panollava.commands.score import read_predictions
from panollava.data.dataset import drop_missing_references, group_samples, read_caption_csv, training_samples
from panollava.errors import InvalidInputError
from panollava.metrics.human_baseline import human_leave_one_out, human_leave_one_out_records

EMPTY_LINES = (1967, 3380, 4170)
#: The (url, query) pair of line 1967 and the lines of all its rows in the official test.csv.
TREES = ("data/quic360/test/images/3906728844_5030475e09_o.jpg", "trees", (1966, 1967, 1968, 1969, 1970, 5274))


@pytest.fixture(scope="module")
def official_test_csv(shared_data_dir: Path) -> Path:
    return shared_data_dir / "quic360" / "test.csv"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- the CSV reader (test, predict, training) -----------------------------------------------------------------------
def test_official_test_csv_reads_as_it_is(official_test_csv, caplog):
    with caplog.at_level("WARNING", logger="panollava"):
        rows = read_caption_csv(official_test_csv, check_images=False)
    assert len(rows) == 5961 - 3 and not {r["row"] for r in rows} & set(EMPTY_LINES)
    (warning,) = [w for w in _warnings(caplog) if "empty or missing-value" in w]
    assert "dropped 3 empty or missing-value reference(s)" in warning and "line(s) 1967, 3380, 4170" in warning
    # their samples keep 5 (trees: 6 rows), 4 (weather: 5 rows) and 3 (furniture: 4 rows) references
    assert "1 sample keeps 3 references, 1 sample keeps 4 references, 1 sample keeps 5 references" in warning
    samples = group_samples(rows)
    assert len(samples) == 1149
    trees = next(s for s in samples if (s.url, s.query) == TREES[:2])
    assert trees.rows == [n for n in TREES[2] if n != 1967] and len(trees.references) == 5
    per_row = group_samples(rows, "per_row")
    assert len(per_row) == 5958
    assert len(training_samples(rows)) == 5958  # training data: the same policy


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_sample_left_without_reference_is_an_error_naming_it(tmp_path):
    text = "url,query,annotation\na.jpg,room,a room\nb.jpg,sky,\nb.jpg,sky,nan\nc.jpg,sea,NaN\n"
    with pytest.raises(InvalidInputError) as info:
        read_caption_csv(_write(tmp_path / "t.csv", text), check_images=False)
    message = str(info.value)
    assert "2 sample(s) have no reference left" in message
    assert "url 'b.jpg', query 'sky' (line(s) 3, 4)" in message and "url 'c.jpg', query 'sea' (line(s) 5)" in message


@pytest.mark.parametrize("query", ["", "  ", "nan", "NaN", "None"])
def test_an_empty_or_nan_query_stays_an_error(tmp_path, query):
    text = f"url,query,annotation\na.jpg,room,a room\na.jpg,{query},a sky\n"
    with pytest.raises(InvalidInputError, match=r"line 3: column 'query' is empty or a missing-value marker"):
        read_caption_csv(_write(tmp_path / "q.csv", text), check_images=False)


def test_drop_missing_references_counts_what_each_sample_keeps(caplog):
    samples = {"s1": [(2, "a"), (3, ""), (4, "b")], "s2": [(5, "c"), (6, None)], "s3": [(7, "d"), (8, "nan")],
               "s4": [(9, "e")]}
    with caplog.at_level("WARNING", logger="panollava"):
        kept = drop_missing_references("f.csv", samples)
    assert kept == {"s1": [(2, "a"), (4, "b")], "s2": [(5, "c")], "s3": [(7, "d")], "s4": [(9, "e")]}
    (warning,) = _warnings(caplog)
    assert "dropped 3 empty or missing-value reference(s)" in warning and "line(s) 3, 6, 8" in warning
    assert "2 samples keep 1 reference, 1 sample keeps 2 references" in warning


# -- score: JSONL and CSV -------------------------------------------------------------------------------------------
def test_score_on_the_human_leave_one_out_of_all_rows(official_test_csv, tmp_path, caplog):
    """Every row of the official test.csv, the three empty cells included among the references: scored with the
    warning, and equal to the leave-one-out that drops them itself."""
    records = human_leave_one_out_records(official_test_csv, keep_missing=True)
    with_empty = [r for r in records if any(not ref.strip() for ref in r["references"])]
    assert sorted(line for r in with_empty for line, ref in zip(r["lines"][1:], r["references"]) if not ref) == list(
        EMPTY_LINES
    )
    src = tmp_path / "loo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    jsonl_lines = sorted(int(r["sample_id"]) + 1 for r in with_empty)
    with caplog.at_level("WARNING", logger="panollava"):
        assert main(["score", "--predictions", str(src), "--output_dir", str(tmp_path / "out")]) == 0
    (warning,) = [w for w in _warnings(caplog) if "empty or missing-value" in w]
    assert "dropped 3 empty or missing-value reference(s)" in warning
    for line in jsonl_lines:  # the JSONL line and the reference's position in its list
        assert re.search(rf"\b{line} #\d", warning), (line, warning)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_samples"] == 1119 and metrics["dataset"]["num_rows"] == 1119
    assert len(metrics["dataset"]["dropped_references"]) == 3
    # the human agreement numbers of docs/metrics.md: the dropped cells changed nothing else
    assert metrics["bleu_4"] == pytest.approx(0.0681, abs=1e-4) and metrics["cider"] == pytest.approx(0.1602, abs=1e-4)
    assert metrics["rouge_l"] == pytest.approx(0.2802, abs=1e-4)
    assert metrics["meteor"] == pytest.approx(0.1445, abs=1e-4)
    scored = {r["sample_id"]: r for r in map(json.loads, (tmp_path / "out" / "predictions_scored.jsonl").open())}
    predictions, references = human_leave_one_out(official_test_csv)
    for r in with_empty:
        assert scored[r["sample_id"]]["references"] == references[r["sample_id"]] == [x for x in r["references"] if x]
        assert predictions[r["sample_id"]] == r["prediction"]


def test_score_csv_and_jsonl_follow_the_policy(tmp_path, caplog):
    src = tmp_path / "p.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "query", "prediction", "annotation"])
        writer.writerows([["a.jpg", "room", "a room", "a big room"], ["a.jpg", "room", "a room", "nan"],
                          ["a.jpg", "room", "a room", "a small room"], ["b.jpg", "sky", "blue", "  "],
                          ["b.jpg", "sky", "blue", "a blue sky"]])
    with caplog.at_level("WARNING", logger="panollava"):
        loaded = read_predictions(src)
    assert [r["references"] for r in loaded.records] == [["a big room", "a small room"], ["a blue sky"]]
    assert loaded.dropped_references == ["3", "5"] and loaded.num_rows == 5
    assert any("line(s) 3, 5" in w and "1 sample keeps 1 reference, 1 sample keeps 2 references" in w
               for w in _warnings(caplog))

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"sample_id": "a", "prediction": "x", "references": ["y", None, "null"]}) + "\n"
                     + json.dumps({"sample_id": "b", "prediction": "x", "references": ["", "nan"]}) + "\n")
    with pytest.raises(InvalidInputError, match=r"no reference left .*sample 'b' \(line 2\) \(line\(s\) 2 #1, 2 #2\)"):
        read_predictions(jsonl)
    jsonl.write_text(json.dumps({"sample_id": "a", "query": "nan", "prediction": "x", "references": ["y"]}) + "\n")
    with pytest.raises(InvalidInputError, match=r"line 1: query is 'nan'"):
        read_predictions(jsonl)


# -- test: a real panorama, a real tiny model ------------------------------------------------------------------------
def test_test_on_the_pair_with_an_empty_cell(tiny_run, official_test_csv, sample_panoramas, tmp_path, caplog):
    """The rows of (3906728844, trees) — line 1967 of the official file is empty — pointed at a real panorama:
    ``test`` exits 0, the warning names the line, and the sample is scored against its five other references."""
    with official_test_csv.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if (r["url"], r["query"]) == TREES[:2]]
    assert len(rows) == 6 and rows[1]["annotation"] == ""
    data = tmp_path / "trees.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows([[str(sample_panoramas[0]), r["query"], r["annotation"]] for r in rows])
    out = tmp_path / "eval"
    with caplog.at_level("WARNING", logger="panollava"):
        status = main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(data),
                       "--output_dir", str(out)])
    assert status == 0
    (warning,) = [w for w in _warnings(caplog) if "empty or missing-value" in w]
    assert f"'{data}'" in warning and "on line(s) 3:" in warning and "1 sample keeps 5 references" in warning
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert record["references"] == [r["annotation"] for r in rows if r["annotation"]]
    assert len(record["references"]) == 5 and record["scores"]["cider"] is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 1 and metrics["cider"] == pytest.approx(record["scores"]["cider"])
