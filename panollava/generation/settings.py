"""Decoding settings and the per-sample seed.

:class:`DecodeSettings` is the one declaration of how captions are decoded (the module's ``generation`` hparams
and the CLI's decoding flags map onto its fields). :func:`sample_seed` derives each sample's sampling seed from the
run's ``seed`` and the sample's own id, so a sampled caption does not depend on the batch size, the world size or a
resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from panollava.errors import InvalidInputError


@dataclass(frozen=True)
class DecodeSettings:
    """How captions are decoded.

    Attributes:
        max_new_tokens: Most tokens generated per caption (the end-of-turn token included).
        num_beams: Beam width; > 1 runs Hugging Face ``generate``'s beam search on the plain path.
        do_sample: Sample (seeded per sample) instead of greedy decoding.
        temperature: Softmax temperature when sampling.
        top_p: Nucleus sampling mass (1.0 = off).
        top_k: Keep only the k most likely tokens when sampling (0 = off).
        repetition_penalty: Hugging Face's repetition penalty on the tokens generated so far (1.0 = off).
        seed: Run seed; each sample samples from ``sample_seed(seed, sample_id)``.
    """

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "a positive integer"),
            ("num_beams", self.num_beams >= 1, "a positive integer"),
            ("temperature", self.temperature > 0, "a positive number"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= 0, "0 (off) or a positive integer"),
            ("repetition_penalty", self.repetition_penalty > 0, "a positive number"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise InvalidInputError(
                    f"decoding setting {name} must be {what}, got {getattr(self, name)!r} (--model.generation.{name})"
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
            The settings, with values converted to the field types.
        """
        values = dict(values or {})
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if values.get(f.name) is None:
                continue
            value = values[f.name]
            kwargs[f.name] = bool(value) if f.type in (bool, "bool") else type(getattr(cls, f.name))(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values."""
        return asdict(self)


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
