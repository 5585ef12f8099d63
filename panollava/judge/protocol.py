"""What is sent to the judge and how its answer is read: chat messages, the JSON schema, validation per dimension.

One request per sample: a system message and a user message holding the rubric's text (the prediction verbatim,
the query, every reference) and, when the judge sees images, the panorama as a data URL (JPEG, downscaled to
``image_width`` px). The answer must be one JSON object with every dimension of the rubric, each an integer in
the rubric's scale, or an object whose ``score`` is such an integer. Anything else is a failure with its reason:
a missing, null, non-integer or out-of-range dimension, no JSON object, an empty answer. Nothing is ever imputed.

Light module: PIL only (for the image).
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panollava.judge.rubric import Rubric

__all__ = [
    "PAIRWISE_OUTCOMES",
    "ParsedAnswer",
    "build_messages",
    "image_data_url",
    "pairwise_messages",
    "pairwise_response_format",
    "parse_answer",
    "parse_pairwise_answer",
    "response_format",
]

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
#: Answers of pairwise mode: the position that won ("1", "2") or "tie".
PAIRWISE_OUTCOMES = ("1", "2", "tie")


@dataclass(frozen=True)
class ParsedAnswer:
    """A judge's answer, validated.

    Attributes:
        scores: ``dimension → integer score`` when every dimension is valid, else None.
        reason: Why the answer failed (None when ``scores`` is set).
    """

    scores: dict[str, int] | None
    reason: str | None


def image_data_url(path: str | Path, width: int) -> str:
    """The panorama as a ``data:image/jpeg;base64,...`` URL, downscaled to ``width`` px (never upscaled).

    Args:
        path: The panorama file.
        width: Width of the attached picture in px (the height keeps the aspect ratio).

    Returns:
        The data URL.

    Raises:
        OSError: The file cannot be read or decoded (the caller counts the sample as failed).
    """
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (width, max(1, width // 2)))  # JPEG: decode at a reduced scale, much faster
        rgb = img.convert("RGB")
        if rgb.width > width:
            rgb = rgb.resize((width, max(1, round(rgb.height * width / rgb.width))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _user_content(text: str, image_url: str | None) -> str | list[dict[str, Any]]:
    if image_url is None:
        return text
    return [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]


def build_messages(rubric: Rubric, record: dict[str, Any], image_url: str | None) -> list[dict[str, Any]]:
    """Chat messages for one sample.

    Args:
        rubric: The rubric.
        record: The predictions.jsonl record (``query``, ``references``, ``prediction``).
        image_url: The panorama as a data URL, or None for a text-only judge.

    Returns:
        ``[system, user]`` messages (OpenAI chat format; the user content is a list when an image is attached).
    """
    text = rubric.render(str(record["query"]), list(record["references"]), str(record["prediction"]))
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": _user_content(text, image_url)}]


def pairwise_messages(
    rubric: Rubric, record: dict[str, Any], first: str, second: str, image_url: str | None
) -> list[dict[str, Any]]:
    """Chat messages of one pairwise comparison: ``first`` is shown as caption 1, ``second`` as caption 2."""
    text = rubric.render_pairwise(str(record["query"]), list(record["references"]), first, second)
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": _user_content(text, image_url)}]


def response_format(rubric: Rubric) -> dict[str, Any]:
    """The ``response_format`` (JSON schema) of a rubric's answer: every dimension an integer in the scale."""
    low, high = rubric.scale
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "rubric_scores",
            "strict": True,
            "schema": {
                "type": "object",
                # enum rather than minimum/maximum: every guided-decoding backend and strict mode support it
                "properties": {k: {"type": "integer", "enum": list(range(low, high + 1))} for k in rubric.keys},
                "required": list(rubric.keys),
                "additionalProperties": False,
            },
        },
    }


def pairwise_response_format() -> dict[str, Any]:
    """The ``response_format`` of a pairwise answer: ``{"winner": "1" | "2" | "tie"}``."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "pairwise_winner",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"winner": {"type": "string", "enum": list(PAIRWISE_OUTCOMES)}},
                "required": ["winner"],
                "additionalProperties": False,
            },
        },
    }


def _json_object(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in ``text`` (a reasoning block and code fences are skipped), or why there is none."""
    if text is None or not text.strip():
        return None, "empty answer"
    body = _THINK_RE.sub("", text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", body):
        try:
            value, _ = decoder.raw_decode(body, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value, None
    return None, f"no JSON object in the answer: {_clip(text)}"


def _clip(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def parse_answer(text: str | None, rubric: Rubric) -> ParsedAnswer:
    """Validate a judge's answer against the rubric.

    Args:
        text: The answer as the judge wrote it.
        rubric: The rubric it answers.

    Returns:
        The scores, or the reason the answer failed (the first invalid dimension, every one named).
    """
    obj, reason = _json_object(text)
    if obj is None:
        return ParsedAnswer(None, reason)
    low, high = rubric.scale
    scores: dict[str, int] = {}
    problems = []
    for key in rubric.keys:
        if key not in obj:
            problems.append(f"{key} missing")
            continue
        value = obj[key]
        if isinstance(value, dict):
            value = value.get("score")
        if value is None:
            problems.append(f"{key} is null")
        elif isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key} is not an integer ({json.dumps(value)})")
        elif not low <= value <= high:
            problems.append(f"{key} = {value} is outside {low}-{high}")
        else:
            scores[key] = value
    if problems:
        return ParsedAnswer(None, "invalid answer: " + "; ".join(problems))
    return ParsedAnswer(scores, None)


def parse_pairwise_answer(text: str | None) -> tuple[str | None, str | None]:
    """``(outcome, None)`` with outcome ``"1"``, ``"2"`` or ``"tie"``, or ``(None, reason)``."""
    obj, reason = _json_object(text)
    if obj is None:
        return None, reason
    value = obj.get("winner")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip().lower() in PAIRWISE_OUTCOMES:
        return value.strip().lower(), None
    return None, f"invalid answer: winner must be \"1\", \"2\" or \"tie\", found {json.dumps(value)}"
