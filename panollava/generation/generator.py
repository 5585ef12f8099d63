"""``CaptionGenerator``: captions for an evaluation batch with one vision pass and one image prefix per panorama.

An evaluation batch holds the unique panoramas of its samples (``pixel_values`` (P, V, 3, H, W) and
``panorama_index`` (B,)); training/validation batches (each sample its own ``pixel_values`` row) work too. Per batch:

1. **Vision once per panorama.** The vision tower, resampler and projector run on the P panoramas; when the first
   panorama of a batch is the last one of the previous batch (``panorama_key`` repeats: a panorama with more
   queries than a batch holds), its features are carried over instead of recomputed.
2. **Shared image prefix** (``share_prefix=True``). A prompt is ``[chat-template system part + image tokens]`` then
   ``[query text + assistant opening]``. The prefix is prefilled once per panorama, its KV cache repeated for that
   panorama's queries, and the suffixes prefilled after it. When the tokens before the image differ between the
   batch's prompts (a template that puts query text there), the batch falls back to the plain path and the reason
   is logged once.
3. **Plain path** (``share_prefix=False`` or fallback): full left-padded prompts prefilled per sample.
4. **Decode** (``panollava.generation.decode``): greedy or seeded sampling in one loop over a preallocated cache,
   optionally compiled (``compile_decode``); beam search (``num_beams > 1``) goes through Hugging Face ``generate``
   on the plain path (never compiled).

Before anything is computed, prompt + ``max_new_tokens`` is checked against the LM's ``max_position_embeddings``
(:func:`~panollava.generation.settings.check_positions`): at construction with the shortest possible prompt, per
batch with its longest. A sample whose logits turn NaN or inf is an error that names it, never a caption.

On CPU fp32 the shared and plain paths, and any batch size, give the same captions (tests/test_generation.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from panollava.errors import InvalidInputError
from panollava.generation.decode import (
    LanguageModelRunner,
    NonFiniteLogitsError,
    compile_mode_for,
    decode,
    prefill_plain,
    prefill_shared,
)
from panollava.generation.sampling import row_uniforms
from panollava.generation.settings import DecodeSettings, check_positions
from panollava.schema import GenerationSettings

logger = logging.getLogger(__name__)

PATH_SHARED = "shared_prefix"
PATH_PLAIN = "plain"
PATH_BEAM = "beam_search"
KV_STATIC = "static (transformers.StaticCache, preallocated per batch)"
KV_STATIC_KEPT = "static (transformers.StaticCache, preallocated; reused by the next batch of the same shape)"
KV_GENERATE = "dynamic (transformers generate)"


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def stop_token_ids(language_model, tokenizer) -> tuple[int, ...]:
    """Every id that ends a caption: the ``eos_token_id`` (one or a list) of the LM's generation config and the
    tokenizer's eos (Qwen3's generation config: ``<|im_end|>`` and ``<|endoftext|>``).

    Args:
        language_model: The causal LM (peft-wrapped or not).
        tokenizer: Its tokenizer.

    Returns:
        The sorted distinct ids.

    Raises:
        InvalidInputError: neither names an end-of-sequence token.
    """
    config = getattr(language_model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None) if config is not None else None
    if configured is None:
        configured = []
    elif isinstance(configured, int):
        configured = [configured]
    ids = {int(i) for i in configured}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise InvalidInputError(
            "neither the language model's generation config nor the tokenizer names an end-of-sequence token "
            "(eos_token_id): captions could never end; use a tokenizer with an eos token"
        )
    return tuple(sorted(ids))


class CaptionGenerator:
    """Generates one caption per sample of a batch.

    Args:
        vlm: The :class:`~panollava.models.vlm.PanoramicVLM`.
        prompts: The :class:`~panollava.data.prompts.PromptEncoder` (tokenizer, template, image token).
        settings: Decoding settings.
        share_prefix: Prefill the image prefix once per panorama (falls back to the plain path, with one log line,
            when the prompts' text before the image differs).
        compile_decode: Run the decode steps through ``torch.compile`` (CUDA graphs on a GPU; see
            :mod:`panollava.generation.decode`).
        profile: Accumulate per-stage wall times (vision, prefill, decode) in :attr:`timings`, synchronising the
            device at stage boundaries (slower; for benchmarks).
    """

    def __init__(
        self,
        vlm,
        prompts,
        settings: DecodeSettings,
        share_prefix: bool = GenerationSettings.share_prefix,
        compile_decode: bool = GenerationSettings.compile_decode,
        profile: bool = False,
    ) -> None:
        self.vlm = vlm
        self.prompts = prompts
        self.tokenizer = prompts.tokenizer
        self.settings = settings
        self.share_prefix = bool(share_prefix)
        if compile_decode and settings.num_beams > 1:
            logger.warning(
                "compile_decode has no effect with num_beams %d: beam search runs through Hugging Face generate, "
                "uncompiled", settings.num_beams
            )
            compile_decode = False
        self.runner = LanguageModelRunner(vlm.language_model, compile_decode=compile_decode)
        self.eos_token_ids = stop_token_ids(self.runner.model, self.tokenizer)
        eos = self.tokenizer.eos_token_id
        self.eos_token_id = int(eos if eos is not None else self.eos_token_ids[0])
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_id)
        positions = getattr(self.runner.config, "max_position_embeddings", None)
        self.max_positions = int(positions) if positions is not None else None
        check_positions(
            settings.max_new_tokens, prompts.min_prompt_tokens(), self.max_positions,
            where="--max_new_tokens (with the shortest prompt this template makes)",
        )
        self._carry: tuple[str, torch.Tensor] | None = None
        self._fallback_reason: str | None = None
        self._paths: set[str] = set()
        self.profile = bool(profile)
        self.timings: dict[str, float] = {"vision_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0}
        self.stats: dict[str, int] = {
            "batches": 0,
            "samples": 0,
            "vision_calls": 0,
            "panoramas_encoded": 0,
            "panoramas_carried_over": 0,
            "prefix_prefills": 0,
            "prefill_calls": 0,
            "decode_forwards": 0,
            "shared_batches": 0,
            "plain_batches": 0,
            "beam_batches": 0,
        }

    def reset(self) -> None:
        """Forget the carried-over panorama features (and release a kept KV cache): call when the weights change
        (a new validation epoch) or when an evaluation is over."""
        self._carry = None
        self.runner.release_cache()

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        device = self.vlm.projector.weight.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings[name] += time.perf_counter() - start

    # -- provenance -----------------------------------------------------------------------------------------------
    def _requested_path(self) -> str:
        if self.settings.num_beams > 1:
            return PATH_BEAM
        return PATH_SHARED if self.share_prefix else PATH_PLAIN

    def describe(self) -> dict[str, Any]:
        """The decoding that ran (or will run, before the first batch): settings, path, KV cache, seeding."""
        paths = self._paths or {self._requested_path()}
        path = PATH_BEAM if PATH_BEAM in paths else (PATH_PLAIN if PATH_PLAIN in paths else PATH_SHARED)
        info: dict[str, Any] = {
            **self.settings.to_dict(),
            "path": path,
            "share_prefix": self.share_prefix,
            "compile_decode": self.runner.compile_decode,
            "attention": self._attention_description(path),
            "kv_cache": self._kv_cache_description(path),
            "kv_cache_dtype": _dtype_name(self.runner.last_cache_dtype) if path != PATH_BEAM else None,
            "eos_token_id": self.eos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "max_position_embeddings": self.max_positions,
            "seeding": "per sample: sample_seed(seed, sample_id)" if self.settings.do_sample else "none (deterministic)",
        }
        if self.runner.compile_decode and path != PATH_BEAM:
            info["compile_mode"] = self.runner.compile_mode or compile_mode_for(self.vlm.projector.weight.device)
        if self.share_prefix and self._fallback_reason is not None:
            info["fallback_reason"] = self._fallback_reason
        return info

    def _kv_cache_description(self, path: str) -> str:
        if path == PATH_BEAM:
            return KV_GENERATE
        return KV_STATIC_KEPT if self.runner.compile_decode else KV_STATIC

    def _attention_description(self, path: str) -> str:
        own = str(self.runner.config._attn_implementation)
        if self.runner.step_attention is None or path == PATH_BEAM:
            return own
        return f"{own}; one-token decode steps: {self.runner.step_attention} (grouped-query heads folded, no KV copy)"

    # -- vision ---------------------------------------------------------------------------------------------------
    def image_features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected image features once per panorama of the batch.

        Args:
            batch: With ``pixel_values`` (P, V, 3, H, W) and ``panorama_index`` (B,) (evaluation batches), or
                ``pixel_values`` (B, V, 3, H, W) alone (each sample its own panorama). ``panorama_key`` (P,) lets
                the last panorama's features carry over to the next batch.

        Returns:
            (features (P, N, hidden), panorama_index (B,) long on the model's device).
        """
        pixel_values = batch["pixel_values"]
        num = len(batch["query"])
        index = batch.get("panorama_index")
        if index is None:
            index = torch.arange(num)
        device = self.vlm.projector.weight.device
        index = torch.as_tensor(index, dtype=torch.long).to(device)
        p = pixel_values.shape[0]
        if index.numel() != num or (num and (int(index.min()) < 0 or int(index.max()) >= p)):
            raise InvalidInputError(
                f"batch panorama_index {index.tolist()} does not index its {p} panoramas for {num} samples"
            )
        keys = batch.get("panorama_key")
        carried = None
        if keys and self._carry is not None and self._carry[0] == keys[0]:
            carried = self._carry[1]
        todo = pixel_values[1:] if carried is not None else pixel_values
        parts = [carried.unsqueeze(0)] if carried is not None else []
        if todo.shape[0]:
            parts.append(self.vlm.get_image_features(todo.to(device)))
            self.stats["vision_calls"] += 1
            self.stats["panoramas_encoded"] += int(todo.shape[0])
        if carried is not None:
            self.stats["panoramas_carried_over"] += 1
        features = parts[0] if len(parts) == 1 else torch.cat(parts)
        self._carry = (keys[-1], features[-1].clone()) if keys else None
        return features, index

    # -- prompts --------------------------------------------------------------------------------------------------
    def _split_prompts(self, queries: list[str], num_image_tokens: int) -> tuple[list[int], list[list[int]]] | str:
        """(shared prefix ids, suffix ids per query), or the reason they cannot be split."""
        image_id = self.prompts.image_token_id
        prefix: list[int] | None = None
        suffixes = []
        for query in queries:
            ids = self.prompts.prompt_ids(query, num_image_tokens)
            start = ids.index(image_id)
            end = start + num_image_tokens
            if prefix is None:
                prefix = ids[:end]
            elif ids[:end] != prefix:
                return (
                    f"the prompt tokens before the image differ between queries ({queries[0]!r} vs {query!r}): the "
                    "prompt template or chat template puts query-dependent text before the image"
                )
            suffixes.append(ids[end:])
        assert prefix is not None
        return prefix, suffixes

    def _fallback(self, reason: str) -> None:
        if self._fallback_reason is None:
            logger.warning("prefix sharing is off for this evaluation's batches: %s; using the plain path", reason)
        self._fallback_reason = reason

    # -- generation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """One caption per sample, in batch order.

        Args:
            batch: An evaluation batch (see :meth:`image_features`) with ``query`` (B) and, for sampling,
                ``sample_id`` (B).

        Returns:
            B captions (special tokens removed, whitespace stripped).
        """
        queries = list(batch["query"])
        if not queries:
            return []
        pv = batch["pixel_values"]
        num_image_tokens = self.vlm.num_image_tokens(pv.shape[1], tuple(pv.shape[-2:]))
        self._check_positions(batch, queries, num_image_tokens)
        with self._stage("vision_s"):
            features, index = self.image_features(batch)
        try:
            tokens = self._generate_tokens(batch, queries, features, index, num_image_tokens)
        except NonFiniteLogitsError as exc:
            raise NonFiniteLogitsError(self._non_finite_message(batch, exc), exc.rows, exc.step) from None
        return [t.strip() for t in self.tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)]

    def _check_positions(self, batch: dict[str, Any], queries: list[str], num_image_tokens: int) -> None:
        """The batch's longest prompt + ``max_new_tokens`` against the LM's positions, before any prefill."""
        if self.max_positions is None:
            return
        lengths = [len(self.prompts.prompt_ids(q, num_image_tokens)) for q in queries]
        row = max(range(len(lengths)), key=lengths.__getitem__)
        check_positions(
            self.settings.max_new_tokens, lengths[row], self.max_positions,
            where=f"{self._sample_name(batch, row)} ({num_image_tokens} image tokens)",
        )

    @staticmethod
    def _sample_name(batch: dict[str, Any], row: int) -> str:
        parts = []
        if batch.get("sample_id") is not None:
            parts.append(f"sample {batch['sample_id'][row]!r}")
        parts.append(f"query {batch['query'][row]!r}")
        if batch.get("image_path") is not None:
            parts.append(f"image '{batch['image_path'][row]}'")
        return ", ".join(parts)

    def _non_finite_message(self, batch: dict[str, Any], exc: NonFiniteLogitsError) -> str:
        shown = "; ".join(self._sample_name(batch, r) for r in exc.rows[:5])
        more = f" and {len(exc.rows) - 5} more" if len(exc.rows) > 5 else ""
        return (
            f"the language model gave non-finite logits (NaN or inf) at new token {exc.step} for {len(exc.rows)} "
            f"sample(s): {shown}{more}; no caption is made from them. Usual causes: NaN/inf in the checkpoint's "
            "weights or in the image, or an overflow in reduced precision (--trainer.precision 16-mixed: try "
            "bf16-mixed or 32-true)"
        )

    def _generate_tokens(
        self, batch: dict[str, Any], queries: list[str], features: torch.Tensor, index: torch.Tensor,
        num_image_tokens: int,
    ) -> torch.Tensor:
        """The new token ids (B, T) of the batch, on the beam, shared-prefix or plain path."""
        self.stats["batches"] += 1
        self.stats["samples"] += len(queries)
        if self.settings.num_beams > 1:
            with self._stage("decode_s"):
                tokens = self._beam_search(queries, features, index, num_image_tokens)
            self._paths.add(PATH_BEAM)
            self.stats["beam_batches"] += 1
        else:
            split = self._split_prompts(queries, num_image_tokens) if self.share_prefix else None
            if isinstance(split, str):
                self._fallback(split)
                split = None
            with self._stage("prefill_s"):
                if split is not None:
                    state = self._prefill_shared(split[0], split[1], features, index)
                    self._paths.add(PATH_SHARED)
                    self.stats["shared_batches"] += 1
                else:
                    state = self._prefill_plain(queries, features, index, num_image_tokens)
                    self._paths.add(PATH_PLAIN)
                    self.stats["plain_batches"] += 1
            uniforms = None
            if self.settings.do_sample:
                uniforms = row_uniforms(
                    self.settings.seed, list(batch["sample_id"]), self.settings.max_new_tokens, state.logits.device
                )
            with self._stage("decode_s"):
                tokens, forwards = decode(
                    self.runner, state, self.settings, self.eos_token_ids, self.pad_token_id, uniforms
                )
            self.stats["decode_forwards"] += forwards
        return tokens

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vlm.language_model.get_input_embeddings()(ids)

    def _prefill_plain(self, queries: list[str], features: torch.Tensor, index: torch.Tensor, num_image_tokens: int):
        device = features.device
        enc = self.prompts.encode(queries, num_image_tokens)
        input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        embeds = self.vlm.embed_inputs(input_ids, features.index_select(0, index))
        self.stats["prefill_calls"] += 1
        return prefill_plain(self.runner, embeds, mask, self.settings.max_new_tokens)

    def _prefill_shared(
        self, prefix: list[int], suffixes: list[list[int]], features: torch.Tensor, index: torch.Tensor
    ):
        device = features.device
        p = features.shape[0]
        prefix_ids = torch.tensor(prefix, dtype=torch.long, device=device).unsqueeze(0).expand(p, -1)
        prefix_embeds = self.vlm.embed_inputs(prefix_ids, features)
        length = max(len(s) for s in suffixes)
        suffix_ids = torch.full((len(suffixes), length), self.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros((len(suffixes), length), dtype=torch.long)
        for row, ids in enumerate(suffixes):
            suffix_ids[row, length - len(ids) :] = torch.tensor(ids)
            suffix_mask[row, length - len(ids) :] = 1
        suffix_embeds = self._embed_tokens(suffix_ids.to(device))
        self.stats["prefix_prefills"] += p
        self.stats["prefill_calls"] += 2
        return prefill_shared(
            self.runner, prefix_embeds, suffix_embeds, suffix_mask.to(device), index, self.settings.max_new_tokens
        )

    def _beam_search(
        self, queries: list[str], features: torch.Tensor, index: torch.Tensor, num_image_tokens: int
    ) -> torch.Tensor:
        device = features.device
        enc = self.prompts.encode(queries, num_image_tokens)
        input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        embeds = self.vlm.embed_inputs(input_ids, features.index_select(0, index))
        s = self.settings
        self.stats["prefill_calls"] += 1
        return self.vlm.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens or None,
            num_beams=s.num_beams,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            logits_processor=beam_processors(s.num_beams, s.repetition_penalty),
        )


def beam_processors(num_beams: int, repetition_penalty: float):
    """The ``logits_processor`` list that beam search gets from panollava.

    - The repetition penalty, as transformers' ``RepetitionPenaltyLogitsProcessor`` over all the tokens each beam
      generated (passed here rather than as ``repetition_penalty=``: transformers 5.24's ``generate`` then also
      skips a row's first generated tokens, as many as its prompt has left padding, when the prompt came as
      ``inputs_embeds``; the decode loop and an unpadded ``generate`` count them all).
    - A check that raises :class:`NonFiniteLogitsError` when a beam's scores hold NaN (beam search takes the
      log-softmax first: NaN or +inf logits become NaN scores; the -inf that ``min_new_tokens`` sets are not NaN).

    Args:
        num_beams: Beams per sample (rows of the scores per sample).
        repetition_penalty: The penalty (1.0: none).
    """
    from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    class _NonFiniteScoresCheck(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            broken = torch.isnan(scores).any(dim=-1) | torch.isposinf(scores).any(dim=-1)
            if bool(broken.any()):
                rows = sorted({int(r) // num_beams for r in broken.nonzero().flatten().tolist()})
                raise NonFiniteLogitsError(f"non-finite beam scores for batch row(s) {rows}", rows, input_ids.shape[-1])
            return scores

    processors = [_NonFiniteScoresCheck()]
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    return LogitsProcessorList(processors)
