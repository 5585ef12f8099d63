"""Pairwise mode of ``panollava-cli judge``: A vs B caption by caption, with the judge's position bias.

On the samples two evaluations share (same query and references), the judge sees both captions and names the
better one (``{"winner": "1" | "2" | "tie"}``). Which caption is shown first is a coin drawn per sample from the
seed and the sample id, so the order is reproducible and independent of the other samples. Answers are cached
like single scores (:mod:`panollava.judge.run`), in ``--output_dir``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError
from panollava.judge.protocol import pairwise_messages, pairwise_response_format, parse_pairwise_answer
from panollava.judge.rubric import load_rubric
from panollava.judge.run import (
    PAIRWISE_CACHE_FILE,
    PAIRWISE_FILE,
    ImageCache,
    Job,
    JudgeSettings,
    answered,
    ask_all,
    build_backend,
    digest,
    find_targets,
    judge_key_identity,
    panorama_interval,
    read_cache,
    sample_image,
)
from panollava.outputs.files import write_json_atomic
from panollava.outputs.leaderboard import panorama_key

logger = logging.getLogger(__name__)

__all__ = ["run_pairwise"]


def _swapped(seed: int, sample_id: str) -> bool:
    """Whether B is shown first for this sample: a coin drawn from (seed, sample_id), independent of the others."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[0] & 1 == 1


def _rate(hits: int, out_of: int) -> float | None:
    return hits / out_of if out_of else None


def run_pairwise(settings: JudgeSettings, eval_a: str, eval_b: str, output_dir: str | None = None) -> dict[str, Any]:
    """A vs B on the samples both evaluations share: which caption is better, and the judge's position bias.

    The order of the two captions is drawn per sample from ``settings.seed`` and the sample id (recorded). A sample
    scores 1 when A wins, 0 when B wins, 0.5 for a tie; A's win rate gets a panorama-cluster bootstrap interval.
    Position bias: how often the caption shown first wins, overall, when A was first (not swapped) and when B was
    first (swapped). Failed answers are counted with their reasons and left out.

    Args:
        settings: How the judge is asked.
        eval_a: Evaluation folder A (or a run directory).
        eval_b: Evaluation folder B.
        output_dir: Folder for judge_pairwise.json and its cache (default: the current directory).

    Returns:
        The content of judge_pairwise.json, plus ``"path"``.

    Raises:
        InvalidInputError: The two share no sample, or a shared sample has another query or references.
    """
    settings.validate()
    a, b = find_targets([eval_a, eval_b])
    rubric = load_rubric(settings.rubric)
    if rubric.pairwise_template is None:
        rubric.render_pairwise("", [], "", "")  # raises with the explanation
    recs_b = {str(r["sample_id"]): r for r in b.records}
    shared = [r for r in a.records if str(r["sample_id"]) in recs_b]
    if not shared:
        raise InvalidInputError(f"'{a.predictions}' and '{b.predictions}' share no sample_id; pairwise mode compares "
                                "two evaluations of the same data")
    for rec in shared:
        other = recs_b[str(rec["sample_id"])]
        if rec["query"] != other["query"] or list(rec["references"]) != list(other["references"]):
            raise InvalidInputError(
                f"sample {rec['sample_id']!r} has another query or other references in '{a.predictions}' and "
                f"'{b.predictions}': the two evaluations were not run on the same data"
            )
    only = len(a.records) + len(b.records) - 2 * len(shared)
    if only:
        logger.warning("pairwise: %d sample(s) are in only one of the two evaluations and are left out", only)
    out = Path(output_dir).expanduser().resolve() if output_dir else Path.cwd()
    cache_path = out / PAIRWISE_CACHE_FILE
    stop = threading.Event()
    backend = build_backend(settings, stop)
    identity = backend.identity()
    images = ImageCache(settings.image_width)
    fmt = pairwise_response_format()
    cache = read_cache(cache_path)
    failed: dict[str, str] = {}
    keys: dict[str, str] = {}
    swaps: dict[str, bool] = {}
    jobs = []
    for rec in shared:
        sid = str(rec["sample_id"])
        swap = _swapped(settings.seed, sid)
        swaps[sid] = swap
        pred_a, pred_b = rec["prediction"], recs_b[sid]["prediction"]
        first, second = (pred_b, pred_a) if swap else (pred_a, pred_b)
        found, image = sample_image(rec, a.metrics, settings, failed)
        if not found:
            continue
        key = digest({"mode": "pairwise", "sample_id": sid, "first": first, "second": second,
                       "query": rec["query"], "references": list(rec["references"]), "image": image,
                       "judge": judge_key_identity(identity), "rubric": rubric.sha256,
                       "settings": settings.answer_settings()})
        keys[sid] = key
        if key in cache:
            continue

        def messages(rec: dict[str, Any] = rec, first: str = first, second: str = second,
                     image: str | None = image) -> list[dict[str, Any]]:
            return pairwise_messages(rubric, rec, first, second, images.get(image))

        jobs.append(Job(key, sid, messages, fmt, {"swapped": swap}))
    try:
        reused = len(keys) - len(jobs)
        replies = ask_all(backend, jobs, cache_path, settings.max_concurrency if settings.endpoint else 1,
                       lambda job, text: parse_pairwise_answer(text)[1], "judge pairwise", total=len(shared),
                       initial=reused + len(failed), initial_failed=len(failed), stop=stop)
    finally:
        backend.close()
    cache = read_cache(cache_path) if jobs else cache
    outcome: dict[str, str] = {}  # sid -> "A" | "B" | "tie"
    first_won: dict[str, bool | None] = {}
    for rec, sid, entry in answered(shared, keys, cache, replies, failed):
        position, reason = parse_pairwise_answer(entry["answer"])
        if position is None:
            failed[sid] = str(reason)
            continue
        if position == "tie":
            outcome[sid], first_won[sid] = "tie", None
        else:
            winner_first = position == "1"
            first_won[sid] = winner_first
            a_first = not swaps[sid]
            outcome[sid] = "A" if winner_first == a_first else "B"
    ids = [str(r["sample_id"]) for r in shared]
    decided = [s for s in ids if s in outcome]
    value = {"A": 1.0, "B": 0.0, "tie": 0.5}
    clusters = {str(r["sample_id"]): panorama_key(r) for r in shared}
    interval = panorama_interval([value[outcome[s]] for s in decided], [clusters[s] for s in decided])

    def bias(subset: Iterable[str]) -> dict[str, Any]:
        chosen = [s for s in subset if first_won.get(s) is not None]
        wins = sum(1 for s in chosen if first_won[s])
        return {"first_shown_wins": wins, "decisive": len(chosen), "first_shown_win_rate": _rate(wins, len(chosen))}

    wins_a = sum(1 for s in decided if outcome[s] == "A")
    wins_b = sum(1 for s in decided if outcome[s] == "B")
    ties = sum(1 for s in decided if outcome[s] == "tie")
    result = {
        "a": {"folder": str(a.folder), "predictions": str(a.predictions)},
        "b": {"folder": str(b.folder), "predictions": str(b.predictions)},
        "num_samples": len(ids),
        "n": len(decided),
        "wins_a": wins_a,
        "wins_b": wins_b,
        "ties": ties,
        "a_win_rate": (wins_a + 0.5 * ties) / len(decided) if decided else None,
        "a_win_rate_ci95": interval,
        "num_failed": len(failed),
        "failure_rate": len(failed) / len(ids),
        "failed": {s: failed[s] for s in ids if s in failed},
        "order": {"seed": settings.seed, "rule": "B is shown first when the first byte of sha256('<seed>:<sample_id>') "
                  "is odd", "swapped": sum(1 for s in ids if swaps.get(s)), "not_swapped": sum(
                      1 for s in ids if s in swaps and not swaps[s])},
        "position_bias": {
            "overall": bias(ids),
            "a_first": bias(s for s in ids if s in swaps and not swaps[s]),
            "b_first": bias(s for s in ids if swaps.get(s)),
        },
        "identity": identity,
        "images": {"attached": settings.images, "width": settings.image_width if settings.images else None,
                   "text_only": not settings.images},
        "rubric": rubric.identity(),
        "settings": settings.answer_settings(),
        "cache": {"path": str(cache_path), "reused": reused, "asked": len(jobs)},
        "outcomes": {s: outcome[s] for s in ids if s in outcome},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = out / PAIRWISE_FILE
    write_json_atomic(path, result)
    return {**result, "path": path}
