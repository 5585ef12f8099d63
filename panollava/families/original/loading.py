"""Run directories of the original PanoLLaVA trainer: recognise them, choose the checkpoint, load it strictly.

What the original trainer leaves in ``runs/<exp>/<stage>/<crop>_<resampler>/`` (its ``scripts/train.py``):

- ``<vision>_<resampler>_<crop>_<dataset>_epoch<NN>_loss<L>.ckpt`` — Lightning ``save_top_k=1`` with
  ``save_weights_only=True``: the lowest validation loss is in the file name; there is no ``best.ckpt`` link.
- ``last.ckpt`` — ``save_last=True``: a regular file (a second full dump), not a link.
- ``config.yaml`` — the training YAML, copied when the trainer starts.
- ``checkpoint_metadata.json`` — normally ABSENT: the trainer's metadata callback is skipped for weights-only
  checkpoints (and, called by hand, it stops half-way at a pydantic value, leaving truncated JSON).
- ``lora_weights/`` — peft ``save_pretrained(safe_serialization=False)`` at the end of training:
  ``adapter_model.bin`` (a pickle) + ``adapter_config.json``, with the embedding matrices saved too because the
  vocabulary was resized for ``<|vision|>``.

Each ``.ckpt``'s ``state_dict`` holds the whole model under ``model.``: the frozen vision tower
(``vision_backbone.encoder``) and its LayerNorm, the resampler twice (``resampler_module.resampler`` and its alias
``resampler``), the projector twice (``projector.linear`` and ``vision_to_language_projection``), the vision
stage's VICReg head (``vicreg_projector``) and the LM wrapped by peft (``language_model.base_model.model.…`` with
``base_layer`` / ``lora_A.default`` / ``lora_B.default``). :func:`load_weights` loads every weight the caption
model uses strictly (all of them present, shapes equal), checks that alias copies equal their originals, and
says what it ignored and why.

Every file is read with ``torch.load(weights_only=True)``: a pickle that asks to import or run code is refused
with a clear error, never loaded unsafely.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file

from panollava.errors import InputNotFoundError, InvalidInputError, ModelUnavailableError
from panollava.families.base import FAMILY_ORIGINAL, Recognition
from panollava.rundir import BEST_LINK, LAST_LINK, LORA_DIRNAME, parse_checkpoint_filename
from panollava.schema import METADATA_FILENAME

logger = logging.getLogger(__name__)

RUN_CONFIG_FILENAME = "config.yaml"
VISION_TOKEN = "<|vision|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"

ORIGINAL_METADATA_KEYS = ("stage_canonical", "epoch_info", "checkpoint_info", "system")
"""Top-level keys only the original trainer's metadata callback writes."""

ORIGINAL_HPARAM_KEYS = ("vision_name", "language_model_name", "resampler_type", "latent_dimension",
                        "model_overlap_ratio", "vision_trainable_blocks")
"""``hyper_parameters`` of the original ``VLMModule``."""

ORIGINAL_PREFIXES = ("model.vision_backbone.encoder.", "model.resampler_module.resampler.", "model.projector.linear.")
"""State-dict prefixes of the original ``PanoramaVLM`` inside its Lightning module."""

RULE_LOWEST_LOSS = "lowest loss in file name"
RULE_BEST_LINK = "best.ckpt link"
RULE_LAST_FILE = "last.ckpt"
RULE_NEWEST = "newest *.ckpt by modification time"
RULE_GIVEN = "given file"

# state-dict prefix of the original → prefix in OriginalPanoramaVLM
KEY_MAP = (
    ("model.vision_backbone.", "vision_backbone."),
    ("model.resampler_module.resampler.", "resampler."),
    ("model.projector.linear.", "projector."),
    ("model.language_model.", "language_model."),
)
# prefixes loaded nowhere, with the reason; aliases are checked equal to what they alias
ALIASES = (
    ("model.resampler.", "model.resampler_module.resampler.", "alias of model.resampler_module.resampler"),
    ("model.vision_to_language_projection.", "model.projector.linear.", "alias of model.projector.linear"),
)
IGNORED = (
    ("model.vicreg_projector.", "the vision stage's VICReg projector head (training loss only)"),
    ("model.text_projection.", "the resampler stage's text projection (applied in that stage's training only)"),
)


@dataclass
class ChosenCheckpoint:
    """The checkpoint file to load and why (``reason`` is the banner line)."""

    path: Path
    rule: str
    reason: str


@dataclass
class LoadReport:
    """What :func:`load_weights` and :func:`check_adapter` did.

    Attributes:
        loaded: Number of tensors loaded (strictly).
        ignored: ``prefix → (tensor count, reason)`` of checkpoint entries not loaded.
        adapter: One sentence about ``lora_weights/`` (or None when the run has none).
        warnings: What was logged at WARNING.
    """

    loaded: int = 0
    ignored: dict[str, tuple[int, str]] = field(default_factory=dict)
    adapter: str | None = None
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines for logs and banners."""
        out = [f"loaded {self.loaded} tensors strictly"]
        out += [f"ignored {prefix}* ({n} tensors): {why}" for prefix, (n, why) in self.ignored.items()]
        if self.adapter:
            out.append(self.adapter)
        return out


# -- files ---------------------------------------------------------------------------------------------------------


def _refusal(path: Path, exc: BaseException, what: str) -> InvalidInputError | None:
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln), text[:200])
        return InvalidInputError(
            f"refused to load {what} '{path}': it is a pickle that asks to import or run code ({detail[:200]}). "
            "Files of original PanoLLaVA runs hold only tensors and plain values and are read with "
            "torch.load(weights_only=True), so that a file from elsewhere cannot run code on this machine; it is "
            "never loaded unsafely. Use the file the original trainer wrote, or re-save its tensors as a plain "
            "state dict (torch.save of a dict of tensors) or as safetensors"
        )
    if isinstance(exc, EOFError) or "PytorchStreamReader failed" in text or "central directory" in text:
        return InvalidInputError(f"{what} '{path}' is truncated or corrupt ({type(exc).__name__}); copy it again")
    return None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning ``.ckpt`` of the original trainer, read with ``weights_only=True`` (memory-mapped).

    Raises:
        InvalidInputError: the file asks to run code, is corrupt, or has no ``state_dict``.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - classified below
        error = _refusal(path, exc, "checkpoint")
        if error is None:
            raise
        raise error from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise InvalidInputError(f"'{path}' is not a Lightning checkpoint (no 'state_dict' in it)")
    return ckpt


def load_adapter_weights(lora_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of ``lora_weights/`` (``adapter_model.safetensors``, else ``adapter_model.bin`` read with
    ``weights_only=True``).

    Raises:
        InvalidInputError: ``adapter_model.bin`` asks to run code or is corrupt.
        InputNotFoundError: neither file exists.
    """
    st = lora_dir / "adapter_model.safetensors"
    if st.is_file():
        return load_file(str(st)), st
    binary = lora_dir / "adapter_model.bin"
    if not binary.is_file():
        raise InputNotFoundError(
            f"'{lora_dir}' has neither adapter_model.safetensors nor adapter_model.bin; restore the adapter or "
            "remove the folder (the checkpoint holds the LoRA tensors itself)"
        )
    try:
        return torch.load(binary, map_location="cpu", weights_only=True), binary
    except Exception as exc:  # noqa: BLE001 - classified below
        error = _refusal(binary, exc, "LoRA adapter")
        if error is None:
            raise
        raise error from exc


def read_original_metadata(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``checkpoint_metadata.json`` as the original wrote it: ``(data, problem)``; ``(None, None)`` when absent."""
    path = run_dir / METADATA_FILENAME
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (
            f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno}): the original trainer's metadata "
            "callback stops half-way at a pydantic value, leaving a truncated file; it is not used"
        )
    if not isinstance(data, dict):
        return None, f"'{path}' does not hold a JSON object; it is not used"
    return data, None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file as a dict (an empty file → ``{}``).

    Raises:
        InvalidInputError: not YAML, or not a mapping at the top.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"'{path}' is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"'{path}' must hold a YAML mapping at the top, found {type(data).__name__}")
    return data


# -- recognition and checkpoint choice ----------------------------------------------------------------------------


def _checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("*.ckpt") if p.is_file())


def recognise(run_dir: str | os.PathLike[str]) -> Recognition | None:
    """Whether ``run_dir`` was written by the original PanoLLaVA trainer, and why.

    Evidence: the original metadata keys (when the file exists), the ``.ckpt`` hyper-parameters and the
    state-dict prefixes of its ``PanoramaVLM``. Reads one checkpoint memory-mapped (cheap even for large files).

    Args:
        run_dir: A run directory.

    Returns:
        The recognition with its reasons, or None when nothing points to the original trainer.
    """
    run_dir = Path(os.path.abspath(os.fspath(run_dir)))
    if not run_dir.is_dir():
        return None
    reasons: list[str] = []
    metadata, problem = read_original_metadata(run_dir)
    if metadata is not None:
        found = [k for k in ORIGINAL_METADATA_KEYS if k in metadata]
        train = metadata.get("training_config") or {}
        if isinstance(train, dict):
            found += [f"training_config.{k}" for k in ("lora_rank", "lora_alpha") if k in train]
        if found and "schema_version" not in metadata:
            reasons.append(f"{METADATA_FILENAME} has the original trainer's keys ({', '.join(found)}) and no "
                           "schema_version")
    elif problem is not None and '"stage_canonical"' in (run_dir / METADATA_FILENAME).read_text(errors="replace"):
        reasons.append(f"{METADATA_FILENAME} is the original trainer's truncated metadata (stage_canonical, no "
                       "closing brace)")
    files = _checkpoint_files(run_dir)
    named = [p for p in files if parse_checkpoint_filename(p.name) is not None]
    probe = (named or files or [None])[0]
    if probe is not None:
        try:
            ckpt = torch.load(probe, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - unreadable here; the loader reports why
            ckpt = None
        if isinstance(ckpt, dict):
            hp = ckpt.get("hyper_parameters") or {}
            keys = [k for k in ORIGINAL_HPARAM_KEYS if isinstance(hp, dict) and k in hp]
            if len(keys) >= 3:
                reasons.append(f"{probe.name} hyper-parameters are the original VLMModule's ({', '.join(keys)})")
            sd = ckpt.get("state_dict") or {}
            prefixes = [p for p in ORIGINAL_PREFIXES if any(k.startswith(p) for k in sd)]
            if len(prefixes) == len(ORIGINAL_PREFIXES):
                reasons.append(f"{probe.name} state dict has the original PanoramaVLM's modules "
                               f"({', '.join(p.rstrip('.') for p in prefixes)})")
    if not reasons:
        return None
    last = run_dir / LAST_LINK
    if not (run_dir / BEST_LINK).is_symlink() and last.is_file() and not last.is_symlink():
        reasons.append(f"{LAST_LINK} is a regular file (the original's save_last copy) and there is no {BEST_LINK} "
                       "link")
    return Recognition(FAMILY_ORIGINAL, tuple(reasons))


def choose_checkpoint(run_dir: Path, checkpoint: str | os.PathLike[str] | None = None) -> ChosenCheckpoint:
    """The checkpoint of an original run: ``None``/``"best"`` → ``best.ckpt`` if someone made that link, else
    the file with the lowest validation loss in its name (the trainer's ``save_top_k=1`` file), else (``None``
    only) ``last.ckpt``, else the newest ``*.ckpt``; ``"last"`` → ``last.ckpt`` (a regular file there); anything
    else → that file (absolute, else relative to the current directory, then to the run directory).

    Raises:
        InputNotFoundError: nothing matches; the message lists what the directory holds.
    """
    run_dir = Path(os.path.abspath(run_dir))
    listing = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir())) or "nothing"
    if checkpoint not in (None, "", "auto", "best", "last"):
        given = Path(os.path.expanduser(os.fspath(checkpoint)))
        tried = [given] if given.is_absolute() else [Path.cwd() / given, run_dir / given]
        for candidate in tried:
            if candidate.is_file():
                real = Path(os.path.realpath(candidate))
                return ChosenCheckpoint(real, RULE_GIVEN, f"checkpoint given: {os.fspath(checkpoint)}")
        raise InputNotFoundError(
            f"checkpoint {os.fspath(checkpoint)!r} not found (tried {', '.join(repr(str(p)) for p in tried)}); the "
            f"run directory holds: {listing}. Pass an existing .ckpt file, 'best', 'last', or nothing"
        )
    if checkpoint == "last":
        last = run_dir / LAST_LINK
        if last.is_file():
            kind = "a link" if last.is_symlink() else "a regular file: the original's save_last copy, not a link"
            reason = f"{LAST_LINK} requested ({kind}) → used"
            return ChosenCheckpoint(Path(os.path.realpath(last)), RULE_LAST_FILE, reason)
        raise InputNotFoundError(
            f"'last' was requested but there is no {LAST_LINK} in '{run_dir}' (found: {listing}); ask for 'best' or "
            "pass a checkpoint file"
        )
    best = run_dir / BEST_LINK
    if best.is_symlink() and best.is_file():
        real = Path(os.path.realpath(best))
        return ChosenCheckpoint(real, RULE_BEST_LINK, f"{BEST_LINK} link → {real.name}")
    scored = []
    for path in _checkpoint_files(run_dir):
        parsed = parse_checkpoint_filename(path.name)
        if parsed is not None and parsed["val_loss"] == parsed["val_loss"] and abs(parsed["val_loss"]) != float("inf"):
            scored.append((parsed["val_loss"], -parsed["epoch"], path.name, path))
    if scored:
        loss, _, name, path = min(scored)
        others = f" (lowest of {len(scored)})" if len(scored) > 1 else ""
        reason = f"no {BEST_LINK} link; {name} has the lowest loss in its name ({loss:g}){others} → used"
        return ChosenCheckpoint(path, RULE_LOWEST_LOSS, reason)
    if checkpoint == "best":
        raise InputNotFoundError(
            f"'best' was requested but '{run_dir}' has no {BEST_LINK} link and no checkpoint whose name carries a "
            f"validation loss (…_epoch<NN>_loss<L>.ckpt) (found: {listing}); ask for 'last' or pass a file"
        )
    last = run_dir / LAST_LINK
    if last.is_file():
        kind = "a link" if last.is_symlink() else "a regular file, not a link"
        return ChosenCheckpoint(Path(os.path.realpath(last)), RULE_LAST_FILE,
                                f"no {BEST_LINK} link and no loss in any file name; {LAST_LINK} ({kind}) → used")
    files = _checkpoint_files(run_dir)
    if files:
        newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
        return ChosenCheckpoint(newest, RULE_NEWEST, f"no {BEST_LINK}, no loss in a file name, no {LAST_LINK}; newest "
                                f"of {len(files)} *.ckpt → {newest.name}")
    raise InputNotFoundError(f"no checkpoint in '{run_dir}' (found: {listing}); pass the run directory the original "
                             "trainer wrote (runs/<exp>/<stage>/<crop>_<resampler>/)")


def find_lora_dir(run_dir: Path) -> Path | None:
    """``lora_weights/`` when it holds an ``adapter_config.json``."""
    path = run_dir / LORA_DIRNAME
    return path if (path / "adapter_config.json").is_file() else None


# -- building ------------------------------------------------------------------------------------------------------


def resolve_model_path(name: str, base_dir: Path) -> str:
    """A model name as the original resolved it: a folder relative to its working directory (``base_dir``), an
    absolute folder, or a Hugging Face hub id (cache; the hub itself unless ``HF_HUB_OFFLINE`` is set).

    Raises:
        ModelUnavailableError: no such folder and not a loadable hub id (the message says what was tried).
    """
    candidate = Path(os.path.expanduser(name))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.is_dir():
        return str(candidate)
    hint = (f"tried the folder '{candidate}': the original resolved model paths against its working directory, "
            "so pass that directory as base_dir (or run from it)")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelUnavailableError(f"model {name!r} of the original run is not a folder nor a hub id; {hint}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelUnavailableError(
                f"model {name!r} of the original run is not in the Hugging Face cache (HF_HUB_OFFLINE is set); {hint}"
            )
    return name


def _from_config(loader, name: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        raise ModelUnavailableError(
            f"cannot load {name!r} ({str(exc).splitlines()[0][:200]}); it must be a local folder or in the offline "
            "Hugging Face cache (config and tokenizer files are enough: the weights come from the checkpoint); a "
            "relative model path is resolved against base_dir (the original's working directory)"
        ) from exc


def build_vision_encoder(vision_path: str) -> tuple[torch.nn.Module, int, int]:
    """The vision tower as the original held it (``AutoModel(...).vision_model``), randomly initialised (the
    checkpoint holds all its weights). Returns (encoder, hidden size, patch size)."""
    from transformers import AutoConfig, AutoModel

    config = _from_config(AutoConfig.from_pretrained, vision_path)
    vision_config = getattr(config, "vision_config", None) or config
    model = AutoModel.from_config(vision_config, dtype=torch.float32)  # fp32 as the original: not the config's dtype
    encoder = model.vision_model if hasattr(model, "vision_model") else model
    hidden = next(getattr(vision_config, k) for k in ("hidden_size", "vision_hidden_size", "hidden_dim", "embed_dim")
                  if hasattr(vision_config, k))
    return encoder, int(hidden), int(vision_config.patch_size)


def build_tokenizer(lm_path: str, embedding_rows: int | None):
    """The LM's tokenizer with ``<|vision|>`` added as the original did (and ``<|endoftext|>`` when the
    vocabulary lacks it). Returns (tokenizer, vision token id).

    Raises:
        InvalidInputError: the vocabulary size then differs from the checkpoint's embedding rows.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_config(AutoTokenizer.from_pretrained, lm_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    new = [t for t in (VISION_TOKEN,) if t not in vocab]
    if tokenizer.eos_token != ENDOFTEXT_TOKEN and ENDOFTEXT_TOKEN not in vocab:
        new.append(ENDOFTEXT_TOKEN)
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if embedding_rows is not None and len(tokenizer) != embedding_rows:
        raise InvalidInputError(
            f"the tokenizer of {lm_path!r} has {len(tokenizer)} tokens with {VISION_TOKEN}, but the checkpoint's "
            f"embedding matrix has {embedding_rows} rows: the language model or its tokenizer is not the one the run "
            "was trained with"
        )
    return tokenizer, int(tokenizer.convert_tokens_to_ids(VISION_TOKEN))


def build_language_model(lm_path: str, embedding_rows: int, settings) -> torch.nn.Module:
    """The causal LM from its config (weights from the checkpoint), embeddings resized to the checkpoint's rows,
    wrapped in peft LoRA (rank, alpha, targets of the run; dropout off) when the run used LoRA."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _from_config(AutoConfig.from_pretrained, lm_path)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if lm.get_input_embeddings().weight.shape[0] != embedding_rows:
        lm.resize_token_embeddings(embedding_rows, mean_resizing=False)
    if not settings.use_lora:
        return lm
    from peft import LoraConfig, get_peft_model

    if settings.lora_alpha is None or settings.lora_rank is None:
        raise InvalidInputError("the run used LoRA but no source gives its rank and alpha (lora.rank, lora.alpha)")
    lora = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                      target_modules=list(settings.lora_target_modules), lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM")
    return get_peft_model(lm, lora)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], checkpoint: Path) -> LoadReport:
    """Load every weight the model uses from the original ``state_dict``, strictly.

    Raises:
        InvalidInputError: a weight is missing, unexpected or of another shape, or an alias copy differs from
            what it aliases.
    """
    report = LoadReport()
    target: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        for old, new in KEY_MAP:
            if key.startswith(old):
                target[new + key[len(old):]] = value
                break
        else:
            alias = next((a for a in ALIASES if key.startswith(a[0])), None)
            ignored = next((i for i in IGNORED if key.startswith(i[0])), None)
            if alias is not None:
                original = alias[1] + key[len(alias[0]):]
                if original not in state_dict or not torch.equal(state_dict[original], value):
                    raise InvalidInputError(
                        f"'{checkpoint}': {key} should be an alias copy of {original} but differs from it (or it is "
                        "missing): the checkpoint was edited or corrupted"
                    )
                n, why = report.ignored.get(alias[0], (0, alias[2] + ", checked equal"))
                report.ignored[alias[0]] = (n + 1, why)
            elif ignored is not None:
                n, why = report.ignored.get(ignored[0], (0, ignored[1]))
                report.ignored[ignored[0]] = (n + 1, why)
            else:
                unexpected.append(key)
    own = model.state_dict()
    missing = [k for k in own if k not in target]
    unexpected += [k for k in target if k not in own]
    wrong = [f"{k} {tuple(target[k].shape)} vs model {tuple(own[k].shape)}" for k in target
             if k in own and tuple(target[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"other shapes {len(wrong)} (e.g. {'; '.join(wrong[:3])})")
        raise InvalidInputError(
            f"'{checkpoint}' does not fit the original PanoLLaVA model built from the run's settings: "
            f"{' · '.join(parts)}. Check the run's settings (resampler sizes, LoRA rank/targets, model names)"
        )
    tied = [(a, b) for a, b in (("language_model.base_model.model.model.embed_tokens.weight",
                                 "language_model.base_model.model.lm_head.weight"),
                                ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"))
            if a in own and b in own and own[a].data_ptr() == own[b].data_ptr()]
    for a, b in tied:
        if not torch.equal(target[a], target[b]):
            raise InvalidInputError(
                f"'{checkpoint}': the LM ties {a} and {b} but the checkpoint holds different values"
            )
    model.load_state_dict(target, strict=True)
    report.loaded = len(target)
    return report


_ADAPTER_PREFIX = "base_model.model."


def check_adapter(lora_dir: Path, state_dict: dict[str, torch.Tensor], settings, report: LoadReport) -> None:
    """Read ``lora_weights/`` safely and compare it with the checkpoint's own LoRA and embedding tensors, which
    are the ones used (the trainer writes ``lora_weights/`` once, at the end of training, so it belongs to the
    final state, while the loss-named checkpoint may be of an earlier epoch).

    Raises:
        InvalidInputError: the adapter file asks to run code or is corrupt.
    """
    tensors, path = load_adapter_weights(lora_dir)
    config = json.loads((lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    diffs, unmatched = [], []
    embeddings = []
    for key, value in tensors.items():
        name = key[len(_ADAPTER_PREFIX):] if key.startswith(_ADAPTER_PREFIX) else key
        for part in (".lora_A.", ".lora_B."):
            if part in name:
                name = name.replace(part + "weight", part + "default.weight")
        ckpt_key = "model.language_model.base_model.model." + name
        if ckpt_key not in state_dict:
            unmatched.append(key)
            continue
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            embeddings.append(f"{name.rsplit('.', 2)[-2]} {list(value.shape)}")
        if tuple(value.shape) != tuple(state_dict[ckpt_key].shape):
            diffs.append((key, float("inf")))
        else:
            diffs.append((key, float((value.float() - state_dict[ckpt_key].float()).abs().max())))
    worst = max((d for _, d in diffs), default=0.0)
    config_notes = []
    if settings.lora_rank is not None and config.get("r") not in (None, settings.lora_rank):
        config_notes.append(f"r {config.get('r')} vs {settings.lora_rank}")
    if settings.lora_alpha is not None and config.get("lora_alpha") not in (None, settings.lora_alpha):
        config_notes.append(f"lora_alpha {config.get('lora_alpha')} vs {settings.lora_alpha}")
    emb = f", incl. the resized embedding rows ({', '.join(embeddings)})" if embeddings else ""
    if worst == 0.0 and not unmatched and not config_notes:
        report.adapter = (f"{path.relative_to(lora_dir.parent)}: {len(diffs)} tensors{emb}, read with "
                          "weights_only=True, equal to the checkpoint's own (which are used)")
        return
    notes = f"; adapter_config {', '.join(config_notes)}" if config_notes else ""
    message = (f"{path}: differs from the checkpoint's LoRA/embedding tensors (max |Δ| {worst:.3g} over "
               f"{len(diffs)} tensors; {len(unmatched)} without a counterpart{notes}). The trainer writes "
               "lora_weights/ at the end of training; the checkpoint's own tensors are used")
    report.adapter = message
    report.warnings.append(message)
    logger.warning("%s", message)
