"""The settings merge: CLI > checkpoint metadata > config file > built-in defaults, key by key.

Every input is a flat dict keyed like :data:`panollava.schema.SETTINGS`; a key that is absent was not given.
The metadata governs only the keys that define the model and its inputs (:data:`panollava.schema.INPUT_KEYS`);
run-time keys never come from it. Where the metadata disagrees with the config or with a flag typed on the
command line, one warning lists each key with the values; the metadata beats the config, the command line beats
both (SPEC §2). Which values count as "CLI" and which as "config" is decided by the parser
(``panollava.lightning_cli``), never by comparing a value with its default.
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
from panollava.metadata import RunMetadata
from panollava.schema import INPUT_KEYS, REQUIRED_KEYS, SETTINGS, check_settings, defaults, show, to_plain

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = defaults()
"""Built-in defaults of every flat key (from the schema). Treat as read-only."""


def values_equal(a: Any, b: Any, key: str = "") -> bool:
    """Whether two setting values mean the same thing.

    ``image_size`` 224 equals ``[224, 224]``; numbers compare with a relative tolerance of 1e-6 (``90`` equals
    ``90.0``; the schema refuses NaN); booleans only equal booleans; lists of strings (e.g. LoRA
    ``target_modules``) ignore order; dicts compare key by key.

    Args:
        a: one value (plain: as :func:`panollava.schema.to_plain` returns).
        b: the other.
        key: the setting key (``image_size`` is normalised first).

    Returns:
        True when they are equivalent.
    """
    if key == "image_size":
        a, b = ([v, v] if isinstance(v, int) and not isinstance(v, bool) else v for v in (a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k], k) for k in a)
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in (*a, *b)):
        return sorted(a) == sorted(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(values_equal, a, b))
    return a == b


@dataclass
class MergedSettings:
    """The merged settings and where each value came from.

    Attributes:
        values: key → value (``image_size`` as ``[H, W]``; ``tokenizer_name`` filled from
            ``language_model_name`` when no source gives it).
        sources: key → ``"cli"``, ``"metadata"``, ``"config"`` or ``"default"``.
        mismatches: ``(key, config_value, metadata_value)`` for each model/input key where the config and the
            metadata disagree (the metadata wins unless the CLI sets the key).
        cli_overrides: ``(key, metadata_value, cli_value)`` for each model/input key where a flag typed on the
            command line replaces a different recorded value.
        config_name: the config file(s), for messages (None when not known).
        metadata_name: the metadata file, for messages (None when not known).
    """

    values: dict[str, Any]
    sources: dict[str, str]
    mismatches: list[tuple[str, Any, Any]] = field(default_factory=list)
    cli_overrides: list[tuple[str, Any, Any]] = field(default_factory=list)
    config_name: str | None = None
    metadata_name: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def warning_message(self) -> str | None:
        """One message listing each key where the metadata disagrees with the config or the command line.

        Returns:
            The message, or None when they agree.
        """
        if not self.mismatches and not self.cli_overrides:
            return None
        config = "the config" + (f" '{self.config_name}'" if self.config_name else "")
        metadata = "the checkpoint metadata" + (f" '{self.metadata_name}'" if self.metadata_name else "")
        priority = "(priority: CLI > metadata > config > defaults):"
        lines = []
        if self.mismatches:
            lines.append(f"{config} and {metadata} disagree on {len(self.mismatches)} setting(s); the "
                         f"metadata wins {priority}")
            for key, config_value, metadata_value in self.mismatches:
                line = f"  - {key}: config {show(config_value)}, metadata {show(metadata_value)}"
                if self.sources.get(key) == "cli":
                    line += f" (the CLI overrides both: {show(self.values[key])})"
                lines.append(line)
        extra = [o for o in self.cli_overrides if o[0] not in {m[0] for m in self.mismatches}]
        if extra:
            lines.append(f"the command line overrides {metadata} on {len(extra)} setting(s) {priority}")
            lines.extend(f"  - {key}: metadata {show(m)}, command line {show(c)}" for key, m, c in extra)
        return "\n".join(lines)

    def provenance(self) -> dict[str, dict[str, Any]]:
        """``{key: {"value", "source"}}`` with JSON-able values (paths as strings), for ``metrics.json``."""
        return {key: {"value": to_plain(self.values[key]), "source": self.sources[key]} for key in sorted(self.values)}

    def require(self) -> None:
        """Checks that the model names (which have no default) have values.

        Raises:
            InvalidInputError: one has no value; the message says where it could come from.
        """
        missing = [k for k in REQUIRED_KEYS if self.values.get(k) is None]
        if missing:
            raise InvalidInputError(
                f"{', '.join(missing)} not set: neither the CLI, checkpoint metadata nor the config gives "
                f"{'it' if len(missing) == 1 else 'them'}. Pass the run directory that training wrote (its "
                f"checkpoint_metadata.json records the model), or set {' and '.join(missing)} in the config."
            )


def merge_settings(
    cli: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    *,
    config_name: str | os.PathLike[str] | None = None,
    metadata_name: str | os.PathLike[str] | None = None,
) -> MergedSettings:
    """Merges the settings: CLI > metadata (model/input keys only) > config > defaults, key by key.

    Args:
        cli: values typed on the command line (absent keys: not given; a value may be None, e.g. "no LoRA").
        metadata: :func:`panollava.metadata.metadata_settings` of the run, or None without metadata. Keys
            outside :data:`INPUT_KEYS` are ignored (training-only values are recorded, not applied).
        config: values from the config file(s) (absent keys: not given).
        config_name: the config file, named in messages.
        metadata_name: the metadata file, named in messages.

    Returns:
        The :class:`MergedSettings` (mismatches are collected, not logged: see ``warning_message``).

    Raises:
        InvalidInputError: a value does not fit the schema; the message names the key and where it came from.
    """
    def given(values: Mapping[str, Any] | None) -> dict[str, Any]:  # None is "not given" unless null means something
        return {k: v for k, v in (values or {}).items() if v is not None or (k in SETTINGS and SETTINGS[k].nullable)}

    cli, config = given(cli), given(config)
    sources_in = {
        "cli": check_settings(cli, "the command line"),
        "metadata": {k: v for k, v in (metadata or {}).items() if k in INPUT_KEYS},  # validated by the reader
        "config": check_settings(config, "the config" + (f" '{config_name}'" if config_name else "")),
    }
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in dict.fromkeys([*SETTINGS, *sources_in["config"], *sources_in["cli"]]):
        source = next((s for s in ("cli", "metadata", "config") if key in sources_in[s]), "default")
        value = sources_in[source][key] if source != "default" else DEFAULT_SETTINGS.get(key)
        if key == "lora" and source == "cli" and isinstance(value, Mapping) and isinstance(cli.get(key), Mapping):
            lower = next((sources_in[s][key] for s in ("metadata", "config") if key in sources_in[s]), None)
            typed = {k: value[k] for k in cli[key]}  # --model.lora.r 4 changes r only
            value = {**(lower or DEFAULT_SETTINGS["lora"]), **typed}
        values[key], sources[key] = copy.deepcopy(value), source
    if values.get("tokenizer_name") is None and values.get("language_model_name") is not None:
        values["tokenizer_name"] = values["language_model_name"]  # the default rule: the LM's own tokenizer

    meta, conf, cli_in = sources_in["metadata"], sources_in["config"], sources_in["cli"]
    return MergedSettings(
        values=values,
        sources=sources,
        mismatches=[(k, conf[k], meta[k]) for k in INPUT_KEYS
                    if k in conf and k in meta and not values_equal(conf[k], meta[k], k)],
        cli_overrides=[(k, meta[k], values[k]) for k in INPUT_KEYS
                       if k in cli_in and k in meta and not values_equal(values[k], meta[k], k)],
        config_name=None if config_name is None else os.fspath(config_name),
        metadata_name=None if metadata_name is None else os.fspath(metadata_name),
    )


def flat_settings(ns: Any) -> dict[str, Any]:
    """The schema's flat settings present in a parsed namespace.

    A top-level flag (``--max_new_tokens``) is looked at before the init-arg path it stands for
    (``--model.generation.max_new_tokens``).

    Args:
        ns: a jsonargparse namespace parsed with ``defaults=False`` (only what was given is present).

    Returns:
        ``{key: value}`` with plain values.
    """
    values: dict[str, Any] = {}
    for key, setting in SETTINGS.items():
        path = next((p for p in (setting.flag, *setting.targets) if p is not None and p in ns), None)
        if path is not None:
            values[key] = to_plain(ns[path])
    return values


def resolve_csv(
    csv_input: str | os.PathLike[str] | None,
    metadata: RunMetadata | None,
    run_dir: Path | None,
    *,
    config_csv: str | os.PathLike[str] | None = None,
    cli_flag: str = "--csv_input",
    config_name: str | None = None,
) -> tuple[Path, str, str]:
    """Chooses the CSV to evaluate: the command line, else the metadata's ``dataset.test_csv``, else the
    config's CSV, else the metadata's ``val_csv`` (with a warning).

    A relative path is tried against the current directory, then the run directory. A ``test_csv`` that the
    metadata records but that cannot be found is an error (never a silent fall back to another split).

    Args:
        csv_input: the CSV typed on the command line (``--csv_input`` or ``--data.test_csv``), or None.
        metadata: the run's metadata, or None.
        run_dir: the run directory (None: only the current directory is tried).
        config_csv: the CSV a config file names (``data.test_csv``), or None.
        cli_flag: the flag ``csv_input`` was typed with, for messages.
        config_name: the config file(s), for messages.

    Returns:
        ``(absolute_path, reason, source)``: ``reason`` says which source was used and why; ``source`` is
        ``"cli"``, ``"metadata"`` or ``"config"``.

    Raises:
        InputNotFoundError: no CSV is given anywhere, or the chosen one does not exist; the message names
            every path tried and how to fix it (``--csv_input``).
    """
    meta_name = f"'{metadata.path}'" if metadata is not None else "(no checkpoint metadata)"
    dataset = metadata.dataset if metadata is not None else {}
    candidates = [  # (label, CSV, source, why), in priority order; the first one given is used
        (cli_flag, csv_input, "cli", "given on the command line"),
        ("metadata dataset.test_csv", dataset.get("test_csv"), "metadata",
         f"no {cli_flag}; the checkpoint metadata {meta_name} records it (it beats the config's)"),
        ("config data.test_csv", config_csv, "config", f"no {cli_flag} and no dataset.test_csv in the "
         f"checkpoint metadata; the config {f'{config_name!r} ' if config_name else ''}names it"),
        ("metadata dataset.val_csv", dataset.get("val_csv"), "metadata", f"no {cli_flag} and the checkpoint "
         f"metadata {meta_name} records no dataset.test_csv, so the validation split is evaluated"),
    ]
    label, given, source, why = next((c for c in candidates if c[1] not in (None, "")), (None,) * 4)
    if label is None:
        raise InputNotFoundError(
            f"no CSV to evaluate: --csv_input is not given and the checkpoint metadata {meta_name} "
            f"records neither dataset.test_csv nor dataset.val_csv. Pass --csv_input path/to/test.csv "
            f"(columns url,query,annotation)."
        )
    given = os.fspath(given)
    path = Path(os.path.expanduser(given))
    tried = [path] if path.is_absolute() else [Path.cwd() / path] + ([Path(run_dir) / path] if run_dir else [])
    for candidate in (c for c in tried if c.is_file()):
        found = Path(os.path.abspath(candidate))
        base = "the current directory" if candidate == tried[0] else "the run directory"
        reason = f"CSV from {label}: {found}{'' if path.is_absolute() else f' (relative to {base})'}; {why}"
        (logger.warning if label == "metadata dataset.val_csv" else logger.info)("%s", reason)
        return found, reason, source
    tried_text = ", ".join(f"'{os.path.abspath(p)}'" for p in tried)
    directories = [p for p in tried if p.is_dir()]
    problem = f"'{os.path.abspath(directories[0])}' is a directory" if directories else "no such file"
    hint = "Pass --csv_input with an existing CSV file"
    if label == "metadata dataset.test_csv" and dataset.get("val_csv"):
        hint += f" (the metadata's dataset.val_csv is {dataset['val_csv']!r} if you mean the validation split)"
    raise InputNotFoundError(f"CSV from {label} {given!r} not found: {problem} (tried {tried_text}). {hint}.")
