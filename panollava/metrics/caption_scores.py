"""Caption metrics as the COCO caption scorer (pycocoevalcap 1.2) defines them.

:func:`score_captions` gives BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when it can run) for a set of
predictions, each scored against all of its references, plus per-sample scores. It is pycocoevalcap's pipeline
(``COCOEvalCap.evaluate`` minus the COCO JSON plumbing):

1. PTB tokenisation of references and predictions (:mod:`panollava.metrics.ptb_tokenizer`);
2. ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` on the tokenized text; CIDEr's document frequencies are
   computed once over the whole (de-duplicated) set that is passed in.

BLEU, ROUGE-L and CIDEr are pycocoevalcap's own Python classes; METEOR and SPICE are its jars. What changes is
the plumbing: METEOR's JVM starts before tokenisation and scores in a thread while BLEU/ROUGE/CIDEr run, it is
reused by later calls, and a METEOR that hangs is killed after ``meteor_timeout_s`` (METEOR is then ``None``
with the reason, the other metrics are still returned). A metric that is not computed is ``None`` with its reason,
in one of two places; no number ever stands in for a missing one:

- ``unavailable``: it cannot run in this environment (METEOR without Java, SPICE without Stanford CoreNLP, METEOR
  not requested). A warning, exit status 0; fatal only in strict mode.
- ``failed``: it was attempted and raised (or METEOR timed out or its JVM crashed). The callers write what they
  could and then exit non-zero through :meth:`CaptionScores.raise_for_failures`.

This module imports nothing heavy at import time (no numpy, torch, lightning or transformers).
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu

from panollava.errors import InvalidInputError, MetricFailedError
from panollava.metrics.meteor import MeteorError, MeteorTimeout, get_meteor, jvm_options
from panollava.metrics.names import OFFICIAL_METRICS, PER_SAMPLE_METRICS
from panollava.metrics.ptb_tokenizer import java_executable, java_version, tokenize_caption_files
from panollava.metrics.secondary import secondary_scores
from panollava.metrics.spice import SpiceRun, spice_unavailable_reason

logger = logging.getLogger(__name__)

__all__ = ["OFFICIAL_METRICS", "PER_SAMPLE_METRICS", "CaptionScores", "score_captions"]


@dataclass
class CaptionScores:
    """Result of :func:`score_captions`.

    Attributes:
        corpus: Every key of :data:`OFFICIAL_METRICS`; ``None`` when unavailable.
        per_sample: ``sample_id -> {"bleu_4", "cider", "rouge_l", "meteor"}`` (``None`` when unavailable).
        unavailable: ``metric -> reason`` for a ``None`` that cannot be computed in this environment (and for
            secondary metrics that failed: they are not official results).
        failed: ``metric -> reason`` for a ``None`` whose computation raised (or timed out).
        implementations: ``metric -> implementation and version``, plus ``"tokenizer"``.
        secondary: Non-official numbers, e.g. ``torchmetrics_bleu_4_ptb``, ``torchmetrics_rouge_l_ptb``.
        num_samples: Number of scored samples.
        tokenizer: Which PTB tokenizer ran: ``"ptb-python"`` or ``"ptb-java"``.
        notes: Things the reader of the numbers should know (e.g. a tokenizer fallback).
        timings_s: Wall time of each stage (not written to ``metrics.json``: it is not a result).
    """

    corpus: dict[str, float | None]
    per_sample: dict[str, dict[str, float | None]]
    unavailable: dict[str, str]
    implementations: dict[str, str]
    secondary: dict[str, float]
    num_samples: int
    failed: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "ptb-python"
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_metrics_json(self) -> dict[str, Any]:
        """``metrics.json`` content: official metrics as top-level numbers (or ``null``), then metadata.

        Per-sample scores are not included (they go to the predictions files).
        """
        out: dict[str, Any] = {name: self.corpus.get(name) for name in OFFICIAL_METRICS}
        out["num_samples"] = self.num_samples
        out["tokenizer"] = self.tokenizer
        out["unavailable"] = dict(self.unavailable)
        out["failed"] = dict(self.failed)
        out["implementations"] = dict(self.implementations)
        out["secondary"] = dict(self.secondary)
        out["notes"] = list(self.notes)
        return out

    def raise_for_failures(self, *, strict: bool = False, written: Sequence[str] = ()) -> None:
        """Raise when a metric failed (or, with ``strict``, when one is unavailable); call after writing results.

        Unavailable official metrics are logged as warnings either way (SPICE's warning is a one-line note, it is
        never available offline).

        Args:
            strict: Treat unavailable official metrics as failures (``--strict_metrics true``).
            written: Files already written (named in the message, so the user knows what was kept).

        Raises:
            MetricFailedError: Some metric failed, or ``strict`` and some official metric is unavailable.
        """
        missing = {k: v for k, v in self.unavailable.items() if k in OFFICIAL_METRICS}
        for name, reason in missing.items():
            logger.warning("%s is unavailable (null in metrics.json): %s", name, reason)
        problems = dict(self.failed)
        if strict:
            problems.update({k: f"unavailable: {v}" for k, v in missing.items() if k not in problems})
        if not problems:
            return
        listed = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        kept = f" The results that could be computed were written ({', '.join(written)});" if written else ""
        what = "failed" if self.failed else "unavailable"
        fix = (
            " fix the cause and score again (panollava-cli score --predictions <predictions.jsonl>)"
            if self.failed
            else " install what is missing, or drop --strict_metrics to accept null for unavailable metrics"
        )
        raise MetricFailedError(
            f"{len(problems)} metric(s) {what}{' (strict mode)' if strict and not self.failed else ''}: {listed}."
            f"{kept} they are null in metrics.json with the reason;{fix}"
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _validate(
    predictions: Mapping[Any, Any], references: Mapping[Any, Any]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    def show(ids: Sequence[Any]) -> str:
        shown = ", ".join(repr(i) for i in list(ids)[:10])
        return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")

    missing_refs = [k for k in predictions if k not in references]
    missing_preds = [k for k in references if k not in predictions]
    if missing_refs or missing_preds:
        parts = []
        if missing_refs:
            parts.append(f"{len(missing_refs)} prediction id(s) without references: {show(missing_refs)}")
        if missing_preds:
            parts.append(f"{len(missing_preds)} reference id(s) without a prediction: {show(missing_preds)}")
        raise InvalidInputError(
            "predictions and references must have the same sample ids; " + "; ".join(parts)
        )
    if not predictions:
        raise InvalidInputError("nothing to score: no predictions were given")
    preds: dict[str, str] = {}
    refs: dict[str, list[str]] = {}
    bad_preds = [k for k, v in predictions.items() if not isinstance(v, str)]
    if bad_preds:
        raise InvalidInputError(
            f"predictions must be strings (an empty prediction is ''); not a string for {show(bad_preds)} "
            f"(e.g. {predictions[bad_preds[0]]!r})"
        )
    bad_refs = [
        k for k, v in references.items()
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0
        or not all(isinstance(r, str) for r in v)
    ]
    if bad_refs:
        raise InvalidInputError(
            f"references must be a non-empty list of strings per sample; not so for {show(bad_refs)} "
            f"(e.g. {references[bad_refs[0]]!r})"
        )
    blank_refs = [k for k, v in references.items() if any(not r.strip() for r in v)]
    if blank_refs:
        raise InvalidInputError(
            f"an empty reference would be scored as a caption nobody wrote; empty reference(s) for "
            f"{show(blank_refs)} (e.g. {references[blank_refs[0]]!r}). Remove the empty references (or the rows "
            "that hold them) from the input"
        )
    for key, prediction in predictions.items():
        sid = str(key)
        if sid in preds:
            raise InvalidInputError(f"sample ids {key!r} and {sid!r} collide once converted to strings")
        preds[sid] = prediction
        refs[sid] = list(references[key])
    return preds, refs


class _Background:
    """Run a function in a daemon thread and keep its result or exception."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target, *args), daemon=True)
        self.thread.start()

    def _run(self, target: Any, *args: Any) -> None:
        try:
            self.value = target(*args)
        except BaseException as exc:  # reported by the caller
            self.error = exc


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    tokenizer: str = "auto",
    meteor_timeout_s: float = 300.0,
    secondary: bool = True,
    meteor: bool = True,
) -> CaptionScores:
    """Score captions against all their references, as pycocoevalcap does.

    Args:
        predictions: ``sample_id -> caption``. An empty string is scored as an empty caption.
        references: ``sample_id -> [reference caption, ...]``; same ids as ``predictions``.
        tokenizer: PTB tokenizer: ``"auto"`` (pure Python, Java where Python only approximates), ``"python"``
            or ``"java"`` (see :mod:`panollava.metrics.ptb_tokenizer`).
        meteor_timeout_s: Seconds METEOR may take (JVM start included) before its process is killed.
        secondary: Also compute torchmetrics BLEU-4 / ROUGE-L on the PTB tokens (imports torch, lazily).
        meteor: Set ``False`` to skip METEOR (then ``None``, with that reason).

    Returns:
        Corpus and per-sample scores, the implementations used, and the reasons for missing metrics (``failed``
        for a metric that raised, ``unavailable`` for one that cannot run here). It never raises for a failing
        metric: call :meth:`CaptionScores.raise_for_failures` once the results are written.

    Raises:
        InvalidInputError: Different id sets, a prediction that is not a string, missing references, or an
            empty (blank) reference.
        ValueError: Unknown ``tokenizer``.
        RuntimeError: ``tokenizer="java"`` without Java (or no tokenizer at all).
    """

    started = time.monotonic()
    deadline = started + meteor_timeout_s
    preds, refs = _validate(predictions, references)
    ids = list(preds)
    timings: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    failed: dict[str, str] = {}
    notes: list[str] = []
    coco_version = _version("pycocoevalcap")
    java = java_executable()
    java_name = f"Java {java_version(java) or '(version unknown)'}"

    # 1. METEOR's JVM first: its 5-6 s start overlaps everything below.
    meteor_proc = None
    if not meteor:
        unavailable["meteor"] = "METEOR was not requested (meteor=False)"
    elif java is None:
        unavailable["meteor"] = (
            "METEOR needs Java (pycocoevalcap runs meteor-1.5.jar), and java is not on PATH; install a Java "
            "runtime (e.g. openjdk-17-jre-headless) to get METEOR"
        )
    else:
        try:
            meteor_proc = get_meteor(java)
        except (OSError, MeteorError) as exc:
            failed["meteor"] = f"could not start METEOR with '{java}': {exc}"

    # 2. PTB tokenisation: references and predictions as two files, like PTBTokenizer().tokenize twice.
    t0 = time.monotonic()
    tokenized = tokenize_caption_files([refs, {k: [preds[k]] for k in ids}], tokenizer, java=java)
    gts, res = tokenized.files
    timings["tokenize"] = time.monotonic() - t0
    notes.extend(tokenized.notes)
    tokenizer_flag = "ptb-python" if tokenized.backend == "python" else "ptb-java"
    if java is None:
        notes.append(
            "java is not on PATH: tokenized with the pure-Python PTB tokenizer and METEOR is unavailable"
        )

    # 3. METEOR and SPICE in the background.
    meteor_job = None
    if meteor_proc is not None:
        meteor_job = _Background(meteor_proc.score, gts, res, deadline)
    spice_job = None
    spice_reason = spice_unavailable_reason(java)
    if spice_reason is None:
        try:
            spice_job = SpiceRun(gts, res, java)  # type: ignore[arg-type]
        except OSError as exc:
            spice_reason = f"could not start SPICE: {exc}"
    if spice_reason is not None:
        unavailable["spice"] = spice_reason

    # 4. BLEU, ROUGE-L, CIDEr-D: pycocoevalcap's own code, in this thread meanwhile.
    from pycocoevalcap.cider.cider import Cider  # these two import numpy
    from pycocoevalcap.rouge.rouge import Rouge

    corpus: dict[str, float | None] = {name: None for name in OFFICIAL_METRICS}
    per_sample: dict[str, dict[str, float | None]] = {k: {m: None for m in PER_SAMPLE_METRICS} for k in ids}

    t0 = time.monotonic()
    try:
        bleu, bleu_per_sample = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            corpus[f"bleu_{n + 1}"] = float(bleu[n])
        for k, value in zip(ids, bleu_per_sample[3]):
            per_sample[k]["bleu_4"] = float(value)
    except Exception as exc:  # noqa: BLE001 - reported, never replaced by a number
        for n in range(4):
            failed[f"bleu_{n + 1}"] = f"BLEU raised {type(exc).__name__}: {exc}"
    timings["bleu"] = time.monotonic() - t0

    t0 = time.monotonic()
    try:
        rouge, rouge_per_sample = Rouge().compute_score(gts, res)
        corpus["rouge_l"] = float(rouge)
        for k, value in zip(ids, rouge_per_sample):
            per_sample[k]["rouge_l"] = float(value)
    except Exception as exc:  # noqa: BLE001
        failed["rouge_l"] = f"ROUGE-L raised {type(exc).__name__}: {exc}"
    timings["rouge_l"] = time.monotonic() - t0

    t0 = time.monotonic()
    try:
        cider, cider_per_sample = Cider().compute_score(gts, res)
        corpus["cider"] = float(cider)
        for k, value in zip(ids, cider_per_sample):
            per_sample[k]["cider"] = float(value)
    except Exception as exc:  # noqa: BLE001
        failed["cider"] = f"CIDEr-D raised {type(exc).__name__}: {exc}"
    timings["cider"] = time.monotonic() - t0

    secondary_values: dict[str, float] = {}
    secondary_impl: dict[str, str] = {}
    if secondary:
        t0 = time.monotonic()
        secondary_values, secondary_impl, secondary_missing = secondary_scores(gts, res)
        unavailable.update(secondary_missing)
        timings["secondary"] = time.monotonic() - t0

    # 5. Collect METEOR and SPICE.
    if meteor_job is not None:
        t0 = time.monotonic()
        meteor_job.thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5.0)
        if meteor_job.thread.is_alive():  # the worker enforces the deadline itself; this is a last resort
            meteor_proc.kill()  # type: ignore[union-attr]
            meteor_job.thread.join(timeout=10.0)
            failed["meteor"] = _meteor_timeout_reason(meteor_timeout_s, meteor_proc)
        elif isinstance(meteor_job.error, MeteorTimeout):
            failed["meteor"] = _meteor_timeout_reason(meteor_timeout_s, meteor_proc)
        elif meteor_job.error is not None:
            failed["meteor"] = f"METEOR raised {type(meteor_job.error).__name__}: {meteor_job.error}"
        else:
            value, values = meteor_job.value
            corpus["meteor"] = float(value)
            for k, v in zip(ids, values):
                per_sample[k]["meteor"] = float(v)
        if "meteor" in failed:
            logger.warning("METEOR failed: %s", failed["meteor"])
        timings["meteor_wait"] = time.monotonic() - t0
    if spice_job is not None:
        try:
            corpus["spice"] = spice_job.result(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            failed["spice"] = str(exc)

    implementations = {
        "bleu_1": f"pycocoevalcap {coco_version} Bleu(4), option='closest'",
        "bleu_2": f"pycocoevalcap {coco_version} Bleu(4), option='closest'",
        "bleu_3": f"pycocoevalcap {coco_version} Bleu(4), option='closest'",
        "bleu_4": f"pycocoevalcap {coco_version} Bleu(4), option='closest'",
        "meteor": f"pycocoevalcap {coco_version} Meteor: meteor-1.5.jar -l en -norm ({java_name}, "
                  f"JVM options {' '.join(jvm_options()) or 'none'})",
        "rouge_l": f"pycocoevalcap {coco_version} Rouge: ROUGE-L F with beta=1.2, best reference",
        "cider": f"pycocoevalcap {coco_version} Cider: CIDEr-D, n=4, sigma=6, "
                 f"idf over the {len(ids)} scored samples",
        "spice": f"pycocoevalcap {coco_version} Spice: spice-1.0.jar ({java_name})",
        "tokenizer": tokenized.implementation,
        **secondary_impl,
    }
    timings["total"] = time.monotonic() - started
    return CaptionScores(
        corpus=corpus,
        per_sample=per_sample,
        unavailable=unavailable,
        failed=failed,
        implementations=implementations,
        secondary=secondary_values,
        num_samples=len(ids),
        tokenizer=tokenizer_flag,
        notes=notes,
        timings_s=timings,
    )


def _meteor_timeout_reason(timeout_s: float, proc: Any) -> str:
    pid = getattr(getattr(proc, "proc", None), "pid", "?")
    return (
        f"METEOR did not finish within meteor_timeout_s={timeout_s:g} s; its Java process (pid {pid}) was "
        "killed. The other metrics are unaffected; raise the timeout for very large or very long inputs"
    )
