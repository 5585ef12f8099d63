"""``panollava-cli score`` (``run_score``): input formats, outputs, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from panollava.commands.score import load_predictions, run_score
from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metrics import OFFICIAL_METRICS, meteor as meteor_module, score_captions
from panollava.metrics.meteor import MeteorProcess

RECORDS = [
    {"sample_id": "0", "image": "p1.jpg", "query": "furniture",
     "prediction": "A wooden table and two chairs.",
     "references": ["A wooden table with chairs.", "Two chairs next to a table."]},
    {"sample_id": "1", "image": "p1.jpg", "query": "people", "prediction": "",
     "references": ["Nobody is in the room."]},
    {"sample_id": "2", "image": "p2.jpg", "query": "location", "prediction": "A beach at sunset 🌅.",
     "references": ["A sandy beach at dusk.", "The sun sets over the sea.", "An empty beach."]},
]


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _write_csv(path: Path, header, rows) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def expected():
    return score_captions({r["sample_id"]: r["prediction"] for r in RECORDS},
                          {r["sample_id"]: r["references"] for r in RECORDS}, secondary=False)


def test_jsonl_writes_metrics_and_per_sample_scores(tmp_path, expected, capsys):
    src = _write_jsonl(tmp_path / "predictions.jsonl", RECORDS)
    metrics_path = run_score(str(src), str(tmp_path / "out"))
    data = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert {k: data[k] for k in OFFICIAL_METRICS} == expected.corpus
    assert data["num_samples"] == 3 and data["source"]["predictions"] == str(src.resolve())
    assert len(data["source"]["sha256"]) == 64
    lines = (tmp_path / "out" / "predictions_scored.jsonl").read_text(encoding="utf-8").splitlines()
    scored = [json.loads(line) for line in lines]
    assert [r["sample_id"] for r in scored] == ["0", "1", "2"]
    assert scored[2]["scores"] == expected.per_sample["2"] and scored[2]["image"] == "p2.jpg"
    with (tmp_path / "out" / "predictions_scored.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["cider"]) == pytest.approx(expected.per_sample["0"]["cider"])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
    out = capsys.readouterr().out
    assert "cider" in out and "Lowest CIDEr-D" in out


def test_csv_with_one_reference_per_row_is_grouped(tmp_path, expected):
    rows = [[r["image"], r["query"], r["prediction"], ref] for r in RECORDS for ref in r["references"]]
    src = _write_csv(tmp_path / "preds.csv", ["url", "query", "prediction", "annotation"], rows)
    records = load_predictions(src)
    assert [r["references"] for r in records] == [r["references"] for r in RECORDS]
    assert [r["prediction"] for r in records] == [r["prediction"] for r in RECORDS]  # the empty one is kept
    data = json.loads(run_score(str(src), str(tmp_path / "out")).read_text(encoding="utf-8"))
    assert {k: data[k] for k in OFFICIAL_METRICS} == expected.corpus


def test_csv_with_json_references_and_sample_ids(tmp_path):
    rows = [[r["sample_id"], r["prediction"], json.dumps(r["references"])] for r in RECORDS]
    src = _write_csv(tmp_path / "preds.csv", ["sample_id", "prediction", "references"], rows)
    assert load_predictions(src)[2]["references"] == RECORDS[2]["references"]


def test_csv_with_named_reference_column(tmp_path):
    rows = [["a", "x y", "x y z"], ["a", "x y", "y"]]
    src = _write_csv(tmp_path / "p.csv", ["sample_id", "prediction", "gold"], rows)
    assert load_predictions(src, references_column="gold")[0]["references"] == ["x y z", "y"]
    with pytest.raises(InvalidInputError, match="no column 'silver'"):
        load_predictions(src, references_column="silver")


@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        (["url", "query", "annotation"], [["a", "b", "c"]],
         "no prediction column .* found: url, query, annotation"),
        (["url", "prediction"], [["a", "b"]], "no reference column"),
        (["url", "query", "prediction", "annotation"], [["a", "q", "x", "r1"], ["a", "q", "y", "r2"]],
         "lines 2 and 3 .* different predictions"),
        (["sample_id", "prediction", "references"], [["a", "x", "not json"]],
         "line 2: column 'references' must hold"),
        (["sample_id", "prediction", "annotation"], [["a", "x", ""], ["a", "x", "nan"]],
         r"no reference left .*: sample 'a' \(line\(s\) 2, 3\)"),
        (["url", "query", "prediction", "annotation"], [["a", "nan", "x", "r1"]],
         "line 2: column 'query' is empty or a missing-value marker"),
    ],
)
def test_bad_csv(tmp_path, header, rows, match):
    src = _write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(InvalidInputError, match=match):
        load_predictions(src)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"sample_id": "a", "references": ["x"]}'], "line 1 lacks prediction"),
        (['{"sample_id": "a", "prediction": null, "references": ["x"]}'], "prediction must be a string"),
        (['{"sample_id": "a", "prediction": "x", "references": []}'], "non-empty list of strings"),
        (["not json"], "line 1 is not valid JSON"),
        (['{"sample_id": "a", "prediction": "x", "references": ["y"]}'] * 2, "'a' appears twice"),
        ([], "holds no samples"),
    ],
)
def test_bad_jsonl(tmp_path, lines, match):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=match):
        load_predictions(src)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputNotFoundError, match=str(tmp_path / "nope.jsonl")):
        run_score(str(tmp_path / "nope.jsonl"), str(tmp_path / "out"))
    (tmp_path / "p.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="expected a .jsonl, .json or .csv"):
        load_predictions(tmp_path / "p.txt")


def test_hanging_meteor_still_writes_the_other_metrics(tmp_path, monkeypatch):
    if shutil.which("java") is None:
        pytest.skip("without Java METEOR is never started")
    hanging = MeteorProcess([sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(meteor_module, "_SHARED", hanging)
    src = _write_jsonl(tmp_path / "predictions.jsonl", RECORDS)
    from panollava.errors import MetricFailedError

    with pytest.raises(MetricFailedError, match="meteor: METEOR did not finish"):  # written first, then raised
        run_score(str(src), str(tmp_path / "out"), meteor_timeout_s=1.0)
    data = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert data["meteor"] is None and "killed" in data["failed"]["meteor"]
    assert data["cider"] is not None and data["bleu_4"] is not None


def test_cli_entry_point(tmp_path):
    from panollava.cli import main

    src = _write_jsonl(tmp_path / "predictions.jsonl", RECORDS)
    assert main(["score", "--predictions", str(src), "--output_dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()
    missing = str(tmp_path / "missing.jsonl")
    assert main(["score", "--predictions", missing, "--output_dir", str(tmp_path)]) == 2
    assert os.path.exists(tmp_path / "out" / "predictions_scored.jsonl")
