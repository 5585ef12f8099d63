"""compare: leaderboard rows, comparability warnings, run-directory lookup, bootstrap figures with known answers,
and the leaderboard page in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest_browser import PROJECT_ROOT, read_jsonl

from panollava.cli import main
from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metrics.bootstrap import bootstrap_interval, holm_adjust, paired_bootstrap_pvalue
from panollava.outputs.leaderboard import run_compare


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
    assert strong["cider_significant"] is True and "CIDEr-D is significantly higher" in strong["cider_verdict"]
    assert strong["p_cider_holm"] == pytest.approx(2 * strong["p_cider"]) and same["cider_significant"] is False
    assert "on 5 panoramas" in strong["cider_verdict"] and base["cider_verdict"] == "baseline"
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


# -- panoramas, not samples (issue 17) ------------------------------------------------------------------------------
def test_one_sample_per_cluster_is_the_sample_bootstrap_and_holm_has_known_answers():
    values = np.random.default_rng(4).gamma(0.5, 1.0, size=300)
    plain = bootstrap_interval(values, num_resamples=1000, seed=3)
    clustered = bootstrap_interval(values, num_resamples=1000, seed=3, clusters=[f"p{i}" for i in range(300)])
    assert (clustered.low, clustered.high) == pytest.approx((plain.low, plain.high), abs=1e-12)
    assert clustered.num_clusters == 300 and plain.num_clusters is None
    assert holm_adjust([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == [1.0, 1.0] and holm_adjust([]) == []
    with pytest.raises(InvalidInputError, match="2 cluster keys for 3"):
        bootstrap_interval([1.0, 2.0, 3.0], clusters=["a", "b"])


@pytest.fixture(scope="module")
def five_queries_per_panorama(shared_data_dir, tmp_path_factory):
    """Two evaluations of 40 panoramas × 5 queries (QuIC-360 test references), scored by ``score``: a model is
    right or wrong about a whole panorama (its queries are correlated), A on every 2nd panorama, B on every 3rd;
    plus an identical copy of A."""
    from panollava.commands.score import run_score
    from panollava.metrics.human_baseline import human_leave_one_out_records

    groups = human_leave_one_out_records(shared_data_dir / "quic360" / "test.csv")[:200]
    folder = tmp_path_factory.mktemp("clusters")
    weak = "a room with a table and chairs"
    out = {}
    for name, every in (("A", 2), ("B", 3)):
        records = [
            {"sample_id": f"s{i:03d}", "image": f"images/pano_{i // 5:02d}.jpg", "query": g["query"],
             "prediction": g["references"][0] if (i // 5) % every == 0 else weak, "references": g["references"]}
            for i, g in enumerate(groups)
        ]
        src = folder / f"{name}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        out[name] = run_score(str(src), str(folder / name)).parent
    copy = folder / "A_copy"
    shutil.copytree(out["A"], copy)
    out["A_copy"] = copy
    return out


def test_compare_resamples_panoramas(five_queries_per_panorama, tmp_path, capsys):
    evals = five_queries_per_panorama
    assert main(["compare", str(evals["A"]), str(evals["B"]), str(evals["A_copy"]),
                 "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    with (tmp_path / "leaderboard.csv").open(newline="") as fh:
        a, b, same = list(csv.DictReader(fh))
    assert a["num_panoramas"] == "40" and a["paired_panoramas"] == "40"

    scored = read_jsonl(evals["A"] / "predictions_scored.jsonl")
    cider = [r["scores"]["cider"] for r in scored]
    per_sample = bootstrap_interval(cider, seed=0)
    clustered = bootstrap_interval(cider, seed=0, clusters=[r["image"] for r in scored])
    assert (float(a["cider_ci_low"]), float(a["cider_ci_high"])) == pytest.approx((clustered.low, clustered.high))
    width_samples, width_panoramas = per_sample.high - per_sample.low, clustered.high - clustered.low
    # 5 correlated queries per panorama: the honest interval is about sqrt(5) times wider
    assert width_panoramas > 1.6 * width_samples, (width_samples, width_panoramas)
    assert (width_samples, width_panoramas) == pytest.approx((0.3377, 0.7528), abs=1e-4)  # seed 0, 2,000 resamples

    # identical runs: p = 1 whatever is resampled, and the verdict says so
    assert float(same["p_cider"]) == 1.0 and float(same["p_meteor"]) == 1.0
    assert same["cider_significant"] == "False" and "no significant difference" in same["cider_verdict"]
    # B vs A: the paired p-value over panoramas is larger than the one over samples would be
    b_scores = {r["sample_id"]: r["scores"]["cider"] for r in read_jsonl(evals["B"] / "predictions_scored.jsonl")}
    ids = [r["sample_id"] for r in scored]
    p_samples = paired_bootstrap_pvalue(cider, [b_scores[i] for i in ids], seed=0)
    # resampling samples would call the difference significant (p 0.0025); over panoramas it is noise (p 0.187)
    assert p_samples == pytest.approx(0.0025, abs=5e-4) and float(b["p_cider"]) == pytest.approx(0.1869, abs=1e-3)
    assert b["cider_significant"] == "False" and "within the sampling noise" in b["cider_verdict"]
    assert float(b["p_cider_holm"]) == pytest.approx(holm_adjust([float(b["p_cider"]), 1.0])[0])
    assert "Significance against the baseline (paired bootstrap resampling panoramas, Holm-corrected" in printed
    assert f"row 2 ({b['run']}): CIDEr-D" in printed and "row 3" in printed


def test_compare_runs_without_torch(evaluations, tmp_path):
    """``compare --help``, the leaderboard module and a whole comparison (decoding settings included, their
    defaults read from the schema) load neither torch nor transformers nor lightning."""
    real, oracle = evaluations["real"], evaluations["oracle"]
    assert json.loads((real / "metrics.json").read_text())["decoding"]  # the decoding comparison runs
    code = ("import sys\nfrom panollava.cli import main\nassert main(['compare', '--help']) == 0\n"
            "import panollava.outputs.leaderboard, panollava.commands.compare\n"
            f"assert main(['compare', {str(real)!r}, {str(oracle)!r}, '--output_dir', {str(tmp_path / 'out')!r}]) == 0\n"
            "heavy = {'torch', 'transformers', 'lightning'} & set(sys.modules)\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                   stdout=subprocess.DEVNULL)
    assert (tmp_path / "out" / "leaderboard.csv").is_file()
