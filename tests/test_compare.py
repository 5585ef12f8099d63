"""compare: leaderboard rows, comparability warnings, run-directory lookup, bootstrap figures with known answers,
and the leaderboard page in headless Chromium."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest_browser import read_jsonl

from panollava.cli import main
from panollava.compare import run_compare
from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metrics.bootstrap import bootstrap_interval, paired_bootstrap_pvalue


# -- bootstrap: known answers -----------------------------------------------------------------------------------------
def test_identical_systems_give_p_one():
    values = np.random.default_rng(1).gamma(0.5, 1.0, size=200)
    assert paired_bootstrap_pvalue(values, values.copy(), num_resamples=1000) == 1.0


def test_clear_difference_gives_the_floor_and_noise_does_not():
    rng = np.random.default_rng(2)
    weak = rng.uniform(0.0, 0.1, size=300)
    assert paired_bootstrap_pvalue(weak, weak + 0.5, num_resamples=1000) == pytest.approx(1 / 1001)
    noise = rng.normal(0.0, 1.0, size=300)
    p = paired_bootstrap_pvalue(noise, noise[::-1].copy(), num_resamples=2000)  # same values, other pairing
    assert p > 0.5


def test_interval_covers_the_mean_and_matches_the_normal_approximation():
    values = np.random.default_rng(3).exponential(1.0, size=2000)
    ci = bootstrap_interval(values, num_resamples=4000, seed=0)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert ci.low < ci.mean < ci.high
    assert ci.mean == pytest.approx(values.mean())
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    again = bootstrap_interval(values, num_resamples=500, seed=7)
    assert bootstrap_interval(values, num_resamples=500, seed=7) == again


def test_bootstrap_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="same samples"):
        paired_bootstrap_pvalue([1.0, 2.0], [1.0])
    with pytest.raises(InvalidInputError, match="finite"):
        bootstrap_interval([1.0, float("nan")])


# -- compare on real evaluation folders -------------------------------------------------------------------------------
def test_oracle_beats_weak_and_identical_is_p_one(evaluations, tmp_path):
    """Captions equal to a reference vs the weak tiny model: p < 0.01; a copy of the same evaluation: p = 1."""
    real, oracle = evaluations["real"], evaluations["oracle"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metrics.json", "predictions.jsonl"):
        (copy / name).write_bytes((real / name).read_bytes())
    result = run_compare([str(real), str(oracle), str(copy)], str(tmp_path / "out"))
    base, strong, same = result["rows"]
    assert base["baseline"] and base["p_cider"] is None
    assert strong["p_cider"] < 0.01 and strong["p_meteor"] < 0.01
    assert strong["delta_cider"] > 1.0 and strong["cider_ci_low"] > base["cider_ci_high"]
    assert same["p_cider"] == 1.0 and same["p_meteor"] == 1.0 and same["delta_cider"] == 0.0
    # CIDEr-D's interval is around the corpus value: the corpus CIDEr-D is the mean of the per-sample values
    assert strong["cider_sample_mean"] == pytest.approx(strong["cider"], rel=1e-9)
    assert strong["cider_ci_low"] <= strong["cider"] <= strong["cider_ci_high"]
    assert result["warnings"] == []


def test_three_folders_one_on_another_dataset(evaluations, tmp_path, capsys):
    """The CLI prints the table, and warns that the other dataset's row is not comparable."""
    folders = [str(evaluations[k]) for k in ("real", "mixed", "other_dataset")]
    out = tmp_path / "board"
    assert main(["compare", *folders, "--output_dir", str(out)]) == 0
    captured = capsys.readouterr()
    table = [line for line in captured.out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert "CIDEr-D [95% CI]" in table[0] and "baseline" in table[2]
    assert "row 3" in captured.err and "another dataset" in captured.err
    assert "shares no sample_id with the baseline" in captured.err
    assert "row 2" not in captured.err  # same data, references and decoding as the baseline

    with (out / "leaderboard.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["folder"] for r in rows] == folders
    mixed = read_jsonl(evaluations["mixed"] / "predictions.jsonl")
    ciders = [r["scores"]["cider"] for r in mixed]
    assert float(rows[1]["cider"]) == pytest.approx(float(np.mean(ciders)), rel=1e-9)
    assert rows[2]["p_cider"] == "" and rows[1]["p_cider"] != ""


def test_decoding_and_reference_mode_differences_warn(evaluations, tmp_path):
    changed = tmp_path / "changed"
    changed.mkdir()
    metrics = json.loads((evaluations["real"] / "metrics.json").read_text())
    metrics["decoding"]["max_new_tokens"] = 8
    metrics["dataset"]["reference_mode"] = "legacy"
    (changed / "metrics.json").write_text(json.dumps(metrics))
    (changed / "predictions.jsonl").write_bytes((evaluations["real"] / "predictions.jsonl").read_bytes())
    warnings = run_compare([str(evaluations["real"]), str(changed)], str(tmp_path))["warnings"]
    assert any("decoded differently" in w and "max_new_tokens 8 vs" in w for w in warnings)
    assert any("reference_mode 'legacy'" in w for w in warnings)


def test_baseline_flag_and_run_directory_lookup(evaluations, tiny_run, tmp_path, capsys):
    """A run directory resolves to its latest evaluation under ./eval_results, and says which it picked."""
    old = os.getcwd()
    os.chdir(evaluations["cwd"])
    try:
        result = run_compare([str(evaluations["oracle"]), str(tiny_run["run_dir"])], str(tmp_path),
                             baseline=str(tiny_run["run_dir"]))
    finally:
        os.chdir(old)
    oracle, picked = result["rows"]
    assert picked["folder"] == str(evaluations["real"]) and picked["baseline"]
    assert "latest of 1 evaluation(s)" in picked["picked"]
    assert oracle["p_cider"] < 0.01 and oracle["delta_cider"] > 0

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="has no evaluation under .*Run test first"):
        run_compare([str(tiny_run["run_dir"])], str(tmp_path), cwd=str(empty))
    with pytest.raises(InputNotFoundError, match="neither an evaluation folder"):
        run_compare([str(empty)], str(tmp_path))


def test_leaderboard_page_in_chromium(evaluations, chromium, tmp_path):
    folders = [str(evaluations[k]) for k in ("mixed", "oracle", "real")]
    result = run_compare(folders, str(tmp_path))
    page = chromium.load(result["html_path"])
    assert len(page.rows) == 3 and page.body["data-shown"] == "3"
    assert [int(r["data-index"]) for r in page.rows] == [1, 2, 3]
    by_cider = chromium.load(result["html_path"], "sort=cider")
    ciders = by_cider.values("cider")
    assert ciders == sorted(ciders) and ciders[0] == min(r["cider"] for r in result["rows"])
    assert [int(r["data-index"]) for r in by_cider.rows] == [3, 1, 2]  # weak, mixed, oracle
