"""The schema of ``checkpoint_metadata.json``: read (tolerant), write (complete, atomic), validate.

Training writes one ``checkpoint_metadata.json`` per run directory (SPEC §1); evaluation reads it to rebuild
the model and its inputs. Reading is tolerant: the original tool's minimal example loads as written, unknown
keys are kept, and every missing key that affects the model or its inputs falls back, loudly (one WARNING per
key), to :data:`DEFAULT_METADATA`. Malformed files are errors, never guesses.

Layout (``schema_version`` 1)::

    schema_version, experiment_name, stage
    model_config     vision_name*, language_model_name*, tokenizer_name, resampler_type, latent_dimension,
                     image_size [H, W], image_token, lora {r, alpha, dropout, target_modules},
                     train_vision, ... (resampler sizes)
    training_config  crop_strategy, fov_deg, overlap_ratio, use_vision_processor   (define the inputs)
                     learning_rate, batch_size, max_epochs, seed, ...               (recorded only)
    prompt           template, system_prompt, enable_thinking
    dataset          train_csv, val_csv, test_csv, dataset_name, image_root
    checkpoints      {"best": {file, val_loss, epoch} | null, "last": {...} | null,
                      "all": [{file, epoch, step, val_loss}, ...]}
    checkpoint_contents, lora_weights, library_versions, created_at, updated_at

(* required). Only the standard library is imported here, so the module loads in milliseconds.
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

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the layout that :func:`build_metadata` writes."""

METADATA_FILENAME = "checkpoint_metadata.json"
STAGES = ("vision", "resampler", "finetune")
CROP_STRATEGIES = ("anyres_e2p", "e2p", "cubemap", "sliding_window", "resize")
RESAMPLER_TYPES = ("mlp", "identity", "avgpool")

DEFAULT_PROMPT_TEMPLATE = (
    'In this panoramic image, please provide a concise but detailed description of "{query}".'
)

DEFAULT_LORA: dict[str, Any] = {
    "r": 32,
    "alpha": 64,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

DEFAULT_METADATA: dict[str, Any] = {
    "schema_version": SCHEMA_VERSION,
    "experiment_name": None,
    "stage": None,
    "model_config": {
        "vision_name": None,  # required
        "language_model_name": None,  # required
        "tokenizer_name": None,  # None → language_model_name
        "resampler_type": "mlp",
        "latent_dimension": 768,
        "image_size": [224, 224],
        "image_token": "<|image_pad|>",
        "lora": DEFAULT_LORA,
        "train_vision": False,
    },
    "training_config": {
        "crop_strategy": "anyres_e2p",
        "fov_deg": 90.0,
        "overlap_ratio": 0.5,
        "use_vision_processor": True,
        "learning_rate": None,  # recorded only
        "batch_size": None,  # recorded only
    },
    "prompt": {
        "template": DEFAULT_PROMPT_TEMPLATE,
        "system_prompt": None,
        "enable_thinking": False,
    },
    "dataset": {
        "train_csv": None,
        "val_csv": None,
        "test_csv": None,
        "dataset_name": None,
        "image_root": None,
    },
}
"""Values a reader falls back to when a key is missing. Treat as read-only (copy before changing)."""

METADATA_SETTING_PATHS: dict[str, tuple[str, str]] = {
    "vision_name": ("model_config", "vision_name"),
    "language_model_name": ("model_config", "language_model_name"),
    "tokenizer_name": ("model_config", "tokenizer_name"),
    "resampler_type": ("model_config", "resampler_type"),
    "latent_dimension": ("model_config", "latent_dimension"),
    "image_size": ("model_config", "image_size"),
    "image_token": ("model_config", "image_token"),
    "lora": ("model_config", "lora"),
    "train_vision": ("model_config", "train_vision"),
    "crop_strategy": ("training_config", "crop_strategy"),
    "fov_deg": ("training_config", "fov_deg"),
    "overlap_ratio": ("training_config", "overlap_ratio"),
    "use_vision_processor": ("training_config", "use_vision_processor"),
    "prompt_template": ("prompt", "template"),
    "system_prompt": ("prompt", "system_prompt"),
    "enable_thinking": ("prompt", "enable_thinking"),
}
"""Flat setting key → (section, key) in the metadata, for the keys that define the model and its inputs."""

_PROVENANCE_DEFAULTS: dict[str, Any] = {
    "checkpoints": {"best": None, "last": None, "all": []},
    "checkpoint_contents": {},
    "lora_weights": None,
    "library_versions": {},
    "created_at": None,
    "updated_at": None,
}
_SECTIONS = ("model_config", "training_config", "prompt", "dataset")


class _BadValue(ValueError):
    """Internal: a value failed validation; carries what was expected."""


# --- value validators: return the normalised value or raise _BadValue(expected) -----------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadValue("a non-empty string")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _BadValue("a string or null")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise _BadValue("one of " + ", ".join(repr(o) for o in options))
        return value

    return check


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _BadValue("a positive integer")
    return value


def _optional_positive_int(value: Any) -> int | None:
    return None if value is None else _positive_int(value)


def _optional_number(value: Any) -> float | int | None:
    if value is not None and not _is_number(value):
        raise _BadValue("a number or null")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _BadValue("true or false")
    return value


def _fov_deg(value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 360:
        raise _BadValue("a number of degrees in (0, 360]")
    return float(value)


def _overlap_ratio(value: Any) -> float:
    if not _is_number(value) or not 0 <= value < 1:
        raise _BadValue("a number in [0, 1)")
    return float(value)


def normalize_image_size(value: Any) -> list[int]:
    """Turns an image size given as ``224`` or ``[224, 224]`` into ``[H, W]``.

    Args:
        value: an int, or a list/tuple of two ints (H, W).

    Returns:
        ``[H, W]`` as a list of two positive ints.

    Raises:
        ValueError: the value is neither (the message says what is expected).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return [int(value[0]), int(value[1])]
    raise _BadValue("a positive integer or an [H, W] list of two positive integers")


def _image_size(value: Any) -> list[int]:
    return normalize_image_size(value)


def _template(value: Any) -> str:
    if not isinstance(value, str) or "{query}" not in value:
        raise _BadValue('a string containing the placeholder "{query}"')
    return value


def _target_modules(value: Any) -> list[str] | str:
    if isinstance(value, str) and value:
        return value  # peft accepts a regex or "all-linear"
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise _BadValue("a non-empty list of module names (or a peft regex string)")


def _lora_alpha(value: Any) -> float | int:
    if not _is_number(value) or value <= 0:
        raise _BadValue("a positive number")
    return value


def _lora_dropout(value: Any) -> float:
    if not _is_number(value) or not 0 <= value < 1:
        raise _BadValue("a number in [0, 1)")
    return float(value)


_LORA_FIELDS: dict[str, Callable[[Any], Any]] = {
    "r": _positive_int,
    "alpha": _lora_alpha,
    "dropout": _lora_dropout,
    "target_modules": _target_modules,
}

# (section, key) → (validator, null_is_value, warn_when_missing). ``null_is_value``: an explicit null is a
# recorded value (not "missing"). ``warn_when_missing``: the key defines the model or its inputs, so falling
# back to the default is logged; recorded-only keys are filled with null silently.
_FIELDS: dict[tuple[str, str], tuple[Callable[[Any], Any], bool, bool]] = {
    ("model_config", "vision_name"): (_nonempty_str, False, True),
    ("model_config", "language_model_name"): (_nonempty_str, False, True),
    ("model_config", "tokenizer_name"): (_nonempty_str, False, True),
    ("model_config", "resampler_type"): (_choice(RESAMPLER_TYPES), False, True),
    ("model_config", "latent_dimension"): (_positive_int, False, True),
    ("model_config", "image_size"): (_image_size, False, True),
    ("model_config", "image_token"): (_nonempty_str, False, True),
    ("model_config", "lora"): (lambda v: v, True, True),  # checked field by field below
    ("model_config", "train_vision"): (_bool, False, True),
    ("training_config", "crop_strategy"): (_choice(CROP_STRATEGIES), False, True),
    ("training_config", "fov_deg"): (_fov_deg, False, True),
    ("training_config", "overlap_ratio"): (_overlap_ratio, False, True),
    ("training_config", "use_vision_processor"): (_bool, False, True),
    ("training_config", "learning_rate"): (_optional_number, True, False),
    ("training_config", "batch_size"): (_optional_positive_int, True, False),
    ("prompt", "template"): (_template, False, True),
    ("prompt", "system_prompt"): (_optional_str, True, True),
    ("prompt", "enable_thinking"): (_bool, False, True),
    ("dataset", "train_csv"): (_optional_str, True, False),
    ("dataset", "val_csv"): (_optional_str, True, False),
    ("dataset", "test_csv"): (_optional_str, True, False),
    ("dataset", "dataset_name"): (_optional_str, True, False),
    ("dataset", "image_root"): (_optional_str, True, False),
}
_REQUIRED = {
    ("model_config", "vision_name"): '"vision_name": "google/siglip2-so400m-patch16-256" (hub id or dir)',
    ("model_config", "language_model_name"): '"language_model_name": "Qwen/Qwen3-0.6B" (hub id or dir)',
}


def _show(value: Any) -> str:
    """Short JSON-ish rendering of a value for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__
    )


@dataclass
class RunMetadata:
    """A loaded ``checkpoint_metadata.json``.

    Attributes:
        path: absolute path of the file it was read from.
        raw: the JSON object exactly as read.
        data: the normalised, complete dict: every section and key present (defaults filled in),
            ``image_size`` as ``[H, W]``, unknown keys kept.
        defaults_used: dotted keys (``"model_config.image_token"``, or a whole section such as ``"prompt"``)
            that were missing and fell back to :data:`DEFAULT_METADATA`.
    """

    path: Path
    raw: dict[str, Any]
    data: dict[str, Any]
    defaults_used: list[str] = field(default_factory=list)

    @property
    def schema_version(self) -> int:
        """The file's schema version (1 when it does not say)."""
        return self.data["schema_version"]

    @property
    def experiment_name(self) -> str | None:
        """The experiment name, or None when not recorded."""
        return self.data["experiment_name"]

    @property
    def stage(self) -> str | None:
        """``vision``, ``resampler`` or ``finetune``; None when not recorded."""
        return self.data["stage"]

    @property
    def model_config(self) -> dict[str, Any]:
        """The normalised ``model_config`` section."""
        return self.data["model_config"]

    @property
    def training_config(self) -> dict[str, Any]:
        """The normalised ``training_config`` section."""
        return self.data["training_config"]

    @property
    def prompt(self) -> dict[str, Any]:
        """The normalised ``prompt`` section."""
        return self.data["prompt"]

    @property
    def dataset(self) -> dict[str, Any]:
        """The normalised ``dataset`` section."""
        return self.data["dataset"]

    @property
    def lora_weights(self) -> str | None:
        """The LoRA adapter folder recorded by training, relative to the run directory (or None)."""
        return self.data.get("lora_weights")

    def recorded(self, section: str, key: str) -> bool:
        """Whether ``section.key`` is written in the file itself (as opposed to filled from the defaults).

        Args:
            section: a top-level section such as ``"model_config"``.
            key: a key inside it.

        Returns:
            True when the raw file has the key (for keys whose null means "missing", a null counts as absent).
        """
        sec = self.raw.get(section)
        if not isinstance(sec, Mapping) or key not in sec:
            return False
        spec = _FIELDS.get((section, key))
        return sec[key] is not None or (spec is not None and spec[1])


def normalize_metadata(
    raw: Any, source: str | os.PathLike[str] = "<metadata>", *, log: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Validates a metadata dict and fills in the defaults.

    Args:
        raw: the parsed JSON (must be an object).
        source: where it came from, for messages (an absolute path when read from a file).
        log: log one WARNING per key that falls back to a default.

    Returns:
        ``(data, defaults_used)``: the complete normalised dict (unknown keys kept) and the dotted keys that
        fell back to defaults.

    Raises:
        InvalidInputError: the value is not an object, a required key is missing, or a value has the wrong
            type or an unknown choice. The message names ``source``, the dotted key, what was found and how to
            fix it.
    """
    where = f"checkpoint metadata '{source}'"

    def bad(key: str, value: Any, expected: str) -> InvalidInputError:
        required = key in (f"{s}.{k}" for s, k in _REQUIRED)
        fix = f"Fix {key} in the file" + ("." if required else ", or delete it to use the default.")
        return InvalidInputError(
            f"{where}: {key} must be {expected}, found {_show(value)} ({_type_name(value)}). {fix}"
        )

    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            f"{where}: the top level must be a JSON object {{...}}, found a {_type_name(raw)}. "
            f"Pass the {METADATA_FILENAME} that training wrote."
        )
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    defaults_used: list[str] = []

    def fall_back(key: str, default: Any, note: str = "", settable: bool = True) -> None:
        defaults_used.append(key)
        if log:
            # Settable keys can still come from the config (metadata_settings leaves defaulted keys out).
            source = "the config or the default" if settable else "the default"
            logger.warning(
                "%s: %s is not recorded; falling back to %s %s%s", where, key, source, _show(default), note
            )

    version = data.get("schema_version")
    if version is None:
        data["schema_version"] = SCHEMA_VERSION
        fall_back("schema_version", SCHEMA_VERSION, settable=False)
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("schema_version", version, "a positive integer")
    elif version > SCHEMA_VERSION and log:
        logger.warning(
            "%s: schema_version %d is newer than this panollava understands (%d); keys it does not know are "
            "ignored. Upgrade panollava to read it fully.", where, version, SCHEMA_VERSION,
        )

    for key in ("experiment_name", "stage"):
        value = data.get(key)
        if value is None:
            data[key] = None
            fall_back(key, None, settable=False)
        elif key == "stage" and value not in STAGES:
            raise bad(key, value, "one of " + ", ".join(repr(s) for s in STAGES))
        elif not isinstance(value, str):
            raise bad(key, value, "a string")

    for section in _SECTIONS:
        value = data.get(section)
        if value is None and section == "model_config":
            raise InvalidInputError(
                f"{where}: model_config is missing; it must name at least the vision and language models, "
                f'e.g. "model_config": {{"vision_name": "google/siglip2-so400m-patch16-256", '
                f'"language_model_name": "Qwen/Qwen3-0.6B"}}. '
                f"Pass the {METADATA_FILENAME} that training wrote."
            )
        if value is None:
            # A whole missing section is reported once, not key by key.
            data[section] = {}
            defaults = [k for (s, k), (_, _, warn) in _FIELDS.items() if s == section and warn]
            if defaults:
                fall_back(section, {k: DEFAULT_METADATA[section][k] for k in defaults})
            _fill_section(data, section, bad, lambda *args: None)
            continue
        if not isinstance(value, Mapping):
            raise bad(section, value, "an object {...}")
        data[section] = dict(value)
        if section == "model_config":
            for (sec, key), example in _REQUIRED.items():
                if data[sec].get(key) is None:
                    raise InvalidInputError(
                        f"{where}: {sec}.{key} is missing; it has no default. "
                        f"Add it to {sec}, e.g. {example}."
                    )
        _fill_section(data, section, bad, fall_back)

    model = data["model_config"]
    if model.get("tokenizer_name") is None:
        model["tokenizer_name"] = model["language_model_name"]

    for key, default in _PROVENANCE_DEFAULTS.items():
        if data.get(key) is None:
            data[key] = copy.deepcopy(default)
    if not isinstance(data["checkpoints"], Mapping):
        raise bad("checkpoints", data["checkpoints"], 'an object {"best": ..., "last": ..., "all": [...]}')
    if data["lora_weights"] is not None and not isinstance(data["lora_weights"], str):
        raise bad(
            "lora_weights", data["lora_weights"], "a folder name relative to the run directory, or null"
        )
    return data, defaults_used


def _fill_section(
    data: dict[str, Any],
    section: str,
    bad: Callable[[str, Any, str], InvalidInputError],
    fall_back: Callable[..., None],
) -> None:
    """Validates and default-fills one section of ``data`` in place."""
    values = data[section]
    for (sec, key), (check, null_is_value, warn) in _FIELDS.items():
        if sec != section:
            continue
        dotted = f"{section}.{key}"
        missing = key not in values or (values[key] is None and not null_is_value)
        if missing:
            default = copy.deepcopy(DEFAULT_METADATA[section][key])
            values[key] = default
            if warn and key not in ("vision_name", "language_model_name"):
                note = " (= model_config.language_model_name)" if key == "tokenizer_name" else ""
                fall_back(dotted, values.get("language_model_name") if note else default, note)
            continue
        if key == "lora":
            values[key] = _normalize_lora(values[key], dotted, bad, fall_back)
            continue
        try:
            values[key] = check(values[key])
        except _BadValue as err:
            raise bad(dotted, values[key], str(err)) from None


def _normalize_lora(
    value: Any,
    dotted: str,
    bad: Callable[[str, Any, str], InvalidInputError],
    fall_back: Callable[..., None],
) -> dict[str, Any] | None:
    """Validates ``model_config.lora``: null (no LoRA) or an object whose missing fields take the defaults."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise bad(dotted, value, 'an object {"r", "alpha", "dropout", "target_modules"} or null (no LoRA)')
    lora = dict(value)
    for key, check in _LORA_FIELDS.items():
        if lora.get(key) is None:
            lora[key] = copy.deepcopy(DEFAULT_LORA[key])
            fall_back(f"{dotted}.{key}", lora[key])
            continue
        try:
            lora[key] = check(lora[key])
        except _BadValue as err:
            raise bad(f"{dotted}.{key}", lora[key], str(err)) from None
    return lora


def read_metadata(path: str | os.PathLike[str]) -> RunMetadata:
    """Reads and validates a ``checkpoint_metadata.json``, falling back loudly to defaults for missing keys.

    Args:
        path: the file, or a run directory holding it.

    Returns:
        The loaded :class:`RunMetadata` (``path`` absolute).

    Raises:
        InputNotFoundError: the file does not exist.
        InvalidInputError: the file is not valid JSON (line and column given), its top level is not an object,
            ``vision_name``/``language_model_name`` is missing, or a value has the wrong type or an unknown
            choice. Messages name the absolute path and the key.
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if path.is_dir():
        path = path / METADATA_FILENAME
    if not path.is_file():
        raise InputNotFoundError(
            f"checkpoint metadata not found: '{path}' does not exist. "
            f"Pass the run directory that training wrote (it holds {METADATA_FILENAME})."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"checkpoint metadata '{path}' is not UTF-8 text ({err.reason} at byte {err.start}). "
            f"Pass the {METADATA_FILENAME} that training wrote."
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"checkpoint metadata '{path}' is not valid JSON: {err.msg} "
            f"at line {err.lineno}, column {err.colno}. "
            f"Fix the file (e.g. `python -m json.tool '{path}'` shows the error) or regenerate it."
        ) from None
    data, defaults_used = normalize_metadata(raw, path)
    logger.info("loaded checkpoint metadata '%s' (%d keys from defaults)", path, len(defaults_used))
    return RunMetadata(path=path, raw=raw, data=data, defaults_used=defaults_used)


def installed_library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a run, read from package metadata (nothing is imported).

    Returns:
        ``{"torch", "lightning", "transformers", "peft", "python"}`` → version string, None when not
        installed.
    """
    import platform
    from importlib import metadata as importlib_metadata

    versions: dict[str, str | None] = {}
    for name in ("torch", "lightning", "transformers", "peft"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_checkpoint_entry(entry: Any, key: str, required: tuple[str, ...]) -> dict[str, Any] | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
        raise InvalidInputError(
            f"checkpoints.{key} must be an object with at least a 'file' name and {', '.join(required)}, "
            f"found {_show(entry)}"
        )
    given = {k: os.fspath(v) if k == "file" else v for k, v in entry.items()}
    return {**{k: None for k in required}, **given}


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
        model_config: at least ``vision_name`` and ``language_model_name``; ``tokenizer_name``,
            ``resampler_type``, ``latent_dimension``, ``image_size``, ``image_token``, ``lora`` (dict or None
            for no LoRA) and ``train_vision`` are filled from the defaults when absent; any further keys
            (resampler sizes such as ``resampler_hidden_dim``/``resampler_depth``, ``vision_hidden_size``,
            ...) are kept.
        training_config: ``crop_strategy``, ``fov_deg``, ``overlap_ratio``, ``use_vision_processor`` (defaults
            filled), plus recorded-only values: ``learning_rate``, ``batch_size``, ``max_epochs``, ``seed``
            (null when absent) and any others given.
        prompt: ``template``, ``system_prompt``, ``enable_thinking`` (defaults filled).
        dataset: ``train_csv``, ``val_csv``, ``test_csv``, ``dataset_name`` (default: the training CSV's
            stem), ``image_root``; paths may be ``str`` or ``Path``.
        checkpoints: ``{"best": {"file", "val_loss", "epoch"} | None, "last": {...} | None, "all": [{"file",
            "epoch", "step", "val_loss"}, ...]}``; ``file`` is a name inside the run directory.
        checkpoint_contents: free description of what the ``.ckpt`` files hold (e.g. which state-dict
            prefixes).
        lora_weights: the peft adapter folder relative to the run directory (``"lora_weights"``), or None.
        created_at: ISO time the run started (kept across rewrites); now when None. ``updated_at`` is always
            now.
        library_versions: ``{name: version}``; :func:`installed_library_versions` when None.
        extra: further top-level keys to keep.

    Returns:
        A plain JSON-able dict, validated, ready for :func:`write_metadata`.

    Raises:
        InvalidInputError: a value is missing or has the wrong type (same checks as :func:`read_metadata`).
    """
    if stage not in STAGES:
        raise InvalidInputError(f"stage must be one of {', '.join(STAGES)}, found {stage!r}")
    model = {k: v for k, v in DEFAULT_METADATA["model_config"].items()}
    model.update(model_config)
    if model.get("tokenizer_name") is None:
        model["tokenizer_name"] = model.get("language_model_name")
    train = {k: v for k, v in DEFAULT_METADATA["training_config"].items()}
    train.update({"max_epochs": None, "seed": None})
    train.update(training_config or {})
    prompt_section = {**DEFAULT_METADATA["prompt"], **(prompt or {})}
    data_section: dict[str, Any] = {
        k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
        for k, v in {**DEFAULT_METADATA["dataset"], **(dataset or {})}.items()
    }
    if data_section.get("dataset_name") is None and data_section.get("train_csv"):
        data_section["dataset_name"] = Path(data_section["train_csv"]).stem

    ckpts = dict(checkpoints or {})
    ckpt_section = {
        "best": _check_checkpoint_entry(ckpts.get("best"), "best", ("val_loss", "epoch")),
        "last": _check_checkpoint_entry(ckpts.get("last"), "last", ("val_loss", "epoch")),
        "all": [
            _check_checkpoint_entry(e, f"all[{i}]", ("epoch", "step", "val_loss"))
            for i, e in enumerate(ckpts.get("all") or [])
        ],
    }
    if lora_weights is not None and (os.path.isabs(lora_weights) or not str(lora_weights).strip()):
        raise InvalidInputError(
            f"lora_weights must be a folder name relative to the run directory, found {lora_weights!r}"
        )
    now = _now_iso()
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment_name": experiment_name,
        "stage": stage,
        "model_config": model,
        "training_config": train,
        "prompt": prompt_section,
        "dataset": data_section,
        "checkpoints": ckpt_section,
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
    """Round-trips through JSON so that Paths become strings and tuples lists (and non-JSON values fail)."""
    return json.loads(json.dumps(data, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"{type(value).__name__} {value!r} is not JSON serialisable; store plain values in metadata"
    )


def write_metadata(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Validates ``data`` and writes it as pretty JSON, atomically (same-folder tmp file, fsync, replace).

    A reader never sees a half-written file: a crash leaves either the old or the new version.

    Args:
        path: the file to write, or a run directory (then ``checkpoint_metadata.json`` inside it). Missing
            parent folders are created.
        data: the metadata, normally from :func:`build_metadata`. The normalised form is written
            (``image_size`` as ``[H, W]``, defaults explicit); ``Path`` values become strings.

    Raises:
        InvalidInputError: ``data`` fails validation, or lacks ``experiment_name``/``stage``.
        TypeError: a value is not JSON-serialisable.
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if path.is_dir():
        path = path / METADATA_FILENAME
    normalized, _ = normalize_metadata(_to_json(dict(data)), path, log=False)
    for key in ("experiment_name", "stage"):
        if normalized.get(key) is None:
            raise InvalidInputError(f"refusing to write '{path}': {key} is missing; training must record it")
    text = json.dumps(normalized, indent=2, ensure_ascii=False) + "\n"

    from panollava.report import write_text_atomic

    write_text_atomic(path, text)
    logger.info("wrote checkpoint metadata '%s'", path)


def metadata_settings(meta: RunMetadata, *, include_defaults: bool = False) -> dict[str, Any]:
    """The settings the metadata governs, as flat canonical keys (``panollava.settings.MODEL_INPUT_KEYS``).

    Only keys that define the model and its inputs: the vision/language/tokenizer names, resampler, latent
    size, image size, image token, LoRA, ``train_vision``, crop strategy, ``fov_deg``, ``overlap_ratio``,
    ``use_vision_processor`` and the prompt. Training-only values are in :func:`metadata_recorded_training`.

    Args:
        meta: the loaded metadata.
        include_defaults: also return keys the file does not record (filled from the defaults). By default
            they are left out, so that a config value can fill them (priority metadata > config > defaults).

    Returns:
        ``{key: value}``; ``image_size`` as ``[H, W]``; ``lora`` a dict or None (no LoRA); ``system_prompt``
        may be None (recorded as "no system prompt").
    """
    settings: dict[str, Any] = {}
    for key, (section, name) in METADATA_SETTING_PATHS.items():
        if include_defaults or meta.recorded(section, name):
            settings[key] = copy.deepcopy(meta.data[section][name])
    return settings


def metadata_recorded_training(meta: RunMetadata) -> dict[str, Any]:
    """Training-only values of the metadata (learning rate, training batch size, epochs, ...), for provenance.

    They are recorded with evaluation results, never applied to evaluation.

    Args:
        meta: the loaded metadata.

    Returns:
        The ``training_config`` keys written in the file other than those that define the inputs.
    """
    input_keys = {name for section, name in METADATA_SETTING_PATHS.values() if section == "training_config"}
    raw = meta.raw.get("training_config")
    if not isinstance(raw, Mapping):
        return {}
    return {k: copy.deepcopy(meta.training_config.get(k, v)) for k, v in raw.items() if k not in input_keys}
