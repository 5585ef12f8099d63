"""``panollava-cli judge`` against a real chat-completions server on 127.0.0.1, a local tiny transformers judge,
resume after a kill, pairwise mode, and the pieces (rubric, answer validation, cluster bootstrap).

The server (:class:`ChatServer`, http.server in a thread, port 0):

It speaks the subset of the OpenAI protocol the judge uses (``POST /v1/chat/completions``, non-streaming). What it
answers is scripted per sample: each test caption carries a marker ``case-NN``, found in the user message, and
``script[NN]`` is the list of behaviours of its successive requests (the last one repeats). A behaviour is:

- ``{"json": {...}}`` / ``{"text": "..."}``: a 200 answer with that content;
- ``{"status": 429, "headers": {"Retry-After": "1"}}``: an error status;
- ``{"hang": True}``: no answer until the test releases the server (``release``), never a sleep;
- a callable ``f(request_body) -> behaviour``.

Every request is recorded (body, headers, arrival time). ``block_after = N`` makes every request after the N-th
answered one wait on ``unblock`` (and set ``blocked``), so a test can kill a client at a known point.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from panollava.cli import main
from panollava.judge.rubric import load_rubric

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"spatial_coherence": 0.30, "query_relevance": 0.25, "factual_accuracy": 0.20, "completeness": 0.15,
           "fluency": 0.10}
DIMS = list(WEIGHTS)

_MARKER = re.compile(r"case-(\d+)")


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a request (text parts joined)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")


def case_of(body: dict[str, Any]) -> int:
    """The ``case-NN`` marker of the first caption in a request."""
    match = _MARKER.search(user_text(body))
    assert match, "every test caption carries a case-NN marker"
    return int(match.group(1))


class ChatServer:
    """The server; use as a context manager (``release`` is set and the server shut down on exit)."""

    def __init__(self, script: dict[int, Any] | None = None, default: Any = None) -> None:
        self.script: dict[int, Any] = dict(script or {})
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.per_case: dict[int, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.release = threading.Event()   # set at teardown: frees every hanging request
        self.unblock = threading.Event()
        self.blocked = threading.Event()
        self.block_after: int | None = None
        self.answered = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                case = case_of(body)
                with server.lock:
                    attempt = server.per_case[case]
                    server.per_case[case] += 1
                    server.requests.append({"case": case, "attempt": attempt, "body": body,
                                            "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "time": time.monotonic()})
                    must_block = server.block_after is not None and server.answered >= server.block_after
                if must_block:
                    server.blocked.set()
                    server.unblock.wait()
                    if server.release.is_set():
                        return
                behaviour = server.behaviour(case, attempt, body)
                if callable(behaviour):
                    behaviour = behaviour(body)
                if behaviour.get("hang"):
                    server.release.wait()
                    return
                if "status" in behaviour:
                    return self._send(behaviour["status"], behaviour.get("body", {"error": {"message": "scripted"}}),
                                      behaviour.get("headers"))
                content = behaviour["text"] if "text" in behaviour else json.dumps(behaviour["json"])
                with server.lock:
                    server.answered += 1
                self._send(200, {
                    "id": f"chatcmpl-{case}-{attempt}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100 + case, "completion_tokens": 20, "total_tokens": 120 + case},
                })

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) before the answer
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def behaviour(self, case: int, attempt: int, body: dict[str, Any]) -> Any:
        steps = self.script.get(case, self.default)
        if steps is None:
            raise AssertionError(f"no script for case {case}")
        if isinstance(steps, list):
            return steps[min(attempt, len(steps) - 1)]
        return steps

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self, case: int) -> int:
        with self.lock:
            return self.per_case[case]

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.unblock.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# -- evaluation folders, as the engine writes them -------------------------------------------------------------------
def _samples(data_dir: Path) -> list[dict[str, Any]]:
    """The 15 (image, query) samples of the real QuIC-360 sample, each with all its references."""
    from panollava.data.dataset import sample_id_for

    csv_path = data_dir / "quic360-sample" / "test.csv"
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rec = groups.setdefault((row["url"], row["query"]), {
                "sample_id": sample_id_for(row["url"], row["query"]), "index": len(groups), "image": row["url"],
                "image_path": str((csv_path.parent / row["url"]).resolve()), "query": row["query"],
                "references": [],
            })
            rec["references"].append(row["annotation"])
    return list(groups.values())


def write_evaluation(folder: Path, data_dir: Path, caption) -> Path:
    """predictions.jsonl/.csv (panollava.outputs.files.write_predictions, the engine's writer) and a metrics.json with the
    provenance keys 'test' records; ``caption(i)`` is sample i's prediction."""
    from panollava.outputs.files import RECORD_KEYS, sha256_file, write_json_atomic, write_predictions

    csv_path = data_dir / "quic360-sample" / "test.csv"
    records = []
    for i, rec in enumerate(_samples(data_dir)):
        rec = dict(rec, prediction=caption(i))
        records.append({k: rec[k] for k in RECORD_KEYS})
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(folder, records)
    metrics = {
        "bleu_4": None, "cider": None, "num_samples": len(records), "unavailable": {}, "failed": {},
        "notes": ["evaluation folder written by tests/test_judge.py"],
        "dataset": {"path": str(csv_path), "sha256": sha256_file(csv_path), "reference_mode": "grouped"},
        "settings": {"crop_strategy": {"value": "anyres_e2p", "source": "metadata"},
                     "image_size": {"value": [32, 32], "source": "metadata"}},
        "decoding": {"max_new_tokens": 32, "num_beams": 1, "do_sample": False},
        "evaluation": {"mode": "test", "world_size": 1},
    }
    write_json_atomic(folder / "metrics.json", metrics)
    return folder


def scores_answer(values: list[int]) -> dict[str, Any]:
    return {"json": dict(zip(DIMS, values))}


def weighted(values: list[int]) -> float:
    return sum(WEIGHTS[d] * v for d, v in zip(DIMS, values)) * 20


# -- endpoint: means, failures with reasons, nothing imputed ---------------------------------------------------------
VALID = {0: [5, 4, 3, 4, 5], 1: [1, 2, 1, 1, 3], 2: [3, 3, 3, 3, 3], 3: [4, 5, 4, 4, 4], 4: [2, 1, 2, 3, 5],
         5: [5, 5, 4, 2, 4], 11: [2, 3, 4, 5, 1], 12: [4, 4, 5, 3, 2]}
FAILS = {  # case -> a piece of the recorded reason
    6: "no JSON object", 7: "factual_accuracy missing", 8: "completeness = 6 is outside 1-5",
    9: "query_relevance is not an integer (3.5)", 10: "fluency is null", 13: "HTTP 500", 14: "timed out",
}


def endpoint_script() -> dict[int, Any]:
    script: dict[int, Any] = {c: scores_answer(v) for c, v in VALID.items()}
    script[5] = {"text": "<think>the caption is fine {not json}</think>\n```json\n" + json.dumps(
        {d: {"score": v, "why": "ok"} for d, v in zip(DIMS, VALID[5])}) + "\n```"}
    script[6] = {"text": "The caption is quite good, I would give it a 4."}
    script[7] = {"json": {d: 3 for d in DIMS if d != "factual_accuracy"}}
    script[8] = {"json": {**{d: 3 for d in DIMS}, "completeness": 6}}
    script[9] = {"json": {**{d: 3 for d in DIMS}, "query_relevance": 3.5}}
    script[10] = {"json": {**{d: 3 for d in DIMS}, "fluency": None}}
    script[11] = [{"status": 429, "headers": {"Retry-After": "1"}}, scores_answer(VALID[11])]
    script[12] = [{"status": 500}, scores_answer(VALID[12])]
    script[13] = [{"status": 500}]
    script[14] = [{"hang": True}]
    return script


def judge_args(eval_dir: Path, server: ChatServer, *extra: str) -> list[str]:
    return ["judge", "--eval_dir", str(eval_dir), "--endpoint", server.url, "--judge_model", "judge-test-model",
            "--api_key_env", "PANOLLAVA_TEST_JUDGE_KEY", "--timeout_s", "1", "--max_retries", "1",
            "--retry_backoff_s", "0.05", "--image_width", "256", "--write_report", "false", *extra]


@pytest.fixture()
def judge_key(monkeypatch):
    monkeypatch.setenv("PANOLLAVA_TEST_JUDGE_KEY", "sk-test-123")


def test_endpoint_means_failures_and_rerun(shared_data_dir, tmp_path, judge_key):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir,
                              lambda i: f"a wooden table near the window case-{i:02d}")
    before = json.loads((folder / "metrics.json").read_text())
    with ChatServer(endpoint_script()) as server:
        assert main(judge_args(folder, server, "--max_concurrency", "4")) == 3  # some samples failed
        metrics = json.loads((folder / "metrics.json").read_text())
        block = metrics.pop("judge")
        assert metrics == before  # every other key untouched

        # the means: a hand computation over the parseable answers only
        assert block["n"] == len(VALID) == 8 and block["num_samples"] == 15
        assert block["score"] == pytest.approx(sum(weighted(v) for v in VALID.values()) / len(VALID), abs=1e-9)
        assert block["score"] == 65.5  # (84 + 29 + 60 + 85 + 44 + 85 + 60 + 77) / 8, stored unrounded
        for k, d in enumerate(DIMS):
            assert block["dimensions"][d]["mean"] == pytest.approx(sum(v[k] for v in VALID.values()) / 8)
            assert block["dimensions"][d]["weight"] == WEIGHTS[d]
        ids = [r["sample_id"] for r in _samples(shared_data_dir)]
        assert set(block["per_sample"]) == {ids[c] for c in VALID}  # failed samples have no score: none imputed
        for c, v in VALID.items():
            assert block["per_sample"][ids[c]] == pytest.approx(weighted(v))
        # failures: counted, with reasons
        assert block["num_failed"] == len(FAILS) == 7 and block["failure_rate"] == pytest.approx(7 / 15)
        assert set(block["failed"]) == {ids[c] for c in FAILS}
        for c, piece in FAILS.items():
            assert piece in block["failed"][ids[c]], (c, block["failed"][ids[c]])
        ci = block["ci95"]
        assert ci["low"] < block["score"] < ci["high"] and ci["num_clusters"] == 5 and ci["confidence"] == 0.95
        # the shared panorama-cluster bootstrap (compare's), clusters = each sample's image_path
        from panollava.metrics.bootstrap import bootstrap_interval

        image_of = {r["sample_id"]: r["image_path"] for r in _samples(shared_data_dir)}
        shared = bootstrap_interval(list(block["per_sample"].values()), seed=0,
                                    clusters=[image_of[s] for s in block["per_sample"]])
        assert (ci["low"], ci["high"], ci["num_resamples"]) == (shared.low, shared.high, 2000)
        assert block["images"] == {"attached": True, "width": 256, "text_only": False}
        assert block["identity"]["model"] == "judge-test-model" and block["identity"]["served_model"] == [
            "judge-test-model"]
        assert block["rubric"]["sha256"] == load_rubric().sha256
        assert block["usage"]["answers"] == 13

        # what the server received
        assert server.count(11) == 2 and server.count(12) == 2 and server.count(13) == 2 and server.count(14) == 2
        assert all(server.count(c) == 1 for c in range(11))
        first, second = [r for r in server.requests if r["case"] == 11]
        assert second["time"] - first["time"] >= 0.95  # Retry-After: 1 honoured
        req = next(r for r in server.requests if r["case"] == 0)
        body = req["body"]
        assert req["headers"]["authorization"] == "Bearer sk-test-123"
        assert body["model"] == "judge-test-model" and body["temperature"] == 0 and body["seed"] == 0
        assert body.get("stream") in (None, False) and body["response_format"]["type"] == "json_schema"
        schema = body["response_format"]["json_schema"]["schema"]
        assert set(schema["required"]) == set(DIMS) and schema["properties"]["fluency"]["enum"] == [1, 2, 3, 4, 5]
        text = user_text(body)
        rec = _samples(shared_data_dir)[0]
        assert "a wooden table near the window case-00" in text and rec["query"] in text
        assert all(ref in text for ref in rec["references"])
        image = [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
        assert len(image) == 1 and image[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        cache_lines = (folder / "judge_cache.jsonl").read_text().splitlines()
        assert len(cache_lines) == 13  # answers only; the two failed calls are asked again next time

        # rerun with a healthy server: only the two failed calls are asked again
        server.script[13] = scores_answer([3, 3, 3, 3, 3])
        server.script[14] = scores_answer([4, 4, 4, 4, 4])
        asked_before = len(server.requests)
        assert main(judge_args(folder, server)) == 3  # the 5 invalid answers stay failed (cached answers)
        assert len(server.requests) - asked_before == 2
        assert {r["case"] for r in server.requests[asked_before:]} == {13, 14}
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    assert block["n"] == 10 and block["num_failed"] == 5 and block["cache"] == {
        "path": str(folder / "judge_cache.jsonl"), "reused": 13, "asked": 2}
    expected = [weighted(v) for v in VALID.values()] + [60.0, 80.0]
    assert block["score"] == pytest.approx(sum(expected) / 10)

    from panollava.judge import judge_sample_scores

    scores = judge_sample_scores(folder)
    assert scores.per_sample == block["per_sample"] and scores.score == block["score"]
    assert scores.identity["model"] == "judge-test-model" and scores.identity["rubric_sha256"] == load_rubric().sha256
    detail = [json.loads(line) for line in (folder / "judge_scores.jsonl").read_text().splitlines()]
    assert len(detail) == 15 and detail[0]["dimensions"] == dict(zip(DIMS, VALID[0]))


# -- killed, then rerun: no second request for an answered sample ---------------------------------------------------
def test_killed_run_resumes_without_asking_answered_samples(shared_data_dir, tmp_path):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"two chairs and a sofa case-{i:02d}")
    answers = {c: [1 + (c + k) % 5 for k in range(5)] for c in range(15)}
    with ChatServer({c: scores_answer(v) for c, v in answers.items()}) as server:
        server.block_after = 5  # the 6th request waits until the test says so
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OPENAI_API_KEY": "sk-test"}
        args = judge_args(folder, server, "--max_concurrency", "1", "--api_key_env", "OPENAI_API_KEY")
        proc = subprocess.Popen([sys.executable, "-m", "panollava", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            assert server.blocked.wait(timeout=120), proc.stdout.read().decode() if proc.poll() is not None else ""
        finally:
            proc.kill()  # killed while the 6th answer is in flight
            proc.wait(timeout=60)
        assert server.answered == 5
        cache = folder / "judge_cache.jsonl"
        assert len(cache.read_text().splitlines()) == 5  # the 5 answers were on disk before the 6th was asked
        assert "judge" not in json.loads((folder / "metrics.json").read_text())
        in_flight = server.requests[-1]["case"]
        with cache.open("a") as fh:  # what a kill in the middle of a write leaves: a line without its end
            fh.write('{"key": "0123", "sample_id": "cut sh')
        server.block_after = None
        server.unblock.set()
        asked_before = len(server.requests)
        assert main(judge_args(folder, server, "--api_key_env", "OPENAI_API_KEY")) == 0
        rerun = [r["case"] for r in server.requests[asked_before:]]
    assert sorted(rerun) == sorted(set(range(15)) - {r["case"] for r in server.requests[:5]})
    assert len(rerun) == 10 and in_flight in rerun  # only the answer in flight was lost
    assert all(server.count(c) == 1 for c in range(15) if c != in_flight) and server.count(in_flight) == 2
    lines = cache.read_text().splitlines()
    assert len(lines) == 15 and all(json.loads(line)["sample_id"] != "cut sh" for line in lines)
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    assert block["n"] == 15 and block["num_failed"] == 0 and block["cache"]["reused"] == 5
    assert block["score"] == pytest.approx(sum(weighted(v) for v in answers.values()) / 15)


# -- pairwise ------------------------------------------------------------------------------------------------------
def pairwise_behaviour(body: dict[str, Any]) -> dict[str, Any]:
    """A judge that prefers the 'detailed' caption, except that for cases 0-4 it always picks the first shown
    (a position bias), and answers case 14 with garbage."""
    text = user_text(body)
    case = case_of(body)
    first = text.split("<<<CAPTION 1", 1)[1].split("CAPTION 1>>>", 1)[0]
    if case == 14:
        return {"text": "both are fine"}
    if case < 5:
        return {"json": {"winner": "1"}}
    if case in (5, 6):
        return {"json": {"winner": "tie"}}
    return {"json": {"winner": "1" if "detailed" in first else 2}}


def test_pairwise_mode_and_position_bias(shared_data_dir, tmp_path, judge_key):
    a = write_evaluation(tmp_path / "a", shared_data_dir, lambda i: f"a detailed caption of the room case-{i:02d}")
    b = write_evaluation(tmp_path / "b", shared_data_dir, lambda i: f"a room case-{i:02d}")
    out = tmp_path / "pairwise"
    args = ["judge", "--pairwise", str(a), str(b), "--output_dir", str(out), "--endpoint", "", "--judge_model",
            "pair-judge", "--api_key_env", "PANOLLAVA_TEST_JUDGE_KEY", "--seed", "7", "--judge_images", "false",
            "--max_concurrency", "3"]
    with ChatServer(default=pairwise_behaviour) as server:
        args[args.index("--endpoint") + 1] = server.url
        assert main(args) == 3  # case 14 failed
        result = json.loads((out / "judge_pairwise.json").read_text())
        order = {}
        for r in server.requests:
            first = user_text(r["body"]).split("<<<CAPTION 1", 1)[1].split("CAPTION 1>>>", 1)[0]
            order[r["case"]] = "A" if "detailed" in first else "B"  # who was shown first, as the server saw it
            assert not any(p.get("type") == "image_url" for p in r["body"]["messages"][-1]["content"]
                           if isinstance(r["body"]["messages"][-1]["content"], list))
        asked = len(server.requests)
        assert main(args) == 3  # a rerun with the same seed: everything answered is cached
        assert len(server.requests) == asked + 0  # case 14's answer was cached too (an answer, though invalid)
    ids = [r["sample_id"] for r in _samples(shared_data_dir)]
    swapped = {c for c in range(15) if order[c] == "B"}
    assert 0 < len(swapped) < 15  # the order really is randomised
    assert result["order"]["seed"] == 7 and result["order"]["swapped"] == len(swapped)
    expected = {}
    for c in range(14):
        if c in (5, 6):
            expected[c] = "tie"
        elif c < 5:
            expected[c] = order[c]  # the first shown always wins
        else:
            expected[c] = "A"
    assert result["outcomes"] == {ids[c]: w for c, w in expected.items()}
    wins_a = sum(w == "A" for w in expected.values())
    assert (result["wins_a"], result["wins_b"], result["ties"], result["n"]) == (wins_a, 14 - 2 - wins_a, 2, 14)
    assert result["num_failed"] == 1 and "no JSON object" in result["failed"][ids[14]]
    assert result["a_win_rate"] == pytest.approx((wins_a + 1) / 14)
    bias = result["position_bias"]
    decisive = [c for c in range(14) if c not in (5, 6)]
    first_wins = [c for c in decisive if expected[c] == order[c]]
    assert bias["overall"] == {"first_shown_wins": len(first_wins), "decisive": 12,
                               "first_shown_win_rate": len(first_wins) / 12}
    a_first = [c for c in decisive if order[c] == "A"]
    assert bias["a_first"]["decisive"] == len(a_first)
    assert bias["a_first"]["first_shown_wins"] == sum(expected[c] == "A" for c in a_first)
    b_first = [c for c in decisive if order[c] == "B"]
    assert bias["b_first"]["first_shown_wins"] == sum(expected[c] == "B" for c in b_first)
    ci = result["a_win_rate_ci95"]
    assert ci["low"] <= result["a_win_rate"] <= ci["high"]


# -- a local tiny transformers judge -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> Path:
    """A tiny Qwen3ForCausalLM with a byte-level BPE tokenizer and a ChatML chat template, saved locally."""
    from panollava.offline.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-judge"))["tiny-qwen3"]


def test_local_tiny_judge_block_and_report(shared_data_dir, tmp_path, tiny_judge, capsys):
    from panollava.judge.cost import count_prompt_tokens
    from panollava.judge.run import JudgeSettings

    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"a chair near the wall case-{i:02d}")
    settings = JudgeSettings(judge_model=str(tiny_judge), max_tokens=12)
    (before,) = count_prompt_tokens(settings, str(tiny_judge), [str(folder)])
    assert before["to_ask"] == 15 and before["cached"] == 0 and before["images"] is False
    code = main(["judge", "--eval_dir", str(folder), "--judge_model", str(tiny_judge), "--max_tokens", "12",
                 "--device", "cpu"])
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    # a random tiny model rarely writes valid JSON: either scores or a counted failure for every sample
    assert block["n"] + block["num_failed"] == 15 and code == (3 if block["num_failed"] else 0)
    assert block["identity"]["backend"] == "transformers" and block["identity"]["model"] == str(tiny_judge)
    assert block["images"]["text_only"] is True and block["settings"]["images"] is False
    for reason in block["failed"].values():
        assert reason.startswith(("no JSON object", "invalid answer", "empty answer"))
    if block["n"] == 0:
        assert block["score"] is None and block["ci95"] is None and block["per_sample"] == {}
    entries = [json.loads(line) for line in (folder / "judge_cache.jsonl").read_text().splitlines()]
    assert len(entries) == 15 and all(e["usage"]["completion_tokens"] <= 12 for e in entries)
    # the dry run counted exactly the prompts the model was fed
    assert sum(e["usage"]["prompt_tokens"] for e in entries) == before["prompt_tokens"]["total"]
    capsys.readouterr()
    assert main(["judge", "--eval_dir", str(folder), "--judge_model", str(tiny_judge), "--max_tokens", "12",
                 "--count_tokens", str(tiny_judge)]) == 0
    assert "15 samples, 15 cached, 0 call(s) to make" in capsys.readouterr().out
    assert main(["judge", "--eval_dir", str(folder), "--judge_model", str(tiny_judge), "--count_tokens",
                 str(tiny_judge)]) == 0  # another max_tokens is another cache key: everything to ask again
    assert "15 samples, 0 cached, 15 call(s) to make" in capsys.readouterr().out
    html = (folder / "report.html").read_text()
    assert 'data-key="judge"' in html and 'id="judge"' in html and "LLM judge (20-100)" in html
    assert html.count('data-judge-failed="1"') == block["num_failed"]
    assert f"failed {block['num_failed']}" in html
    # a rerun answers from the cache: same block, nothing generated
    assert main(["judge", "--eval_dir", str(folder), "--judge_model", str(tiny_judge), "--max_tokens", "12",
                 "--device", "cpu", "--write_report", "false"]) == code
    again = json.loads((folder / "metrics.json").read_text())["judge"]
    assert again["cache"]["asked"] == 0 and again["failed"] == block["failed"]


TRAINED_ANSWER = [4, 5, 3, 4, 5]


@pytest.fixture(scope="module")
def trained_judge(tiny_judge, shared_data_dir, tmp_path_factory) -> Path:
    """The tiny Qwen3 judge taught (120 AdamW steps on 8 real prompts, ~8 s) to answer every rubric prompt with one
    fixed valid JSON object, then saved: a local judge whose answers parse, through the real from_pretrained path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from panollava.judge.protocol import build_messages

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_judge)
    model = AutoModelForCausalLM.from_pretrained(tiny_judge)
    rubric = load_rubric()
    answer = tok(json.dumps(dict(zip(DIMS, TRAINED_ANSWER))) + "<|im_end|>")["input_ids"]
    prompts = []
    for i, rec in enumerate(_samples(shared_data_dir)[:8]):
        messages = build_messages(rubric, {**rec, "prediction": f"training caption {i}"}, None)
        prompts.append(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, enable_thinking=False)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(120):
        prompt = prompts[step % len(prompts)]
        loss = model(input_ids=torch.tensor([prompt + answer]),
                     labels=torch.tensor([[-100] * len(prompt) + answer])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("trained-judge")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_local_trained_judge_scores_every_sample(shared_data_dir, tmp_path, trained_judge):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"a mirror on the left case-{i:02d}")
    assert main(["judge", "--eval_dir", str(folder), "--judge_model", str(trained_judge), "--max_tokens", "96",
                 "--device", "cpu"]) == 0
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    assert block["n"] == 15 and block["num_failed"] == 0 and block["failed"] == {}
    assert block["score"] == pytest.approx(weighted(TRAINED_ANSWER)) == pytest.approx(83.0)
    assert {k: v["mean"] for k, v in block["dimensions"].items()} == dict(zip(DIMS, map(float, TRAINED_ANSWER)))
    assert block["ci95"]["low"] == pytest.approx(83.0) and block["ci95"]["high"] == pytest.approx(83.0)
    assert block["identity"]["backend"] == "transformers" and len(block["identity"]["fingerprint"]) == 64
    html = (folder / "report.html").read_text()
    assert html.count('data-judge="83.0"') == 15 and "83.00 [83.00, 83.00] (n 15 of 15, failed 0 = 0.0%" in html


def test_local_judge_refuses_images(shared_data_dir, tmp_path, tiny_judge):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"x case-{i:02d}")
    assert main(["judge", "--eval_dir", str(folder), "--judge_model", str(tiny_judge), "--judge_images", "true"]) == 2


# -- the pieces ----------------------------------------------------------------------------------------------------
def test_parse_answer_validates_each_dimension():
    from panollava.judge.protocol import parse_answer, parse_pairwise_answer

    rubric = load_rubric()
    good = {d: 3 for d in DIMS}
    assert parse_answer(json.dumps(good), rubric).scores == good
    assert parse_answer("Sure! " + json.dumps({d: {"score": 2} for d in DIMS}) + " done", rubric).scores == {
        d: 2 for d in DIMS}
    cases = {
        "": "empty answer", "{not json": "no JSON object",
        json.dumps({**good, "fluency": 0}): "fluency = 0 is outside 1-5",
        json.dumps({**good, "fluency": True}): "fluency is not an integer",
        json.dumps({**good, "fluency": "4"}): "fluency is not an integer",
        json.dumps({**good, "fluency": 4.0}): "fluency is not an integer",
        json.dumps({**good, "fluency": {"score": None}}): "fluency is null",
        json.dumps({k: v for k, v in good.items() if k != "completeness"}): "completeness missing",
    }
    for text, reason in cases.items():
        parsed = parse_answer(text, rubric)
        assert parsed.scores is None and reason in parsed.reason, (text, parsed)
    assert parse_pairwise_answer('{"winner": 2}') == ("2", None)
    assert parse_pairwise_answer('{"winner": "TIE"}') == ("tie", None)
    assert parse_pairwise_answer('{"winner": "A"}')[0] is None


def test_rubric_files_are_validated(tmp_path):
    import yaml

    from panollava.errors import InvalidInputError

    default = yaml.safe_load(load_rubric().path.read_text())
    assert {d["key"]: d["weight"] for d in default["dimensions"]} == WEIGHTS

    def write(**changes: Any) -> Path:
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump({**default, **changes}))
        return path

    custom = load_rubric(write(name="mine"))
    assert custom.name == "mine" and custom.sha256 != load_rubric().sha256
    dims = [dict(d) for d in default["dimensions"]]
    dims[0]["weight"] = 0.5
    with pytest.raises(InvalidInputError, match="weights must sum to 1"):
        load_rubric(write(dimensions=dims))
    with pytest.raises(InvalidInputError, match=r"unknown placeholder\(s\) \$\{caption\}"):
        load_rubric(write(template="grade ${caption} ${prediction}"))
    with pytest.raises(InvalidInputError, match=r"template must contain \$\{prediction\}"):
        load_rubric(write(template="grade ${query}"))
    with pytest.raises(InvalidInputError, match="scale must be"):
        load_rubric(write(scale=[5, 1]))


def test_judge_interval_is_the_shared_cluster_bootstrap():
    """The judge's interval is panollava.metrics.bootstrap's panorama-cluster bootstrap (compare's), not its own."""
    import numpy as np

    from panollava.judge.run import BOOTSTRAP_SEED, panorama_interval
    from panollava.metrics.bootstrap import DEFAULT_RESAMPLES, bootstrap_interval

    rng = np.random.default_rng(1)
    # 8 panoramas with 5 near-identical queries each: the interval resamples 8 units, not 40
    panorama_means = rng.normal(60, 10, size=8)
    clustered = [m + rng.normal(0, 0.1) for m in panorama_means for _ in range(5)]
    labels = [f"p{i}" for i in range(8) for _ in range(5)]
    by_cluster = panorama_interval(clustered, labels)
    shared = bootstrap_interval(clustered, seed=BOOTSTRAP_SEED, clusters=labels)
    assert (by_cluster["low"], by_cluster["high"]) == (shared.low, shared.high)
    assert by_cluster["num_clusters"] == 8 and by_cluster["num_resamples"] == DEFAULT_RESAMPLES == 2000
    naive = bootstrap_interval(clustered, num_resamples=2000, seed=0)
    assert by_cluster["high"] - by_cluster["low"] > 1.8 * (naive.high - naive.low)
    assert panorama_interval([], []) is None


def test_retry_after_parsing():
    from email.utils import formatdate

    from panollava.judge.backends import parse_retry_after

    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 8 <= parse_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10.5
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_wrong_model_name_stops_the_run(shared_data_dir, tmp_path, judge_key, capsys):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"x case-{i:02d}")
    with ChatServer(default={"status": 404, "body": {"error": {"message": "model 'nope' does not exist"}}}) as server:
        assert main(judge_args(folder, server, "--max_concurrency", "1")) == 2
        assert len(server.requests) == 1  # not 15 identical failures
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "model 'nope' does not exist" in err and "--judge_model" in err
    no_images = {"status": 400, "body": {"error": {"message": "this model does not support image input"}}}
    with ChatServer(default=no_images) as server:  # a text-only model asked with images: stop after 3 alike
        assert main(judge_args(folder, server, "--max_concurrency", "1")) == 2
        assert len(server.requests) == 3
    err = capsys.readouterr().err
    assert "refused the first 3 requests alike: HTTP 400 (this model does not support image input)" in err
    assert "--judge_images false" in err
    assert main(["judge", "--eval_dir", str(folder), "--endpoint", "gpu01:8000", "--judge_model", "m"]) == 2
    assert "--endpoint 'gpu01:8000' is not an http(s) URL" in capsys.readouterr().err


def test_judge_command_starts_without_torch():
    code = ("import sys\nfrom panollava.cli import main\nassert main(['judge', '--help']) == 0\n"
            "import panollava.judge.run, panollava.commands.judge\n"
            "assert not {'torch', 'transformers', 'openai'} & set(sys.modules), sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                   stdout=subprocess.DEVNULL)


def test_report_judge_column_sorts_worst_first_in_chromium(shared_data_dir, tmp_path, judge_key, chromium):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"a lamp case-{i:02d}")
    script = {c: scores_answer([1 + (c * 7 + k) % 5 for k in range(5)]) for c in range(15)}
    script[3] = {"text": "no idea"}
    script[9] = {"json": {d: 9 for d in DIMS}}
    with ChatServer(script) as server:
        assert main(judge_args(folder, server, "--write_report", "true")) == 3
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    path = folder / "report.html"
    worst = chromium.load(path, "sort=judge")
    shown = [r.get("data-judge", "") for r in worst.visible_rows]
    values = [float(v) for v in shown if v != ""]
    assert values == sorted(block["per_sample"].values()) and shown[-2:] == ["", ""]  # failed rows go last
    best = chromium.load(path, "sort=-judge")
    assert best.values("judge") == sorted(block["per_sample"].values(), reverse=True)
    ids = [r["sample_id"] for r in _samples(shared_data_dir)]
    assert [r["id"] for r in worst.visible_rows[-2:]] == [f"s-{ids[3]}", f"s-{ids[9]}"]
    assert "failed 2 = 13.3%" in worst.dom  # the failure rate beside the score


def test_unreadable_panorama_and_refused_request_fail_their_samples(shared_data_dir, tmp_path, judge_key):
    folder = write_evaluation(tmp_path / "eval", shared_data_dir, lambda i: f"a bed case-{i:02d}")
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["image_path"] = str(tmp_path / "missing.jpg")
    (folder / "predictions.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    too_long = {"status": 400, "body": {"error": {"message": "This model's maximum context length is 4096 tokens"}}}
    with ChatServer({1: too_long, 2: [{"status": 408}, scores_answer([2] * 5)]},
                    default=scores_answer([4, 4, 4, 4, 4])) as server:
        assert main(judge_args(folder, server)) == 3
        assert server.count(0) == 0 and server.count(1) == 1 and server.count(2) == 2  # 400 final, 408 retried
        assert all(server.count(c) == 1 for c in range(3, 15))
    block = json.loads((folder / "metrics.json").read_text())["judge"]
    assert block["n"] == 13 and block["score"] == pytest.approx((12 * 80.0 + 40.0) / 13)
    ids = [r["sample_id"] for r in _samples(shared_data_dir)]
    assert set(block["failed"]) == {ids[0], ids[1]}
    assert block["failed"][ids[0]].startswith(f"image unavailable: {tmp_path / 'missing.jpg'}")
    assert block["failed"][ids[1]] == "HTTP 400 (This model's maximum context length is 4096 tokens)"


def test_several_folders_and_a_predictions_file(shared_data_dir, tmp_path, judge_key):
    a = write_evaluation(tmp_path / "a", shared_data_dir, lambda i: f"a lamp case-{i:02d}")
    b = write_evaluation(tmp_path / "b", shared_data_dir, lambda i: f"two lamps case-{i:02d}")
    loose = write_evaluation(tmp_path / "loose", shared_data_dir, lambda i: f"a rug case-{i:02d}")
    (loose / "metrics.json").unlink()
    answers = {c: scores_answer([1 + c % 5] * 5) for c in range(15)}
    with ChatServer(answers) as server:
        assert main(judge_args(a, server)[:2] + [str(a), str(b)] + judge_args(a, server)[3:]) == 0
        assert len(server.requests) == 30  # the same captions' cases, but other predictions: other keys
        args = judge_args(a, server)
        args[1:3] = ["--predictions", str(loose / "predictions.jsonl")]
        assert main(args) == 0
    expected = sum(20 * (1 + c % 5) for c in range(15)) / 15
    for folder in (a, b, loose):
        assert json.loads((folder / "metrics.json").read_text())["judge"]["score"] == pytest.approx(expected)
    assert set(json.loads((loose / "metrics.json").read_text())) == {"judge"}  # created with the judge block only


# -- compare: the judge column ---------------------------------------------------------------------------------------
def graded(body: dict[str, Any]) -> dict[str, Any]:
    """A judge that gives 'a lamp' captions 1 + case % 5 on every dimension and 'two lamps' captions one more
    (capped at 5); it cannot grade case 7 of 'a lamp' nor case 4 of 'two lamps'."""
    case, text = case_of(body), user_text(body)
    better = "two lamps" in text
    if (case, better) in ((7, False), (4, True)):
        return {"text": "I cannot grade this"}
    return scores_answer([min(5, 1 + case % 5 + better)] * 5)


@pytest.fixture(scope="module")
def judged(shared_data_dir, tmp_path_factory):
    """Evaluations A and B judged by one judge through the real CLI and server; C by another judge (other model,
    text only); D not judged; E: A's folder whose predictions changed after judging."""
    import shutil

    folder = tmp_path_factory.mktemp("judged")
    out = {name: write_evaluation(folder / name, shared_data_dir, lambda i, w=words: f"{w} case-{i:02d}")
           for name, words in (("A", "a lamp"), ("B", "two lamps"), ("C", "two lamps"), ("D", "a lamp"))}
    env = {"PANOLLAVA_TEST_JUDGE_KEY": "sk-test"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ChatServer(default=graded) as server:
            args = judge_args(out["A"], server)
            assert main(args[:2] + [str(out["A"]), str(out["B"])] + args[3:]) == 3  # one failure in each
            other = judge_args(out["C"], server, "--judge_images", "false")
            other[other.index("judge-test-model")] = "judge-other"
            assert main(other) == 3
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out["E"] = folder / "E"
    shutil.copytree(out["A"], out["E"])
    lines = (out["E"] / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["prediction"] = "a lamp, edited after judging case-00"
    (out["E"] / "predictions.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return out


def test_compare_judge_column_same_judge(judged, shared_data_dir, tmp_path):
    """Two evaluations judged by one judge: the judge score, its interval and failure rate, and a paired p-value
    over the samples both were scored on, equal to a computation by hand."""
    from panollava.outputs.leaderboard import run_compare
    from panollava.metrics.bootstrap import bootstrap_interval

    result = run_compare([str(judged["A"]), str(judged["B"])], str(tmp_path))
    a, b = result["rows"]
    recs = _samples(shared_data_dir)
    ids, image_of = [r["sample_id"] for r in recs], {r["sample_id"]: r["image_path"] for r in recs}
    score_a = {ids[c]: 20.0 * (1 + c % 5) for c in range(15) if c != 7}
    score_b = {ids[c]: 20.0 * min(5, 2 + c % 5) for c in range(15) if c != 4}
    assert a["judge"] == pytest.approx(sum(score_a.values()) / 14) == pytest.approx(60.0)  # (900 - 60) / 14
    assert b["judge"] == pytest.approx(sum(score_b.values()) / 14) == pytest.approx(74 + 2 / 7)  # (1140 - 100) / 14
    assert (a["judge_n"], a["judge_num_samples"], a["judge_num_failed"]) == (14, 15, 1)
    assert a["judge_failure_rate"] == pytest.approx(1 / 15) and a["judge_model"] == "judge-test-model"
    interval = bootstrap_interval(list(score_a.values()), seed=0, clusters=[image_of[s] for s in score_a])
    assert (a["judge_ci_low"], a["judge_ci_high"]) == pytest.approx((interval.low, interval.high), abs=1e-12)
    block = json.loads((judged["A"] / "metrics.json").read_text())["judge"]
    assert (a["judge_ci_low"], a["judge_ci_high"]) == (block["ci95"]["low"], block["ci95"]["high"])  # one bootstrap
    assert b["delta_judge"] == pytest.approx(b["judge"] - a["judge"]) and a["p_judge"] is None
    # paired over the 13 samples both have a score for: +20 on each but the two A already has at 100 (cases 9 and
    # 14; case 4 failed in B), so no resample of the 5 panoramas reaches a mean difference of 0: p is the floor
    both = [s for s in score_a if s in score_b]
    assert b["judge_paired_samples"] == 13 and b["judge_paired_panoramas"] == 5
    assert b["paired_mean_delta_judge"] == pytest.approx(sum(score_b[s] - score_a[s] for s in both) / 13)
    assert b["p_judge"] == pytest.approx(1 / 2001) and b["p_judge_holm"] == b["p_judge"]
    assert b["judge_significant"] is True and "LLM judge is significantly higher" in b["judge_verdict"]
    assert "paired over 13 samples on 5 panoramas" in b["judge_verdict"]
    assert any("paired judge test uses the 13 samples" in w for w in result["warnings"])
    assert not any("judged differently" in w or "not judged" in w for w in result["warnings"])

    # the failure rate beside the score, wherever the score shows
    table = result["markdown"].splitlines()
    assert "LLM judge (20-100) [95% CI] (n, failures)" in table[0]
    shown = f"{a['judge']:.2f} [{a['judge_ci_low']:.2f}, {a['judge_ci_high']:.2f}] (n 14 of 15, failed 1 = 6.7%"
    assert shown in table[2] and "judge judge-test-model" in table[2]
    assert f"+{b['delta_judge']:.2f} (p <0.001, Holm <0.001; significant)" in table[3]
    with result["csv_path"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[1]["judge"]) == pytest.approx(b["judge"]) and rows[1]["judge_failure_rate"] == str(1 / 15)
    assert rows[1]["judge_num_failed"] == "1" and float(rows[1]["p_judge"]) == pytest.approx(1 / 2001)
    page = result["html_path"].read_text()
    assert 'data-key="judge"' in page and f'data-judge="{b["judge"]!r}"' in page
    assert page.count("failed 1 = 6.7%") == 2 and "judge judge-test-model" in page


def test_compare_judge_column_warns_of_another_judge(judged, tmp_path, capsys, chromium):
    """Another judge model (and text only): a warning naming the differences; a row without a judge block shows no
    judge value; a block judged on predictions that have changed since: a warning. The leaderboard page sorts by
    the judge column in headless Chromium, the row without a judge last."""
    folders = [str(judged[k]) for k in ("A", "B", "C", "D", "E")]
    assert main(["compare", *folders, "--output_dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    with (tmp_path / "leaderboard.csv").open(newline="") as fh:
        a, b, c, d, e = list(csv.DictReader(fh))
    other = [w for w in captured.err.splitlines() if "row 3" in w and "judged differently" in w]
    assert len(other) == 1 and "model 'judge-other' vs 'judge-test-model'" in other[0]
    assert "images False vs True" in other[0] and "not comparable" in other[0]
    assert not any("judged differently" in w for w in captured.err.splitlines() if "row 2" in w)
    assert "row 4" in captured.err and "was not judged" in captured.err
    assert "row 5" in captured.err and "judge scores were computed on other predictions" in captured.err
    # no stand-in for the missing judge: empty in the CSV, 'not judged' in the table
    assert d["judge"] == d["judge_failure_rate"] == d["p_judge"] == "" and d["judge_verdict"].endswith(
        "no paired test (this row was not judged)")
    table = [line for line in captured.out.splitlines() if line.startswith("| 4 ")]
    assert len(table) == 1 and table[0].count("not judged") == 2
    # another ruler: its score is shown (with the warning), but no difference from the baseline and no p-value
    assert float(c["judge"]) == pytest.approx(float(b["judge"])) and c["judge_comparable"] == "False"
    assert c["delta_judge"] == c["p_judge"] == "" and "judged by another judge" in c["judge_verdict"]
    # Holm across the rows with a judge p-value (B, E), as for the other metrics
    from panollava.metrics.bootstrap import holm_adjust

    ps = [float(r["p_judge"]) for r in (b, e)]
    assert [float(r["p_judge_holm"]) for r in (b, e)] == pytest.approx(holm_adjust(ps))
    assert float(b["p_judge_holm"]) == pytest.approx(2 / 2001) and b["judge_comparable"] == "True"
    assert float(e["p_judge"]) == 1.0 and float(e["delta_judge"]) == 0.0  # the same scores as A
    page = chromium.load(tmp_path / "leaderboard.html", "sort=-judge")
    assert page.values("judge") == pytest.approx([float(r["judge"]) for r in (b, c, a, e)])
    assert [int(r["data-index"]) for r in page.visible_rows][-1] == 4 and "not judged" in page.dom

    import shutil

    from panollava.outputs.leaderboard import run_compare
    from panollava.errors import InvalidInputError

    broken = tmp_path / "broken"
    shutil.copytree(judged["A"], broken)
    metrics = json.loads((broken / "metrics.json").read_text())
    metrics["judge"]["per_sample"][next(iter(metrics["judge"]["per_sample"]))] = "high"
    (broken / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InvalidInputError, match=r"judge per_sample\[.*\] is 'high', not a finite number"):
        run_compare([str(judged["A"]), str(broken)], str(tmp_path))
