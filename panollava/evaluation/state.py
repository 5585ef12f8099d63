"""The on-disk state of one evaluation: per-rank shards, the resume fingerprint, and the final set of outputs.

Layout of an output folder::

    eval_state.json          fingerprint of what makes the captions, attempts (resumed / generated counts), complete
    shards/<attempt>-rank<R>.jsonl   finished records, appended and fsynced every batch (removed after the final write)
    predictions.jsonl, predictions.csv, report.html, metrics.json    the final set (test); predict_info.json (predict)

Rules that make it safe to kill at any moment:

* a record reaches a shard only after its caption exists, one JSON line each, flushed and fsynced every batch; a
  line cut short by a kill is ignored on reading (its sample is simply generated again);
* a rerun into the same folder reads every shard (whatever world size wrote them) and the final
  ``predictions.jsonl`` if there is one, and skips those samples, if and only if the fingerprint matches
  (checkpoint, adapter, settings that change captions, CSV) and every image is the one the captions were made from;
  otherwise it refuses and names what changed (and what ``--overwrite true`` would delete);
* ``predictions.jsonl`` is replaced atomically, so a rerun of a finished evaluation that is killed (or runs out of
  disk) while rewriting its outputs leaves either the old complete set or the new one, both reused by the next run;
* the final set is written predictions first and ``metrics.json`` last, after removing the old ``metrics.json``: a
  ``metrics.json`` only ever sits beside the predictions it was computed from (it records their sha256);
* only one evaluation runs in a folder at a time (:mod:`panollava.evaluation.lock`), and only the attempt recorded
  last in ``eval_state.json`` may mark it complete or remove the shards.

Light module: no torch, no lightning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError, PanoLLaVAError
from panollava.evaluation import interrupt, testhooks
from panollava.outputs.files import read_json_lines, sha256_file, write_json_atomic
from panollava.schema import SETTINGS

logger = logging.getLogger(__name__)

STATE_FILE = "eval_state.json"
SHARD_DIR = "shards"
FINAL_FILES = {
    "test": ("metrics.json", "report.html", "predictions.jsonl", "predictions.csv"),
    "predict": ("predict_info.json", "predictions.jsonl", "predictions.csv"),
}
"""The final outputs of each mode; the first is the commit marker (removed first, written last)."""

LAYOUT_KEYS = frozenset({
    "batch_size", "num_workers", "output_dir", "overwrite", "progress", "strict_metrics", "csv_input",
})
"""Settings that change how the work is laid out, never a caption: left out of the fingerprint, so a run that ran
out of memory can resume with a smaller batch or another world size."""


class ResumeRefusedError(PanoLLaVAError, ValueError):
    """The output folder holds another evaluation's state."""


class StateOwnershipError(PanoLLaVAError, RuntimeError):
    """Another attempt took over the output folder while this one ran."""


# -- the images a sample reads ---------------------------------------------------------------------------------------
_HASH_THREADS = 4


def _file_sha256(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def image_signatures(
    images: Mapping[str, str], known: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """What each image is: ``{url: {"path", "size", "mtime_ns", "sha256"}}`` (``sha256`` None: unreadable).

    Content hashes are computed once, at an evaluation's first attempt (about 0.7 GB/s on one core here: the
    5 sample panoramas, 6.9 MB, in 10 ms; QuIC-360 test's 374 panoramas, ~0.5 GB, in under a second, on 4
    threads). A later attempt re-hashes only the images whose path, size or modification time differ from
    ``known``, so a resume costs one ``stat`` per image (2 us here) unless files were touched, moved or replaced.

    Args:
        images: ``url`` (as written in the CSV) → absolute path.
        known: The signatures recorded by an earlier attempt (None: hash everything).

    Returns:
        The signatures, by url.
    """
    known = known or {}
    out: dict[str, dict[str, Any]] = {}
    to_hash: list[str] = []
    for url, path in images.items():
        st = _stat(path)
        entry = {"path": path, "size": st[0] if st else None, "mtime_ns": st[1] if st else None, "sha256": None}
        old = known.get(url)
        if st is not None and old is not None and all(old.get(k) == entry[k] for k in ("path", "size", "mtime_ns")):
            entry["sha256"] = old.get("sha256")
        elif st is not None:
            to_hash.append(url)
        out[url] = entry
    if to_hash:
        with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(to_hash))) as pool:
            for url, digest in zip(to_hash, pool.map(_file_sha256, [images[u] for u in to_hash])):
                out[url]["sha256"] = digest
    return out


def changed_images(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """``(url, what changed)`` for every image whose content differs from the recorded one (or that is gone)."""
    changes = []
    for url in sorted(set(old) | set(new)):
        before, now = old.get(url), new.get(url)
        if before is None or now is None:
            continue  # another CSV: the dataset fingerprint names it
        if before.get("sha256") == now.get("sha256") and now.get("sha256") is not None:
            continue
        if now.get("sha256") is None:
            what = f"'{now.get('path')}' is missing or unreadable"
        elif before.get("path") != now.get("path"):
            what = f"'{now.get('path')}' is another image than '{before.get('path')}' was"
        else:
            what = f"'{now.get('path')}' was replaced (size {before.get('size')} -> {now.get('size')} bytes)"
        changes.append((url, what))
    return changes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def adapter_digest(lora_dir: str | os.PathLike[str] | None) -> str | None:
    """sha256 over the adapter folder's config and weight files (None without an adapter)."""
    if lora_dir is None:
        return None

    digest = hashlib.sha256()
    folder = Path(lora_dir)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and (path.suffix in (".json", ".safetensors", ".bin")):
            digest.update(path.name.encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def evaluation_fingerprint(
    provenance: Mapping[str, Any], *, mode: str, precision: str, device_type: str
) -> dict[str, Any]:
    """What makes the captions of an evaluation: two runs with equal fingerprints produce the same records.

    Args:
        provenance: The evaluation's provenance (checkpoint, run, settings, decoding, dataset).
        mode: ``"test"`` or ``"predict"``.
        precision: The trainer's precision (``"32-true"``, ``"bf16-mixed"``, ...).
        device_type: ``"cpu"``, ``"cuda"``, ...

    Returns:
        A flat JSON-able dict: ``checkpoint_sha256``, ``adapter_sha256``, ``dataset_sha256``, ``reference_mode``,
        ``precision``, ``device_type``, ``mode``, ``merge_lora`` (a merged adapter computes in another order),
        ``decoding.<key>`` and ``setting.<key>`` for every setting that is not a layout choice (:data:`LAYOUT_KEYS`).
        The images are checked apart (:func:`image_signatures`), so that a refusal can name each one.
    """
    run = provenance.get("run") or {}
    dataset = provenance.get("dataset") or {}
    out: dict[str, Any] = {
        "mode": mode,
        "checkpoint_sha256": (provenance.get("checkpoint") or {}).get("sha256"),
        "adapter_sha256": adapter_digest(run.get("lora_dir")),
        "dataset_sha256": dataset.get("sha256"),
        "reference_mode": dataset.get("reference_mode"),
        "precision": str(precision),
        "device_type": str(device_type),
        "merge_lora": bool((provenance.get("evaluation_options") or {}).get("merge_lora", False)),
    }
    for key, value in sorted((provenance.get("decoding") or {}).items()):
        out[f"decoding.{key}"] = value
    # Another family's identity (the original run's resolved settings, a Hugging Face model's revision or weight
    # hashes, its adapter, view protocol and prompt): what changes its captions besides the checkpoint file.
    for key, value in sorted((provenance.get("model_fingerprint") or {}).items()):
        if isinstance(value, Mapping):  # one entry per setting, so that a refusal names the one that changed
            out.update({f"model.{key}.{k}": v for k, v in sorted(value.items())})
        else:
            out[f"model.{key}"] = value
    for key, entry in sorted((provenance.get("settings") or {}).items()):
        if key not in LAYOUT_KEYS:
            out[f"setting.{key}"] = entry.get("value") if isinstance(entry, Mapping) else entry
    return json.loads(json.dumps(out, default=str))


def _schema_default(key: str) -> Any:
    """The built-in default of a ``setting.<key>`` / ``decoding.<key>`` fingerprint entry (``KeyError``: none)."""
    if key == "merge_lora":  # recorded since issue 17; earlier states never merged silently
        return False
    section, _, name = key.partition(".")
    if section not in ("setting", "decoding"):
        raise KeyError(key)
    return SETTINGS[name].default


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, before, now)`` for every fingerprint entry that differs.

    A setting added to the schema after ``old`` was written is not a change while it has its default value (so an
    evaluation started by an earlier release resumes unless the new setting is used).
    """
    changes = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k not in old:
            try:
                if new[k] == _schema_default(k):
                    continue
            except KeyError:
                pass
        changes.append((k, old.get(k), new.get(k)))
    return changes


def _flag_name(key: str) -> str:
    name = key.split(".", 1)[-1]
    return {"checkpoint_sha256": "the checkpoint file", "adapter_sha256": "the LoRA adapter",
            "dataset_sha256": "the dataset CSV"}.get(key, name)


class ShardWriter:
    """Appends finished records to one shard file, one JSON line each, flushed and fsynced per call.

    Args:
        path: The shard file (created with its folder).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.count = 0

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Writes ``records`` and makes them durable before returning."""
        lines = "".join(json.dumps(dict(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        if not lines:
            return
        self._fh.write(lines)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.count += lines.count("\n")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a last line cut short by a kill (no newline, not JSON) is ignored.

    Raises:
        InvalidInputError: a complete line in the middle of the file is not a JSON object.
    """
    try:
        lines = read_json_lines(path, cut_tail_ok=True)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{exc}; the evaluation state is damaged. Delete that file to generate its samples again (the other "
            "finished samples are kept), or pass a new --output_dir."
        ) from None
    records = []
    for number, record in lines:
        if not isinstance(record, dict) or "sample_id" not in record:
            raise InvalidInputError(f"'{path}' line {number} is not a record with a sample_id")
        records.append(record)
    return records


def read_done(output_dir: Path, include_final: bool) -> dict[str, dict[str, Any]]:
    """Finished records in an output folder, by sample id: every shard, plus ``predictions.jsonl`` of a complete
    evaluation when ``include_final``.

    Raises:
        InvalidInputError: one sample id with two different captions (the folder mixes two evaluations).
    """
    sources: list[Path] = sorted((output_dir / SHARD_DIR).glob("*.jsonl")) if (output_dir / SHARD_DIR).is_dir() else []
    if include_final and (output_dir / "predictions.jsonl").is_file():
        sources.append(output_dir / "predictions.jsonl")
    done: dict[str, dict[str, Any]] = {}
    for path in sources:
        for record in read_jsonl_records(path):
            sid = record["sample_id"]
            previous = done.get(sid)
            if previous is not None and previous.get("prediction") != record.get("prediction"):
                raise InvalidInputError(
                    f"sample {sid!r} has two different captions in '{output_dir}' ({previous.get('prediction')!r} "
                    f"and {record.get('prediction')!r} in '{path}'): the folder mixes two evaluations. "
                    "Pass a new --output_dir."
                )
            done.setdefault(sid, record)
    return done


def _remove_outputs(output_dir: Path, mode: str) -> None:
    # The state goes first: outputs left by a kill in between have no state and are refused, never reused.
    (output_dir / STATE_FILE).unlink(missing_ok=True)
    for name in {*FINAL_FILES["test"], *FINAL_FILES["predict"]}:
        (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(output_dir / SHARD_DIR, ignore_errors=True)


def overwrite_would_delete(output_dir: Path) -> str:
    """What ``--overwrite true`` would delete in ``output_dir``, in words (for refusal messages)."""
    try:
        captions = len(read_done(output_dir, include_final=True))
    except (InvalidInputError, OSError):
        captions = None
    files = [n for n in (*FINAL_FILES["test"], *FINAL_FILES["predict"]) if (output_dir / n).exists()]
    parts = [f"{captions} finished caption(s)" if captions is not None else "the finished captions"]
    if files:
        parts.append(", ".join(sorted(set(files))))
    return f"--overwrite would delete {' and '.join(parts)} in '{output_dir}'"


def _new_dir_advice(output_dir: Path) -> str:
    return (f"pass a new --output_dir (e.g. '{output_dir.parent / (output_dir.name + '-2')}') to keep both; "
            f"{overwrite_would_delete(output_dir)}")


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write evaluation results to '{output_dir}': {exc.strerror or exc}. "
            "Pass a writable --output_dir."
        ) from None


def begin_attempt(
    output_dir: Path,
    fingerprint: Mapping[str, Any],
    *,
    mode: str,
    overwrite: bool,
    sample_ids: Sequence[str],
    world_size: int,
    images: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Starts (or resumes) an evaluation in ``output_dir``; run on rank 0 only, holding the folder's lock.

    Args:
        output_dir: The output folder (created).
        fingerprint: :func:`evaluation_fingerprint` of this run.
        mode: ``"test"`` or ``"predict"``.
        overwrite: Start fresh: remove an earlier evaluation's state and outputs first.
        sample_ids: The dataset's sample ids (done records of other ids are ignored, with a warning).
        world_size: Number of processes (recorded).
        images: The images the samples read, ``url → absolute path`` (their signatures are recorded, and a resume
            is refused when one changed).

    Returns:
        ``(attempt_id, done)``: a new attempt id and the finished records to reuse, by sample id.

    Raises:
        ResumeRefusedError: the folder holds an evaluation with another fingerprint or made from other images (the
            message lists each change, suggests a new ``--output_dir`` and says what ``--overwrite`` would
            delete), or final outputs without a recorded fingerprint.
        InvalidInputError: the folder is not writable, or its state is damaged.
    """
    _check_writable(output_dir)
    state_path = output_dir / STATE_FILE
    state: dict[str, Any] | None = None
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = None
            if not overwrite:
                raise ResumeRefusedError(
                    f"'{state_path}' is damaged (not JSON), so the folder cannot be resumed safely. "
                    f"To start fresh, {_new_dir_advice(output_dir)}."
                ) from None
    images = dict(images or {})
    if overwrite:
        if state is not None or any((output_dir / n).exists() for n in (*FINAL_FILES[mode], SHARD_DIR)):
            logger.warning("--overwrite true: removing the earlier evaluation in '%s'", output_dir)
        _remove_outputs(output_dir, mode)
        state = None
    elif state is None:
        leftovers = [n for n in (*FINAL_FILES["test"], *FINAL_FILES["predict"], SHARD_DIR) if (output_dir / n).exists()]
        if leftovers:
            raise ResumeRefusedError(
                f"'{output_dir}' holds results of an earlier evaluation ({', '.join(sorted(set(leftovers)))}) but no "
                f"{STATE_FILE} recording what produced them, so they cannot be reused or safely mixed. To evaluate, "
                f"{_new_dir_advice(output_dir)}."
            )
    else:
        changes = fingerprint_changes(state.get("fingerprint") or {}, fingerprint)
        if changes:
            lines = list(dict.fromkeys(f"{_flag_name(k)}: {old!r} -> {new!r}" for k, old, new in changes))
            shown = "; ".join(lines[:12])  # a setting that is also a decoding key is named once
            more = f" (and {len(lines) - 12} more)" if len(lines) > 12 else ""
            raise ResumeRefusedError(
                f"'{output_dir}' holds an evaluation made with other settings, so it cannot be resumed: {shown}{more}. "
                f"Rerun with the same settings to continue it, or {_new_dir_advice(output_dir)}."
            )
    signatures = image_signatures(images, (state or {}).get("images"))
    if state is not None and images:
        recorded = state.get("images")
        if recorded is None:
            raise ResumeRefusedError(
                f"'{output_dir}' holds an evaluation that did not record which images its captions were made from "
                f"(an earlier release), so it cannot be resumed safely. {_new_dir_advice(output_dir)[0].upper()}"
                f"{_new_dir_advice(output_dir)[1:]}."
            )
        changed = changed_images(recorded, signatures)
        if changed:
            shown = "; ".join(f"{url}: {what}" for url, what in changed[:10])
            more = f" (and {len(changed) - 10} more)" if len(changed) > 10 else ""
            raise ResumeRefusedError(
                f"'{output_dir}' holds captions of other images than the CSV now points to, so they cannot be "
                f"reused: {len(changed)} image(s) changed: {shown}{more}. Restore the images, or "
                f"{_new_dir_advice(output_dir)}."
            )

    # The final predictions.jsonl of an earlier attempt (complete or interrupted while rewriting) is reused with the
    # shards: it belongs to this fingerprint (an --overwrite removes the state before the outputs).
    done = read_done(output_dir, include_final=state is not None)
    wanted = set(sample_ids)
    foreign = [sid for sid in done if sid not in wanted]
    if foreign:
        logger.warning("ignoring %d finished record(s) whose sample is not in this dataset", len(foreign))
        for sid in foreign:
            del done[sid]
    attempt = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    attempts = list((state or {}).get("attempts") or [])
    attempts.append({
        "attempt": attempt, "started_at": _now(), "world_size": world_size,
        "resumed": len(done), "remaining": len(wanted) - len(done), "generated": None,
    })
    write_json_atomic(state_path, {
        "mode": mode, "fingerprint": dict(fingerprint), "complete": False, "num_samples": len(wanted),
        "attempts": attempts, "images": signatures,
    })
    return attempt, done


def check_owner(output_dir: Path, attempt: str) -> dict[str, Any]:
    """The state, if ``attempt`` is still the one recorded last (the owner of the folder).

    Raises:
        StateOwnershipError: another attempt started in the folder since (it may not be marked complete or have
            its shards removed by this one).
    """
    path = output_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    attempts = (state or {}).get("attempts") or [{}]
    if state is None or attempts[-1].get("attempt") != attempt:
        raise StateOwnershipError(
            f"'{path}' no longer belongs to this run (attempt {attempt}): another evaluation started in "
            f"'{output_dir}' meanwhile. This run's results were not marked complete; rerun into a new --output_dir."
        )
    return state


def shard_path(output_dir: Path, attempt: str, rank: int) -> Path:
    """Where rank ``rank`` of attempt ``attempt`` appends its records."""
    return output_dir / SHARD_DIR / f"{attempt}-rank{rank}.jsonl"


def count_shard_lines(output_dir: Path, attempt: str, offsets: dict[Path, tuple[int, int]]) -> int:
    """Records written so far by every rank of ``attempt`` (reads only the bytes appended since the last call).

    Args:
        output_dir: The output folder.
        attempt: The attempt id.
        offsets: Per shard ``(bytes read, lines counted)``, updated in place between calls.

    Returns:
        The total number of complete lines.
    """
    total = 0
    for path in (output_dir / SHARD_DIR).glob(f"{attempt}-rank*.jsonl"):
        read, lines = offsets.get(path, (0, 0))
        try:
            with open(path, "rb") as fh:
                fh.seek(read)
                chunk = fh.read()
        except OSError:
            chunk = b""
        offsets[path] = (read + len(chunk), lines + chunk.count(b"\n"))
        total += offsets[path][1]
    return total


def finish_attempt(
    output_dir: Path,
    *,
    mode: str,
    attempt: str,
    generated: int,
    write_outputs: Any,
    metrics_name: str,
    metrics: dict[str, Any],
) -> None:
    """Writes the final set and marks the evaluation complete; run on rank 0 only.

    The commit marker (``metrics_name``) is removed first and written last, with the sha256 of the predictions it
    was computed from, so an interrupted write never leaves an old ``metrics.json`` beside new predictions.

    Args:
        output_dir: The output folder.
        mode: ``"test"`` or ``"predict"``.
        attempt: The attempt id (its ``generated`` count is recorded).
        generated: Captions generated by this attempt, all ranks together.
        write_outputs: ``() -> None`` that writes every other final file (predictions, report).
        metrics_name: ``"metrics.json"`` (test) or ``"predict_info.json"`` (predict).
        metrics: Its content; ``predictions_sha256`` is added.
    """
    state_path = output_dir / STATE_FILE
    check_owner(output_dir, attempt)
    (output_dir / metrics_name).unlink(missing_ok=True)
    write_outputs()

    testhooks.pause("rewrite", interrupt.requested)
    metrics["predictions_sha256"] = sha256_file(output_dir / "predictions.jsonl")
    write_json_atomic(output_dir / metrics_name, metrics)
    state = check_owner(output_dir, attempt)
    for entry in state.get("attempts") or []:
        if entry.get("attempt") == attempt:
            entry["generated"] = generated
            entry["finished_at"] = _now()
    state["complete"] = True
    write_json_atomic(state_path, state)
    shutil.rmtree(output_dir / SHARD_DIR, ignore_errors=True)
