"""The decode loop: prefill into a preallocated KV cache, then one token per step for the whole batch.

One owner for decoding (greedy, seeded sampling; beam search is left to ``generate`` by the caller). The cache is
``transformers.StaticCache`` (allocated once per batch at ``prompt + max_new_tokens`` slots), so a step writes one
slot in place instead of growing tensors. Attention masks are 2-D over all slots, also preallocated; a step only
sets its slot to 1. Position ids count real tokens (``models.vlm.position_ids_from_mask``), as ``generate`` does, so
left padding (plain path) and a gap between the image prefix and a shorter query suffix (shared path) give the
positions an unpadded prompt would have.

Opt-in compilation (``compile_decode``): the one-token decode step runs through ``torch.compile`` of the LM (mode
``reduce-overhead`` on CUDA, which records CUDA graphs; ``default`` elsewhere), with automatic dynamic shapes so
that a batch of another size recompiles once, not per size; prefills stay eager (their shapes change every batch).
The cache length is then rounded up to a multiple of :data:`COMPILED_SLOT_MULTIPLE` so that batches whose prompts
differ by a few tokens reuse one graph; the extra slots are masked out. The last cache is kept and reused (zeroed)
by the next batch of the same shape, since CUDA graphs are recorded against its addresses.

One dtype in the cache. Under ``--trainer.precision bf16-mixed`` (autocast) Qwen3's keys leave ``k_norm`` and the
rotary embedding in float32 while its values leave ``v_proj`` in bfloat16; a plain ``StaticCache`` would store them
so (transformers 5.24), and every decode step's attention would cast the whole float32 key cache to bfloat16 (a
copy per layer per step, undoing the no-copy attention of ``attention.py``); 5.17's allocates both in the keys'
dtype and fails on the first bfloat16 value. The cache here (:func:`one_dtype_static_cache`) stores
keys and values in one dtype, the autocast dtype when autocast is on (else the LM's): only the new token's
keys/values are cast when written, and the attention reads the cache tensors themselves. The numbers do not
change: autocast's attention cast the keys to that dtype anyway.

Stopping and failures. A row stops at any of the stop ids it is given (every ``eos_token_id`` of the LM's
generation config and the tokenizer's eos: Qwen3 ends on ``<|im_end|>`` and ``<|endoftext|>``). Those ids are
suppressed until ``min_new_tokens`` tokens are generated (Hugging Face's ``MinNewTokensLengthLogitsProcessor``).
Non-finite logits (NaN, inf) of a row still decoding raise :class:`NonFiniteLogitsError` naming its rows; they never
become a token.

Public transformers APIs only, for 5.0 and later: the cache keyword of a causal LM's ``forward`` was renamed from
``past_key_values`` to ``cache`` (5.2x); :class:`LanguageModelRunner` reads the signature once and passes the right
one. A peft ``PeftModel`` is unwrapped to its base model, whose layers carry the LoRA weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from panollava.errors import InvalidInputError
from panollava.evaluation.interrupt import check as check_stop
from panollava.generation.attention import register
from panollava.generation.sampling import apply_repetition_penalty, filter_logits, sample_from_logits
from panollava.generation.settings import DecodeSettings
from panollava.models.vlm import position_ids_from_mask
from panollava.schema import GenerationSettings

COMPILED_SLOT_MULTIPLE = 64
"""With ``compile_decode``, KV caches hold a multiple of this many slots (fewer distinct shapes to compile)."""


class NonFiniteLogitsError(InvalidInputError):
    """The language model gave non-finite logits (NaN or inf) for rows still decoding.

    Attributes:
        rows: The batch rows (samples) concerned.
        step: The new token being chosen when it happened (0 = the first).
    """

    def __init__(self, message: str, rows: Sequence[int], step: int) -> None:
        super().__init__(message)
        self.rows = [int(r) for r in rows]
        self.step = int(step)


def cache_dtype(model: nn.Module, device: torch.device) -> torch.dtype:
    """The one dtype of a KV cache on ``device``: autocast's when autocast is on there (``bf16-mixed``), else the
    model's parameters'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


@functools.cache
def _one_dtype_static_cache_class() -> type:
    from transformers import StaticCache

    class OneDtypeStaticCache(StaticCache):
        """A ``StaticCache`` that stores keys and values in one dtype (:attr:`storage_dtype`): what is written is
        cast first (one token per decode step), so the attention never has to cast the whole cache."""

        storage_dtype: torch.dtype

        def update(self, key_states, value_states, *args, **kwargs):
            dtype = self.storage_dtype
            return super().update(key_states.to(dtype), value_states.to(dtype), *args, **kwargs)

    return OneDtypeStaticCache


def one_dtype_static_cache(config, max_cache_len: int, dtype: torch.dtype):
    """An empty ``transformers.StaticCache`` of ``max_cache_len`` slots whose keys and values are stored in ``dtype``.

    Args:
        config: The LM's config.
        max_cache_len: Slots per row.
        dtype: The storage dtype (:func:`cache_dtype`).
    """
    cache = _one_dtype_static_cache_class()(config=config, max_cache_len=max_cache_len)
    cache.storage_dtype = dtype
    return cache


def compile_mode_for(device: torch.device) -> str:
    """The ``torch.compile`` mode of the decode step on ``device``: CUDA graphs on CUDA, plain inductor elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


class LanguageModelRunner:
    """Forward passes of a causal LM against an explicit KV cache, across transformers versions.

    Args:
        language_model: A transformers causal LM, possibly wrapped by peft.
        compile_decode: Run the one-token decode steps through ``torch.compile`` (built on the first step).
    """

    def __init__(self, language_model: nn.Module, compile_decode: bool = GenerationSettings.compile_decode) -> None:
        base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
        self.model = base
        self.config = base.config
        params = inspect.signature(base.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # one-token steps of an sdpa LM run through the GQA-folding attention (panollava.generation.attention)
        self.step_attention: str | None = None
        if getattr(self.config, "_attn_implementation", None) == "sdpa":
            self.step_attention = register()
        self.compile_decode = bool(compile_decode)
        self.compile_mode: str | None = None
        self._compiled: nn.Module | None = None
        self._kept_cache: tuple[tuple, object] | None = None
        self.caches_reused = 0
        self.last_cache_dtype: torch.dtype | None = None

    def cache_slots(self, needed: int) -> int:
        """Slots to allocate for ``needed`` (rounded up to :data:`COMPILED_SLOT_MULTIPLE` when compiling)."""
        if not self.compile_decode:
            return needed
        return -(-needed // COMPILED_SLOT_MULTIPLE) * COMPILED_SLOT_MULTIPLE

    def new_static_cache(self, max_cache_len: int, batch_size: int):
        """An empty ``StaticCache`` of ``max_cache_len`` slots for ``batch_size`` rows, in one dtype
        (:func:`cache_dtype`: call it inside the autocast that the forwards will run in).

        Eager: a new cache (tensors allocated on the first write). With ``compile_decode`` the last cache is kept
        and, when the next batch has the same shape, zeroed and reused: CUDA graphs are recorded against the
        cache's memory addresses, so a new cache per batch would mean recording again every batch.
        """
        device = next(self.model.parameters()).device
        dtype = cache_dtype(self.model, device)
        self.last_cache_dtype = dtype
        if not self.compile_decode:
            return one_dtype_static_cache(self.config, max_cache_len, dtype)
        key = (max_cache_len, batch_size, dtype, device)
        if self._kept_cache is not None and self._kept_cache[0] == key:
            cache = self._kept_cache[1]
            cache.reset()
            self.caches_reused += 1
            return cache
        self._kept_cache = None  # release the old one before allocating
        cache = one_dtype_static_cache(self.config, max_cache_len, dtype)
        self._kept_cache = (key, cache)
        return cache

    def release_cache(self) -> None:
        """Drop the kept cache (``compile_decode``), e.g. when generation is over or the weights change."""
        self._kept_cache = None

    def new_dynamic_cache(self):
        """A ``DynamicCache`` for a one-off prefill whose keys/values are then copied elsewhere."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def logits(
        self,
        cache,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        model: Callable | None = None,
    ) -> torch.Tensor:
        """Run the LM on new tokens appended to ``cache``; return the last position's logits.

        Args:
            cache: The KV cache that holds the earlier tokens (and receives these).
            attention_mask: (B, K) over all cache slots (K = the cache's length; 1 = real token), or None for a
                batch without padding and an empty cache (plain causal attention).
            position_ids: (B, Q) positions of the new tokens.
            inputs_embeds: (B, Q, hidden) new token embeddings, or
            input_ids: (B, Q) new token ids.
            model: What runs the forward (default the LM; :meth:`step_logits` passes the compiled LM).

        Returns:
            (B, vocab) float32 logits of the last new position (always a new tensor: a CUDA graph's outputs are
            overwritten by its next replay).
        """
        out = (self.model if model is None else model)(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1, :].to(torch.float32, copy=model is not None)

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """The one-token decode steps: an sdpa LM runs :attr:`step_attention` inside, its own attention after."""
        if self.step_attention is None:
            yield
            return
        config = self.config
        own = config._attn_implementation
        config._attn_implementation = self.step_attention
        try:
            yield
        finally:
            config._attn_implementation = own

    def step_logits(self, cache, attention_mask: torch.Tensor, position_ids: torch.Tensor, input_ids: torch.Tensor):
        """One decode step (``input_ids`` (B, 1), inside :meth:`decoding`): :meth:`logits`, compiled when
        ``compile_decode`` is on."""
        if not self.compile_decode:
            return self.logits(cache, attention_mask, position_ids, input_ids=input_ids)
        if self._compiled is None:
            self.compile_mode = compile_mode_for(input_ids.device)
            self._compiled = torch.compile(self.model, mode=self.compile_mode, dynamic=None, fullgraph=False)
        if input_ids.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return self.logits(cache, attention_mask, position_ids, input_ids=input_ids, model=self._compiled)


def copy_prefix_to_cache(source, target, rows: torch.Tensor) -> None:
    """Write a prefix's keys/values, repeated per row, into an empty cache.

    Args:
        source: The cache the prefixes were prefilled into (P rows, L slots).
        target: An empty (static) cache for B rows.
        rows: (B,) long, which source row each target row copies.
    """
    for layer_idx, layer in enumerate(source.layers):
        target.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), layer_idx, {})


@dataclass
class Prefilled:
    """The state after a prefill: the cache, its mask, where the next token goes.

    Attributes:
        cache: The static cache (B rows).
        attention_mask: (B, K) long over all K cache slots, 1 where a real token sits.
        next_slot: The slot the next token is written to.
        next_positions: (B,) the next token's position id per row.
        logits: (B, vocab) float32 logits of the last prompt token.
    """

    cache: object
    attention_mask: torch.Tensor
    next_slot: int
    next_positions: torch.Tensor
    logits: torch.Tensor


def prefill_plain(
    runner: LanguageModelRunner, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> Prefilled:
    """Prefill left-padded full prompts.

    Args:
        runner: The LM runner.
        embeds: (B, L, hidden) prompt embeddings (image features spliced in).
        attention_mask: (B, L) with 0 at the left padding.
        max_new_tokens: Slots to reserve after the prompt.

    Returns:
        The prefilled state.
    """
    b, length = attention_mask.shape
    slots = runner.cache_slots(length + max_new_tokens)
    mask = attention_mask.new_zeros((b, slots))
    mask[:, :length] = attention_mask
    cache = runner.new_static_cache(slots, b)
    logits = runner.logits(cache, mask, position_ids_from_mask(attention_mask), inputs_embeds=embeds)
    return Prefilled(cache, mask, length, attention_mask.sum(dim=1), logits)


def prefill_shared(
    runner: LanguageModelRunner,
    prefix_embeds: torch.Tensor,
    suffix_embeds: torch.Tensor,
    suffix_mask: torch.Tensor,
    rows: torch.Tensor,
    max_new_tokens: int,
) -> Prefilled:
    """Prefill each image prefix once, repeat its keys/values for its queries, then prefill the query suffixes.

    Slots hold ``[prefix | gap | suffix]`` per row: the suffixes are right-aligned (left-padded within their
    region) so that every row's last prompt token sits in the same slot; the gap is masked out and the suffix's
    positions continue right after the prefix.

    Args:
        runner: The LM runner.
        prefix_embeds: (P, Lp, hidden) one image prefix per panorama (same length: no padding).
        suffix_embeds: (B, Ls, hidden) query suffixes, left-padded.
        suffix_mask: (B, Ls) with 0 at the suffixes' padding.
        rows: (B,) long, the panorama (row of ``prefix_embeds``) of each sample.
        max_new_tokens: Slots to reserve after the prompt.

    Returns:
        The prefilled state.
    """
    p, prefix_len = prefix_embeds.shape[:2]
    b, suffix_len = suffix_mask.shape
    slots = runner.cache_slots(prefix_len + suffix_len + max_new_tokens)
    prefix_cache = runner.new_dynamic_cache()
    positions = torch.arange(prefix_len, device=prefix_embeds.device).unsqueeze(0).expand(p, prefix_len)
    runner.logits(prefix_cache, None, positions, inputs_embeds=prefix_embeds)
    cache = runner.new_static_cache(slots, b)
    copy_prefix_to_cache(prefix_cache, cache, rows)
    del prefix_cache
    mask = suffix_mask.new_zeros((b, slots))
    mask[:, :prefix_len] = 1
    mask[:, prefix_len : prefix_len + suffix_len] = suffix_mask
    prompt_mask = mask[:, : prefix_len + suffix_len]
    suffix_positions = position_ids_from_mask(prompt_mask)[:, prefix_len:]
    logits = runner.logits(cache, mask, suffix_positions, inputs_embeds=suffix_embeds)
    return Prefilled(cache, mask, prefix_len + suffix_len, prompt_mask.sum(dim=1), logits)


def decode(
    runner: LanguageModelRunner,
    state: Prefilled,
    settings: DecodeSettings,
    eos_token_ids: int | Sequence[int],
    pad_token_id: int,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Greedy or sampled decoding of all rows together, until every row has emitted eos or the limit is reached.

    Per step, as ``generate`` orders its processors: repetition penalty (tokens generated so far), the stop ids
    set to -inf while fewer than ``min_new_tokens`` tokens exist, then temperature / top-k / top-p when sampling.

    Args:
        runner: The LM runner.
        state: The prefilled state (updated in place).
        settings: Decoding settings (``do_sample``, processors, ``min_new_tokens``, ``max_new_tokens``).
        eos_token_ids: The stop id(s); a row stops after emitting any of them.
        pad_token_id: Written after a row's eos (as ``generate`` does).
        uniforms: (B, max_new_tokens) float64 per-row uniforms, required when sampling.

    Returns:
        (new tokens (B, T) long, T ≤ max_new_tokens; number of decode forward passes run).

    Raises:
        NonFiniteLogitsError: a row still decoding got NaN or inf logits (its rows and the step are attached).
    """
    logits = state.logits
    b, vocab = logits.shape
    device = logits.device
    steps = settings.max_new_tokens
    ids = [int(eos_token_ids)] if isinstance(eos_token_ids, int) else sorted({int(i) for i in eos_token_ids})
    stop_ids = torch.tensor(ids, dtype=torch.long, device=device)
    tokens = torch.full((b, steps), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    seen = torch.zeros((b, vocab), dtype=torch.bool, device=device) if settings.repetition_penalty != 1.0 else None
    positions = state.next_positions.clone()
    forwards = 0
    with runner.decoding():
        for t in range(steps):
            check_stop()  # SIGTERM: stop within one decode step (panollava.evaluation.interrupt)
            broken = ~torch.isfinite(logits).all(dim=-1) & ~finished
            scores = logits
            if seen is not None:
                scores = apply_repetition_penalty(scores, seen, settings.repetition_penalty)
            if t < settings.min_new_tokens:
                scores = scores.index_fill(1, stop_ids, float("-inf"))
            if settings.do_sample:
                if uniforms is None:
                    raise ValueError("sampling needs per-row uniforms")
                token = sample_from_logits(filter_logits(scores, settings), uniforms[:, t])
            else:
                token = scores.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            tokens[:, t] = token
            finished |= torch.isin(token, stop_ids)
            if seen is not None:
                seen.scatter_(1, token.unsqueeze(1), True)
            all_finished, any_broken = torch.stack((finished.all(), broken.any())).tolist()  # one sync per step
            if any_broken:
                rows = broken.nonzero().flatten().tolist()
                raise NonFiniteLogitsError(
                    f"non-finite logits (NaN or inf) for batch row(s) {rows} at new token {t}", rows, t
                )
            if t == steps - 1 or all_finished:
                return tokens[:, : t + 1], forwards
            slot = state.next_slot
            state.attention_mask[:, slot] = 1
            logits = runner.step_logits(
                state.cache, state.attention_mask, positions.unsqueeze(1), token.unsqueeze(1)
            )
            forwards += 1
            state.next_slot = slot + 1
            positions += 1
        return tokens, forwards
