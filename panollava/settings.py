"""Evaluation settings from four sources: CLI > checkpoint metadata > config file > built-in defaults.

Every input is a flat dict with the canonical keys below; ``None`` means "not given". The metadata governs
only what defines the model and its inputs (:data:`MODEL_INPUT_KEYS`); run-time choices (:data:`RUNTIME_KEYS`)
never come from it. When the config and the metadata disagree on a model/input key, one warning lists each key
with both values, and the metadata wins (SPEC §2). Only the standard library is imported here.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metadata import (
    CROP_STRATEGIES,
    DEFAULT_METADATA,
    METADATA_SETTING_PATHS,
    RESAMPLER_TYPES,
    RunMetadata,
    normalize_image_size,
)

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS: tuple[str, ...] = tuple(METADATA_SETTING_PATHS)
"""Keys the checkpoint metadata governs: vision_name, language_model_name, tokenizer_name, resampler_type,
latent_dimension, image_size, image_token, lora, train_vision, crop_strategy, fov_deg, overlap_ratio,
use_vision_processor, prompt_template, system_prompt, enable_thinking."""

RUNTIME_KEYS: tuple[str, ...] = (
    "batch_size",
    "max_new_tokens",
    "num_beams",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
    "max_samples",
    "csv_input",
    "output_dir",
    "num_workers",
    "reference_mode",
)
"""Run-time keys: from the CLI, the config or the defaults, never from the metadata."""

REFERENCE_MODES = ("grouped", "per_row")

# Keys for which an explicit None in the metadata is a recorded value ("no system prompt", "no LoRA"), not
# "not given": otherwise a config could silently add what training did not use.
_METADATA_NULLABLE = frozenset({"system_prompt", "lora"})

DEFAULT_SETTINGS: dict[str, Any] = {
    **{
        key: copy.deepcopy(DEFAULT_METADATA[section][name])
        for key, (section, name) in METADATA_SETTING_PATHS.items()
    },
    "batch_size": 8,
    "max_new_tokens": 64,
    "num_beams": 1,
    "do_sample": False,
    "temperature": 1.0,
    "top_p": 1.0,
    "seed": 0,
    "max_samples": None,
    "csv_input": None,
    "output_dir": None,
    "num_workers": 0,
    "reference_mode": "grouped",
}
"""Built-in defaults. ``vision_name``/``language_model_name`` have none; ``tokenizer_name`` None means "the
language model's"; ``output_dir`` None lets the caller choose. Treat as read-only."""

SOURCES = ("cli", "metadata", "config", "default")


def _canonical(key: str, value: Any) -> Any:
    """Value in comparable form: ``image_size`` as ``[H, W]``, tuples as lists."""
    if key == "image_size" and value is not None:
        try:
            return normalize_image_size(value)
        except ValueError:
            return value
    if isinstance(value, tuple):
        return list(value)
    return value


def values_equal(a: Any, b: Any, key: str = "") -> bool:
    """Whether two setting values mean the same thing.

    ``image_size`` 224 equals ``[224, 224]``; numbers compare with a relative tolerance of 1e-6 (``90`` equals
    ``90.0``); booleans only equal booleans; lists of strings (e.g. LoRA ``target_modules``) ignore order;
    dicts compare key by key.

    Args:
        a: one value.
        b: the other.
        key: the setting key (``image_size`` is normalised first).

    Returns:
        True when they are equivalent.
    """
    a, b = _canonical(key, a), _canonical(key, b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k], k) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False
        if all(isinstance(x, str) for x in (*a, *b)):
            return sorted(a) == sorted(b)
        return all(values_equal(x, y) for x, y in zip(a, b))
    return a == b


def _plain(value: Any) -> Any:
    """A JSON-able copy: paths become strings, tuples lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass
class MergedSettings:
    """The merged settings and where each value came from.

    Attributes:
        values: key → value (``image_size`` as ``[H, W]``; ``tokenizer_name`` filled from
            ``language_model_name`` when no source gives it).
        sources: key → ``"cli"``, ``"metadata"``, ``"config"`` or ``"default"``.
        mismatches: ``(key, config_value, metadata_value)`` for each model/input key where the config and the
            metadata disagree (the metadata wins unless the CLI sets the key).
        config_name: the config file, for messages (None when not known).
        metadata_name: the metadata file, for messages (None when not known).
    """

    values: dict[str, Any]
    sources: dict[str, str]
    mismatches: list[tuple[str, Any, Any]] = field(default_factory=list)
    config_name: str | None = None
    metadata_name: str | None = None
    _logged: bool = field(default=False, init=False, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def warning_message(self) -> str | None:
        """One message listing each mismatched key with both values and saying that the metadata wins.

        Returns:
            The message, or None when the config and the metadata agree.
        """
        if not self.mismatches:
            return None
        config = "the config" + (f" '{self.config_name}'" if self.config_name else "")
        metadata = "the checkpoint metadata" + (f" '{self.metadata_name}'" if self.metadata_name else "")
        lines = [
            f"{config} and {metadata} disagree on {len(self.mismatches)} setting(s); the metadata wins "
            f"(priority: CLI > metadata > config > defaults):"
        ]
        for key, config_value, metadata_value in self.mismatches:
            line = f"  - {key}: config {_show(config_value)}, metadata {_show(metadata_value)}"
            if self.sources.get(key) == "cli":
                line += f" (the CLI overrides both: {_show(self.values[key])})"
            lines.append(line)
        return "\n".join(lines)

    def log_mismatches(self, logger: logging.Logger | None = None) -> str | None:
        """Logs :meth:`warning_message` at WARNING, once per instance (later calls log nothing).

        Args:
            logger: the logger to use (``panollava.settings``'s by default).

        Returns:
            The message, or None when there is nothing to report.
        """
        message = self.warning_message()
        if message is not None and not self._logged:
            (logger if logger is not None else logging.getLogger(__name__)).warning("%s", message)
            self._logged = True
        return message

    def provenance(self) -> dict[str, dict[str, Any]]:
        """``{key: {"value", "source"}}`` with JSON-able values (paths as strings), for ``metrics.json``."""
        return {
            key: {"value": _plain(self.values[key]), "source": self.sources[key]}
            for key in sorted(self.values)
        }

    def require(self, *keys: str) -> None:
        """Checks that ``keys`` have values (by default the model names, which have no default).

        Args:
            keys: the keys to check; ``vision_name`` and ``language_model_name`` when none are given.

        Raises:
            InvalidInputError: a key has no value; the message says where it could come from.
        """
        missing = [k for k in (keys or ("vision_name", "language_model_name")) if self.values.get(k) is None]
        if missing:
            raise InvalidInputError(
                f"{', '.join(missing)} not set: neither the CLI, checkpoint metadata nor the config gives "
                f"{'it' if len(missing) == 1 else 'them'}. Pass the run directory that training wrote (its "
                f"checkpoint_metadata.json records the model), or set {' and '.join(missing)} in the config."
            )


def _given(mapping: Mapping[str, Any] | None, key: str, nullable: frozenset[str] = frozenset()) -> bool:
    if not mapping or key not in mapping:
        return False
    return mapping[key] is not None or key in nullable


def merge_settings(
    cli: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    defaults: Mapping[str, Any] = DEFAULT_SETTINGS,
    *,
    config_name: str | os.PathLike[str] | None = None,
    metadata_name: str | os.PathLike[str] | None = None,
) -> MergedSettings:
    """Merges the settings: CLI > metadata (model/input keys only) > config > defaults, key by key.

    Args:
        cli: values given on the command line (None values: not given).
        metadata: :func:`panollava.metadata.metadata_settings` of the run, or None without metadata. Keys
            outside :data:`MODEL_INPUT_KEYS` are ignored (training-only values are recorded, not applied). An
            explicit None for ``system_prompt`` or ``lora`` counts as a recorded value ("none").
        config: values from the config file (None values: not given).
        defaults: the built-in defaults.
        config_name: the config file, named in the mismatch warning.
        metadata_name: the metadata file, named in the mismatch warning.

    Returns:
        The :class:`MergedSettings` (mismatches are collected, not logged: call ``log_mismatches``).

    Raises:
        InvalidInputError: a merged value is invalid (unknown ``crop_strategy``/``resampler_type``/
            ``reference_mode``, malformed ``image_size``, non-positive sizes); the message names the key and
            where the value came from.
    """
    cli = cli or {}
    config = config or {}
    metadata = {k: v for k, v in (metadata or {}).items() if k in MODEL_INPUT_KEYS}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    keys = list(dict.fromkeys([*defaults, *MODEL_INPUT_KEYS, *RUNTIME_KEYS, *config, *metadata, *cli]))
    for key in keys:
        if _given(cli, key):
            value, source = cli[key], "cli"
        elif _given(metadata, key, _METADATA_NULLABLE):
            value, source = metadata[key], "metadata"
        elif _given(config, key):
            value, source = config[key], "config"
        else:
            value, source = defaults.get(key), "default"
        values[key] = copy.deepcopy(_canonical(key, value))
        sources[key] = source

    if values.get("tokenizer_name") is None and values.get("language_model_name") is not None:
        values["tokenizer_name"] = values["language_model_name"]  # the default rule: the LM's own tokenizer

    mismatches = [
        (key, config[key], metadata[key])
        for key in MODEL_INPUT_KEYS
        if _given(config, key) and _given(metadata, key, _METADATA_NULLABLE)
        and not values_equal(config[key], metadata[key], key)
    ]
    merged = MergedSettings(
        values=values,
        sources=sources,
        mismatches=mismatches,
        config_name=None if config_name is None else os.fspath(config_name),
        metadata_name=None if metadata_name is None else os.fspath(metadata_name),
    )
    _validate(merged)
    return merged


def _validate(merged: MergedSettings) -> None:
    """Checks the merged values that evaluation cannot work around."""
    origin = {
        "cli": "the command line",
        "metadata": "checkpoint metadata" + (f" '{merged.metadata_name}'" if merged.metadata_name else ""),
        "config": "the config" + (f" '{merged.config_name}'" if merged.config_name else ""),
        "default": "the defaults",
    }

    def fail(key: str, expected: str) -> None:
        raise InvalidInputError(
            f"setting {key} must be {expected}, found {_show(merged.values[key])} "
            f"(from {origin[merged.sources[key]]}). Fix it there."
        )

    values = merged.values
    choices = {
        "crop_strategy": CROP_STRATEGIES,
        "resampler_type": RESAMPLER_TYPES,
        "reference_mode": REFERENCE_MODES,
    }
    for key, options in choices.items():
        if key in values and values[key] not in options:
            fail(key, "one of " + ", ".join(repr(o) for o in options))
    if values.get("image_size") is not None:
        try:
            values["image_size"] = normalize_image_size(values["image_size"])
        except ValueError:
            fail("image_size", "a positive integer or an [H, W] list of two positive integers")
    for key, minimum in (("batch_size", 1), ("max_new_tokens", 1), ("num_beams", 1), ("num_workers", 0),
                         ("max_samples", 1), ("latent_dimension", 1)):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            fail(key, f"an integer >= {minimum}" + (" or null" if key == "max_samples" else ""))


def resolve_csv(
    csv_input: str | os.PathLike[str] | None, metadata: RunMetadata | None, run_dir: Path | None
) -> tuple[Path, str]:
    """Chooses the CSV to evaluate: ``--csv_input``, else the metadata's ``dataset.test_csv``, else
    ``val_csv``.

    A relative path is tried against the current directory, then the run directory. A ``test_csv`` that the
    metadata records but that cannot be found is an error (evaluation never falls back to the validation split
    silently); ``val_csv`` is used only when no ``test_csv`` is recorded, with a warning.

    Args:
        csv_input: the ``--csv_input`` value, or None.
        metadata: the run's metadata, or None.
        run_dir: the run directory (None: only the current directory is tried).

    Returns:
        ``(absolute_path, reason)`` where ``reason`` says which source was used and why.

    Raises:
        InputNotFoundError: no CSV is given anywhere, or the chosen one does not exist; the message names
            every path tried and how to fix it (``--csv_input``).
    """
    meta_name = f"'{metadata.path}'" if metadata is not None else "(no checkpoint metadata)"
    if csv_input is not None and os.fspath(csv_input) != "":
        source, given = "--csv_input", os.fspath(csv_input)
        why = "given on the command line"
    else:
        dataset = metadata.dataset if metadata is not None else {}
        if dataset.get("test_csv"):
            source, given = "metadata dataset.test_csv", dataset["test_csv"]
            why = f"no --csv_input; the checkpoint metadata {meta_name} records it"
        elif dataset.get("val_csv"):
            source, given = "metadata dataset.val_csv", dataset["val_csv"]
            why = (
                f"no --csv_input and the checkpoint metadata {meta_name} records no dataset.test_csv, so the "
                f"validation split is evaluated"
            )
        else:
            raise InputNotFoundError(
                f"no CSV to evaluate: --csv_input is not given and the checkpoint metadata {meta_name} "
                f"records neither dataset.test_csv nor dataset.val_csv. Pass --csv_input path/to/test.csv "
                f"(columns url,query,annotation)."
            )

    path = Path(os.path.expanduser(given))
    tried = [path]
    if not path.is_absolute():
        tried = [Path.cwd() / path] + ([Path(run_dir) / path] if run_dir is not None else [])
    for candidate in tried:
        if candidate.is_file():
            found = Path(os.path.abspath(candidate))
            where = ""
            if not path.is_absolute():
                base = "the current directory" if candidate == tried[0] else "the run directory"
                where = f" (relative to {base})"
            reason = f"CSV from {source}: {found}{where}; {why}"
            if source == "metadata dataset.val_csv":
                logger.warning("%s", reason)
            else:
                logger.info("%s", reason)
            return found, reason

    tried_text = ", ".join(f"'{os.path.abspath(p)}'" for p in tried)
    directories = [p for p in tried if p.is_dir()]
    problem = f"'{os.path.abspath(directories[0])}' is a directory" if directories else "no such file"
    hint = "Pass --csv_input with an existing CSV file"
    if source == "metadata dataset.test_csv" and metadata is not None and metadata.dataset.get("val_csv"):
        val_csv = metadata.dataset["val_csv"]
        hint += f" (the metadata's dataset.val_csv is {val_csv!r} if you mean the validation split)"
    raise InputNotFoundError(
        f"CSV from {source} {given!r} not found: {problem} (tried {tried_text}). {hint}."
    )
