"""Settings of an original PanoLLaVA run: which source gives each value, and what had to be assumed.

Sources, strongest first (:func:`resolve_settings`):

1. **the checkpoint's weights** — what a shape or a key reveals is never overridden: the latent size, the
   resampler's depth, hidden size and LayerNorms, the vision feature LayerNorm (``use_vicreg_norm``: present or
   absent), whether the LM carries LoRA, its rank and target modules. A source below that says otherwise is an
   error (it belongs to another run).
2. **the ``.ckpt`` hyper-parameters** (``hyper_parameters``: model names, resampler type, latent size, LoRA
   rank/alpha/dropout, ``model_overlap_ratio``; ``datamodule_hyper_parameters``: crop strategy, fov, view overlap,
   vision processor use, system message) — written by the trainer into the very file that is loaded;
3. **``checkpoint_metadata.json``** with the original's keys (``lora_rank``, ``lora_alpha``, ``training_config.*``,
   stringified CSV lists) — which the original trainer in fact never wrote (weights-only checkpoints skip its
   callback), so it is usually missing;
4. **the run directory's ``config.yaml``** — the training YAML the trainer copied there;
5. **the YAML given as a config** (``--config``), read with the original's keys (:data:`YAML_KEYS`);
6. **the original code's defaults** for the rest — in practice the projection positional encoding (off),
   ``models.stitching_mode`` (``drop_overlap``) and the ``models.overlap_ratio`` (0.5) — listed in ONE warning.

When 2–5 disagree the first wins and one warning lists each key with both values. Only ``models.*`` reaches the
original model: ``image_processing.stitching_mode`` (``concat`` in the original default.yaml) is read by nothing
that builds it, which is said once when present. Keys of the YAML's model-defining sections that are not known are
listed in one warning that names the supported keys.

Pure Python (no torch import): the inputs are the loaded dicts and the state dict's ``{key: shape}``.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from panollava.errors import InvalidInputError
from panollava.families.base import FAMILY_ORIGINAL
from panollava.schema import DEFAULT_LORA_TARGETS

logger = logging.getLogger(__name__)

FAMILY = FAMILY_ORIGINAL

# The original trainer's LoRA targets are the same seven projections as ours (schema.DEFAULT_LORA_TARGETS).
"""The original's LoRA targets when the YAML gives none."""

RESAMPLER_TYPES_NOT_BUILT = {
    "bimamba": "the bidirectional Mamba resampler (mamba-ssm's selective-scan layers)",
    "bidirectional_mamba": "the bidirectional Mamba resampler (mamba-ssm's selective-scan layers)",
    "bi_mamba": "the bidirectional Mamba resampler (mamba-ssm's selective-scan layers)",
    "qformer": "the Q-Former resampler (a BERT decoder with cross-attention and learned query tokens)",
    "perceiver": "the Perceiver resampler (latent queries with cross-attention blocks)",
    "masked_drop": "the masked-drop token resampler",
    "spatial_pool": "the spatial pooling resampler",
}
"""Original resampler types this family does not build, and what building one would take."""

CODE_DEFAULTS: dict[str, Any] = {
    "use_projection_pe": False,
    "stitching_mode": "drop_overlap",
    "model_overlap_ratio": 0.5,
    "pe_enable_continuity": True,
    "pe_temperature": 10000.0,
    "pe_spatial_encoding_type": "sinusoidal",
    "max_text_length": 512,
    "system_msg": "You are a helpful assistant.",
    "lora_alpha": 32,
    "crop_strategy": "e2p",
    "fov_deg": 90.0,
    "image_overlap_ratio": 0.5,
    "use_vision_processor": False,
}
"""The original code's defaults (its ``ModelConfig``, ``VLMModule``, data module and ``eval.py``) for values no
weight reveals."""

ORIGINAL_GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128,
    "temperature": 0.6,
    "min_new_tokens": 5,
    "top_p": 0.95,
    "top_k": 20,
    "repetition_penalty": 1.1,
    "length_penalty": 1.0,
}
"""``eval.py``'s ``generation.*`` defaults."""

# YAML key → settings field (None: known, read by nothing that builds the model or its inputs)
YAML_KEYS: dict[str, str | None] = {
    "models.vision_name": "vision_name",
    "models.language_model_name": "language_model_name",
    "models.lm_model": "language_model_name",
    "models.resampler_type": "resampler_type",
    "models.resampler": "resampler_type",
    "models.latent_dimension": "latent_dimension",
    "models.resampler_hidden_dim": "resampler_hidden_dim",
    "models.resampler_depth": "resampler_depth",
    "models.resampler_use_ln": "resampler_use_ln",
    "models.resampler_config.latent_dimension": "latent_dimension",
    "models.resampler_config.hidden_dim": "resampler_hidden_dim",
    "models.resampler_config.depth": "resampler_depth",
    "models.resampler_config.use_ln": "resampler_use_ln",
    "models.use_vicreg_norm": "use_vicreg_norm",
    "models.use_projection_positional_encoding": "use_projection_pe",
    "models.overlap_ratio": "model_overlap_ratio",
    "models.stitching_mode": "stitching_mode",
    "models.pe_enable_continuity": "pe_enable_continuity",
    "models.pe_temperature": "pe_temperature",
    "models.pe_spatial_encoding_type": "pe_spatial_encoding_type",
    "models.max_text_length": "max_text_length",
    "image_processing.crop_strategy": "crop_strategy",
    "image_processing.fov_deg": "fov_deg",
    "image_processing.overlap_ratio": "image_overlap_ratio",
    "image_processing.use_vision_processor": "use_vision_processor",
    "lora.use_lora": "use_lora",
    "lora.rank": "lora_rank",
    "lora.alpha": "lora_alpha",
    "lora.target_modules": "lora_target_modules",
    "training.system_msg": "system_msg",
    "system_messages.default": "system_msg",
    **{f"generation.{k}": f"generation.{k}" for k in ORIGINAL_GENERATION_DEFAULTS},
    # known keys without an effect on the model or its inputs at evaluation
    "models.pe_view_encoding_type": None,  # stored by the original's encoding, never used in its computation
    "models.pe_dropout": None,  # dropout: inactive in eval mode
    "models.resampler_dropout": None,
    "models.resampler_config.dropout": None,
    "models.resampler_num_views": None,
    "models.resampler_config.num_views": None,
    "models.vicreg_loss_weight": None,
    "models.use_text_projection": None,  # applied in the resampler stage's training only
    "models.use_vicreg_projector": None,  # the vision stage's VICReg head: training only
    "image_processing.stitching_mode": None,  # read by nothing that builds the model (see module doc)
    "image_processing.stitch_target_to_view_width": None,
    "image_processing.stitch_interp": None,
    "image_processing.anyres_max_patches": None,
    "image_processing.normalize": None,  # the vision processor normalises
    "image_processing.image_size": None,  # the vision processor resizes to its own size
    "image_processing.image_mean": None,
    "image_processing.image_std": None,
    "lora.dropout": None,  # inactive in eval mode
    "lora.save_lora_only": None,
}
"""The original YAML keys this family reads, and the known keys it ignores (``None``)."""

MODEL_SECTIONS = ("models", "image_processing", "lora", "generation")
"""YAML sections whose unknown keys are reported; the others (experiment, paths, training, data, …) hold training
settings."""

_WEIGHT = "checkpoint weights"
_HPARAMS = "checkpoint hyper-parameters"
_DEFAULT = "original code default"


@dataclass(frozen=True)
class OriginalSettings:
    """Everything that defines an original run's model and its inputs (see the module doc for the sources)."""

    vision_name: str
    language_model_name: str
    resampler_type: str
    latent_dimension: int
    resampler_hidden_dim: int
    resampler_depth: int
    resampler_use_ln: bool
    use_vicreg_norm: bool
    use_projection_pe: bool
    model_overlap_ratio: float
    stitching_mode: str
    pe_enable_continuity: bool
    pe_temperature: float
    pe_spatial_encoding_type: str
    use_lora: bool
    lora_rank: int | None
    lora_alpha: float | None
    lora_target_modules: tuple[str, ...]
    crop_strategy: str
    fov_deg: float
    image_overlap_ratio: float
    use_vision_processor: bool
    system_msg: str | None
    max_text_length: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        out = asdict(self)
        out["lora_target_modules"] = list(self.lora_target_modules)
        return out


@dataclass
class ResolvedSettings:
    """:class:`OriginalSettings` with where each value came from.

    Attributes:
        settings: The values.
        sources: ``field → source`` (``checkpoint weights``, ``checkpoint hyper-parameters``,
            ``checkpoint_metadata.json``, ``run config.yaml``, ``--config <path>``, ``original code default``).
        assumed: The fields taken from the original code's defaults, with their values.
        warnings: What was logged at WARNING (one line each).
        generation: ``eval.py``'s decoding as the YAML sets it (``generation.*`` + its defaults), with
            ``do_sample`` derived as eval.py did (temperature clamped to [0.1, 1], sampling above 0.1).
        dataset: ``train_csv``/``val_csv`` (lists; the original stringified lists) and ``dataset_name``.
    """

    settings: OriginalSettings
    sources: dict[str, str]
    assumed: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)


def parse_csv_list(value: Any) -> list[str]:
    """A CSV path field of the original metadata as a list: it wrote lists with ``str()`` (``"['a.csv', 'b.csv']"``).

    Args:
        value: None, a path, a list, or a stringified list.

    Returns:
        The paths (empty for None).
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed if v is not None]
    return [text] if text and text != "None" else []


def flatten_yaml(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"models": {"vision_name": x}}`` → ``{"models.vision_name": x}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_yaml(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# -- what the weights reveal ---------------------------------------------------------------------------------------

_MLP_KEY = re.compile(r"^model\.resampler_module\.resampler\.mlp\.(\d+)\.(weight|bias)$")
_LORA_KEY = re.compile(
    r"^model\.language_model\.base_model\.model\.(?P<module>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$"
)


def settings_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The settings the state dict's keys and shapes reveal.

    Args:
        shapes: ``state-dict key → shape`` of the original ``.ckpt`` (keys start with ``model.``).

    Returns:
        Some of: ``resampler_kind`` (``"mlp"`` when the resampler is the original's MLP, else the first key),
        ``latent_dimension``, ``resampler_hidden_dim``, ``resampler_depth``, ``resampler_use_ln``,
        ``vision_hidden``, ``use_vicreg_norm``, ``use_lora``, ``lora_rank``, ``lora_target_modules``,
        ``embedding_rows``, ``lm_hidden``.
    """
    out: dict[str, Any] = {}
    layers: dict[int, dict[str, tuple[int, ...]]] = {}
    resampler_keys = [k for k in shapes if k.startswith("model.resampler_module.resampler.")]
    for key in resampler_keys:
        match = _MLP_KEY.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tuple(shapes[key])
    if layers and len(layers) * 2 == len(resampler_keys):
        out["resampler_kind"] = "mlp"
        linears = sorted(i for i, p in layers.items() if len(p.get("weight", ())) == 2)
        norms = sorted(i for i, p in layers.items() if len(p.get("weight", ())) == 1)
        out["resampler_depth"] = len(linears)
        # LayerNorms only follow hidden layers: with depth 1 the weights say nothing about use_ln
        out["resampler_use_ln"] = bool(norms) if len(linears) > 1 else None
        out["latent_dimension"] = layers[linears[-1]]["weight"][0]
        out["vision_hidden"] = layers[linears[0]]["weight"][1]
        # with depth 1 there is no hidden layer: the hidden size is then unused
        out["resampler_hidden_dim"] = layers[linears[0]]["weight"][0] if len(linears) > 1 else None
    elif resampler_keys:
        out["resampler_kind"] = resampler_keys[0]
    out["use_vicreg_norm"] = "model.vision_backbone.norm.weight" in shapes
    lora = {}
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match:
            lora[match.group("module").rsplit(".", 1)[-1]] = shape[0]
    out["use_lora"] = bool(lora) or any(k.startswith("model.language_model.base_model.") for k in shapes)
    if lora:
        ranks = sorted(set(lora.values()))
        out["lora_rank"] = ranks[0] if len(ranks) == 1 else ranks
        out["lora_target_modules"] = tuple(sorted(lora))
    for key, shape in shapes.items():
        if key.endswith("embed_tokens.weight") and key.startswith("model.language_model."):
            out["embedding_rows"], out["lm_hidden"] = shape[0], shape[1]
    return out


# -- resolution ----------------------------------------------------------------------------------------------------


def _get(mapping: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _yaml_values(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Field → value from an original YAML (first key listed in :data:`YAML_KEYS` wins for aliases)."""
    values: dict[str, Any] = {}
    if not config:
        return values
    flat = flatten_yaml(config)
    for key, target in YAML_KEYS.items():
        if target is None or key not in flat or flat[key] is None:
            continue
        if target == "system_msg" and "system_msg" in values:
            continue  # eval.py: training.system_msg, else system_messages.default
        values.setdefault(target, flat[key])
    return values


def _unknown_yaml_keys(config: Mapping[str, Any] | None) -> list[str]:
    if not config:
        return []
    flat = flatten_yaml(config)
    return [k for k in flat if k.split(".", 1)[0] in MODEL_SECTIONS and k not in YAML_KEYS]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) == sorted(map(str, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def resolve_settings(
    *,
    hparams: Mapping[str, Any] | None,
    datamodule_hparams: Mapping[str, Any] | None,
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    user_config: Mapping[str, Any] | None = None,
    user_config_name: str = "--config",
    checkpoint_name: str = "the checkpoint",
) -> ResolvedSettings:
    """Resolve an original run's settings from every source (see the module doc for the order).

    Args:
        hparams: The ``.ckpt``'s ``hyper_parameters``.
        datamodule_hparams: The ``.ckpt``'s ``datamodule_hyper_parameters``.
        shapes: ``state-dict key → shape`` of the ``.ckpt``.
        metadata: ``checkpoint_metadata.json`` (original layout) or None.
        run_config: The run directory's ``config.yaml`` or None.
        user_config: The YAML given as a config, or None.
        user_config_name: How to name the given YAML in messages (e.g. ``--config /abs/x.yaml``).
        checkpoint_name: The checkpoint file, for messages.

    Returns:
        The resolved settings; their warnings were logged.

    Raises:
        InvalidInputError: a source contradicts the weights (latent size, resampler depth/hidden size/LayerNorm,
            vision LayerNorm, LoRA use/rank), the resampler is not the MLP one (the message names the type and what
            building it would need), or no source names the vision or language model.
    """
    hparams = dict(hparams or {})
    dm = dict(datamodule_hparams or {})
    weights = settings_from_weights(shapes)
    meta_model = dict(_get(metadata, "model_config") or {})
    meta_train = dict(_get(metadata, "training_config") or {})
    rc = meta_model.get("resampler_config")
    meta_rc = dict(rc) if isinstance(rc, Mapping) else {}

    layers: list[tuple[str, dict[str, Any]]] = [
        (_HPARAMS, {
            "vision_name": hparams.get("vision_name") or dm.get("vision_model_name"),
            "language_model_name": hparams.get("language_model_name") or dm.get("tokenizer_name"),
            "resampler_type": hparams.get("resampler_type"),
            "latent_dimension": hparams.get("latent_dimension"),
            "model_overlap_ratio": hparams.get("model_overlap_ratio"),
            "use_lora": hparams.get("use_lora"),
            "lora_rank": hparams.get("lora_rank"),
            "lora_alpha": hparams.get("lora_alpha"),
            "crop_strategy": dm.get("crop_strategy"),
            "fov_deg": dm.get("fov_deg"),
            "image_overlap_ratio": dm.get("overlap_ratio"),
            "use_vision_processor": dm.get("use_vision_processor"),
            # a recorded None means the training prompt had no system message
            "system_msg": (dm.get("system_msg") or "") if "system_msg" in dm else None,
        }),
        ("checkpoint_metadata.json", {
            "vision_name": meta_model.get("vision_name"),
            "language_model_name": meta_model.get("language_model_name"),
            "resampler_type": meta_model.get("resampler_type"),
            "latent_dimension": meta_model.get("latent_dimension") or meta_rc.get("latent_dimension"),
            "resampler_hidden_dim": meta_model.get("resampler_hidden_dim") or meta_rc.get("hidden_dim"),
            "resampler_depth": meta_rc.get("depth"),
            "resampler_use_ln": meta_rc.get("use_ln"),
            "model_overlap_ratio": meta_model.get("overlap_ratio"),
            "use_lora": meta_train.get("use_lora"),
            "lora_rank": meta_train.get("lora_rank"),
            "lora_alpha": meta_train.get("lora_alpha"),
            "crop_strategy": meta_train.get("crop_strategy"),
            "fov_deg": meta_train.get("fov_deg"),
            "image_overlap_ratio": meta_train.get("overlap_ratio"),
            "use_vision_processor": meta_train.get("use_vision_processor"),
        }),
        ("run config.yaml", _yaml_values(run_config)),
        (user_config_name, _yaml_values(user_config)),
    ]
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning("%s", message)

    if metadata is None:
        warn(
            "no usable checkpoint_metadata.json (the original trainer never wrote it: its metadata callback is "
            "skipped for weights-only checkpoints); model names from the .ckpt hyper-parameters: vision "
            f"{hparams.get('vision_name')!r}, language {hparams.get('language_model_name')!r}"
        )
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    disagreements: list[str] = []
    for name, layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key not in values:
                values[key], sources[key] = value, name
            elif not _same(values[key], value):
                disagreements.append(f"{key}: {sources[key]} {values[key]!r} vs {name} {value!r}")
    if disagreements:
        warn(
            "the original run's settings disagree between sources; the first (strongest) is used: "
            + "; ".join(disagreements)
        )

    for name in ("vision_name", "language_model_name"):
        if not values.get(name):
            raise InvalidInputError(
                f"no source names the {name} of this original PanoLLaVA run ({checkpoint_name} hyper-parameters, "
                f"checkpoint_metadata.json, config.yaml): pass the training YAML as the config (models.{name})"
            )

    # the resampler: only the MLP is built; the weights say what was really trained
    recorded = str(values.get("resampler_type") or "mlp")
    kind = weights.get("resampler_kind")
    if kind is None:
        raise InvalidInputError(
            f"{checkpoint_name} has no resampler weights (model.resampler_module.resampler.*): it is not a "
            "PanoLLaVA checkpoint of the original trainer"
        )
    if kind != "mlp":
        need = RESAMPLER_TYPES_NOT_BUILT.get(recorded, f"the original's {recorded!r} resampler")
        raise InvalidInputError(
            f"resampler_type {recorded!r} ({sources.get('resampler_type', 'recorded')}) of {checkpoint_name} is not "
            f"built by panollava's original-PanoLLaVA family, which builds only the 'mlp' resampler (weights "
            f"model.resampler_module.resampler.mlp.*; found e.g. {kind}). Evaluating it would need {need} written "
            "from the original code and checked against its outputs"
        )
    if recorded != "mlp":
        warn(
            f"resampler_type {recorded!r} is recorded but {checkpoint_name} holds the original's MLP resampler "
            f"(the original trainer fell back to an MLP when {recorded} could not be built): built as 'mlp'"
        )

    # the weights win; a contradicting source is an error
    for key in ("latent_dimension", "resampler_hidden_dim", "resampler_depth", "resampler_use_ln", "use_vicreg_norm",
                "use_lora", "lora_rank"):
        if key not in weights or weights[key] is None:
            continue
        if key in values and not _same(values[key], weights[key]):
            if key == "use_lora" and not weights[key] and values[key]:
                warn(f"use_lora is true in {sources[key]} but {checkpoint_name} holds no LoRA weights: no LoRA")
            else:
                raise InvalidInputError(
                    f"{key} is {values[key]!r} in {sources[key]} but {checkpoint_name}'s weights say "
                    f"{weights[key]!r} (shapes of model.resampler_module / model.vision_backbone.norm / the LoRA "
                    f"matrices): the settings belong to another run. Remove or fix {key} there"
                )
        values[key], sources[key] = weights[key], _WEIGHT
    if isinstance(values.get("lora_rank"), list):
        raise InvalidInputError(
            f"{checkpoint_name} holds LoRA matrices of several ranks {values['lora_rank']}: a rank pattern is not "
            "supported by the original PanoLLaVA family"
        )
    if values.get("resampler_hidden_dim") is None:
        values["resampler_hidden_dim"], sources["resampler_hidden_dim"] = values["latent_dimension"], _WEIGHT
    if "lora_target_modules" in weights:
        yaml_targets = values.get("lora_target_modules")
        if yaml_targets is not None and not _same(yaml_targets, weights["lora_target_modules"]):
            warn(
                f"lora.target_modules {list(yaml_targets)} ({sources['lora_target_modules']}) differ from the modules "
                f"that carry LoRA matrices in {checkpoint_name} {list(weights['lora_target_modules'])}: the weights' "
                "modules are used"
            )
        values["lora_target_modules"], sources["lora_target_modules"] = weights["lora_target_modules"], _WEIGHT
    values.setdefault("lora_target_modules", DEFAULT_LORA_TARGETS)
    sources.setdefault("lora_target_modules", _DEFAULT)

    assumed: dict[str, Any] = {}
    for key, default in CODE_DEFAULTS.items():
        if values.get(key) is None:
            values[key], sources[key] = default, _DEFAULT
            if key != "lora_alpha" or values.get("use_lora"):
                assumed[key] = default
    if not values.get("use_lora"):
        values["lora_rank"] = values["lora_alpha"] = None
    if assumed:
        warn(
            "values that no weight, checkpoint hyper-parameter, metadata or config of this original run sets were "
            "taken from the original code's defaults: "
            + ", ".join(f"{k}={v!r}" for k, v in assumed.items())
            + ". If the run was trained otherwise, pass its training YAML as the config (models.*, image_processing.*)"
        )

    for config_name, config in (("run config.yaml", run_config), (user_config_name, user_config)):
        ip_mode = _get(config, "image_processing.stitching_mode")
        if ip_mode is not None and _get(config, "models.stitching_mode") is None:
            logger.info(
                "%s sets image_processing.stitching_mode %r, which nothing that builds the original model reads; "
                "models.stitching_mode is used (%s: %r)", config_name, ip_mode, sources["stitching_mode"],
                values["stitching_mode"],
            )
        unknown = _unknown_yaml_keys(config)
        if unknown:
            supported = sorted(k for k, v in YAML_KEYS.items() if v is not None)
            warn(
                f"{config_name}: key(s) {', '.join(unknown)} are not read by the original PanoLLaVA family (not "
                f"applied). Supported keys: {', '.join(supported)}"
            )

    for key in ("crop_strategy",):
        if values[key] != "anyres_e2p":
            raise InvalidInputError(
                f"crop_strategy {values[key]!r} ({sources[key]}) is not built for original PanoLLaVA runs: only "
                "anyres_e2p views are reproduced (the other strategies of the original's PanoramaImageProcessor "
                "would each need their own pixel-exact port)"
            )
    if not values["use_vision_processor"]:
        raise InvalidInputError(
            f"use_vision_processor is false ({sources['use_vision_processor']}): only runs whose views went through "
            "the vision model's own image processor (use_vision_processor: true) are reproduced"
        )

    settings = OriginalSettings(
        vision_name=str(values["vision_name"]),
        language_model_name=str(values["language_model_name"]),
        resampler_type=recorded,
        latent_dimension=int(values["latent_dimension"]),
        resampler_hidden_dim=int(values["resampler_hidden_dim"]),
        resampler_depth=int(values["resampler_depth"]),
        resampler_use_ln=bool(values["resampler_use_ln"]),
        use_vicreg_norm=bool(values["use_vicreg_norm"]),
        use_projection_pe=bool(values["use_projection_pe"]),
        model_overlap_ratio=float(values["model_overlap_ratio"]),
        stitching_mode=str(values["stitching_mode"]),
        pe_enable_continuity=bool(values["pe_enable_continuity"]),
        pe_temperature=float(values["pe_temperature"]),
        pe_spatial_encoding_type=str(values["pe_spatial_encoding_type"]),
        use_lora=bool(values.get("use_lora")),
        lora_rank=None if values.get("lora_rank") is None else int(values["lora_rank"]),
        lora_alpha=None if values.get("lora_alpha") is None else float(values["lora_alpha"]),
        lora_target_modules=tuple(values["lora_target_modules"]),
        crop_strategy=str(values["crop_strategy"]),
        fov_deg=float(values["fov_deg"]),
        image_overlap_ratio=float(values["image_overlap_ratio"]),
        use_vision_processor=bool(values["use_vision_processor"]),
        system_msg=None if values.get("system_msg") in (None, "") else str(values["system_msg"]),
        max_text_length=int(values["max_text_length"]),
    )
    generation = {k: values.get(f"generation.{k}", d) for k, d in ORIGINAL_GENERATION_DEFAULTS.items()}
    clamped = max(0.1, min(float(generation["temperature"]), 1.0))
    generation["do_sample"] = clamped > 0.1
    meta_data = dict(_get(metadata, "dataset") or {})
    dataset = {
        "train_csv": parse_csv_list(meta_data.get("train_csv") or dm.get("csv_train")),
        "val_csv": parse_csv_list(meta_data.get("val_csv") or dm.get("csv_val")),
        "dataset_name": meta_data.get("dataset_name"),
    }
    return ResolvedSettings(settings, sources, assumed, warnings, generation, dataset)
