"""The original PanoLLaVA tool's ``*_predictions_*.csv`` (issue 17): recognised, grouped, or scored per row.

Its files have the columns ``sample_id,image_path,original_query,prediction,reference,pred_length,ref_length,
is_error,is_empty``: one row per reference, a caption generated for every row (several different predictions per
(image, query) pair), ``sample_id`` numbering rows, and a missing reference written as the text ``nan``. The
expected numbers are computed here independently, with pycocoevalcap called directly on the grouped and on the
per-row inputs, and pinned.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from panollava.cli import main
from panollava.commands.score import read_predictions, run_score
from panollava.data.dataset import sample_id_for
from panollava.errors import InvalidInputError
from panollava.outputs.leaderboard import run_compare

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR and tokenizer need Java")

COLUMNS = ["sample_id", "image_path", "original_query", "prediction", "reference", "pred_length", "ref_length",
           "is_error", "is_empty"]
IMG1 = "data/quic360/test/images/2094501355_045ede6d89_k.jpg"
IMG2 = "data/quic360/test/images/451311988_12a529ce57_k.jpg"
#: (image, query, [(prediction, reference)]) in file order; the original wrote one row per reference.
PAIRS = [
    (IMG1, "furniture", [
        ("A wooden table with four chairs stands in the middle of the room.",
         "There is a long wooden table with chairs around it."),
        ("The room has a table and some chairs.", "Wooden chairs are placed around a dining table."),
        ("A sofa and a table are near the window.", "The furniture is made of dark wood."),
        ("There are chairs, a table and a cupboard.", "A table, six chairs and a cupboard fill the room."),
    ]),
    (IMG1, "people", [  # one caption for every row: nothing to choose
        ("Nobody is in the room.", "There are no people in the picture."),
        ("Nobody is in the room.", "The room is empty of people."),
        ("Nobody is in the room.", "No one can be seen."),
    ]),
    (IMG2, "weather", [
        ("It is a sunny day with a few clouds.", "The sky is blue with some white clouds."),
        ("The weather is cloudy and grey.", "nan"),  # the original's missing reference
        ("A bright sunny afternoon.", "It is sunny and warm."),
        ("Clear skies over the beach.", "The weather looks clear and bright."),
        ("The sun is shining.\nThere is no rain.", "A sunny day at the beach with a light breeze."),
    ]),
    (IMG2, "location", [
        ("This is a beach next to the sea.", "A sandy beach along the coast."),
        ("A harbour with boats.", "The photo was taken on a beach by the ocean."),
        ("A beach with people walking on the sand.", "This is a seaside resort with a long beach."),
        ("It is a city park.", "A beach with hotels behind it."),
    ]),
]
NUM_ROWS = sum(len(rows) for _, _, rows in PAIRS)  # 16
NAN_LINE = 1 + 4 + 3 + 2  # header, furniture, people, then the second weather row: line 10 (no line breaks before)
#: Pinned results (pycocoevalcap 1.2 computed them; the test recomputes them independently below).
EXPECTED_GROUPED = {"bleu_1": 0.7143, "meteor": 0.2355, "rouge_l": 0.4710, "cider": 0.7953}
EXPECTED_PER_ROW = {"bleu_1": 0.3175, "meteor": 0.1371, "rouge_l": 0.2597, "cider": 0.6237}
#: BLEU-4 is all but zero on 4 (16) samples: 3.4e-5 grouped, 9.7e-6 per row.
EXPECTED_BLEU_4 = {"grouped": 3.3996e-05, "per_row": 9.6916e-06}


def write_original_csv(path: Path) -> Path:
    """A predictions CSV written as the original tool's ``save_and_log_results`` writes one (pandas ``to_csv``)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        n = 0
        for image, query, rows in PAIRS:
            for prediction, reference in rows:
                writer.writerow([n, image, query, prediction, reference, len(prediction.split()),
                                 len(reference.split()), False, False])
                n += 1
    return path


def _pycocoevalcap(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-4, METEOR, ROUGE-L and CIDEr-D exactly as COCOEvalCap.evaluate computes them (Java PTB tokenizer)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in predictions})
    meteor = Meteor()
    try:
        bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
        out = {"bleu_1": bleu[0], "bleu_4": bleu[3], "meteor": meteor.compute_score(gts, res)[0]}
    finally:
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    out["rouge_l"] = Rouge().compute_score(gts, res)[0]
    out["cider"] = Cider().compute_score(gts, res)[0]
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict[str, Path]:
    """The CSV, scored grouped (default) and per row, in two evaluation folders."""
    folder = tmp_path_factory.mktemp("original")
    src = write_original_csv(folder / "EXP_predictions_20250928_002113.csv")
    grouped = run_score(str(src), str(folder / "grouped")).parent
    per_row = run_score(str(src), str(folder / "per_row"), reference_mode="per_row").parent
    return {"csv": src, "grouped": grouped, "per_row": per_row}


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_rows_are_grouped_with_all_their_references(original, caplog):
    with caplog.at_level("WARNING", logger="panollava"):
        loaded = read_predictions(original["csv"])
    assert loaded.file_format == "panollava-v1-csv" and loaded.num_rows == NUM_ROWS
    assert [(r["image"], r["query"]) for r in loaded.records] == [(i, q) for i, q, _ in PAIRS]
    assert [r["sample_id"] for r in loaded.records] == [sample_id_for(i, q) for i, q, _ in PAIRS]
    assert [r["prediction"] for r in loaded.records] == [rows[0][0] for _, _, rows in PAIRS]  # the first row's
    assert [r["references"] for r in loaded.records] == [
        [ref for _, ref in rows if ref != "nan"] for _, _, rows in PAIRS
    ]
    assert loaded.prediction_choice == "first_row" and loaded.predictions_set_aside == 3 + 0 + 4 + 3
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"line(s) {NAN_LINE} (sample_id 8)" in m and "1 sample keeps 4 references" in m for m in messages)
    assert any("3 of 4 samples carry several different predictions (16 rows" in m
               and "set aside: 10 predictions" in m and "--reference_mode per_row" in m for m in messages)

    per_row = read_predictions(original["csv"], reference_mode="per_row")
    assert len(per_row.records) == NUM_ROWS - 1 and per_row.prediction_choice == "per_row"
    assert "8" not in {r["sample_id"] for r in per_row.records}  # the nan row is dropped, as the original did
    assert [(r["prediction"], r["references"]) for r in per_row.records] == [
        (p, [ref]) for _, _, rows in PAIRS for p, ref in rows if ref != "nan"
    ]


def test_grouped_and_per_row_scores_equal_pycocoevalcap(original):
    records = read_predictions(original["csv"]).records
    grouped = _pycocoevalcap({r["sample_id"]: r["prediction"] for r in records},
                             {r["sample_id"]: r["references"] for r in records})
    rows = [(p, ref) for _, _, pair_rows in PAIRS for p, ref in pair_rows if ref != "nan"]
    per_row = _pycocoevalcap({str(i): p for i, (p, _) in enumerate(rows)},
                             {str(i): [r] for i, (_, r) in enumerate(rows)})
    got_grouped, got_per_row = _metrics(original["grouped"]), _metrics(original["per_row"])
    for key in (*EXPECTED_GROUPED, "bleu_4"):
        assert got_grouped[key] == pytest.approx(grouped[key], rel=1e-6, abs=1e-9), key
        assert got_per_row[key] == pytest.approx(per_row[key], rel=1e-6, abs=1e-9), key
    for key in EXPECTED_GROUPED:
        assert got_grouped[key] == pytest.approx(EXPECTED_GROUPED[key], abs=5e-5), key
        assert got_per_row[key] == pytest.approx(EXPECTED_PER_ROW[key], abs=5e-5), key
    assert got_grouped["bleu_4"] == pytest.approx(EXPECTED_BLEU_4["grouped"], rel=1e-3)
    assert got_per_row["bleu_4"] == pytest.approx(EXPECTED_BLEU_4["per_row"], rel=1e-3)
    assert got_grouped["cider"] != pytest.approx(got_per_row["cider"], abs=1e-3)


def test_metrics_json_records_the_mode_and_the_counts(original):
    grouped, per_row = _metrics(original["grouped"])["dataset"], _metrics(original["per_row"])["dataset"]
    assert {k: grouped[k] for k in ("format", "reference_mode", "num_samples", "num_rows", "prediction_choice",
                                    "predictions_set_aside", "dropped_references")} == {
        "format": "panollava-v1-csv", "reference_mode": "grouped", "num_samples": 4, "num_rows": NUM_ROWS,
        "prediction_choice": "first_row", "predictions_set_aside": 10,
        "dropped_references": [f"{NAN_LINE} (sample_id 8)"]}
    assert (per_row["reference_mode"], per_row["num_samples"], per_row["num_rows"], per_row["prediction_choice"]) == (
        "per_row", NUM_ROWS - 1, NUM_ROWS, "per_row")
    assert grouped["references_sha256"] == per_row["references_sha256"]  # the same references either way
    assert _metrics(original["grouped"])["num_samples"] == 4


def test_compare_warns_about_the_modes(original, tmp_path, capsys):
    assert main(["compare", str(original["grouped"]), str(original["per_row"]), "--output_dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "used reference_mode 'per_row', the baseline 'grouped'" in err
    assert "scored each row's prediction against its own reference, the baseline scored the first row's" in err
    assert "other references" not in err and "another dataset" not in err


def test_report_and_compare_recognise_the_raw_file(original, capsys):
    assert main(["report", "--predictions", str(original["csv"])]) == 2
    err = capsys.readouterr().err
    assert "original PanoLLaVA tool" in err and "panollava-cli score --predictions" in err
    assert main(["compare", str(original["csv"].parent)]) == 2
    err = capsys.readouterr().err
    assert "EXP_predictions_20250928_002113.csv' is a predictions CSV of the original PanoLLaVA tool" in err
    assert "--reference_mode per_row" in err
    with pytest.raises(InvalidInputError, match="applies to CSVs with one reference per row"):
        read_predictions(original["grouped"] / "predictions_scored.jsonl", reference_mode="per_row")


REAL = Path("/work/orig-dc64bc5/results/eval_results")


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the original tool's committed results are not at {REAL}")
def test_a_real_file_of_the_original_tool():
    """5,961 rows = 1,149 (image, query) samples; three 'nan' references; per row, 5,958 rows (as it scored)."""
    path = sorted(REAL.glob("*/*_predictions_*.csv"))[0]
    grouped = read_predictions(path)
    assert (len(grouped.records), grouped.num_rows, len(grouped.dropped_references)) == (1149, 5961, 3)
    assert grouped.prediction_choice == "first_row" and grouped.predictions_set_aside > 4000
    assert len(read_predictions(path, reference_mode="per_row").records) == 5958
