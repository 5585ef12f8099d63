"""Rubrics of the judge: files that say what is graded, with what weights, and how the question is asked.

A rubric is a YAML file (the default ships as ``panollava/judge/rubrics/default.yaml``; its header documents the
format). It is identified by its name, version and the sha256 of the file's bytes: every cached answer and every
``judge`` block records that hash, so answers to another rubric are never mixed in.

Light module: PyYAML only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from panollava.errors import InputNotFoundError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RUBRIC_PATH", "SCORE_MULTIPLIER", "Dimension", "Rubric", "load_rubric"]

#: The rubric used without ``--rubric``.
DEFAULT_RUBRIC_PATH = Path(__file__).resolve().parent / "rubrics" / "default.yaml"
#: The weighted 1-5 score is reported times this (a 20-100 scale, as the original tool's successor reports it).
SCORE_MULTIPLIER = 20.0

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDERS = ("query", "references", "prediction", "dimensions", "answer_format", "scale_low", "scale_high")
_PAIRWISE_PLACEHOLDERS = ("query", "references", "first", "second", "dimensions")


@dataclass(frozen=True)
class Dimension:
    """One graded dimension.

    Attributes:
        key: JSON key of the judge's answer (``spatial_coherence``).
        weight: Weight in the weighted score; the weights of a rubric sum to 1.
        description: What the judge checks (shown in the prompt).
    """

    key: str
    weight: float
    description: str


@dataclass(frozen=True)
class Rubric:
    """A loaded rubric file.

    Attributes:
        name: The rubric's name.
        version: Its version (free text or number).
        path: The file it was read from (absolute).
        sha256: sha256 of the file's bytes.
        scale: ``(low, high)``: the integer range of every dimension.
        dimensions: The graded dimensions, in order.
        system: The system message.
        template: The user message (``string.Template`` syntax, see the default file).
        pairwise_template: The user message of pairwise mode, or None when the rubric has none.
    """

    name: str
    version: str
    path: Path
    sha256: str
    scale: tuple[int, int]
    dimensions: tuple[Dimension, ...]
    system: str
    template: str
    pairwise_template: str | None

    @property
    def keys(self) -> tuple[str, ...]:
        """The dimension keys, in order."""
        return tuple(d.key for d in self.dimensions)

    def identity(self) -> dict[str, Any]:
        """What identifies the rubric in results: name, version, file and sha256."""
        return {"name": self.name, "version": self.version, "path": str(self.path), "sha256": self.sha256}

    def dimensions_text(self) -> str:
        """The dimensions as prompt lines: ``- key (weight 0.30): description``."""
        return "\n".join(f"- {d.key} (weight {d.weight:.2f}): {d.description}" for d in self.dimensions)

    def answer_example(self) -> str:
        """The JSON object the judge is asked for, each value a placeholder ``<1-5>`` (no example score, so the
        judge is not anchored on one)."""
        low, high = self.scale
        return "{" + ", ".join(f"{json.dumps(d.key)}: <{low}-{high}>" for d in self.dimensions) + "}"

    def render(self, query: str, references: list[str], prediction: str) -> str:
        """The user message for one sample: the prediction verbatim, the query and every reference.

        Args:
            query: The sample's query.
            references: Its reference captions.
            prediction: The caption to grade, inserted as it is.

        Returns:
            The message text.
        """
        return Template(self.template).substitute(
            query=query,
            references=_references_text(references),
            prediction=prediction,
            dimensions=self.dimensions_text(),
            answer_format=self.answer_example(),
            scale_low=str(self.scale[0]),
            scale_high=str(self.scale[1]),
        )

    def render_pairwise(self, query: str, references: list[str], first: str, second: str) -> str:
        """The user message of pairwise mode: both captions verbatim, in the order given.

        Raises:
            InvalidInputError: The rubric has no ``pairwise_template``.
        """
        if self.pairwise_template is None:
            raise InvalidInputError(
                f"rubric '{self.path}' has no pairwise_template; add one (see the default rubric "
                f"'{DEFAULT_RUBRIC_PATH}') to use --pairwise"
            )
        return Template(self.pairwise_template).substitute(
            query=query, references=_references_text(references), first=first, second=second,
            dimensions=self.dimensions_text(),
        )

    def weighted(self, scores: dict[str, int]) -> float:
        """The weighted score of one sample on the rubric's scale (1-5 for the default), not multiplied."""
        return sum(d.weight * scores[d.key] for d in self.dimensions)


def _references_text(references: list[str]) -> str:
    return "\n".join(f"{i}. {r}" for i, r in enumerate(references, start=1))


def _check_template(text: Any, field: str, path: Path, allowed: tuple[str, ...], required: tuple[str, ...]) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"rubric '{path}': {field} must be a non-empty string")
    template = Template(text)
    names = {m.group("named") or m.group("braced") for m in template.pattern.finditer(text)} - {None}
    unknown = sorted(names - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"rubric '{path}': {field} uses unknown placeholder(s) {', '.join('${' + n + '}' for n in unknown)}; "
            f"allowed: {', '.join('${' + n + '}' for n in allowed)} (write $$ for a literal $)"
        )
    missing = [n for n in required if n not in names]
    if missing:
        raise InvalidInputError(
            f"rubric '{path}': {field} must contain {', '.join('${' + n + '}' for n in missing)}"
        )
    try:
        template.substitute({n: "" for n in allowed})
    except ValueError as exc:
        raise InvalidInputError(f"rubric '{path}': {field} is not a valid template ({exc}); write $$ for a $") from exc
    return text


def load_rubric(path: str | Path | None = None) -> Rubric:
    """Read and validate a rubric file.

    Args:
        path: The YAML file (default: :data:`DEFAULT_RUBRIC_PATH`).

    Returns:
        The rubric, with the sha256 of the file.

    Raises:
        InputNotFoundError: The file does not exist.
        InvalidInputError: It is not valid YAML, or a field is missing or malformed (named in the message).
    """
    path = Path(path).expanduser().resolve() if path is not None else DEFAULT_RUBRIC_PATH
    if not path.is_file():
        raise InputNotFoundError(
            f"rubric file not found: '{path}'. Pass --rubric with a YAML rubric (the default is "
            f"'{DEFAULT_RUBRIC_PATH}')"
        )
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"rubric '{path}' is not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"rubric '{path}': expected a mapping at the top level, found {type(data).__name__}")
    for key in ("name", "scale", "dimensions", "system", "template"):
        if key not in data:
            raise InvalidInputError(f"rubric '{path}' lacks '{key}' (found: {', '.join(sorted(map(str, data)))})")
    scale = data["scale"]
    if (not isinstance(scale, list) or len(scale) != 2 or not all(type(s) is int for s in scale)
            or scale[0] >= scale[1]):
        raise InvalidInputError(f"rubric '{path}': scale must be [low, high] integers with low < high, got {scale!r}")
    dims_raw = data["dimensions"]
    if not isinstance(dims_raw, list) or not dims_raw:
        raise InvalidInputError(f"rubric '{path}': dimensions must be a non-empty list")
    dims = []
    for i, item in enumerate(dims_raw):
        where = f"rubric '{path}' dimensions[{i}]"
        if not isinstance(item, dict) or not {"key", "weight", "description"} <= set(item):
            raise InvalidInputError(f"{where}: expected key, weight and description, found {item!r}")
        key, weight = item["key"], item["weight"]
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidInputError(f"{where}: key must be lower_snake_case, got {key!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise InvalidInputError(f"{where}: weight must be a positive number, got {weight!r}")
        dims.append(Dimension(key=key, weight=float(weight), description=str(item["description"]).strip()))
    keys = [d.key for d in dims]
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"rubric '{path}': duplicate dimension keys in {keys}")
    total = sum(d.weight for d in dims)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise InvalidInputError(f"rubric '{path}': the weights must sum to 1, they sum to {total!r}")
    pairwise = data.get("pairwise_template")
    rubric = Rubric(
        name=str(data["name"]),
        version=str(data.get("version", "")),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        scale=(scale[0], scale[1]),
        dimensions=tuple(dims),
        system=str(data["system"]).strip(),
        template=_check_template(data["template"], "template", path, _PLACEHOLDERS, ("prediction",)),
        pairwise_template=(
            None if pairwise is None
            else _check_template(pairwise, "pairwise_template", path, _PAIRWISE_PLACEHOLDERS, ("first", "second"))
        ),
    )
    return rubric
