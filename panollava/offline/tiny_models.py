"""Tiny offline Hugging Face models for tests, ``configs/tiny.yaml`` and the demo.

Nothing can be downloaded on our machines, so everything that needs a model builds these folders on demand and
loads them through the real ``from_pretrained(local_dir)`` path:

- ``tiny-siglip``: ``SiglipVisionModel`` (fixed resolution, like so400m-patch14-224 / patch16-256) with a
  ``SiglipImageProcessor`` config;
- ``tiny-siglip2``: ``Siglip2VisionModel`` (NaFlex: pre-cut patches + ``spatial_shapes``) with a
  ``Siglip2ImageProcessor`` config;
- ``tiny-qwen3``: ``Qwen3ForCausalLM`` with a byte-level BPE tokenizer trained here by ``tokenizers``, a ChatML
  chat template and Qwen's special tokens (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``,
  ``<|image_pad|>``, ``<|vision_end|>``, pad ``<|endoftext|>``).

The folders are cached under ``$PANOLLAVA_CACHE`` (default ``~/.cache/panollava``) in a directory named after
:data:`TINY_VERSION` and a digest of the tokenizer corpus, written to a temporary directory and renamed into place, so concurrent callers (DDP ranks,
parallel tests) never see half-written folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from panollava.offline.synthetic import vocabulary_corpus
from panollava.schema import DEFAULT_PROMPT_TEMPLATE

logger = logging.getLogger(__name__)

TINY_VERSION = "v1"
TINY_NAMES = ("tiny-siglip", "tiny-siglip2", "tiny-qwen3")

#: Special tokens of Qwen2/2.5/3 tokenizers that panollava relies on.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)

#: ChatML, as Qwen's templates render it for plain text messages (no thinking block: see docs/model.md).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_BASE_CORPUS = [
    DEFAULT_PROMPT_TEMPLATE,
    "You are a helpful assistant that describes panoramic images.",
    "user assistant system user assistant system",
    "the a an of in on at to is are there it its this that with and or behind front left right above below",
    "room wall floor ceiling window door table chair sofa bed tree sky road car people person building street",
    "furniture what they are doing color shape position object objects scene view camera",
    "red green blue yellow white black orange purple gray brown circle square bar ring triangle disc",
    "large small big tall near far inside outside sitting standing walking looking holding wearing",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? ' \" : ; - ( )",
]


def cache_root() -> Path:
    """Folder holding cached tiny models: ``$PANOLLAVA_CACHE`` or ``~/.cache/panollava``."""
    return Path(os.environ.get("PANOLLAVA_CACHE", Path.home() / ".cache" / "panollava")).expanduser()


def _corpus() -> list[str]:
    corpus = list(_BASE_CORPUS)
    corpus += list(vocabulary_corpus())  # the synthetic dataset's captions: the demo's words are single tokens
    return corpus * 4


def build_digest() -> str:
    """8 hex digits identifying what the tiny models are built from (the tokenizer corpus), so that a cache written
    by other code is never mistaken for the current one."""
    return hashlib.sha256("\n".join([TINY_VERSION, CHAT_TEMPLATE, *_corpus()]).encode()).hexdigest()[:8]


def build_tokenizer(output_dir: Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer with Qwen's special tokens and a ChatML template; save it.

    Args:
        output_dir: Folder to write ``tokenizer.json`` / ``tokenizer_config.json`` into.
        vocab_size: Target vocabulary size (the special tokens included).

    Returns:
        The ``PreTrainedTokenizerFast`` that was saved.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(output_dir)
    return fast


def _write_siglip(output_dir: Path, image_size: int, patch_size: int, hidden: int, layers: int) -> None:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    SiglipVisionModel(config).save_pretrained(output_dir)
    SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(output_dir)


def _write_siglip2(output_dir: Path, image_size: int, patch_size: int, hidden: int, layers: int) -> None:
    import torch
    from transformers import Siglip2VisionConfig, Siglip2VisionModel
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    torch.manual_seed(0)
    num_patches = (image_size // patch_size) ** 2
    config = Siglip2VisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_patches=num_patches,
        patch_size=patch_size,
        vision_use_head=False,
    )
    Siglip2VisionModel(config).save_pretrained(output_dir)
    Siglip2ImageProcessorPil(
        patch_size=patch_size, max_num_patches=num_patches, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(output_dir)


def _write_qwen3(output_dir: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer(output_dir)
    torch.manual_seed(0)
    vocab = len(tokenizer)
    config = Qwen3Config(
        vocab_size=((vocab + 63) // 64) * 64,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(output_dir)


def build_tiny_models(root: str | Path | None = None, force: bool = False) -> dict[str, Path]:
    """Write (once) and return the tiny model folders.

    Args:
        root: Folder to write; default ``cache_root() / f"tiny-models-{TINY_VERSION}-{build_digest()}"``.
        force: Rebuild even if a complete set exists.

    Returns:
        ``{"tiny-siglip": Path, "tiny-siglip2": Path, "tiny-qwen3": Path}`` (absolute paths).
    """
    root = Path(root) if root is not None else cache_root() / f"tiny-models-{TINY_VERSION}-{build_digest()}"
    root = root.expanduser().resolve()
    paths = {name: root / name for name in TINY_NAMES}
    done = root / "COMPLETE.json"
    if done.is_file() and not force and all(p.is_dir() for p in paths.values()):
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _write_siglip(staging / "tiny-siglip", image_size=32, patch_size=8, hidden=32, layers=2)
        _write_siglip2(staging / "tiny-siglip2", image_size=32, patch_size=8, hidden=32, layers=2)
        _write_qwen3(staging / "tiny-qwen3", hidden=64, layers=2)
        (staging / "COMPLETE.json").write_text(json.dumps({"version": TINY_VERSION, "names": list(TINY_NAMES)}))
        if root.exists():
            if done.is_file() and not force:  # another process finished first
                return paths
            shutil.rmtree(root)
        try:
            os.replace(staging, root)
        except OSError:
            if not done.is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote tiny models to %s", root)
    return paths
