"""Decode-step attention without copying the KV cache per query head (grouped-query attention, one new token).

Qwen3 uses grouped-query attention: ``H`` query heads share ``KVH`` key/value heads (0.6B: 16 and 8). Hugging Face's
``sdpa`` attention passes ``enable_gqa`` to PyTorch only when there is no attention mask; with a mask (every
decode step of a padded batch) it calls ``repeat_kv``, which copies the whole key and value cache ``H / KVH``
times, in every layer, at every step. transformers 5.24 avoids the copy for a single query token in eager mode
(``pack_gqa``), but not under ``torch.compile``, and 5.17 (the release on our GPU machines) not at all. Decoding is
bound by reading that cache, so the copy multiplies the bytes moved per step.

:func:`gqa_decode_attention` is ``sdpa`` with one change: for one query token, a mask, and ``H > KVH``, the query
heads of a group are folded into the query-length axis, ``(B, H, 1, D)`` → ``(B, KVH, H/KVH, D)``, and SDPA runs on
the key/value heads as they are; the output is unfolded. Each query row meets exactly the keys, values and mask it
met before. Everything else (prefill, no GQA, no mask, position bias) goes to transformers' ``sdpa`` unchanged.

It is registered under :data:`GQA_DECODE_ATTENTION` (with transformers' ``sdpa`` mask), and the decode loop uses it
for its one-token steps only (:class:`panollava.generation.decode.LanguageModelRunner`), so training and prefill
run the model's own attention.
"""

from __future__ import annotations

import torch

GQA_DECODE_ATTENTION = "panollava_sdpa_gqa_decode"
"""The name :func:`register` gives :func:`gqa_decode_attention` in transformers' attention registries."""

_registered = False


def gqa_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: ``(B, Q, H, D)`` output and no weights.

    Args:
        module: The attention layer (``num_key_value_groups`` = H / KVH).
        query: (B, H, Q, D).
        key: (B, KVH, K, D) (the cache's keys).
        value: (B, KVH, K, D).
        attention_mask: (B, 1 or H, Q, K) boolean or additive, or None.
        dropout: Dropout probability (0 in evaluation).
        scaling: Softmax scale.
        is_causal: Passed on to ``sdpa`` when delegating.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    batch, heads, q_length, dim = query.shape
    if (
        q_length != 1
        or groups == 1
        or attention_mask is None
        or dropout
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("output_attentions")
        or value.shape[-1] != dim
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    kv_heads = heads // groups
    folded = query.reshape(batch, kv_heads, groups, dim)  # head h = kv_head * groups + i, as repeat_kv pairs them
    mask = attention_mask
    if mask.shape[1] != 1:  # a per-head mask: fold it the same way
        mask = mask.reshape(mask.shape[0], kv_heads, groups, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(out.shape[0], heads, 1, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`gqa_decode_attention` (once per process); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(GQA_DECODE_ATTENTION, gqa_decode_attention)
        AttentionMaskInterface.register(GQA_DECODE_ATTENTION, sdpa_mask)
        _registered = True
    return GQA_DECODE_ATTENTION
