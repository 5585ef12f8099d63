"""Decoding settings and the per-sample seed.

:class:`DecodeSettings` is :class:`panollava.schema.GenerationSettings` without its generator options
(``share_prefix``, ``compile_decode``: choices of the generator, not of the decoding): its fields, types, defaults
and docs are generated from the schema, and its values are checked with the schema's validation
(:func:`panollava.schema.check_settings`), so the decode loop accepts exactly what ``--model.generation.*``
accepts. :func:`sample_seed` derives each sample's sampling seed
from the run's ``seed`` and the sample's own id, so a sampled caption does not depend on the batch size, the
world size or a resume. :func:`check_positions` refuses a prompt + ``max_new_tokens`` that the language model has no
positions for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, field, fields, make_dataclass
from typing import Any

from panollava.errors import InvalidInputError
from panollava.schema import GENERATION_COMPUTE_OPTIONS, GenerationSettings, args_doc, check_settings


class _DecodeMethods:
    """Validation and conversions of :class:`DecodeSettings` (its fields come from the schema)."""

    def __post_init__(self) -> None:
        checked = check_settings(asdict(self), "decoding settings", describe=lambda k: f"--model.generation.{k}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # normalised: 1 → 1.0 where the schema says float
        if self.min_new_tokens > self.max_new_tokens:
            raise InvalidInputError(
                f"min_new_tokens {self.min_new_tokens} is above max_new_tokens {self.max_new_tokens}: no caption "
                "could end before the limit; lower --min_new_tokens or raise --max_new_tokens"
            )
        if self.num_beams > 1 and self.do_sample:
            raise InvalidInputError(
                f"num_beams {self.num_beams} with do_sample true is not supported: sampled captions are seeded per "
                "sample by panollava's decode loop, which does not run beam search; set --model.generation.num_beams 1 "
                "or --model.generation.do_sample false"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DecodeSettings:
        """Settings from a dict such as the module's ``generation`` hparams; unknown keys and None are ignored.

        Args:
            values: Any mapping; missing keys take the defaults.

        Returns:
            The settings, with values converted to the field types (``"16"`` → 16, ``1`` → True).

        Raises:
            InvalidInputError: a value does not fit the schema; the message names its ``--model.generation`` flag.
        """
        values = dict(values or {})
        return cls(**{
            f.name: bool(values[f.name]) if isinstance(f.default, bool) else values[f.name]
            for f in fields(cls) if values.get(f.name) is not None
        })

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values."""
        return asdict(self)


_FIELDS = [f for f in fields(GenerationSettings) if f.name not in GENERATION_COMPUTE_OPTIONS]
DecodeSettings = make_dataclass(
    "DecodeSettings",
    [(f.name, f.type, field(default=f.default)) for f in _FIELDS],
    bases=(_DecodeMethods,),
    frozen=True,
)
DecodeSettings.__module__ = __name__  # pickling and reprs name this module
DecodeSettings.__doc__ = "How captions are decoded (frozen).\n\n    Args:\n" + args_doc(
    GenerationSettings, tuple(f.name for f in _FIELDS)
)


def sample_seed(seed: int, sample_id: str) -> int:
    """The sampling seed of one sample: 63 bits of sha256(``seed``, ``sample_id``).

    Args:
        seed: The run's seed.
        sample_id: The sample's stable id (from the CSV).

    Returns:
        A non-negative int below 2**63, the same on every machine and run.
    """
    digest = hashlib.sha256(f"{int(seed)}\x1f{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def check_positions(
    max_new_tokens: int, longest_prompt_tokens: int, max_positions: int | None, where: str = "decoding"
) -> None:
    """Refuse a decoding whose prompt and new tokens need more positions than the language model has.

    A prompt of ``L`` tokens followed by ``max_new_tokens`` new ones occupies positions ``0 .. L + max_new_tokens
    - 1``; the KV cache is allocated for all of them up front. Beyond the LM's ``max_position_embeddings`` the
    rotary positions were never trained (and a huge ``max_new_tokens`` allocates a huge cache), so this is an
    error, raised before anything is allocated.

    Args:
        max_new_tokens: The decoding's ``max_new_tokens``.
        longest_prompt_tokens: The longest prompt in tokens (a lower bound when the prompts are not known yet).
        max_positions: The LM config's ``max_position_embeddings`` (None: unknown, nothing is checked).
        where: What is checked, for the message (``sample 'abc' (query ...)``, ``--max_new_tokens``).

    Raises:
        InvalidInputError: ``longest_prompt_tokens + max_new_tokens > max_positions``; the message gives the
            largest ``max_new_tokens`` that fits.
    """
    if max_positions is None:
        return
    needed = int(longest_prompt_tokens) + int(max_new_tokens)
    if needed <= int(max_positions):
        return
    room = int(max_positions) - int(longest_prompt_tokens)
    fix = (
        f"lower --max_new_tokens to at most {room}" if room > 0
        else "the prompt alone is too long: use fewer views or a shorter query / prompt template"
    )
    raise InvalidInputError(
        f"{where}: the prompt ({longest_prompt_tokens} tokens) + max_new_tokens {max_new_tokens} = {needed} "
        f"positions, but the language model has max_position_embeddings {max_positions}; {fix}"
    )
