"""Tiny random-weight Hugging Face VLM folders for tests: real classes, real ``save_pretrained`` folders.

Each builder writes a complete folder that ``AutoModelForImageTextToText`` / ``AutoProcessor`` (or, where the
processor needs torchvision, the family's own assembly) load with the ordinary ``from_pretrained(folder)``:
weights (``model.safetensors``), ``config.json``, ``generation_config.json``, the image processor's
``preprocessor_config.json``, the tokenizer (a byte-level BPE trained here with the family's special tokens) and
the chat template. Nothing is downloaded.

- ``qwen2_vl``: ``Qwen2VLForConditionalGeneration`` (multimodal rotary positions), ``Qwen2VLImageProcessorPil``,
  Qwen's ChatML template with its default system message and ``<|vision_start|><|image_pad|><|vision_end|>`` per
  image. Written like the hub's Qwen2-VL folders: image processor + tokenizer + ``chat_template.json``, no
  processor config (``AutoProcessor`` would also need the video processor, i.e. torchvision).
- ``qwen2_5_vl``: the same for ``Qwen2_5_VLForConditionalGeneration`` (windowed vision attention).
- ``llava``: ``LlavaForConditionalGeneration`` with a SigLIP tower and a Qwen2 language model,
  ``SiglipImageProcessorPil``, llava-hf's ``USER: <image>\\n... ASSISTANT:`` template (no BOS: the tokenizer
  prepends ``<s>``, as Llama's does), a full ``LlavaProcessor`` save.
- ``gemma3``: ``Gemma3ForConditionalGeneration`` (SigLIP tower, pooled image tokens between
  ``<start_of_image>``/``<end_of_image>``, bidirectional attention over them), ``Gemma3ImageProcessorPil``,
  Gemma's ``<start_of_turn>user`` template, which starts with ``<bos>`` while the tokenizer also prepends it (as
  Gemma's does: the processor's tokenising path then adds no second one), a full ``Gemma3Processor`` save.
- ``blip2``: ``Blip2ForConditionalGeneration`` (Q-Former, one image per prompt: the family refuses several),
  with a chat template.

Sizes: hidden 64, 2 layers, vision hidden 32; a whole folder is well under a megabyte and builds in about a
second. Weights use a larger initialiser range (0.2) than the default so that the random models' next-token
distributions are peaked: greedy comparisons then test the code, not floating-point near-ties.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

__all__ = ["TINY_HF_KINDS", "build_tiny_hf_model", "build_tiny_hf_models"]

#: The tiny folders this module can write.
TINY_HF_KINDS = ("qwen2_vl", "qwen2_5_vl", "llava", "gemma3", "internvl", "blip2")

_INIT_RANGE = 0.2

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BLIP2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}Question: {{ item['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %} Answer:{% endif %}"
)


def _corpus() -> list[str]:
    from panollava.offline.tiny_models import _corpus as base_corpus

    return base_corpus() + ["USER ASSISTANT Question Answer model user system Picture"] * 4


def _tokenizer(specials: list[str], extra: dict[str, str] | None = None, prepend_bos: bool = False, **named: str):
    """A byte-level BPE trained on the tiny corpus with ``specials`` (ids 0..n-1), wrapped for transformers.

    ``prepend_bos``: the tokenizer adds ``named["bos_token"]`` in front of every encoded text (as Gemma's and
    Llama's tokenizers do), so that the family's handling of a template that already starts with it is tested.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=448,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if prepend_bos:
        bos = named["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    named_values = set(named.values()) | set((extra or {}).values())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=extra or {},
        additional_special_tokens=[t for t in specials if t not in named_values],
        **named,
    )


def _vocab(tokenizer) -> int:
    return ((len(tokenizer) + 63) // 64) * 64


def _text_kwargs(tokenizer, hidden: int = 64) -> dict:
    return dict(
        vocab_size=_vocab(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=_INIT_RANGE,
    )


def _finish(model, output_dir: Path, eos_ids: list[int], pad_id: int) -> None:
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(output_dir)


def _write_qwen(output_dir: Path, version: str) -> None:
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
         "<|video_pad|>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    ids = tokenizer.convert_tokens_to_ids
    text = _text_kwargs(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text.update(tie_word_embeddings=True, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"))
    common = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        initializer_range=_INIT_RANGE,
    )
    torch.manual_seed(0)
    if version == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, initializer_range=_INIT_RANGE)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **common))
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], initializer_range=_INIT_RANGE)
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        )
    _finish(model, output_dir, [ids("<|im_end|>"), ids("<|endoftext|>")], ids("<|endoftext|>"))
    processor_class = "Qwen2VLProcessor" if version == "qwen2_vl" else "Qwen2_5_VLProcessor"
    # small images: 2x2 to 4x4 merged tokens per view keep the tests fast
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    image_processor.save_pretrained(output_dir)
    config_path = output_dir / "preprocessor_config.json"
    pre = json.loads(config_path.read_text())
    pre["processor_class"] = processor_class
    config_path.write_text(json.dumps(pre, indent=2))
    tokenizer.save_pretrained(output_dir)
    (output_dir / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2))


def _siglip_vision(image_size: int = 32, patch_size: int = 8) -> dict:
    return dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, vision_use_head=False,
        initializer_range=_INIT_RANGE,
    )


def _write_llava(output_dir: Path) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _tokenizer(["<pad>", "<s>", "</s>", "<image>"], eos_token="</s>", pad_token="<pad>", bos_token="<s>",
                           extra={"image_token": "<image>"}, prepend_bos=True)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(model_type="qwen2", **_text_kwargs(tokenizer), tie_word_embeddings=True)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=_siglip_vision(), text_config=text, image_token_id=ids("<image>"), image_seq_length=16,
        vision_feature_select_strategy="full", vision_feature_layer=-1, initializer_range=_INIT_RANGE,
    )
    model = LlavaForConditionalGeneration(config)
    _finish(model, output_dir, [ids("</s>")], ids("<pad>"))
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE, image_token="<image>",
        num_additional_image_tokens=0,
    )
    processor.save_pretrained(output_dir)


def _write_gemma3(output_dir: Path) -> None:
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = _tokenizer(
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
         "<image_soft_token>"],
        eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", prepend_bos=True,
        extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        model_type="gemma3_text", **{**_text_kwargs(tokenizer), "initializer_range": 0.02}, head_dim=16,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
    )
    torch.manual_seed(0)
    config = Gemma3Config(
        text_config=text, vision_config=_siglip_vision(), mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), initializer_range=0.02,
    )
    model = Gemma3ForConditionalGeneration(config)
    _finish(model, output_dir, [ids("<eos>"), ids("<end_of_turn>")], ids("<pad>"))
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=4
    )
    processor.save_pretrained(output_dir)


def _write_internvl(output_dir: Path) -> None:
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = _tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
               "video_token": "<video>"},
    )
    ids = tokenizer.convert_tokens_to_ids
    text = dict(model_type="qwen2", **_text_kwargs(tokenizer), tie_word_embeddings=True, bos_token_id=None,
                eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[32, 32], patch_size=[8, 8], initializer_range=_INIT_RANGE)
    torch.manual_seed(0)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=ids("<IMG_CONTEXT>"),
                            image_seq_length=4, downsample_ratio=0.5, initializer_range=_INIT_RANGE)
    model = InternVLForConditionalGeneration(config)
    _finish(model, output_dir, [ids("<|im_end|>"), ids("<|endoftext|>")], ids("<|endoftext|>"))
    # the hub's InternVL-HF folders: image processor + tokenizer + chat template + processor_config (the
    # processor needs a video processor, i.e. torchvision, so it is not built here)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, max_patches=4)
    image_processor.save_pretrained(output_dir)
    config_path = output_dir / "preprocessor_config.json"
    pre = json.loads(config_path.read_text())
    pre["processor_class"] = "InternVLProcessor"
    config_path.write_text(json.dumps(pre, indent=2))
    (output_dir / "processor_config.json").write_text(
        json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": 4}, indent=2)
    )
    tokenizer.save_pretrained(output_dir)
    (output_dir / "chat_template.jinja").write_text(INTERNVL_CHAT_TEMPLATE)


def _write_blip2(output_dir: Path) -> None:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # no image_token attribute: Blip2Processor then uses its own AddedToken (with the attribute set it breaks)
    tokenizer = _tokenizer(["<pad>", "</s>", "<image>"], eos_token="</s>", pad_token="<pad>")
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        model_type="opt", vocab_size=_vocab(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=512, init_std=_INIT_RANGE,
        pad_token_id=ids("<pad>"), eos_token_id=ids("</s>"), bos_token_id=ids("</s>"),
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    qformer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   encoder_hidden_size=32, vocab_size=64)
    torch.manual_seed(0)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                         image_token_index=ids("<image>"))
    model = Blip2ForConditionalGeneration(config)
    _finish(model, output_dir, [ids("</s>")], ids("<pad>"))
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer,
        num_query_tokens=4,
    )
    processor.save_pretrained(output_dir)
    (output_dir / "chat_template.jinja").write_text(BLIP2_CHAT_TEMPLATE)


_WRITERS = {
    "qwen2_vl": lambda d: _write_qwen(d, "qwen2_vl"),
    "qwen2_5_vl": lambda d: _write_qwen(d, "qwen2_5_vl"),
    "llava": _write_llava,
    "gemma3": _write_gemma3,
    "internvl": _write_internvl,
    "blip2": _write_blip2,
}


def build_tiny_hf_model(kind: str, output_dir: str | Path) -> Path:
    """Write one tiny VLM folder (atomically: a temporary folder renamed into place).

    Args:
        kind: One of :data:`TINY_HF_KINDS`.
        output_dir: The folder to create; an existing complete folder is returned as is.

    Returns:
        The absolute folder.

    Raises:
        ValueError: For an unknown ``kind``.
    """
    if kind not in _WRITERS:
        raise ValueError(f"unknown tiny VLM kind {kind!r}; expected one of {', '.join(TINY_HF_KINDS)}")
    output_dir = Path(output_dir).expanduser().resolve()
    if (output_dir / "config.json").is_file():
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        _WRITERS[kind](staging)
        try:
            os.replace(staging, output_dir)
        except OSError:
            if not (output_dir / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote tiny %s VLM to %s", kind, output_dir)
    return output_dir


def build_tiny_hf_models(root: str | Path, kinds: tuple[str, ...] = TINY_HF_KINDS) -> dict[str, Path]:
    """Write the tiny folders ``root/<kind>`` (those already complete are kept).

    Args:
        root: Parent folder.
        kinds: Which folders.

    Returns:
        ``{kind: absolute folder}``.
    """
    return {kind: build_tiny_hf_model(kind, Path(root) / kind) for kind in kinds}
