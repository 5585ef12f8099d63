"""The settings schema: every setting of a run declared once, with its type, default, allowed values and doc.

The typed dataclasses below are the one declaration. Everything else derives from them:

* ``--help``: the groups type the init args of ``PanoLLaVAModule`` (``--model.model_config.image_size``, ...)
  and the data module's view arguments; the evaluation flags (``--max_new_tokens``, ...) come from
  :data:`SETTINGS`; ``generation.DecodeSettings`` is :class:`GenerationSettings` without the
  :data:`GENERATION_COMPUTE_OPTIONS`. The Lightning commands' other flags (``--ckpt_dir``, ``--runs_root``,
  ``--log_samples``, ...) are the fields of :data:`COMMAND_OPTIONS`, which are not settings (not in
  ``metrics.json``'s settings, never from the metadata).
* validation: :func:`validate_setting` checks a value with jsonargparse's typing (the same types the CLI uses),
  so the metadata reader, the merge, the decode loop and the command line accept and refuse the same values.
* the flat keys of ``metrics.json`` (``settings.<key>.{value, source}``), where ``checkpoint_metadata.json``
  records each key (:attr:`Setting.metadata_path`) and where the LightningCLI config takes it
  (:attr:`Setting.targets`).

Keys with a :attr:`Setting.metadata_path` define the model and its inputs: the checkpoint metadata governs them
(SPEC §2). The others are run-time choices (decoding, batch size, output options).
"""

from __future__ import annotations

import functools
import json
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional, Union, get_args, get_origin

import docstring_parser
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
    restricted_string_type,
)

from panollava.errors import InvalidInputError

SCHEMA_VERSION = 2
"""Version of the ``checkpoint_metadata.json`` layout written today (1: before this schema; migrated on read)."""
METADATA_FILENAME = "checkpoint_metadata.json"

STAGES = ("vision", "resampler", "finetune")
FOV_DEG_RANGE = (0.0, 180.0)
"""Open interval of a perspective view's field of view, degrees (a pinhole view cannot reach 180°)."""

DEFAULT_PROMPT_TEMPLATE = (
    'In this panoramic image, please provide a concise but detailed description of "{query}".'
)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# -- types (jsonargparse's typing: the CLI, the metadata reader and the merge validate with the same types) -------
FovDeg = restricted_number_type("FovDeg", float, [(">", FOV_DEG_RANGE[0]), ("<", FOV_DEG_RANGE[1])], "and")
Ratio = restricted_number_type("Ratio", float, [(">=", 0.0), ("<", 1.0)], join="and")
TopP = restricted_number_type("TopP", float, [(">", 0.0), ("<=", 1.0)], join="and")
PromptTemplate = restricted_string_type("PromptTemplate", r"(?s).*\{query\}.*")
ImageSize = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]
Triple = tuple[float, float, float]
CropStrategy = Literal["anyres_e2p", "e2p", "cubemap", "sliding_window", "resize"]
ResamplerType = Literal["mlp", "identity", "avgpool"]
ReferenceMode = Literal["grouped", "per_row"]
CROP_STRATEGIES = get_args(CropStrategy)
REFERENCE_MODES = get_args(ReferenceMode)


# -- the groups ------------------------------------------------------------------------------------------------
@dataclass
class ModelSettings:
    """What defines the model (``model_config`` in the checkpoint metadata).

    Args:
        vision_name: SigLIP/SigLIP2 vision model: Hugging Face id, local folder, or tiny:siglip / tiny:siglip2.
        language_model_name: Causal language model: Hugging Face id, local folder, or tiny:qwen3.
        tokenizer_name: Tokenizer (null: the language model's own).
        resampler_type: Resampler between the vision tower and the projector.
        latent_dimension: Width of the resampler's output tokens.
        image_size: Size of every view, [H, W] or one int for a square (null: the vision tower's native size).
        image_token: Placeholder token that the image features replace in the prompt.
    """

    vision_name: Optional[str] = None
    language_model_name: Optional[str] = None
    tokenizer_name: Optional[str] = None
    resampler_type: ResamplerType = "mlp"
    latent_dimension: PositiveInt = 768
    image_size: Optional[ImageSize] = None
    image_token: str = "<|image_pad|>"


@dataclass
class LoraSettings:
    """LoRA on the language model's linear projections (``model_config.lora``; null: no LoRA).

    Args:
        r: LoRA rank.
        alpha: LoRA scaling alpha (a float: 16.5 stays 16.5).
        dropout: LoRA dropout, in [0, 1).
        target_modules: LM module names (or a peft regex string) that get adapters.
    """

    r: PositiveInt = 32
    alpha: PositiveFloat = 64.0
    dropout: Ratio = 0.05
    target_modules: Union[list[str], str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


@dataclass
class PromptSettings:
    """The prompt around each query (``prompt`` in the checkpoint metadata).

    Args:
        template: User text of the prompt; must contain {query}.
        system_prompt: System message (null: none).
        enable_thinking: Qwen3's thinking block in the chat template (false: an empty one).
    """

    template: PromptTemplate = DEFAULT_PROMPT_TEMPLATE
    system_prompt: Optional[str] = None
    enable_thinking: bool = False


@dataclass
class GenerationSettings:
    """How captions are decoded (run-time: never taken from the metadata).

    Args:
        max_new_tokens: Longest caption, in tokens (prompt + max_new_tokens must fit the language model's
            max_position_embeddings).
        min_new_tokens: Shortest caption, in tokens: end-of-sequence tokens are suppressed until this many are
            generated (0: off; at most max_new_tokens).
        num_beams: Beam search width (1: greedy or sampling).
        do_sample: Sample (seeded per sample) instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass, in (0, 1] (1: off).
        top_k: Keep only the k most likely tokens when sampling (0: off).
        repetition_penalty: Repetition penalty on the tokens generated so far, not the prompt (as Hugging Face
            generate with inputs_embeds; 1: off).
        seed: Seed of sampled decoding (each sample gets its own seed from it).
        share_prefix: Encode each panorama and its image prefix once for all its queries.
        compile_decode: Compile the decode step with torch.compile (CUDA graphs on a GPU); opt-in: the first
            batches pay the compilation (see docs/PERFORMANCE.md).
    """

    max_new_tokens: PositiveInt = 64
    min_new_tokens: NonNegativeInt = 0
    num_beams: PositiveInt = 1
    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    top_p: TopP = 1.0
    top_k: NonNegativeInt = 0
    repetition_penalty: PositiveFloat = 1.0
    seed: int = 0
    share_prefix: bool = True
    compile_decode: bool = False


GENERATION_COMPUTE_OPTIONS = ("share_prefix", "compile_decode")
"""Fields of :class:`GenerationSettings` that choose how the generator computes, not which decoding it runs: kept
out of ``generation.DecodeSettings`` and of the decoding comparison of ``compare`` (still in the resume
fingerprint: in bf16 they can change a near-tie)."""


@dataclass
class ViewSettings:
    """The model's inputs: views, normalisation, answer truncation (``training_config`` in the metadata).

    Args:
        crop_strategy: How views are cut: anyres_e2p, e2p, cubemap, sliding_window or resize.
        fov_deg: Field of view of perspective views, degrees, in (0, 180).
        overlap_ratio: Overlap of neighbouring perspective views, in [0, 1).
        num_views: Views of the e2p and sliding_window strategies.
        use_vision_processor: Normalise views with the vision processor's mean/std (false: keep [0, 1]).
        image_mean: Per-channel mean of the normalisation (null: read from the vision processor).
        image_std: Per-channel std of the normalisation (null: read from the vision processor).
        image_blind: Replace every view by zeros (the baseline that cannot see the image).
        max_answer_tokens: Training targets are cut to this many tokens.
        image_root: Folder that relative image paths of the CSV resolve against (null: the CSV's folder).
    """

    crop_strategy: CropStrategy = "anyres_e2p"
    fov_deg: FovDeg = 90.0
    overlap_ratio: Ratio = 0.5
    num_views: PositiveInt = 8
    use_vision_processor: bool = True
    image_mean: Optional[Triple] = None
    image_std: Optional[tuple[PositiveFloat, PositiveFloat, PositiveFloat]] = None
    image_blind: bool = False
    max_answer_tokens: PositiveInt = 128
    image_root: Optional[str] = None


@dataclass
class EvaluationOptions:
    """Run-time options of ``test`` / ``predict`` (never taken from the metadata).

    Args:
        csv_input: CSV to evaluate (default: the metadata's dataset.test_csv, else val_csv).
        output_dir: Where predictions and metrics go (default: eval_results/<experiment>/<stage>/<run>/<ckpt>-<CSV
            stem>; --hf_model: eval_results/hf/<model>/<protocol>-<CSV stem>).
        batch_size: Evaluation batch size.
        max_samples: Evaluate only the first N samples.
        num_workers: DataLoader worker processes.
        reference_mode: grouped (all annotations of a (url, query) are its references) or per_row (legacy).
        overwrite: Replace the results in --output_dir instead of resuming them.
        strict_metrics: Fail when a metric cannot run here (no Java, SPICE offline) instead of reporting it.
        progress: Show a progress bar while evaluating.
    """

    csv_input: Optional[str] = None
    output_dir: Optional[str] = None
    batch_size: PositiveInt = 8
    max_samples: Optional[PositiveInt] = None
    num_workers: NonNegativeInt = 0
    reference_mode: ReferenceMode = "grouped"
    overwrite: bool = False
    strict_metrics: bool = False
    progress: bool = True


@dataclass
class RunSelection:
    """Which model ``test`` / ``predict`` / ``validate`` evaluate (flags of the Lightning commands, not settings).

    Args:
        ckpt_dir: Run directory to evaluate; settings come from its checkpoint_metadata.json.
        checkpoint: Checkpoint rule: best or last (default: best → last → newest *.ckpt).
        hf_model: Evaluate an off-the-shelf Hugging Face VLM (hub id or local folder) instead of a run directory:
            its own processor and chat template, the views of --data.crop_strategy.
        hf_adapter: With --hf_model: a peft LoRA adapter folder trained on that model.
        hf_dtype: With --hf_model: the dtype its weights are loaded in.
        merge_lora: Merge the LoRA adapter into the LM before evaluating (= --model.merge_lora).
    """

    ckpt_dir: Optional[str] = None
    checkpoint: Optional[str] = None
    hf_model: Optional[str] = None
    hf_adapter: Optional[str] = None
    hf_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    merge_lora: Optional[bool] = None


@dataclass
class RunDirectoryOptions:
    """Where ``fit`` writes its run directory and which checkpoints it keeps.

    Args:
        experiment_name: Experiment name: runs/<experiment>/<stage>/<crop>_<resampler>/ (fit; config-only test).
        runs_root: Folder holding the experiments.
        dataset_name: Dataset part of checkpoint names (fit).
        save_top_k: Keep the k best checkpoints (fit; -1: all).
        save_weights_only: Checkpoints without optimizer state (fit).
        exist_ok: Allow training into a run directory with checkpoints.
    """

    experiment_name: Optional[str] = None
    runs_root: str = "runs"
    dataset_name: Optional[str] = None
    save_top_k: int = -1
    save_weights_only: bool = False
    exist_ok: bool = False


@dataclass
class SampleLogOptions:
    """Prediction/reference pairs printed while a Lightning command runs.

    Args:
        log_samples: Print prediction/reference pairs.
        log_interval: With --log_samples: every N test batches.
        log_max_samples: With --log_samples: at most M pairs.
    """

    log_samples: bool = False
    log_interval: PositiveInt = 10
    log_max_samples: NonNegativeInt = 16


COMMAND_OPTIONS = (RunSelection, RunDirectoryOptions, SampleLogOptions)
"""The groups of top-level flags of the Lightning commands besides the settings (one flag per field)."""


# -- the flat keys -----------------------------------------------------------------------------------------------
_type_hints = functools.lru_cache(maxsize=None)(typing.get_type_hints)  # the groups' annotations, resolved


@dataclass(frozen=True)
class Setting:
    """One flat setting key (as in ``metrics.json``) and where it lives.

    Attributes:
        key: the flat key (``fov_deg``, ``prompt_template``, ``top_k``).
        group: the dataclass that declares it.
        name: the field name in ``group``.
        metadata_path: ``(section, key)`` in ``checkpoint_metadata.json``; None for run-time keys.
        targets: dotted paths in the LightningCLI config that take the merged value (the first is the canonical
            ``--model.*``/``--data.*`` flag).
        flag: the top-level flag (``--max_new_tokens``), or None.
    """

    key: str
    group: type
    name: str
    metadata_path: tuple[str, str] | None = None
    targets: tuple[str, ...] = ()
    flag: str | None = None

    @property
    def type(self) -> Any:
        """The field's type (a jsonargparse-compatible annotation)."""
        return _type_hints(self.group)[self.name]

    @property
    def default(self) -> Any:
        """The built-in default, as a plain JSON-able value (a fresh copy; ``lora``: the LoRA defaults)."""
        return to_plain(getattr(self.group(), self.name) if self.name else self.group())

    @property
    def doc(self) -> str:
        """The one-line doc from the group's docstring (the group's summary for ``lora``)."""
        if not self.name:
            return (self.group.__doc__ or "").strip().splitlines()[0]
        return field_docs(self.group).get(self.name, "")

    @property
    def nullable(self) -> bool:
        """Whether null is a meaningful value ("none", "the LM's", "read the processor")."""
        return self.key == "lora" or type(None) in getattr(self.type, "__args__", ())


def _s(key: str, group: type, name: str | None = None, *, meta: str | None = None, to: str | tuple[str, ...] = (),
       flag: bool = False) -> Setting:
    name = name or key
    targets = (to,) if isinstance(to, str) else to
    return Setting(key, group, name, (meta, name) if meta else None, tuple(targets), key if flag else None)


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        *(_s(f.name, ModelSettings, meta="model_config", to=f"model.model_config.{f.name}")
          for f in fields(ModelSettings)),
        Setting("lora", LoraSettings, "", ("model_config", "lora"), ("model.lora",)),
        _s("prompt_template", PromptSettings, "template", meta="prompt", to="model.prompt.template"),
        _s("system_prompt", PromptSettings, meta="prompt", to="model.prompt.system_prompt"),
        _s("enable_thinking", PromptSettings, meta="prompt", to="model.prompt.enable_thinking"),
        *(_s(f.name, ViewSettings, meta="training_config", to=f"data.{f.name}")
          for f in fields(ViewSettings) if f.name not in ("max_answer_tokens", "image_root")),
        _s("max_answer_tokens", ViewSettings, meta="training_config", to="model.max_answer_tokens"),
        _s("image_root", ViewSettings, meta="dataset", to="data.image_root"),
        *(_s(f.name, GenerationSettings, to=f"model.generation.{f.name}",
             flag=True) for f in fields(GenerationSettings)),
        _s("batch_size", EvaluationOptions, to="data.eval_batch_size", flag=True),
        _s("max_samples", EvaluationOptions, to="data.max_samples", flag=True),
        _s("num_workers", EvaluationOptions, to="data.num_workers"),
        _s("reference_mode", EvaluationOptions, to="data.reference_mode", flag=True),
        *(_s(name, EvaluationOptions, flag=True)
          for name in ("csv_input", "output_dir", "overwrite", "strict_metrics", "progress")),
    )
}
"""Every flat setting key → its :class:`Setting`. ``lora`` is one key whose value is a dict (or null)."""

INPUT_KEYS: tuple[str, ...] = tuple(k for k, s in SETTINGS.items() if s.metadata_path)
"""Keys the checkpoint metadata governs (the model and its inputs)."""
RUNTIME_KEYS: tuple[str, ...] = tuple(k for k, s in SETTINGS.items() if not s.metadata_path)
"""Run-time keys: from the command line, the config or the defaults, never from the metadata."""
REQUIRED_KEYS = ("vision_name", "language_model_name")


def defaults() -> dict[str, Any]:
    """The built-in default of every flat key (fresh, JSON-able copies)."""
    return {key: s.default for key, s in SETTINGS.items()}


# -- validation ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _parser():
    """A jsonargparse parser with one argument per flat key, typed as the schema declares it."""
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    for key, s in SETTINGS.items():
        kind = LoraSettings if key == "lora" else s.type
        if get_origin(kind) is Union:  # without None: validate_setting returns None before parsing
            kind = Union[tuple(a for a in get_args(kind) if a is not type(None))]
        parser.add_argument(f"--{key}", type=kind, default=None)
    return parser


def validate_setting(key: str, value: Any) -> Any:
    """Checks one value against the schema and returns it normalised (plain JSON-able).

    ``image_size`` 224 becomes ``[224, 224]``; ints become floats where the type is a float (LoRA ``alpha`` 16
    → 16.0, 16.5 stays 16.5); a LoRA dict gets its missing fields from :class:`LoraSettings`. jsonargparse
    refuses a boolean where a number is expected.

    Args:
        key: a key of :data:`SETTINGS`.
        value: the value to check.

    Returns:
        The normalised value.

    Raises:
        ValueError: the value does not fit the type; the message says what was expected (jsonargparse's words).
    """
    if value is None:
        return None
    value = to_plain(value)
    if key == "lora" and isinstance(value, Mapping):
        value = {**to_plain(LoraSettings()), **value}
    try:
        parsed = getattr(_parser().parse_object({key: value}, defaults=False), key)
    except ArgumentError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise ValueError("; ".join(lines) or str(err)) from None
    plain = to_plain(parsed)
    if key == "image_size" and isinstance(plain, int):
        plain = [plain, plain]
    return plain


def check_settings(values: Mapping[str, Any], where: str, describe: Callable[[str], str] = str) -> dict:
    """Validates several flat settings; the first bad one raises an error that names it.

    Args:
        values: flat key → value (keys outside :data:`SETTINGS` are returned unchanged).
        where: where the values come from, for the message (``checkpoint metadata '/abs/file.json'``).
        describe: ``key → str`` that names the key as the user wrote it (``training_config.fov_deg``).

    Returns:
        The normalised values.

    Raises:
        InvalidInputError: ``{where}: {key} must be ... found {value}. {fix}``.
    """
    out = dict(values)
    for key, value in values.items():
        if key not in SETTINGS:
            continue
        try:
            out[key] = validate_setting(key, value)
        except ValueError as err:
            raise InvalidInputError(
                f"{where}: {describe(key)} = {show(value)} is not valid ({err}). "
                f"Expected: {SETTINGS[key].doc} Fix the value there."
            ) from None
    return out


# -- helpers -------------------------------------------------------------------------------------------------------
def typed(group: type, values: Mapping[str, Any] | None):
    """A settings group rebuilt from plain values (checkpoint hyper-parameters, a data module's hparams): the
    fields ``values`` holds (None counts as absent), the declared defaults for the rest; other keys are ignored.
    Code reads defaults through this, never through ``.get(name, literal)``.

    Args:
        group: One of the settings dataclasses (``ModelSettings``, ``ViewSettings``, ...).
        values: A mapping (or None).

    Returns:
        An instance of ``group``.
    """
    known = {f.name for f in fields(group)}
    return group(**{k: v for k, v in (values or {}).items() if k in known and v is not None})


def to_plain(value: Any) -> Any:
    """A JSON-able copy of builtins: dataclasses and Namespaces become dicts, tuples lists, paths strings."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif hasattr(value, "as_dict") and callable(value.as_dict):
        value = value.as_dict()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    # jsonargparse's restricted types (PositiveInt, FovDeg, ...) are subclasses of int/float/str: back to the
    # builtins, so that checkpoints' hparams load with weights_only and JSON stays plain.
    return next((base(value) for base in (bool, int, float, str) if isinstance(value, base)), value)


def show(value: Any) -> str:
    """Short rendering of a value for messages (strings quoted)."""
    try:
        text = json.dumps(to_plain(value), ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@functools.lru_cache(maxsize=None)
def field_docs(group: type) -> dict[str, str]:
    """``field → one-line doc`` from the group's Google-style ``Args:`` section (docstring_parser, as jsonargparse)."""
    parsed = docstring_parser.parse(group.__doc__ or "")
    return {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params}


def args_doc(group: type, names: tuple[str, ...] | None = None) -> str:
    """Google-style ``Args:`` lines for fields of ``group``, to append to a signature's docstring (``--help``).

    Args:
        group: a schema dataclass.
        names: the fields (default: all).

    Returns:
        ``"        name: doc"`` lines (8 spaces: a method's docstring) joined by newlines.
    """
    docs = field_docs(group)
    return "\n".join(f"        {n}: {docs[n]}" for n in (names or tuple(docs)))
