"""``checkpoint_metadata.json``: read (tolerant, migrated), write (complete, atomic).

Training writes one ``checkpoint_metadata.json`` per run directory (SPEC §1); evaluation reads it to rebuild the
model and its inputs. The keys that define the model and its inputs, their types, defaults and docs are declared
once in :mod:`panollava.schema` (each :class:`~panollava.schema.Setting` with a ``metadata_path``); this module
only places them in the file's sections and checks them with the schema's validation.

Reading is tolerant: the original tool's minimal example loads as written, unknown keys are kept, and every
missing key that defines the model or its inputs falls back, loudly (one WARNING per key, or per missing
section), to the schema's default. Files of an older ``schema_version`` are migrated (:data:`MIGRATIONS`).
Malformed files are errors, never guesses.

The file's layout (``schema_version`` 2) is described in ``docs/training.md``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.outputs.files import installed_library_versions, write_text_atomic
from panollava.schema import (
    INPUT_KEYS,
    METADATA_FILENAME,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    SETTINGS,
    STAGES,
    LoraSettings,
    check_settings,
    defaults,
    show,
    to_plain,
)

logger = logging.getLogger(__name__)

DEFAULT_LORA: dict[str, Any] = to_plain(LoraSettings())
"""The default LoRA settings (from :class:`panollava.schema.LoraSettings`). Treat as read-only."""

SECTIONS = ("model_config", "training_config", "prompt", "dataset")
_PROVENANCE_DEFAULTS: dict[str, Any] = {
    "checkpoints": {"best": None, "last": None, "all": []},
    "checkpoint_contents": {},
    "lora_weights": None,
    "library_versions": {},
    "created_at": None,
    "updated_at": None,
}
RECORDED_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"schema_version", "experiment_name", "stage", *SECTIONS, *_PROVENANCE_DEFAULTS, "generation"}),
    "model_config": frozenset({"train_vision", "vision_hidden_size", "lm_hidden_size", "tokens_per_view",
                               "resampler_hidden_dim", "resampler_depth"}),
    "training_config": frozenset({"learning_rate", "batch_size", "max_epochs", "seed", "weight_decay",
                                  "warmup_steps", "trainable_parts", "precision", "world_size"}),
    "dataset": frozenset({"train_csv", "val_csv", "test_csv", "dataset_name"}),
}
"""Keys training records besides the schema's settings; any other key is reported once as unknown (kept, not used)."""


def _unknown_keys(data: Mapping[str, Any]) -> list[str]:
    """Dotted keys of ``data`` that neither the schema nor training's records know."""
    unknown = [k for k in data if k not in RECORDED_KEYS[""]]
    for section in SECTIONS:
        values = data.get(section)
        if isinstance(values, Mapping):
            known = RECORDED_KEYS.get(section, frozenset()) | {name for sec, name in _BY_PATH if sec == section}
            unknown += [f"{section}.{k}" for k in values if k not in known]
    return unknown


def _finite_or_null(constant: str) -> None:
    """``json.loads`` hook: NaN/Infinity (a diverged loss) read as null, so ``metrics.json`` stays strict JSON."""
    logger.warning("checkpoint metadata holds %s (not valid JSON); it is read as null", constant)
    return None


_EXAMPLES = {
    "vision_name": '"vision_name": "google/siglip2-so400m-patch16-256" (hub id or dir)',
    "language_model_name": '"language_model_name": "Qwen/Qwen3-0.6B" (hub id or dir)',
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 → 2: the ``generation`` record gains ``top_k`` (0: schema-1 greedy decoding never used it) and
    ``share_prefix`` (false: schema 1 had no shared prefixes). LoRA ``alpha`` stays as written (a float now)."""
    generation = data.get("generation")
    if isinstance(generation, Mapping):
        data["generation"] = {"top_k": 0, "share_prefix": False, **generation}
    return data


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_v1}
"""``version → function`` that turns a file of that schema version into the next version's layout."""


@dataclass
class RunMetadata:
    """A loaded ``checkpoint_metadata.json``.

    Attributes:
        path: absolute path of the file it was read from.
        raw: the JSON object exactly as read.
        data: the migrated, normalised, complete dict: every section and key present (defaults filled in),
            ``image_size`` as ``[H, W]``, unknown keys kept.
        defaults_used: dotted keys (``"model_config.image_token"``, or a whole section such as ``"prompt"``)
            that were missing and fell back to the schema's defaults.
        source_version: the schema version the file was written with (1 when it does not say).
    """

    path: Path
    raw: dict[str, Any]
    data: dict[str, Any]
    defaults_used: list[str] = field(default_factory=list)
    source_version: int = SCHEMA_VERSION

    schema_version = property(lambda self: self.data["schema_version"], doc="The schema version after migration.")
    experiment_name = property(lambda self: self.data["experiment_name"], doc="The experiment name, or None.")
    stage = property(lambda self: self.data["stage"], doc="vision, resampler or finetune; None when not recorded.")
    model_config = property(lambda self: self.data["model_config"], doc="The normalised model_config section.")
    training_config = property(lambda self: self.data["training_config"], doc="The training_config section.")
    prompt = property(lambda self: self.data["prompt"], doc="The normalised prompt section.")
    dataset = property(lambda self: self.data["dataset"], doc="The normalised dataset section.")
    lora_weights = property(lambda self: self.data.get("lora_weights"),
                            doc="The LoRA adapter folder relative to the run directory, or None.")


_BY_PATH = {SETTINGS[k].metadata_path: k for k in INPUT_KEYS}


def _recorded(section: Any, key: str) -> bool:
    """Whether a section (as read) records ``key``; null counts as absent unless null is one of its values."""
    name = SETTINGS[key].metadata_path[1]
    recorded = isinstance(section, Mapping) and name in section
    return recorded and (section[name] is not None or SETTINGS[key].nullable)


def normalize_metadata(
    raw: Any, source: str | os.PathLike[str] = "<metadata>", *, log: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Migrates a metadata dict to the current schema, validates it and fills in the defaults.

    Args:
        raw: the parsed JSON (must be an object).
        source: where it came from, for messages (an absolute path when read from a file).
        log: log one WARNING per key that falls back to a default.

    Returns:
        ``(data, defaults_used)``: the complete normalised dict (unknown keys kept) and the dotted keys that
        fell back to defaults.

    Raises:
        InvalidInputError: the value is not an object, a required key is missing, or a value does not fit the
            schema. The message names ``source``, the dotted key, what was found and how to fix it.
    """
    where = f"checkpoint metadata '{source}'"

    def bad(key: str, value: Any, expected: str) -> InvalidInputError:
        return InvalidInputError(
            f"{where}: {key} must be {expected}, found {show(value)} ({_type_name(value)}). Fix {key} in the file."
        )

    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            f"{where}: the top level must be a JSON object {{...}}, found a {_type_name(raw)}. "
            f"Pass the {METADATA_FILENAME} that training wrote."
        )
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    defaults_used: list[str] = []

    def fall_back(key: str, default: Any) -> None:
        defaults_used.append(key)
        if log:
            logger.warning("%s: %s is not recorded; falling back to the config or the default %s",
                           where, key, show(default))

    version = data.get("schema_version")
    if version is None:
        version = 1
        defaults_used.append("schema_version")
        if log:
            logger.warning("%s: schema_version is not recorded; reading it as schema 1", where)
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("schema_version", version, "a positive integer")
    elif version > SCHEMA_VERSION and log:
        logger.warning("%s: schema_version %d is newer than this panollava understands (%d); keys it does not know "
                       "are ignored. Upgrade panollava to read it fully.", where, version, SCHEMA_VERSION)
    unknown = _unknown_keys(data)
    if unknown and log:
        logger.warning("%s: unknown key(s) %s are kept but not applied (a newer panollava, another tool, or a "
                       "typo: check the spelling if one was meant as a setting)", where, ", ".join(unknown))
    while version in MIGRATIONS:
        data = MIGRATIONS[version](data)
        version += 1
    data["schema_version"] = max(version, SCHEMA_VERSION)

    for key, choices in (("experiment_name", None), ("stage", STAGES)):
        value = data.setdefault(key, None)
        if value is None:
            defaults_used.append(key)
        elif choices is not None and value not in choices:
            raise bad(key, value, "one of " + ", ".join(repr(s) for s in choices))
        elif not isinstance(value, str):
            raise bad(key, value, "a string")

    if data.get("model_config") is None:
        raise InvalidInputError(
            f"{where}: model_config is missing; it must name at least the vision and language models, e.g. "
            f'"model_config": {{{_EXAMPLES["vision_name"]}, {_EXAMPLES["language_model_name"]}}}. '
            f"Pass the {METADATA_FILENAME} that training wrote."
        )
    base = defaults()
    for section in SECTIONS:  # model_config first: its required keys are checked before anything else
        if data.get(section) is not None and not isinstance(data[section], Mapping):
            raise bad(section, data[section], "an object {...}")
        values = dict(data.get(section) or {})
        for key in REQUIRED_KEYS if section == "model_config" else ():
            if values.get(key) is None:
                raise InvalidInputError(f"{where}: model_config.{key} is missing; it has no default. Add it "
                                        f"to model_config, e.g. {_EXAMPLES[key]}.")
        keys = {name: key for (sec, name), key in _BY_PATH.items() if sec == section}
        found = {key: values[name] for name, key in keys.items() if _recorded(values, key)}
        missing = {name: copy.deepcopy(base[key]) for name, key in keys.items() if key not in found}
        if isinstance(found.get("lora"), Mapping):
            for name in [n for n in DEFAULT_LORA if n not in found["lora"]]:
                fall_back(f"{section}.lora.{name}", DEFAULT_LORA[name])
        checked = check_settings(found, where, describe=lambda k: ".".join(SETTINGS[k].metadata_path))
        values.update({SETTINGS[k].metadata_path[1]: v for k, v in checked.items()}, **missing)
        if section != "dataset" and data.get(section) is None and missing:
            fall_back(section, missing)
        elif section != "dataset":
            for name, default in missing.items():
                if name == "tokenizer_name":  # its default: the language model's own
                    default = values["language_model_name"]
                fall_back(f"{section}.{name}", default)
        data[section] = values
    for key in ("train_csv", "val_csv", "test_csv", "dataset_name"):
        data["dataset"].setdefault(key, None)
    if data["model_config"].get("tokenizer_name") is None:
        data["model_config"]["tokenizer_name"] = data["model_config"]["language_model_name"]

    for key, default in _PROVENANCE_DEFAULTS.items():
        if data.get(key) is None:
            data[key] = copy.deepcopy(default)
    if not isinstance(data["checkpoints"], Mapping):
        raise bad("checkpoints", data["checkpoints"], 'an object {"best": ..., "last": ..., "all": [...]}')
    if data["lora_weights"] is not None and not isinstance(data["lora_weights"], str):
        raise bad("lora_weights", data["lora_weights"], "a folder name relative to the run directory, or null")
    return data, defaults_used


def _metadata_file(path: str | os.PathLike[str]) -> Path:
    """The absolute metadata file: ``path``, or ``checkpoint_metadata.json`` in it when it is a folder."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    return path / METADATA_FILENAME if path.is_dir() else path


def read_metadata(path: str | os.PathLike[str]) -> RunMetadata:
    """Reads, migrates and validates a ``checkpoint_metadata.json``, falling back loudly for missing keys.

    Args:
        path: the file, or a run directory holding it.

    Returns:
        The loaded :class:`RunMetadata` (``path`` absolute).

    Raises:
        InputNotFoundError: the file does not exist.
        InvalidInputError: the file is not UTF-8 JSON (line and column given), its top level is not an object,
            ``vision_name``/``language_model_name`` is missing, or a value does not fit the schema. Messages
            name the absolute path and the key.
    """
    path = _metadata_file(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"checkpoint metadata not found: '{path}' does not exist. "
            f"Pass the run directory that training wrote (it holds {METADATA_FILENAME})."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_finite_or_null)
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"checkpoint metadata '{path}' is not UTF-8 text ({err.reason} at byte {err.start}). "
            f"Pass the {METADATA_FILENAME} that training wrote."
        ) from None
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"checkpoint metadata '{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. "
            f"Fix the file (e.g. `python -m json.tool '{path}'` shows the error) or regenerate it."
        ) from None
    data, defaults_used = normalize_metadata(raw, path)
    version = raw.get("schema_version", 1) if isinstance(raw, Mapping) else 1
    logger.info("loaded checkpoint metadata '%s' (schema %s, %d keys from defaults)", path, version,
                len(defaults_used))
    return RunMetadata(path=path, raw=raw, data=data, defaults_used=defaults_used, source_version=version)


def _checkpoint_entry(entry: Any, key: str, required: tuple[str, ...]) -> dict[str, Any] | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), (str, os.PathLike)):
        raise InvalidInputError(
            f"checkpoints.{key} must be an object with at least a 'file' name and {', '.join(required)}, "
            f"found {show(entry)}"
        )
    return {**{k: None for k in required}, **{k: os.fspath(v) if k == "file" else v for k, v in entry.items()}}


def build_metadata(
    *,
    experiment_name: str,
    stage: str,
    model_config: Mapping[str, Any],
    training_config: Mapping[str, Any] | None = None,
    prompt: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    checkpoints: Mapping[str, Any] | None = None,
    checkpoint_contents: Mapping[str, Any] | None = None,
    lora_weights: str | None = None,
    created_at: str | None = None,
    library_versions: Mapping[str, str | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assembles the complete metadata dict that training writes (every default made explicit).

    Args:
        experiment_name: the experiment (first level of the run directory).
        stage: ``vision``, ``resampler`` or ``finetune``.
        model_config: at least ``vision_name`` and ``language_model_name``; the schema's other model keys are
            filled from their defaults (``tokenizer_name``: the language model's); further keys are kept.
        training_config: the schema's input keys (defaults filled) plus recorded-only values
            (``learning_rate``, ``batch_size``, ``max_epochs``, ``seed``: null when absent, and any others).
        prompt: ``template``, ``system_prompt``, ``enable_thinking`` (defaults filled).
        dataset: ``train_csv``, ``val_csv``, ``test_csv``, ``dataset_name`` (default: the training CSV's
            stem), ``image_root``; paths may be ``str`` or ``Path``.
        checkpoints: ``{"best": {"file", "val_loss", "epoch"} | None, "last": {...} | None, "all": [...]}``;
            ``file`` is a name inside the run directory.
        checkpoint_contents: free description of what the ``.ckpt`` files hold.
        lora_weights: the peft adapter folder relative to the run directory, or None.
        created_at: ISO time the run started (kept across rewrites); now when None.
        library_versions: ``{name: version}``; :func:`installed_library_versions` when None.
        extra: further top-level keys to keep (e.g. ``generation``).

    Returns:
        A plain JSON-able dict, validated, ready for :func:`write_metadata`.

    Raises:
        InvalidInputError: a value is missing or does not fit the schema (same checks as :func:`read_metadata`).
    """
    if stage not in STAGES:
        raise InvalidInputError(f"stage must be one of {', '.join(STAGES)}, found {stage!r}")
    sections = {  # normalize_metadata fills the schema's defaults
        "model_config": to_plain(dict(model_config)),
        "training_config": {**dict.fromkeys(("learning_rate", "batch_size", "max_epochs", "seed")),
                            **to_plain(dict(training_config or {}))},
        "prompt": to_plain(dict(prompt or {})),
        "dataset": to_plain(dict(dataset or {})),
    }
    data_section = sections["dataset"]
    if data_section.get("dataset_name") is None and data_section.get("train_csv"):
        data_section["dataset_name"] = Path(data_section["train_csv"]).stem
    ckpts = dict(checkpoints or {})
    if lora_weights is not None and (os.path.isabs(lora_weights) or not str(lora_weights).strip()):
        raise InvalidInputError(
            f"lora_weights must be a folder name relative to the run directory, found {lora_weights!r}"
        )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment_name": experiment_name,
        "stage": stage,
        **sections,
        "checkpoints": {
            "best": _checkpoint_entry(ckpts.get("best"), "best", ("val_loss", "epoch")),
            "last": _checkpoint_entry(ckpts.get("last"), "last", ("val_loss", "epoch")),
            "all": [_checkpoint_entry(e, f"all[{i}]", ("epoch", "step", "val_loss"))
                    for i, e in enumerate(ckpts.get("all") or [])],
        },
        "checkpoint_contents": dict(checkpoint_contents or {}),
        "lora_weights": None if lora_weights is None else os.fspath(lora_weights),
        "library_versions": (
            dict(library_versions) if library_versions is not None else installed_library_versions()
        ),
        "created_at": created_at or now,
        "updated_at": now,
    }
    for key, value in (extra or {}).items():
        data.setdefault(key, value)
    normalized, _ = normalize_metadata(_to_json(data), "<build_metadata>", log=False)
    return normalized


def _to_json(data: Any) -> Any:
    """Round-trips :func:`~panollava.schema.to_plain` through JSON (a value JSON cannot hold: TypeError)."""
    return json.loads(json.dumps(to_plain(data)))


def write_metadata(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Validates ``data`` and writes it as pretty JSON, atomically (same-folder tmp file, fsync, replace).

    Args:
        path: the file to write, or a run directory (then ``checkpoint_metadata.json`` inside it). Missing
            parent folders are created.
        data: the metadata, normally from :func:`build_metadata`. The normalised form is written.

    Raises:
        InvalidInputError: ``data`` fails validation, or lacks ``experiment_name``/``stage``.
        TypeError: a value is not JSON-serialisable.
    """
    path = _metadata_file(path)
    normalized, _ = normalize_metadata(_to_json(dict(data)), path, log=False)
    for key in ("experiment_name", "stage"):
        if normalized.get(key) is None:
            raise InvalidInputError(f"refusing to write '{path}': {key} is missing; training must record it")
    write_text_atomic(path, json.dumps(normalized, indent=2, ensure_ascii=False) + "\n")
    logger.info("wrote checkpoint metadata '%s'", path)


def metadata_settings(meta: RunMetadata) -> dict[str, Any]:
    """The settings the metadata governs and records, as flat keys (:data:`panollava.schema.INPUT_KEYS`).

    Keys the file does not record are left out, so that a config value can fill them (priority metadata >
    config > defaults).

    Args:
        meta: the loaded metadata.

    Returns:
        ``{key: value}``; ``image_size`` as ``[H, W]``; ``lora`` a dict or None (no LoRA).
    """
    return {key: copy.deepcopy(meta.data[section][name]) for (section, name), key in _BY_PATH.items()
            if _recorded(meta.raw.get(section), key)}


def metadata_recorded_training(meta: RunMetadata) -> dict[str, Any]:
    """Training-only values of the metadata (learning rate, training batch size, epochs, ...), for provenance.

    Args:
        meta: the loaded metadata.

    Returns:
        The ``training_config`` keys written in the file other than those that define the inputs.
    """
    raw = meta.raw.get("training_config")
    if not isinstance(raw, Mapping):
        return {}
    return {k: copy.deepcopy(meta.training_config.get(k, v)) for k, v in raw.items()
            if ("training_config", k) not in _BY_PATH}
