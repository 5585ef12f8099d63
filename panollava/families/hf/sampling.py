"""Per-sample token choice inside Hugging Face ``generate``: the repetition penalty and seeded sampling.

``generate`` draws sampled tokens from one global random stream, so a caption would depend on the batch it sits
in. The family therefore always runs ``generate`` in greedy mode (``do_sample=False``) and appends
:class:`TokenChooser` to the logits processors. At each step it takes the scores that ``generate`` computed and:

1. applies the repetition penalty to the tokens *generated so far* in the row (as panollava's decode loop and
   the schema define it: ``generate``'s own processor would also penalise every prompt token, image placeholders
   included, because the prompt sits in ``input_ids``);
2. when sampling: applies temperature, top-k and top-p exactly as ``panollava.generation.sampling.filter_logits``
   does, draws the row's token by inverting the row's cumulative distribution at the row's own uniform for that
   step (``row_uniforms``, seeded by ``sample_seed(seed, sample_id)``), and returns a one-hot score row (0 for the
   drawn token, -inf elsewhere), which greedy search then picks.

A row's tokens depend only on its own seed and scores: not on the batch size, the batch's other rows or the world
size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panollava.generation.sampling import apply_repetition_penalty, filter_logits, row_uniforms, sample_from_logits
from panollava.generation.settings import DecodeSettings

__all__ = ["TokenChooser"]


class TokenChooser:
    """A ``LogitsProcessor``: repetition penalty on generated tokens, then seeded sampling (module docstring).

    Args:
        settings: Repetition penalty, sampling switch, temperature, top-k, top-p, seed and ``max_new_tokens``.
        sample_ids: The B rows' sample ids, in batch order (used when sampling).
        prompt_length: Length of the (left-padded) prompt: step ``t`` is ``input_ids.shape[1] - prompt_length``.
    """

    def __init__(self, settings: DecodeSettings, sample_ids: Sequence[str], prompt_length: int) -> None:
        self.settings = settings
        self.prompt_length = prompt_length
        self.uniforms = (
            row_uniforms(settings.seed, list(sample_ids), settings.max_new_tokens, torch.device("cpu"))
            if settings.do_sample else None
        )

    @staticmethod
    def needed(settings: DecodeSettings) -> bool:
        """Whether ``generate`` needs this processor (sampling, or a repetition penalty)."""
        return settings.do_sample or settings.repetition_penalty != 1.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """The row scores greedy search picks from.

        Args:
            input_ids: ``(rows, prompt_length + t)`` tokens so far (rows: B, or B x beams).
            scores: ``(rows, V)`` scores from ``generate``.

        Returns:
            ``(rows, V)``: the penalised scores, or (sampling) 0 at each row's drawn token and -inf elsewhere.
        """
        step = input_ids.shape[1] - self.prompt_length
        if step < 0 or step >= self.settings.max_new_tokens:
            raise RuntimeError(f"decode step {step} outside [0, {self.settings.max_new_tokens}): "
                               "generate ran past max_new_tokens")
        if self.settings.repetition_penalty != 1.0 and step > 0:
            seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            seen.scatter_(1, input_ids[:, self.prompt_length:].to(scores.device), True)
            scores = apply_repetition_penalty(scores, seen, self.settings.repetition_penalty)
        if self.uniforms is None:
            return scores
        filtered = filter_logits(scores.float(), self.settings)
        token = sample_from_logits(filtered, self.uniforms[:, step].to(scores.device))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, token[:, None], 0.0)
        return out
