"""What judging would cost, without asking: ``panollava-cli judge --count_tokens TOKENIZER_DIR``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError
from panollava.judge.backends import _folder_fingerprint
from panollava.judge.protocol import build_messages
from panollava.judge.rubric import load_rubric
from panollava.judge.run import (
    CACHE_FILE,
    JudgeSettings,
    find_targets,
    image_path_of,
    read_cache,
    request_key,
)

__all__ = ["count_prompt_tokens"]


def count_prompt_tokens(
    settings: JudgeSettings, tokenizer_dir: str, eval_dirs: Sequence[str] = (), predictions: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """What judging would cost, without asking: the requests still missing from the cache and their prompt tokens.

    The text of every missing request (system + user message, the chat template applied) is tokenized with the
    tokenizer in ``tokenizer_dir``; an attached panorama adds the judge's image tokens, which depend on its vision
    encoder and are not counted here (docs/judge.md gives the figure for Qwen2.5-VL-class judges).

    Args:
        settings: The settings of the run whose cost is wanted (the cache keys depend on them).
        tokenizer_dir: A transformers tokenizer folder with a chat template (ideally the judge's own).
        eval_dirs: Evaluation folders.
        predictions: predictions.jsonl files.

    Returns:
        Per evaluation: ``{"folder", "samples", "cached", "to_ask", "prompt_tokens": {"total", "mean", "max"},
        "max_answer_tokens", "images"}``.
    """
    from transformers import AutoTokenizer

    settings.validate()
    targets = find_targets(eval_dirs, predictions)
    rubric = load_rubric(settings.rubric)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    identity = ({"backend": "openai-compatible", "model": settings.judge_model} if settings.endpoint
                else {"backend": "transformers", "model": str(Path(settings.judge_model).expanduser().resolve())})
    if settings.endpoint is None:  # the local judge's identity includes its fingerprint
        identity["fingerprint"] = _folder_fingerprint(Path(identity["model"]))
    out = []
    for target in targets:
        cache = read_cache(target.folder / CACHE_FILE)
        counts = []
        for rec in target.records:
            image = None
            if settings.images:
                try:
                    image = image_path_of(rec, target.metrics, settings.image_root)
                except InvalidInputError:
                    image = None
            if request_key(rec, image, identity, rubric, settings) in cache:
                continue
            messages = build_messages(rubric, rec, None)
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, enable_thinking=False)["input_ids"]
            counts.append(len(ids))
        out.append({
            "folder": target.folder, "samples": len(target.records), "cached": len(target.records) - len(counts),
            "to_ask": len(counts),
            "prompt_tokens": {"total": sum(counts), "mean": sum(counts) / len(counts) if counts else None,
                              "max": max(counts, default=None)},
            "max_answer_tokens": settings.max_tokens, "images": settings.images, "tokenizer": str(tokenizer_dir),
        })
    return out
