"""Per-row token choice for the decode loop: Hugging Face's logits processors and seeded sampling.

The processors follow ``transformers``' definitions (``RepetitionPenaltyLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``, in that order, as ``generate`` applies
them). ``generate`` cannot give each row of a batch its own random generator, so sampling is done here: each row
draws its uniforms from its own CPU generator seeded by :func:`~panollava.generation.settings.sample_seed`, all
``max_new_tokens`` of them up front, and a token is chosen by inverting the row's cumulative distribution. A row's
tokens therefore depend only on its own seed and logits, never on the batch it sits in or on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panollava.generation.settings import DecodeSettings, sample_seed


def row_uniforms(seed: int, sample_ids: Sequence[str], steps: int, device: torch.device) -> torch.Tensor:
    """The uniforms each row samples with: row i's come from its own generator seeded by its sample id.

    Args:
        seed: The run's seed.
        sample_ids: B sample ids.
        steps: Draws per row (``max_new_tokens``).
        device: Where the result goes.

    Returns:
        (B, steps) float64 in [0, 1).
    """
    rows = []
    for sid in sample_ids:
        generator = torch.Generator(device="cpu").manual_seed(sample_seed(seed, sid))
        rows.append(torch.rand(steps, generator=generator, dtype=torch.float64))
    return torch.stack(rows).to(device)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's repetition penalty: seen tokens' logits divided (if > 0) or multiplied (if < 0) by ``penalty``.

    Args:
        logits: (B, V) float.
        seen: (B, V) bool, True for tokens generated so far in that row.
        penalty: The penalty (1.0 = unchanged).

    Returns:
        (B, V) new logits.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, settings: DecodeSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as ``generate`` applies them when sampling (removed tokens get -inf).

    Args:
        logits: (B, V) float32.
        settings: Supplies temperature, top_k (0 = off) and top_p (1.0 = off).

    Returns:
        (B, V) filtered logits.
    """
    if settings.temperature != 1.0:
        logits = logits / settings.temperature
    if settings.top_k > 0:
        k = min(settings.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - settings.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Choose one token per row by inverting the row's cumulative distribution at its uniform.

    Args:
        logits: (B, V) filtered logits (-inf for removed tokens).
        uniforms: (B,) float64 in [0, 1).

    Returns:
        (B,) long token ids; a token with probability 0 is never chosen.
    """
    probs = logits.float().softmax(dim=-1).double()
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return token.clamp_(max=logits.shape[-1] - 1)
