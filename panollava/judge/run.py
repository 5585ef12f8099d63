"""``panollava-cli judge``: rubric scores of finished evaluations, resumable, with panorama-cluster intervals.

For each evaluation folder (found as ``compare`` finds it, read with the reader of ``report``):

1. every sample's request is keyed by sample, prediction, query, references, image, judge model, rubric sha256 and
   the settings that change an answer (:func:`request_key`);
2. answers already in the folder's ``judge_cache.jsonl`` are reused; only the missing ones are asked, at most
   ``max_concurrency`` at a time, and each answer is appended and fsynced as it arrives (a killed run loses only
   the answers in flight; a rerun asks only what is missing). A call that fails after its retries is not cached:
   the next run asks it again;
3. every answer is validated against the rubric (:func:`panollava.judge.protocol.parse_answer`); an invalid answer
   or a failed call is listed under ``failed`` with its reason and left out of every mean. Nothing is imputed;
4. the ``judge`` block (per-dimension means, the weighted score × 20, its 95 % panorama-cluster bootstrap interval,
   n, the failures, the judge's identity, per-sample scores) replaces ``metrics.json``'s ``judge`` key, written
   atomically, every other key untouched; ``judge_scores.jsonl`` holds the per-dimension scores of each sample; and
   ``report.html`` is rebuilt with a judge column.

Pairwise mode (:func:`panollava.judge.pairwise.run_pairwise`) asks which of two evaluations' captions is better on their shared samples,
showing them in an order drawn per sample from a recorded seed, and reports the position bias.

Light module at import: the judge's backend (``openai`` or transformers) is imported when it is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.evaluation.state import ShardWriter, read_jsonl_records
from panollava.judge.backends import EndpointJudge, JudgeConfigError, JudgeReply, LocalJudge
from panollava.judge.protocol import build_messages, image_data_url, parse_answer, response_format
from panollava.judge.rubric import SCORE_MULTIPLIER, Rubric, load_rubric
from panollava.metrics.bootstrap import DEFAULT_RESAMPLES, bootstrap_interval
from panollava.outputs.files import (
    read_json_object,
    read_prediction_records,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from panollava.outputs.leaderboard import PREDICTION_FILES, find_evaluation, panorama_key
from panollava.outputs.report_html import resolve_image_path, write_report_html

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_FILE",
    "JUDGE_KEY",
    "PAIRWISE_CACHE_FILE",
    "PAIRWISE_FILE",
    "SCORES_FILE",
    "EvaluationTarget",
    "JudgeSettings",
    "find_targets",
    "panorama_interval",
    "request_key",
    "run_judge",
]

#: Top-level key of metrics.json that holds the judge block.
JUDGE_KEY = "judge"
#: Answers of the judge, one JSON line each, in the evaluation folder.
CACHE_FILE = "judge_cache.jsonl"
#: Per-sample judge scores (every dimension), in the evaluation folder.
SCORES_FILE = "judge_scores.jsonl"
#: Pairwise results and their cache, in ``--output_dir``.
PAIRWISE_FILE = "judge_pairwise.json"
PAIRWISE_CACHE_FILE = "judge_pairwise_cache.jsonl"
#: Stop when the first this many requests are all refused with the same 4xx: the settings, not the samples, are wrong.
REFUSED_TO_STOP = 3
#: The interval's coverage and seed (its resamples: :data:`panollava.metrics.bootstrap.DEFAULT_RESAMPLES`).
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass
class JudgeSettings:
    """How the judge is asked. Every field is a ``panollava-cli judge`` flag of the same name.

    Attributes:
        judge_model: The served model's name (with ``endpoint``) or a local transformers model folder.
        endpoint: API base of an OpenAI-compatible server (``http://host:8000/v1``); None: run ``judge_model``
            locally.
        api_key_env: Environment variable holding the API key (unset: no key is sent, as local servers expect).
        judge_images: Attach the panorama (None: yes for an endpoint, no for a local model, which reads text only).
        image_width: Width in px of the attached panorama (downscaled JPEG).
        image_root: Folder that relative image paths resolve against (default: as metrics.json records, like
            ``panollava-cli report``).
        rubric: Rubric file (None: the default rubric shipped with panollava).
        max_concurrency: Requests in flight at once (a local model answers one at a time).
        timeout_s: Seconds one request may take.
        max_retries: Retries of a 5xx answer, a timeout or a connection error.
        max_rate_limit_retries: Retries of a 429 (each waits its Retry-After).
        retry_backoff_s: First backoff of a retry (doubled each time).
        temperature: Sampling temperature of the judge.
        seed: Seed sent with every request (and the seed of pairwise mode's order).
        max_tokens: Longest answer of the judge.
        response_format: Also send the answer's JSON schema as ``response_format`` (guided decoding).
        write_report: Rebuild the evaluation's report.html with the judge column.
        device: Device of a local judge (``auto``, ``cpu``, ``cuda``).
    """

    judge_model: str
    endpoint: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge_images: bool | None = None
    image_width: int = 1024
    image_root: str | None = None
    rubric: str | None = None
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    max_rate_limit_retries: int = 8
    retry_backoff_s: float = 1.0
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 256
    response_format: bool = True
    write_report: bool = True
    device: str = "auto"

    def validate(self) -> None:
        """Raises InvalidInputError naming the flag of a value out of range."""
        checks = [
            ("max_concurrency", self.max_concurrency >= 1), ("timeout_s", self.timeout_s > 0),
            ("max_retries", self.max_retries >= 0), ("max_rate_limit_retries", self.max_rate_limit_retries >= 0),
            ("retry_backoff_s", self.retry_backoff_s >= 0), ("max_tokens", self.max_tokens >= 1),
            ("image_width", self.image_width >= 16), ("temperature", self.temperature >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise InvalidInputError(f"--{name} {getattr(self, name)!r} is out of range")
        if not self.judge_model:
            raise InvalidInputError("--judge_model is required: a served model's name (with --endpoint) or a folder")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise InvalidInputError(
                f"--endpoint {self.endpoint!r} is not an http(s) URL; pass the API base of the server, e.g. "
                "http://gpu01:8000/v1"
            )

    @property
    def images(self) -> bool:
        """Whether the panorama is attached."""
        return (self.endpoint is not None) if self.judge_images is None else self.judge_images

    def answer_settings(self) -> dict[str, Any]:
        """The settings that change an answer (part of every cache key)."""
        return {"images": self.images, "image_width": self.image_width if self.images else None,
                "temperature": self.temperature, "seed": self.seed, "max_tokens": self.max_tokens,
                "response_format": self.response_format if self.endpoint else False}


@dataclass
class EvaluationTarget:
    """An evaluation to judge.

    Attributes:
        folder: The evaluation folder (where metrics.json, the cache and the scores go).
        predictions: Its predictions file.
        metrics: Its metrics.json content ({} when there is none yet).
        records: The per-sample records.
        picked: How it was found.
    """

    folder: Path
    predictions: Path
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    picked: str


def find_targets(eval_dirs: Sequence[str] = (), predictions: Sequence[str] = ()) -> list[EvaluationTarget]:
    """Find and read the evaluations to judge.

    Args:
        eval_dirs: Evaluation folders or run directories (found as ``panollava-cli compare`` finds them).
        predictions: predictions.jsonl files; metrics.json beside each is updated (created when absent).

    Returns:
        One target per input, in order.

    Raises:
        InputNotFoundError: A folder or file that is not an evaluation.
        InvalidInputError: A record without a query or references, or the same evaluation twice.
    """
    targets = []
    for path in eval_dirs:
        folder, picked = find_evaluation(path)
        source = next((folder / n for n in PREDICTION_FILES if (folder / n).is_file()), None)
        if source is None:
            raise InputNotFoundError(
                f"no predictions file in '{folder}' (looked for {', '.join(PREDICTION_FILES)}): the judge grades "
                "the per-sample predictions that 'panollava-cli test' writes there"
            )
        targets.append(EvaluationTarget(folder, source, read_json_object(folder / "metrics.json"),
                                        read_prediction_records(source), picked))
    for path in predictions:
        source = Path(path).expanduser().resolve()
        records = read_prediction_records(source)
        metrics_path = source.parent / "metrics.json"
        metrics = read_json_object(metrics_path) if metrics_path.is_file() else {}
        targets.append(EvaluationTarget(source.parent, source, metrics, records, "predictions file"))
    if not targets:
        raise InvalidInputError("judge needs --eval_dir DIR (one or more) or --predictions FILE")
    seen: dict[Path, Path] = {}
    for t in targets:
        if t.folder in seen:
            raise InvalidInputError(
                f"'{t.predictions}' and '{seen[t.folder]}' share the folder '{t.folder}' (one metrics.json, one "
                "cache); judge each evaluation once"
            )
        seen[t.folder] = t.predictions
        for number, rec in enumerate(t.records, start=1):
            where = f"'{t.predictions}' sample {rec['sample_id']!r} (record {number})"
            if not isinstance(rec.get("query"), str) or not rec["query"].strip():
                raise InvalidInputError(f"{where} has no query; the judge grades a caption against its query")
            refs = rec.get("references")
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                raise InvalidInputError(
                    f"{where} has no references (found {refs!r}); the judge needs the reference captions: judge "
                    "the predictions.jsonl of 'panollava-cli test' (not of predict)"
                )
            if not isinstance(rec["prediction"], str):
                raise InvalidInputError(f"{where}: prediction must be a string, found {rec['prediction']!r}")
    return targets


def digest(payload: Any) -> str:
    """sha256 hex of a JSON-able payload (keys sorted): the cache key of a request."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def judge_key_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a judge's identity that change its answers (not the URL it is served at)."""
    return {k: identity.get(k) for k in ("backend", "model", "fingerprint")}


def request_key(
    record: Mapping[str, Any], image: str | None, identity: Mapping[str, Any], rubric: Rubric,
    settings: JudgeSettings,
) -> str:
    """The cache key of one sample's request (sha256 hex).

    Args:
        record: The sample (sample_id, query, references, prediction).
        image: The panorama's path when it is attached, else None.
        identity: The judge's identity (backend, model, fingerprint of a local model).
        rubric: The rubric (its sha256 is part of the key).
        settings: The settings (those that change the answer are part of the key).
    """
    return digest({
        "mode": "single", "sample_id": str(record["sample_id"]), "prediction": record["prediction"],
        "query": record["query"], "references": list(record["references"]), "image": image,
        "judge": judge_key_identity(identity), "rubric": rubric.sha256, "settings": settings.answer_settings(),
    })


# -- the cache ------------------------------------------------------------------------------------------------------
def drop_partial_tail(path: Path) -> None:
    """Cut a last line left without its newline by a kill, so that the next answer starts on a line of its own
    (appended after it, the two would make one damaged line in the middle of the file)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.info("dropping the incomplete last line of '%s' (%d bytes, written when a run was killed)", path,
                    len(data) - keep)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        lines = read_jsonl_records(path)  # a last line cut short by a kill is ignored
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"the judge's answer cache '{path}' is damaged ({str(exc).split(';')[0]}). Delete that line (or the file: "
            "its answers are then asked again)"
        ) from exc
    entries = {}
    for entry in lines:
        if isinstance(entry.get("key"), str) and "answer" in entry:
            entries[entry["key"]] = entry
    return entries


# -- asking ---------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One request to make: its cache key, sample, how to build its messages, and extra fields for the cache."""

    key: str
    sample_id: str
    messages: Callable[[], list[dict[str, Any]]]
    response_format: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)


class ImageCache:
    """Data URLs of panoramas, made once per file (several queries share a panorama)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._urls: dict[str, str | OSError] = {}
        self._lock = threading.Lock()

    def get(self, path: str | None) -> str | None:
        """The data URL of ``path`` (None for a sample without a panorama).

        Raises:
            ImageUnavailable: the file cannot be read (the sample fails with this reason).
        """
        if path is None:
            return None
        with self._lock:
            cached = self._urls.get(path)
        if cached is None:
            try:
                cached = image_data_url(path, self.width)
            except OSError as exc:
                cached = exc
            with self._lock:
                self._urls[path] = cached
        if isinstance(cached, OSError):
            raise ImageUnavailable(f"{path}: {cached}") from cached
        return cached


class ImageUnavailable(Exception):
    """The panorama of a sample cannot be read: the sample fails with this reason (no substitute is sent)."""


def run_job(backend: Any, job: Job) -> JudgeReply:
    """Build a job's messages (reading its panorama) and ask the backend; an unreadable panorama is a failed reply."""
    try:
        messages = job.messages()
    except ImageUnavailable as exc:
        return JudgeReply(text=None, error=f"image unavailable: {exc}", attempts=0)
    return backend.complete(messages, job.response_format)


def ask_all(
    backend: Any,
    jobs: Sequence[Job],
    cache_path: Path,
    max_concurrency: int,
    classify: Callable[[Job, str], str | None],
    desc: str,
    total: int,
    initial: int,
    initial_failed: int,
    stop: threading.Event,
) -> dict[str, JudgeReply]:
    """Ask ``jobs``; each answer is appended (fsynced) to ``cache_path`` before the next request is sent.

    Returns:
        The replies of this run by key (answers and failed calls).
    """

    replies: dict[str, JudgeReply] = {}
    if not jobs:
        return replies
    drop_partial_tail(cache_path)
    writer = ShardWriter(cache_path)
    failed = initial_failed
    bar = tqdm(total=total, initial=initial, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True)

    def postfix() -> None:
        bar.set_postfix_str(f"done {bar.n}, failed {failed}, remaining {total - bar.n}", refresh=True)

    postfix()
    pending = iter(jobs)
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="judge")
    in_flight: dict[Future[JudgeReply], Job] = {}

    def submit_next() -> None:
        job = next(pending, None)
        if job is not None:
            in_flight[pool.submit(run_job, backend, job)] = job

    refused: list[str | None] | None = []  # the same 4xx for every request so far: a setting, not the samples
    try:
        for _ in range(max_concurrency):
            submit_next()
        while in_flight:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                reply = future.result()
                replies[job.key] = reply
                if refused is not None:
                    refused = refused + [reply.error] if reply.status is not None else None
                    if refused is not None and len(refused) >= REFUSED_TO_STOP and len(set(refused)) == 1:
                        raise JudgeConfigError(
                            f"the judge endpoint refused the first {len(refused)} requests alike: {refused[0]}. A "
                            "setting is wrong for this server: a text-only model needs --judge_images false, a server "
                            "without guided decoding --response_format false, a small context a larger "
                            "--max-model-len on the server (or a shorter rubric)"
                        )
                if reply.text is not None:
                    writer.append([{
                        "key": job.key, "sample_id": job.sample_id, **job.extra, "answer": reply.text,
                        "finish_reason": reply.finish_reason, "usage": reply.usage, "attempts": reply.attempts,
                        "served_model": reply.served_model, "latency_s": round(reply.latency_s, 3),
                        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    }])
                if reply.text is None or classify(job, reply.text) is not None:
                    failed += 1
                bar.update(1)
                postfix()
                submit_next()  # after the answer is on disk: a kill loses only what is in flight
    except BaseException:
        stop.set()  # retries waiting to be sent give up at once
        # no waiting for the requests in flight: the caller closes the client, which ends them
        pool.shutdown(wait=False, cancel_futures=True)
        logger.warning(
            "judge stopped: %d answer(s) of this run are saved in '%s'; rerun the same command to ask only the rest",
            writer.count, cache_path,
        )
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        writer.close()
        bar.close()
    return replies


def build_backend(settings: JudgeSettings, stop: threading.Event) -> Any:
    """The endpoint judge (with ``settings.endpoint``) or the local one; the API key is read from its variable.

    Raises:
        InvalidInputError: Images asked of the local judge, or ``--api_key_env`` names an unset variable.
        ModelUnavailableError: The client library is missing, or the local model folder is not one.
    """
    if settings.endpoint is None:
        if settings.judge_images:
            raise InvalidInputError(
                "the local judge (--judge_model DIR without --endpoint) reads text only; pass --judge_images false, "
                "or serve a vision-language judge and pass its --endpoint"
            )
        return LocalJudge(settings.judge_model, seed=settings.seed, max_tokens=settings.max_tokens,
                          device=settings.device)
    key = os.environ.get(settings.api_key_env)
    if not key:
        if settings.api_key_env != "OPENAI_API_KEY":
            raise InvalidInputError(
                f"--api_key_env {settings.api_key_env}: that environment variable is not set; export the key in it"
            )
        logger.info("no API key in $OPENAI_API_KEY: sending the placeholder key 'EMPTY' (servers started without "
                    "--api-key, such as a local vLLM, accept it)")
        key = "EMPTY"
    return EndpointJudge(
        settings.endpoint, settings.judge_model, key, timeout_s=settings.timeout_s,
        max_retries=settings.max_retries, max_rate_limit_retries=settings.max_rate_limit_retries,
        backoff_s=settings.retry_backoff_s, temperature=settings.temperature, seed=settings.seed,
        max_tokens=settings.max_tokens, use_response_format=settings.response_format, stop=stop,
    )


def image_path_of(record: Mapping[str, Any], metrics: Mapping[str, Any], image_root: str | None) -> str:
    """The absolute path of a sample's panorama, found as ``panollava-cli report`` finds it."""
    return str(resolve_image_path(record, metrics, image_root).expanduser().resolve())


def panorama_interval(values: Sequence[float], clusters: Sequence[str]) -> dict[str, Any] | None:
    """The 95 % interval of the mean of ``values``, resampling panoramas, as the judge's results record it.

    The cluster bootstrap of :func:`panollava.metrics.bootstrap.bootstrap_interval` (the one ``compare`` uses),
    with :data:`~panollava.metrics.bootstrap.DEFAULT_RESAMPLES` resamples and seed :data:`BOOTSTRAP_SEED`.

    Args:
        values: ``(N,)`` per-sample values (scores, or pairwise outcomes).
        clusters: ``(N,)`` the panorama of each (:func:`panollava.outputs.leaderboard.panorama_key` of its record).

    Returns:
        ``{"low", "high", "confidence", "method", "num_clusters", "num_resamples", "seed"}``, or None without values.
    """
    if not values:
        return None
    ci = bootstrap_interval(values, confidence=CONFIDENCE, num_resamples=DEFAULT_RESAMPLES, seed=BOOTSTRAP_SEED,
                            clusters=list(clusters))
    return {"low": ci.low, "high": ci.high, "confidence": ci.confidence,
            "method": "percentile bootstrap resampling panoramas (image_path, else image, of each sample)",
            "num_clusters": ci.num_clusters, "num_resamples": ci.num_resamples, "seed": BOOTSTRAP_SEED}


# -- single mode ----------------------------------------------------------------------------------------------------
def sample_image(rec: Mapping[str, Any], metrics: Mapping[str, Any], settings: JudgeSettings,
                 failed: dict[str, str]) -> tuple[bool, str | None]:
    """``(found, path)`` of the panorama attached for a sample (path None for a text-only judge). A panorama that
    cannot be found fails its sample in ``failed`` (``found`` False): no other image is sent in its place."""
    if not settings.images:
        return True, None
    try:
        return True, image_path_of(rec, metrics, settings.image_root)
    except InvalidInputError as exc:
        failed[str(rec["sample_id"])] = f"image unavailable: {exc}"
        return False, None


def answered(records, keys: Mapping[str, str], cache: Mapping[str, Any], replies: Mapping[str, Any],
             failed: dict[str, str]):
    """``(record, sample id, cached entry)`` for every record whose answer is in the cache. A record without one is
    counted in ``failed`` with its call's error (never given a stand-in answer); records already failed are skipped.
    """
    for rec in records:
        sid = str(rec["sample_id"])
        if sid in failed:
            continue
        entry = cache.get(keys[sid])
        if entry is None:
            reply = replies.get(keys[sid])
            failed[sid] = reply.error if reply is not None and reply.error else "no answer"
            continue
        yield rec, sid, entry


def _single(target: EvaluationTarget, backend: Any, rubric: Rubric, settings: JudgeSettings,
            identity: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    images = ImageCache(settings.image_width)
    fmt = response_format(rubric)
    keys: dict[str, str] = {}
    jobs: list[Job] = []
    failed: dict[str, str] = {}
    cache_path = target.folder / CACHE_FILE
    cache = read_cache(cache_path)
    image_paths: dict[str, str | None] = {}
    for rec in target.records:
        sid = str(rec["sample_id"])
        found, image = sample_image(rec, target.metrics, settings, failed)
        if not found:
            continue
        image_paths[sid] = image
        key = request_key(rec, image, identity, rubric, settings)
        keys[sid] = key
        if key in cache:
            continue

        def messages(rec: dict[str, Any] = rec, image: str | None = image) -> list[dict[str, Any]]:
            return build_messages(rubric, rec, images.get(image))

        jobs.append(Job(key, sid, messages, fmt))
    reused = len(keys) - len(jobs)
    cached_failed = sum(1 for k in keys.values() if k in cache and parse_answer(cache[k]["answer"], rubric).reason)
    logger.info("judge %s: %d samples, %d answers cached, %d to ask", target.folder, len(target.records), reused,
                len(jobs))
    replies = ask_all(
        backend, jobs, cache_path, settings.max_concurrency if settings.endpoint else 1,
        lambda job, text: parse_answer(text, rubric).reason, f"judge {target.folder.name}",
        total=len(target.records), initial=reused + len(failed), initial_failed=cached_failed + len(failed),
        stop=stop,
    )
    cache = read_cache(cache_path) if jobs else cache

    per_sample: dict[str, float] = {}
    dims: dict[str, dict[str, int]] = {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "answers": 0}
    served: set[str] = set()
    finish_length = 0
    for _, sid, entry in answered(target.records, keys, cache, replies, failed):
        usage["answers"] += 1
        for name in ("prompt_tokens", "completion_tokens"):
            usage[name] += int((entry.get("usage") or {}).get(name) or 0)
        if entry.get("served_model"):
            served.add(str(entry["served_model"]))
        parsed = parse_answer(entry["answer"], rubric)
        if parsed.scores is None:
            cut = " (the answer was cut at --max_tokens)" if entry.get("finish_reason") == "length" else ""
            finish_length += bool(cut)
            failed[sid] = f"{parsed.reason}{cut}"
            continue
        dims[sid] = parsed.scores
        per_sample[sid] = rubric.weighted(parsed.scores) * SCORE_MULTIPLIER

    order = [str(r["sample_id"]) for r in target.records]
    failed = {sid: failed[sid] for sid in order if sid in failed}
    scored = [sid for sid in order if sid in per_sample]
    clusters = {str(r["sample_id"]): panorama_key(r) for r in target.records}
    interval = panorama_interval([per_sample[s] for s in scored], [clusters[s] for s in scored])
    total = len(order)
    block = {
        "score": (sum(per_sample[s] for s in scored) / len(scored)) if scored else None,
        "scale": f"{rubric.scale[0] * SCORE_MULTIPLIER:g}-{rubric.scale[1] * SCORE_MULTIPLIER:g}: the mean over "
                 f"scored samples of the weighted {rubric.scale[0]}-{rubric.scale[1]} rubric score x "
                 f"{SCORE_MULTIPLIER:g}",
        "ci95": interval,
        "dimensions": {
            d.key: {"mean": (sum(dims[s][d.key] for s in scored) / len(scored)) if scored else None,
                    "weight": d.weight}
            for d in rubric.dimensions
        },
        "n": len(scored),
        "num_samples": total,
        "num_failed": len(failed),
        "failure_rate": len(failed) / total if total else None,
        "failed": failed,
        "identity": {**identity, "served_model": sorted(served) or None},
        "images": {"attached": settings.images, "width": settings.image_width if settings.images else None,
                   "text_only": not settings.images},
        "rubric": rubric.identity(),
        "settings": {**settings.answer_settings(), "timeout_s": settings.timeout_s,
                     "max_retries": settings.max_retries, "max_rate_limit_retries": settings.max_rate_limit_retries,
                     "max_concurrency": settings.max_concurrency},
        "usage": usage,
        "predictions": {"path": str(target.predictions), "sha256": sha256_file(target.predictions)},
        "cache": {"path": str(cache_path), "reused": reused, "asked": len(jobs)},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "per_sample": {s: per_sample[s] for s in scored},
    }
    detail = []
    for rec in target.records:
        sid = str(rec["sample_id"])
        detail.append({"sample_id": sid, "image": rec.get("image"), "score": per_sample.get(sid),
                       "dimensions": dims.get(sid), "failed": failed.get(sid)})
    write_text_atomic(target.folder / SCORES_FILE,
                      "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in detail))
    metrics_path = target.folder / "metrics.json"

    current = read_json_object(metrics_path) if metrics_path.is_file() else {}
    current[JUDGE_KEY] = block  # every other key as it is on disk now
    write_json_atomic(metrics_path, current)
    if finish_length:
        logger.warning("%d answer(s) were cut at --max_tokens %d; raise it", finish_length, settings.max_tokens)
    report = None
    if settings.write_report:
        report = write_report_html(target.folder, target.records, current, image_root=settings.image_root)
    return {"folder": target.folder, "metrics_path": metrics_path, "block": block, "report": report,
            "picked": target.picked}


def run_judge(
    settings: JudgeSettings, eval_dirs: Sequence[str] = (), predictions: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Judge every sample of one or more evaluations and write their ``judge`` blocks.

    Args:
        settings: How the judge is asked.
        eval_dirs: Evaluation folders (or run directories).
        predictions: predictions.jsonl files (their folder is the evaluation folder).

    Returns:
        Per evaluation: ``{"folder", "metrics_path", "block", "report", "picked"}``.

    Raises:
        InputNotFoundError, InvalidInputError: Bad inputs or settings, named in the message.
        JudgeConfigError: The endpoint refused the key, the URL or the model name (answers so far are cached).
    """
    settings.validate()
    targets = find_targets(eval_dirs, predictions)
    rubric = load_rubric(settings.rubric)
    stop = threading.Event()
    backend = build_backend(settings, stop)
    identity = backend.identity()
    try:
        return [_single(t, backend, rubric, settings, identity, stop) for t in targets]
    finally:
        backend.close()
