"""Seeded per-sample sampling inside Hugging Face ``generate``.

``generate`` draws sampled tokens from one global random stream, so a caption would depend on the batch it sits
in. The family therefore always runs ``generate`` in greedy mode (``do_sample=False``, one beam) and, for sampled
decoding, appends :class:`SeededSampler` to the logits processors. At each step it takes the scores that
``generate``'s own processors left (repetition penalty included), applies temperature, top-k and top-p exactly as
``panollava.generation.sampling.filter_logits`` does, draws the row's token by inverting the row's cumulative
distribution at the row's own uniform for that step (``row_uniforms``: seeded by ``sample_seed(seed,
sample_id)``), and returns a one-hot score row (0 for the drawn token, -inf elsewhere), which greedy search then
picks. A row's tokens depend only on its own seed and scores: not on the batch size, the batch's other rows or the
world size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panollava.generation.sampling import filter_logits, row_uniforms, sample_from_logits
from panollava.generation.settings import DecodeSettings

__all__ = ["SeededSampler"]


class SeededSampler:
    """A ``LogitsProcessor`` that samples each row with its own seeded uniforms (see the module docstring).

    Args:
        settings: Temperature, top-k, top-p, seed and ``max_new_tokens``.
        sample_ids: The B rows' sample ids, in batch order.
        prompt_length: Length of the (left-padded) prompt: step ``t`` is ``input_ids.shape[1] - prompt_length``.
    """

    def __init__(self, settings: DecodeSettings, sample_ids: Sequence[str], prompt_length: int) -> None:
        self.settings = settings
        self.prompt_length = prompt_length
        self.uniforms = row_uniforms(settings.seed, list(sample_ids), settings.max_new_tokens, torch.device("cpu"))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """One-hot scores of the drawn tokens.

        Args:
            input_ids: ``(B, prompt_length + t)`` tokens so far.
            scores: ``(B, V)`` scores after ``generate``'s processors.

        Returns:
            ``(B, V)``: 0 at each row's drawn token, -inf elsewhere.
        """
        step = input_ids.shape[1] - self.prompt_length
        if not 0 <= step < self.uniforms.shape[1]:
            raise RuntimeError(f"sampling step {step} outside [0, {self.uniforms.shape[1]}): generate ran past max_new_tokens")
        filtered = filter_logits(scores.float(), self.settings)
        token = sample_from_logits(filtered, self.uniforms[:, step].to(scores.device))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, token[:, None], 0.0)
        return out
