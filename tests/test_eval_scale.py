"""Evaluation at scale: every sample exactly once on 1, 2 or 3 processes, resumable after SIGKILL, refusing a resume
with other settings, failing fast when one rank fails.

One CSV of 19 samples (prime: divisible by neither 2 nor 3) on 6 real panoramas with 1 to 5 queries each, rows
interleaved. In-process runs give the reference outputs; the multi-process runs are few launches: Lightning's own
DDP launcher (2 ranks, sampled), ``torchrun -m panollava test`` (2 ranks, greedy) and one ``torchrun`` script that
runs two evaluations in one process group (3 ranks, greedy and sampled).
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multi_eval import subprocess_env
from panollava.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
QUERIES_PER_PANORAMA = (1, 2, 3, 4, 5, 4)
EXTRA_QUERIES = ("the ceiling", "the floor")
COMMON = ("--max_new_tokens", "8", "--seed", "3")


@pytest.fixture(scope="module")
def scale_csv(shared_data_dir: Path, tmp_path_factory) -> Path:
    """19 samples on 6 panoramas (the 5 real ones + a copy under another name), 1 to 5 queries each."""
    folder = tmp_path_factory.mktemp("scale_data")
    source = shared_data_dir / "quic360-sample"
    with open(source / "test.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_image: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        by_image.setdefault(row["url"], {}).setdefault(row["query"], []).append(row["annotation"])
    images = sorted(by_image)
    (folder / "images").mkdir()
    for url in images:
        shutil.copy(source / url, folder / url)
    copy = "images/copy_of_" + Path(images[0]).name
    shutil.copy(source / images[0], folder / copy)
    by_image[copy] = dict(by_image[images[0]])
    groups = []
    for url, count in zip([*images, copy], QUERIES_PER_PANORAMA):
        queries = list(by_image[url].items())
        first_refs = queries[0][1]
        queries += [(q, first_refs[:2]) for q in EXTRA_QUERIES]  # extra queries reuse real captions as references
        groups.append([(url, q, refs) for q, refs in queries[:count]])
    out_rows = []
    while any(groups):  # interleave the panoramas' rows, as a CSV may list them
        for group in groups:
            if group:
                url, query, refs = group.pop(0)
                out_rows += [(url, query, ref) for ref in refs]
    path = folder / "scale.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(out_rows)
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _same(a: Path, b: Path) -> None:
    ra, rb = _records(a), _records(b)
    assert len(ra) == 19 and len({r["sample_id"] for r in ra}) == 19
    assert [(r["sample_id"], r["index"], r["prediction"]) for r in ra] == [
        (r["sample_id"], r["index"], r["prediction"]) for r in rb
    ]
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "num_samples"):
        assert ma[key] == mb[key], key


def _args(tiny_run, scale_csv: Path, out: Path, *extra: str) -> list[str]:
    return ["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(scale_csv), "--output_dir", str(out),
            *COMMON, *extra]


_env = subprocess_env


@pytest.fixture(scope="module")
def reference(tiny_run, scale_csv, tmp_path_factory) -> dict[str, Path]:
    """In-process runs: greedy and sampled, batch 4 with prefix sharing and batch 1 without (greedy batch 1 also
    cuts the views on the model's side, the GPU path)."""
    root = tmp_path_factory.mktemp("scale_ref")
    runs = {
        "greedy": ("--batch_size", "4"),
        # batch 1, no prefix sharing, views cut after the upload (as on a GPU) instead of in the loader
        "greedy_b1": ("--batch_size", "1", "--share_prefix", "false", "--data.view_device", "model"),
        "sampled": ("--batch_size", "4", "--do_sample", "true"),
        "sampled_b1": ("--batch_size", "1", "--do_sample", "true", "--share_prefix", "false"),
    }
    for name, extra in runs.items():
        assert main(_args(tiny_run, scale_csv, root / name, *extra)) == 0, name
    return {name: root / name for name in runs}


@pytest.mark.slow
def test_batch_size_and_sharing_do_not_change_captions(reference):
    _same(reference["greedy"], reference["greedy_b1"])
    _same(reference["sampled"], reference["sampled_b1"])
    assert [r["prediction"] for r in _records(reference["greedy"])] != [
        r["prediction"] for r in _records(reference["sampled"])
    ]
    state = json.loads((reference["greedy"] / "eval_state.json").read_text())
    assert state["complete"] and state["attempts"][-1]["generated"] == 19
    assert not (reference["greedy"] / "shards").exists()
    metrics = json.loads((reference["greedy"] / "metrics.json").read_text())
    assert metrics["decoding"]["path"] == "shared_prefix" and metrics["decoding"]["top_k"] == 0
    assert metrics["decoding"]["max_new_tokens"] == 8 == metrics["decoding_requested"]["max_new_tokens"]
    b1 = json.loads((reference["greedy_b1"] / "metrics.json").read_text())
    assert b1["decoding"]["path"] == "plain" and b1["decoding"]["share_prefix"] is False


@pytest.mark.slow
@pytest.mark.ddp
def test_two_and_three_processes_match_one(tiny_run, scale_csv, reference, tmp_path):
    ddp = ("--trainer.accelerator", "cpu", "--trainer.strategy", "ddp")
    launches = {
        # Lightning's own launcher, 2 ranks, sampled.
        "lightning2": [sys.executable, "-m", "panollava",
                       *_args(tiny_run, scale_csv, tmp_path / "l2", "--batch_size", "4", "--do_sample", "true",
                              *ddp, "--trainer.devices", "2")],
        # torchrun -m panollava test, 2 ranks, greedy, batch 2.
        "torchrun2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      "-m", "panollava",
                      *_args(tiny_run, scale_csv, tmp_path / "t2", "--batch_size", "2", *ddp,
                             "--trainer.devices", "2")],
        # One torchrun launch, two evaluations in the same process group, 3 ranks (greedy, then sampled).
        "torchrun3": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                      str(PROJECT_ROOT / "tests" / "multi_eval.py"), json.dumps([
                          _args(tiny_run, scale_csv, tmp_path / "t3g", "--batch_size", "3", *ddp,
                                "--trainer.devices", "3"),
                          _args(tiny_run, scale_csv, tmp_path / "t3s", "--batch_size", "4", "--do_sample", "true",
                                *ddp, "--trainer.devices", "3"),
                      ])],
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                                    cwd=tmp_path) for name, cmd in launches.items()}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{output[-4000:]}"
        if name == "lightning2":
            assert output.count("Checkpoint directory") == 1  # rank 0 alone prints
            assert "19/19 [" in output, output[-3000:]  # rank 0's bar counts the samples of both ranks
    _same(reference["sampled"], tmp_path / "l2")
    _same(reference["greedy"], tmp_path / "t2")
    _same(reference["greedy"], tmp_path / "t3g")
    _same(reference["sampled"], tmp_path / "t3s")
    assert json.loads((tmp_path / "t3g" / "metrics.json").read_text())["evaluation"]["world_size"] == 3


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(tiny_run, scale_csv, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "panollava", *_args(tiny_run, scale_csv, out, "--batch_size", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=tmp_path)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            shards = list((out / "shards").glob("*.jsonl")) if (out / "shards").is_dir() else []
            if sum(p.read_text().count("\n") for p in shards) >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()
    saved = sum(p.read_text().count("\n") for p in (out / "shards").glob("*.jsonl"))
    assert 2 <= saved < 19

    assert main(_args(tiny_run, scale_csv, out, "--batch_size", "4")) == 0  # another batch size may resume
    _same(reference["greedy"], out)
    state = json.loads((out / "eval_state.json").read_text())
    first, second = state["attempts"]
    assert second["resumed"] == saved and second["generated"] == 19 - saved == second["remaining"]

    # Other decoding settings are refused, naming the setting; --overwrite true starts fresh.
    status = main(_args(tiny_run, scale_csv, out, "--batch_size", "4", "--max_new_tokens", "5"))
    assert status != 0
    assert json.loads((out / "metrics.json").read_text())["predictions_sha256"]  # untouched
    assert main(_args(tiny_run, scale_csv, out, "--batch_size", "4", "--max_new_tokens", "5",
                      "--overwrite", "true")) == 0
    state = json.loads((out / "eval_state.json").read_text())
    assert len(state["attempts"]) == 1 and state["attempts"][0]["generated"] == 19

    # A rerun into the finished folder generates nothing.
    assert main(_args(tiny_run, scale_csv, out, "--batch_size", "4", "--max_new_tokens", "5")) == 0
    state = json.loads((out / "eval_state.json").read_text())
    assert state["attempts"][-1]["generated"] == 0 and state["attempts"][-1]["resumed"] == 19


@pytest.mark.slow
@pytest.mark.ddp
def test_a_failing_rank_ends_the_run_and_old_metrics_never_pair_with_new_predictions(
    tiny_run, scale_csv, reference, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(scale_csv.parent, broken)
    victim = next((broken / "images").glob("copy_of_*"))
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    shutil.copytree(reference["greedy"], out)  # a finished evaluation with its metrics.json
    cmd = [sys.executable, "-m", "panollava",
           *_args(tiny_run, broken / "scale.csv", out, "--batch_size", "4", "--overwrite", "true",
                  "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2")]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 60, elapsed
    assert victim.name in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    metrics = out / "metrics.json"
    if metrics.exists():  # never the old metrics beside new predictions
        from panollava.outputs.files import sha256_file

        assert json.loads(metrics.read_text())["predictions_sha256"] == sha256_file(out / "predictions.jsonl")
    assert not metrics.exists()
