"""Caption generation: one vision pass and one image prefix per panorama, one decode loop.

The tiny VLM (LoRA through peft, briefly taught so that captions depend on query and image) captions real QuIC-360 panoramas from a CSV whose
panoramas have 1 to 5 queries. On CPU fp32 the shared-prefix path, the plain path, batch size 1, 4 and the whole
set give identical captions (greedy and sampled), equal to Hugging Face ``generate`` for greedy and beam search.
"""

from __future__ import annotations

import copy
import csv
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from panollava.errors import InvalidInputError
from panollava.generation import CaptionGenerator, DecodeSettings, sample_seed
from panollava.generation.sampling import apply_repetition_penalty, filter_logits, row_uniforms, sample_from_logits

EXTRA_QUERIES = ["sky", "floor", "lights"]


# -- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    """The tiny VLM with a peft LoRA adapter whose B weights are non-zero (so the adapter changes the texts)."""
    from panollava.data.prompts import PromptEncoder
    from panollava.models.build import build_vlm, load_image_preprocessing

    config = {"vision_name": "tiny:siglip", "language_model_name": "tiny:qwen3", "resampler_type": "mlp",
              "latent_dimension": 64, "image_size": [32, 32]}
    lora = {"r": 8, "alpha": 16, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    from panollava.offline.tiny_models import build_tiny_models

    build_tiny_models()  # first use writes them, reseeding torch: do it before the seed below
    torch.manual_seed(0)
    vlm, tokenizer = build_vlm(config, lora, lora_trainable=False)
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    vlm.eval()
    prep = load_image_preprocessing(config["vision_name"], (32, 32), True)
    return SimpleNamespace(vlm=vlm, tokenizer=tokenizer, prompts=PromptEncoder(tokenizer, "<|image_pad|>"),
                           image_preprocessing=lambda use: prep)


@pytest.fixture(scope="module")
def query_csv(shared_data_dir: Path, tmp_path_factory) -> Path:
    """Real panoramas with 1, 2, 3, 4 and 5 queries (grouped per panorama, as evaluation batches them)."""
    src = shared_data_dir / "quic360-sample" / "test.csv"
    with src.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_image: dict[str, list[str]] = {}
    for row in rows:
        queries = by_image.setdefault(row["url"], [])
        if row["query"] not in queries:
            queries.append(row["query"])
    out = tmp_path_factory.mktemp("gen") / "test.csv"
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "query", "annotation"])
        for count, (url, queries) in enumerate(sorted(by_image.items()), start=1):
            queries = (queries + EXTRA_QUERIES)[:count]
            for query in queries:
                writer.writerow([str(src.parent / url), query, f"a reference about {query}"])
    return out


@pytest.fixture(scope="module")
def items(model, query_csv: Path) -> list[dict]:
    from panollava.data.datamodule import PanoCaptionDataset
    from panollava.data.dataset import group_samples, read_caption_csv
    from panollava.data.views import ViewConfig
    from panollava.families.base import StackedViews

    prep = model.image_preprocessing(True)
    config = ViewConfig(crop_strategy="anyres_e2p", image_size=prep.image_size)
    samples = group_samples(read_caption_csv(query_csv))
    dataset = PanoCaptionDataset(samples, StackedViews(config, prep.mean, prep.std, image_blind=False), view_cache_mb=64)
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.image_path] = counts.get(s.image_path, 0) + 1
    assert sorted(counts.values()) == [1, 2, 3, 4, 5]
    items = [dataset[i] for i in range(len(dataset))]
    _teach(model, items)
    return items


def _teach(model, items: list[dict], steps: int = 45) -> None:
    """A few AdamW steps on "the <query> is <colour of the panorama>", so that captions depend on both the query
    and the image (a random tiny LM repeats one string whatever the query: a suffix mix-up would go unseen)."""
    vlm = model.vlm
    colours = ["red", "green", "blue", "white", "black"]
    keys = sorted({it["image_path"] for it in items})
    answers = [f"the {it['query']} is {colours[keys.index(it['image_path'])]}" for it in items]
    pixel_values = torch.stack([it["pixel_values"] for it in items])
    n = vlm.num_image_tokens(pixel_values.shape[1], tuple(pixel_values.shape[-2:]))
    enc = model.prompts.encode([it["query"] for it in items], n, answers)
    params = [p for name, p in vlm.named_parameters() if not name.startswith("vision_tower.")]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=4e-3)
    torch.manual_seed(0)
    vlm.train()
    for _ in range(steps):
        loss = vlm(pixel_values=pixel_values, **enc).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vlm.eval()
    for p in vlm.parameters():
        p.requires_grad_(False)




def eval_batches(items: list[dict], batch_size: int):
    """Evaluation batches as the data module builds them: unique panoramas + panorama_index + panorama_key."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        keys: list[str] = []
        views, index = [], []
        for it in chunk:
            if it["image_path"] not in keys:
                keys.append(it["image_path"])
                views.append(it["pixel_values"])
            index.append(keys.index(it["image_path"]))
        yield {
            "index": [it["index"] for it in chunk],
            "sample_id": [it["sample_id"] for it in chunk],
            "query": [it["query"] for it in chunk],
            "references": [it["references"] for it in chunk],
            "image": [it["image"] for it in chunk],
            "image_path": [it["image_path"] for it in chunk],
            "pixel_values": torch.stack(views),
            "panorama_index": torch.tensor(index),
            "panorama_key": keys,
        }


def caption_all(model, items, settings: DecodeSettings, share_prefix: bool, batch_size: int, prompts=None,
                compile_decode: bool = False):
    generator = CaptionGenerator(model.vlm, prompts or model.prompts, settings, share_prefix=share_prefix,
                                 compile_decode=compile_decode)
    captions = []
    for batch in eval_batches(items, batch_size):
        captions += generator.generate(batch)
    return captions, generator


GREEDY = DecodeSettings(max_new_tokens=12)
SAMPLED = DecodeSettings(max_new_tokens=12, do_sample=True, temperature=1.3, top_k=40, top_p=0.95,
                         repetition_penalty=1.2, seed=7)


# -- settings and sampling --------------------------------------------------------------------------------------------
def test_settings_from_dict_ignores_unknown_keys_and_checks_values():
    s = DecodeSettings.from_dict({"max_new_tokens": "16", "do_sample": 1, "top_k": 5, "unknown": 3, "top_p": None})
    assert (s.max_new_tokens, s.do_sample, s.top_k, s.top_p) == (16, True, 5, 1.0)
    assert set(s.to_dict()) == {"max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k",
                                "repetition_penalty", "seed"}
    with pytest.raises(InvalidInputError, match=r"--model\.generation\.top_p = 0\.0 is not valid"):
        DecodeSettings(top_p=0.0)
    with pytest.raises(InvalidInputError, match="num_beams 2 with do_sample"):
        DecodeSettings(num_beams=2, do_sample=True)


def test_sample_seed_is_stable_and_per_sample():
    assert sample_seed(0, "abc") == sample_seed(0, "abc")
    assert len({sample_seed(0, "abc"), sample_seed(1, "abc"), sample_seed(0, "abd")}) == 3
    assert 0 <= sample_seed(123, "x") < 2**63
    u = row_uniforms(3, ["a", "b", "a"], 5, torch.device("cpu"))
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])


def test_logits_processors_equal_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    history = torch.randint(0, 50, (4, 6))
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, history, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.3), expected)
    settings = DecodeSettings(do_sample=True, temperature=0.7, top_k=12, top_p=0.8)
    ref = TemperatureLogitsWarper(0.7)(history, expected.clone())
    ref = TopKLogitsWarper(12)(history, ref)
    ref = TopPLogitsWarper(0.8)(history, ref)
    assert torch.equal(filter_logits(expected, settings), ref)


def test_inverse_cdf_sampling_never_picks_removed_tokens_and_follows_the_distribution():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf"), 2.0]]).expand(4000, 5)
    uniforms = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens = sample_from_logits(logits, uniforms)
    counts = torch.bincount(tokens, minlength=5).double() / 4000
    assert counts[1] == 0 and counts[3] == 0
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0, float(torch.tensor(2.0).exp())], dtype=torch.float64)
    assert torch.allclose(counts, expected / expected.sum(), atol=0.03)


# -- decode-step attention --------------------------------------------------------------------------------------------
class _Attention(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "per_head"])
def test_gqa_decode_attention_equals_sdpa_over_repeated_key_values(mask_kind):
    from transformers.integrations.sdpa_attention import repeat_kv

    from panollava.generation.attention import gqa_decode_attention

    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, k_len, dim = 3, 6, 2, 17, 8
    query = torch.randn(b, heads, 1, dim, generator=g)
    key, value = (torch.randn(b, kv_heads, k_len, dim, generator=g) for _ in range(2))
    keep = torch.rand(b, 1 if mask_kind != "per_head" else heads, 1, k_len, generator=g) > 0.3
    keep[..., 0] = True
    mask = keep if mask_kind != "additive" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, 3), repeat_kv(value, 3), attn_mask=mask, scale=0.3
    ).transpose(1, 2)
    out, weights = gqa_decode_attention(_Attention(), query, key, value, mask, scaling=0.3)
    assert weights is None and out.shape == (b, 1, heads, dim) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_gqa_decode_attention_leaves_everything_but_one_token_steps_to_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from panollava.generation.attention import gqa_decode_attention

    g = torch.Generator().manual_seed(1)
    query = torch.randn(2, 6, 5, 8, generator=g)  # a prefill of 5 tokens
    key, value = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(2))
    for mask in (None, torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()):
        ours, _ = gqa_decode_attention(_Attention(), query, key, value, mask)
        theirs, _ = sdpa_attention_forward(_Attention(), query, key, value, mask)
        assert torch.equal(ours, theirs)


def test_decode_steps_use_the_folding_attention_and_restore_the_models_own(model, items):
    from panollava.generation.attention import GQA_DECODE_ATTENTION

    runner = CaptionGenerator(model.vlm, model.prompts, GREEDY).runner
    assert runner.config._attn_implementation == "sdpa" and runner.step_attention == GQA_DECODE_ATTENTION
    _, gen = caption_all(model, items[:3], GREEDY, share_prefix=True, batch_size=3)
    assert model.vlm.language_model.get_base_model().config._attn_implementation == "sdpa"
    assert gen.describe()["attention"].startswith(f"sdpa; one-token decode steps: {GQA_DECODE_ATTENTION}")


# -- generation on real panoramas -------------------------------------------------------------------------------------
def test_greedy_captions_identical_across_paths_and_batch_sizes_and_vision_runs_once_per_panorama(model, items):
    reference, plain1 = caption_all(model, items, GREEDY, share_prefix=False, batch_size=1)
    assert len(set(reference)) >= 5 and all(reference), reference  # texts vary with query and image
    assert plain1.stats["panoramas_encoded"] == 5 and plain1.stats["panoramas_carried_over"] == 10
    for share, batch_size in ((True, 1), (True, 4), (False, 4), (True, len(items))):
        captions, gen = caption_all(model, items, GREEDY, share_prefix=share, batch_size=batch_size)
        assert captions == reference, (share, batch_size)
        assert gen.stats["panoramas_encoded"] == 5, gen.stats  # 5 panoramas, 15 samples
        assert gen.stats["samples"] == len(items)
        if share:
            assert gen.stats["shared_batches"] == gen.stats["batches"] and gen.stats["plain_batches"] == 0
            assert gen.describe()["path"] == "shared_prefix"
    # batch 4 over [1, 2, 3, 4, 5] queries: the panorama split between batches is carried over, not re-encoded
    assert gen.stats["vision_calls"] == 1
    _, gen4 = caption_all(model, items, GREEDY, share_prefix=True, batch_size=4)
    assert gen4.stats["panoramas_carried_over"] == 3 and gen4.stats["prefix_prefills"] == 8


def test_sampled_captions_identical_across_paths_and_batch_sizes(model, items):
    reference, _ = caption_all(model, items, SAMPLED, share_prefix=False, batch_size=1)
    for share, batch_size in ((True, 4), (False, 4), (True, len(items))):
        captions, gen = caption_all(model, items, SAMPLED, share_prefix=share, batch_size=batch_size)
        assert captions == reference, (share, batch_size)
    info = gen.describe()
    assert info["top_k"] == 40 and info["do_sample"] is True and info["seeding"].startswith("per sample")
    greedy, _ = caption_all(model, items, GREEDY, share_prefix=True, batch_size=len(items))
    other_seed, _ = caption_all(model, items, DecodeSettings(**{**SAMPLED.to_dict(), "seed": 8}), True, len(items))
    assert reference != greedy and other_seed != reference


def test_compiled_decode_gives_the_eager_captions_and_compiles_once_per_shape_family(model, items):
    """``compile_decode``: torch.compile (inductor on CPU) of the decode step, over batches of 4, 4, 4 and 3 samples
    (a new batch size recompiles once with a dynamic batch dimension, not once per size)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    reference, _ = caption_all(model, items, GREEDY, share_prefix=True, batch_size=4)
    sampled_reference, _ = caption_all(model, items, SAMPLED, share_prefix=True, batch_size=4)
    compiled, gen = caption_all(model, items, GREEDY, share_prefix=True, batch_size=4, compile_decode=True)
    assert compiled == reference
    info = gen.describe()
    assert info["compile_decode"] is True and info["compile_mode"] == "default" and "reused" in info["kv_cache"]
    assert gen.runner.cache_slots(65) == 128 and gen.runner.cache_slots(64) == 64
    assert gen.runner.caches_reused >= 1  # batches of one shape decode into one cache (CUDA graphs keep addresses)
    # the same runner, other batches (sizes 2 and 1): recompiles stay bounded (the batch dimension turns dynamic)
    for batch in eval_batches(items[:3], 2):
        gen.generate(batch)
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    sampled, _ = caption_all(model, items, SAMPLED, share_prefix=True, batch_size=4, compile_decode=True)
    assert sampled == sampled_reference
    torch._dynamo.reset()


def test_compile_decode_is_refused_for_beam_search_with_a_warning(model, caplog):
    with caplog.at_level(logging.WARNING, logger="panollava.generation.generator"):
        gen = CaptionGenerator(model.vlm, model.prompts, DecodeSettings(num_beams=2), compile_decode=True)
    assert "compile_decode has no effect with num_beams 2" in caplog.text
    assert gen.describe()["compile_decode"] is False and "compile_mode" not in gen.describe()


def test_greedy_equals_transformers_generate(model, items):
    ours, _ = caption_all(model, items, GREEDY, share_prefix=True, batch_size=6)
    vlm, tok = model.vlm, model.tokenizer
    theirs = []
    for batch in eval_batches(items, 6):
        pv = batch["pixel_values"][batch["panorama_index"]]
        enc = model.prompts.encode(batch["query"], vlm.num_image_tokens(pv.shape[1], tuple(pv.shape[-2:])))
        new = vlm.generate(pixel_values=pv, **enc, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        theirs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    assert ours == theirs


def test_beam_search_goes_through_generate_with_features_once_per_panorama(model, items):
    settings = DecodeSettings(max_new_tokens=6, num_beams=3)
    captions, gen = caption_all(model, items[:6], settings, share_prefix=True, batch_size=6)
    assert gen.describe()["path"] == "beam_search" and gen.describe()["kv_cache"].startswith("dynamic")
    assert gen.stats["panoramas_encoded"] == 3
    vlm, tok = model.vlm, model.tokenizer
    batch = next(eval_batches(items[:6], 6))
    pv = batch["pixel_values"][batch["panorama_index"]]
    enc = model.prompts.encode(batch["query"], vlm.num_image_tokens(pv.shape[1], tuple(pv.shape[-2:])))
    new = vlm.generate(pixel_values=pv, **enc, max_new_tokens=6, num_beams=3, do_sample=False,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert captions == [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def test_query_text_before_the_image_falls_back_to_the_plain_path_once(model, items, caplog):
    prompts = copy.copy(model.prompts)
    tokenizer = copy.deepcopy(model.tokenizer)
    # a template that writes the user text's length before the message: the text before the image varies by query
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | length }} {{ m['content'] }}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    prompts.tokenizer = tokenizer
    prompts.__post_init__()
    with caplog.at_level(logging.WARNING, logger="panollava.generation.generator"):
        shared, gen = caption_all(model, items, GREEDY, share_prefix=True, batch_size=5, prompts=prompts)
    plain, _ = caption_all(model, items, GREEDY, share_prefix=False, batch_size=5, prompts=prompts)
    assert shared == plain
    info = gen.describe()
    assert info["path"] == "plain" and "differ between queries" in info["fallback_reason"]
    assert gen.stats["plain_batches"] == 3 and gen.stats["shared_batches"] == 0
    assert sum("prefix sharing is off" in r.getMessage() for r in caplog.records) == 1


def test_training_batches_without_panorama_index_are_captioned_per_sample(model, items):
    batch = next(eval_batches(items, 4))
    per_sample = dict(batch, pixel_values=batch["pixel_values"][batch["panorama_index"]])
    del per_sample["panorama_index"], per_sample["panorama_key"]
    gen = CaptionGenerator(model.vlm, model.prompts, GREEDY)
    assert gen.generate(per_sample) == CaptionGenerator(model.vlm, model.prompts, GREEDY).generate(batch)
    assert gen.stats["panoramas_encoded"] == 4


# -- nothing silently wrong: cache dtype, stop ids, non-finite logits, positions, prompt cache, min_new_tokens -------
def _spy_cache(monkeypatch, runner) -> list:
    """Record the static caches ``runner`` allocates."""
    caches: list = []
    allocate = runner.new_static_cache

    def recording(*args, **kwargs):
        caches.append(allocate(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(runner, "new_static_cache", recording)
    return caches


def test_bf16_autocast_keeps_the_kv_cache_in_one_dtype_read_in_place_by_the_decode_steps(model, items, monkeypatch):
    """Under bf16-mixed (autocast) Qwen3's keys come out float32 and its values bfloat16: the cache stores both in
    bfloat16, and each one-token step's attention gets the cache tensors themselves (same storage every step, already
    in autocast's dtype, so nothing casts or copies them); the captions are those of a plain StaticCache."""
    from transformers import AttentionInterface

    from panollava.generation.attention import GQA_DECODE_ATTENTION, gqa_decode_attention
    from panollava.generation.decode import one_dtype_static_cache

    batch = next(eval_batches(items[:3], 3))
    calls: list[tuple] = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, key.data_ptr(), value.data_ptr(), key.dtype, value.dtype))
        return gqa_decode_attention(module, query, key, value, attention_mask, **kwargs)

    gen = CaptionGenerator(model.vlm, model.prompts, GREEDY)
    caches = _spy_cache(monkeypatch, gen.runner)
    AttentionInterface.register(GQA_DECODE_ATTENTION, spy)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            captions = gen.generate(batch)
    finally:
        AttentionInterface.register(GQA_DECODE_ATTENTION, gqa_decode_attention)
    (cache,) = caches
    assert all(layer.keys.dtype == layer.values.dtype == torch.bfloat16 for layer in cache.layers)
    assert gen.describe()["kv_cache_dtype"] == "bfloat16"
    storage = {i: (layer.keys.data_ptr(), layer.values.data_ptr()) for i, layer in enumerate(cache.layers)}
    assert gen.stats["decode_forwards"] >= 3 and len(calls) == gen.stats["decode_forwards"] * len(storage)
    for layer_idx, key_ptr, value_ptr, key_dtype, value_dtype in calls:
        assert (key_ptr, value_ptr) == storage[layer_idx]  # the cache itself, no per-step copy
        assert key_dtype == value_dtype == torch.bfloat16  # autocast's dtype: SDPA does not cast it
    # the same numbers as a float32 cache, whose keys autocast casts to bfloat16 in every attention call (what
    # transformers 5.24's StaticCache did for the keys; 5.17's cannot even store the bfloat16 values beside them)
    wide = CaptionGenerator(model.vlm, model.prompts, GREEDY)
    monkeypatch.setattr(wide.runner, "new_static_cache",
                        lambda slots, b: one_dtype_static_cache(wide.runner.config, slots, torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wide.generate(batch) == captions


def _greedy_ids(model, batch, **kwargs) -> torch.Tensor:
    """transformers ``generate`` on the batch's plain prompts (inputs_embeds only, as the beam path)."""
    vlm, tok = model.vlm, model.tokenizer
    pv = batch["pixel_values"][batch["panorama_index"]]
    enc = model.prompts.encode(batch["query"], vlm.num_image_tokens(pv.shape[1], tuple(pv.shape[-2:])))
    kwargs = {"max_new_tokens": GREEDY.max_new_tokens, "do_sample": False, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id, **kwargs}
    return vlm.generate(pixel_values=pv, **enc, **kwargs)


def _texts(tok, ids) -> list[str]:
    return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]


def test_every_eos_id_of_the_generation_config_stops_a_caption(model, items, monkeypatch):
    tok = model.tokenizer
    batch = next(eval_batches(items[:6], 6))
    reference = _greedy_ids(model, batch)
    stop = int(reference[0, 2])  # an ordinary word token that the captions emit
    assert stop != tok.eos_token_id and not tok.convert_ids_to_tokens(stop).startswith("<|")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    config = model.vlm.language_model.get_base_model().generation_config
    monkeypatch.setattr(config, "eos_token_id", [tok.eos_token_id, endoftext, stop])  # Qwen3's: a list
    expected_ids = sorted({tok.eos_token_id, endoftext, stop})
    expected = _texts(tok, _greedy_ids(model, batch, eos_token_id=expected_ids))
    assert expected != _texts(tok, reference)  # the extra stop id shortens some captions
    for share in (True, False):
        captions, gen = caption_all(model, items[:6], GREEDY, share_prefix=share, batch_size=6)
        assert captions == expected, share
        assert gen.describe()["eos_token_ids"] == expected_ids and gen.describe()["eos_token_id"] == tok.eos_token_id
    beams, _ = caption_all(model, items[:6], DecodeSettings(max_new_tokens=6, num_beams=2), True, 6)
    assert beams == _texts(tok, _greedy_ids(model, batch, max_new_tokens=6, num_beams=2, eos_token_id=expected_ids))


def test_stop_ids_are_the_generation_configs_and_the_tokenizers():
    from transformers import GenerationConfig

    from panollava.generation.generator import stop_token_ids

    qwen3 = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=[151645, 151643]))
    assert stop_token_ids(qwen3, SimpleNamespace(eos_token_id=151645)) == (151643, 151645)
    single = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=7))
    assert stop_token_ids(single, SimpleNamespace(eos_token_id=9)) == (7, 9)
    with pytest.raises(InvalidInputError, match="end-of-sequence"):
        stop_token_ids(SimpleNamespace(generation_config=GenerationConfig()), SimpleNamespace(eos_token_id=None))


def _poison_logits(model, row: int, at_call: int):
    """NaN logits for one batch row from the LM's ``at_call``-th forward on (0 = the prefill)."""
    head = model.vlm.language_model.get_base_model().lm_head
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] > at_call:
            output = output.clone()
            output[row] = float("nan")
            return output
        return None

    return head.register_forward_hook(hook)


@pytest.mark.parametrize("share_prefix, at_call", [(True, 0), (False, 3)])
def test_non_finite_logits_are_an_error_naming_the_sample_never_a_token(model, items, share_prefix, at_call):
    batch = next(eval_batches(items[:4], 4))
    gen = CaptionGenerator(model.vlm, model.prompts, GREEDY, share_prefix=share_prefix)
    calls = at_call + (1 if share_prefix else 0)  # the shared path runs the prefix prefill first
    handle = _poison_logits(model, row=2, at_call=calls)
    try:
        with pytest.raises(InvalidInputError, match="non-finite logits") as info:
            gen.generate(batch)
    finally:
        handle.remove()
    message = str(info.value)
    assert f"sample {batch['sample_id'][2]!r}" in message and repr(batch["query"][2]) in message
    assert batch["image_path"][2] in message and f"at new token {at_call}" in message
    assert all(f"sample {batch['sample_id'][r]!r}" not in message for r in (0, 1, 3))


def test_non_finite_beam_scores_are_an_error_naming_the_sample(model, items):
    batch = next(eval_batches(items[:3], 3))
    poisoned = dict(batch, pixel_values=batch["pixel_values"].clone())
    poisoned["pixel_values"][1] = float("nan")  # the second panorama: samples 1 and 2
    gen = CaptionGenerator(model.vlm, model.prompts, DecodeSettings(max_new_tokens=4, num_beams=2))
    with pytest.raises(InvalidInputError, match="non-finite logits") as info:
        gen.generate(poisoned)
    message = str(info.value)
    assert all(f"sample {batch['sample_id'][r]!r}" in message for r in (1, 2))
    assert f"sample {batch['sample_id'][0]!r}" not in message


def test_check_positions_says_how_many_new_tokens_fit():
    from panollava.generation.settings import check_positions

    check_positions(96, 4000, 4096)  # exactly full
    check_positions(10**9, 10, None)  # unknown: nothing to check
    with pytest.raises(InvalidInputError, match=r"--max_new_tokens: the prompt \(4000 tokens\) \+ max_new_tokens 97 = "
                                                r"4097 positions.*max_position_embeddings 4096; lower --max_new_tokens "
                                                r"to at most 96"):
        check_positions(97, 4000, 4096, where="--max_new_tokens")
    with pytest.raises(InvalidInputError, match="the prompt alone is too long"):
        check_positions(1, 5000, 4096)


def test_max_new_tokens_beyond_the_models_positions_fails_before_anything_runs(model, items, monkeypatch):
    from panollava.models.build import check_max_new_tokens, language_model_max_positions

    assert language_model_max_positions("tiny:qwen3") == 4096 == model.vlm.language_model.config.max_position_embeddings
    with pytest.raises(InvalidInputError, match="max_position_embeddings 4096; lower --max_new_tokens to at most 4095"):
        check_max_new_tokens({"language_model_name": "tiny:qwen3"}, 1_000_000)
    check_max_new_tokens({"language_model_name": "tiny:qwen3"}, 64)
    # the generator: at construction with the shortest prompt, ...
    with pytest.raises(InvalidInputError, match=r"shortest prompt.*max_new_tokens 1000000 .*max_position_embeddings"):
        CaptionGenerator(model.vlm, model.prompts, DecodeSettings(max_new_tokens=1_000_000))
    # ... and per batch with its longest prompt (image tokens included), before the vision tower or any cache
    floor = model.prompts.min_prompt_tokens()
    gen = CaptionGenerator(model.vlm, model.prompts, DecodeSettings(max_new_tokens=4096 - floor))
    caches = _spy_cache(monkeypatch, gen.runner)
    batch = next(eval_batches(items[:3], 3))
    n = gen.vlm.num_image_tokens(batch["pixel_values"].shape[1], tuple(batch["pixel_values"].shape[-2:]))
    longest = max(range(3), key=lambda r: len(model.prompts.prompt_ids(batch["query"][r], n)))
    with pytest.raises(InvalidInputError, match=rf"sample {batch['sample_id'][longest]!r}.*image tokens\): the prompt"):
        gen.generate(batch)
    assert caches == [] and gen.stats["vision_calls"] == 0


def test_the_prompt_cache_is_a_bounded_lru(model):
    from panollava.data.prompts import PROMPT_CACHE_SIZE, PromptEncoder

    assert PromptEncoder(model.tokenizer, "<|image_pad|>").prompt_cache_size == PROMPT_CACHE_SIZE == 4096
    prompts = PromptEncoder(model.tokenizer, "<|image_pad|>", prompt_cache_size=3)
    first = prompts.prompt_ids("query 0", 4)
    for i in range(1, 10):
        prompts.prompt_ids(f"query {i}", 4)
        prompts.prompt_ids("query 0", 2)  # used again: kept
    assert list(prompts._prompt_cache) == ["query 8", "query 9", "query 0"]
    assert prompts.prompt_ids("query 0", 4) == first  # the placeholder is expanded per call, not cached
    assert prompts.prompt_ids("query 0", 2).count(prompts.image_token_id) == 2


def test_min_new_tokens_suppresses_every_stop_id_like_transformers(model, items, monkeypatch):
    from panollava.generation import generator as generator_module
    from panollava.schema import SETTINGS

    assert SETTINGS["min_new_tokens"].flag == "min_new_tokens" and SETTINGS["min_new_tokens"].default == 0
    with pytest.raises(InvalidInputError, match="min_new_tokens 13 is above max_new_tokens 12"):
        DecodeSettings(max_new_tokens=12, min_new_tokens=13)
    tok = model.tokenizer
    batch = next(eval_batches(items[:6], 6))
    settings = DecodeSettings(max_new_tokens=12, min_new_tokens=9)
    ours, gen = caption_all(model, items[:6], settings, share_prefix=True, batch_size=6)
    assert ours == _texts(tok, _greedy_ids(model, batch, min_new_tokens=9))
    assert ours != caption_all(model, items[:6], GREEDY, share_prefix=True, batch_size=6)[0]  # some ended early
    assert gen.describe()["min_new_tokens"] == 9
    beam = DecodeSettings(max_new_tokens=10, min_new_tokens=8, num_beams=2)
    assert caption_all(model, items[:6], beam, True, 6)[0] == _texts(
        tok, _greedy_ids(model, batch, max_new_tokens=10, min_new_tokens=8, num_beams=2))
    # sampling: no stop id among the first min_new_tokens tokens of any row
    recorded = []
    real_decode = generator_module.decode

    def recording(*args, **kwargs):
        out = real_decode(*args, **kwargs)
        recorded.append(out[0])
        return out

    monkeypatch.setattr(generator_module, "decode", recording)
    sampled = DecodeSettings(**{**SAMPLED.to_dict(), "min_new_tokens": 10})
    caption_all(model, items, sampled, share_prefix=True, batch_size=len(items))
    (tokens,) = recorded
    assert tokens.shape[1] >= 10 and not bool((tokens[:, :10] == tok.eos_token_id).any())


def test_repetition_penalty_covers_the_generated_ids_as_generate_with_inputs_embeds(model, items):
    """The penalty counts each row's tokens generated so far, not the prompt: what ``generate`` given
    ``inputs_embeds`` only (as panollava's prompts enter) does for an unpadded prompt. (transformers 5.24's batched
    ``generate`` also skips a row's first generated tokens, as many as its prompt has left padding
    (``prompt_ignore_length``): the beam path passes the penalty as its own processor to avoid that.)
    min_new_tokens makes the captions run on past their end, where the tiny model repeats itself."""
    kwargs = {"max_new_tokens": 14, "min_new_tokens": 12, "repetition_penalty": 1.8}
    ours, _ = caption_all(model, items[:6], DecodeSettings(**kwargs), share_prefix=True, batch_size=6)
    theirs = []
    with pytest.warns(UserWarning, match="only to newly generated tokens"):
        for batch in eval_batches(items[:6], 1):  # one prompt per call: no padding
            theirs += _texts(model.tokenizer, _greedy_ids(model, batch, **kwargs))
    unpenalised = DecodeSettings(max_new_tokens=14, min_new_tokens=12)
    assert ours == theirs and ours != caption_all(model, items[:6], unpenalised, True, 6)[0]
    beam = {**kwargs, "num_beams": 2}
    ours_beam, _ = caption_all(model, items[:6], DecodeSettings(**beam), share_prefix=True, batch_size=6)
    with pytest.warns(UserWarning, match="only to newly generated tokens"):
        theirs_beam = [t for b in eval_batches(items[:6], 1) for t in _texts(model.tokenizer,
                                                                             _greedy_ids(model, b, **beam))]
    assert ours_beam == theirs_beam
