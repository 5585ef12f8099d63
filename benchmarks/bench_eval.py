"""Benchmark: evaluation throughput of the shared-prefix path against per-sample and batched ``generate``.

Models are built from configs with random weights (nothing is downloaded); the tiny tokenizer stands in for
Qwen's (its ids are valid for any vocabulary). Every run ends with one JSON line of its figures: for each
baseline, the speedup of ours over it (> 1 = faster) and whether the captions are identical.

* ``--device cpu`` (a), fp32, one process, one torch thread by default: a small model where compute dominates
  (SigLIP 192 wide × 4 layers on 9 views of 64² = 576 image tokens per panorama; Qwen3 384 wide × 4 layers),
  8 panoramas × 3 QuIC-360 queries, 16 new tokens, greedy. Timed, model side only (views cut once beforehand):
  (1) a per-sample loop: batch 1, ``generate``, vision per sample (the original tool's way);
  (2) batched ``generate`` over all 24 samples, vision per sample (panollava before the throughput issue);
  (3) ours, batched with one vision pass and one prefilled image prefix per panorama (``CaptionGenerator``);
  (4) ours on the plain path (``share_prefix=False``), for the plain/shared agreement.
* ``--device cuda`` (b), bf16, sdpa: the real-size presets (SigLIP so400m-patch16-256, 27 layers, 9 views of
  256² = 2,304 image tokens; Qwen3-0.6B) on 374 synthetic 2048×1024 JPEG panoramas with the 1,149 queries of the
  QuIC-360 test split (its real panorama/query structure, ``../shared/data/quic360/test.csv``), 32 new tokens.
  Ours end to end: DataLoader workers decode JPEGs into pinned uint8 buffers, the main process uploads each
  panorama and cuts its views on the GPU, then vision, prefill and decode; per-stage times (the stages are
  synchronised for timing) and peak memory. The baselines run on the first 64 queries and are extrapolated to
  the full set (labelled so). Agreement: plain vs shared path on the same 64 queries.
* ``--smoke``: the (b) code path with tiny sizes on CPU (seconds), to check it before a GPU is at hand.
* ``--compile`` (default on with ``--device cuda``): also ``compile_decode`` (``torch.compile`` of the decode step;
  CUDA graphs on a GPU) against the eager shared path on the same samples: a compiling pass, then a timed one.
  It runs last and a failure is recorded in the JSON line instead of ending the run.
* ``--family hf`` (issue 20): the same comparison for off-the-shelf Hugging Face VLMs (``panollava.families.hf``),
  greedy, 9 ``anyres_e2p`` views per panorama. The baseline is what a user of the model does alone: per sample, the
  chat template, the model's processor on that sample's images and prompt, ``generate`` at batch 1 (views rendered
  beforehand, not timed); ours is the family's engine path (``panorama_transform`` once per panorama, views
  included and timed, then ``HFCaptionModel.generate`` on batches that keep a panorama's queries together: vision
  once per panorama, the shared prefix where the architecture allows it). Captions must be identical.
  (a) ``--device cpu``: the tiny ``qwen2_vl`` and ``llava`` folders of ``panollava.offline.tiny_hf`` and a small
  random Qwen2.5-VL (``qwen2_5_vl_small``, the size of (a)'s own model) on the 5 real panoramas of
  ``../shared/data/quic360-sample`` × 3 queries, 16 new tokens, medians of interleaved rounds.
  (b) ``--device cuda``: a Qwen2.5-VL-3B-shaped model (published sizes, 3.75 B parameters) with random weights,
  bf16, written to a temporary folder with the tiny tokenizer and Qwen2.5-VL's image-processor settings and loaded
  by ``load_hf_model``; 448² views (2,304 image tokens), the first 48 QuIC-360 test panoramas as synthetic JPEGs
  (all their queries), 32 new tokens, batch 64; the engine end to end (a DataLoader worker pool decodes the JPEGs
  and runs the image processor) against the loop on the first 16 queries, extrapolated. ``--smoke`` runs it on CPU
  with tiny sizes.

Run:

    .venv/bin/python benchmarks/bench_eval.py --device cpu          # (a), ≤ 5 min on the 2-core VM
    python benchmarks/bench_eval.py --device cuda                   # (b), < 5 min on an H100/H200
    .venv/bin/python benchmarks/bench_eval.py --device cpu --smoke  # (b)'s code path, tiny
    .venv/bin/python benchmarks/bench_eval.py --family hf --device cpu            # hf (a), ~30 s here
    python benchmarks/bench_eval.py --family hf --device cuda                     # hf (b)
    .venv/bin/python benchmarks/bench_eval.py --family hf --device cpu --smoke    # hf (b)'s code path, tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panollava.data.prompts import PromptEncoder  # noqa: E402
from panollava.generation import CaptionGenerator, DecodeSettings  # noqa: E402
from panollava.models.vlm import PanoramicVLM  # noqa: E402

QUIC_TEST = ROOT.parent / "shared" / "data" / "quic360" / "test.csv"
IMAGE_TOKEN = "<|image_pad|>"


# -- models -----------------------------------------------------------------------------------------------------------
def load_tokenizer():
    from panollava.models.build import load_tokenizer as _load
    from panollava.offline.tiny_models import build_tiny_models

    return _load(str(build_tiny_models()["tiny-qwen3"]), IMAGE_TOKEN)


def build_model(vision_config, lm_config, latent: int, tokenizer, device: str, dtype: torch.dtype) -> PanoramicVLM:
    """A PanoramicVLM with random weights from configs (sdpa attention), on ``device`` in ``dtype``."""
    from transformers import AutoModel, AutoModelForCausalLM

    from panollava.models.resampler import build_resampler

    torch.manual_seed(0)
    vision_config.vision_use_head = False
    with torch.device(device):
        vision = AutoModel.from_config(vision_config, attn_implementation="sdpa")
        lm = AutoModelForCausalLM.from_config(lm_config, attn_implementation="sdpa")
        resampler = build_resampler("mlp", vision_config.hidden_size, latent)
        vlm = PanoramicVLM(vision, "siglip", vision_config.patch_size, resampler, lm,
                           tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    return vlm.to(dtype).eval()


def small_configs(tokenizer, smoke: bool):
    from transformers import Qwen3Config, SiglipVisionConfig

    vocab = ((len(tokenizer) + 63) // 64) * 64
    if smoke:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=8)
        lm = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    else:
        vision = SiglipVisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                                    image_size=64, patch_size=8)
        lm = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=64)
    lm_config = Qwen3Config(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **lm)
    return vision, lm_config


def real_configs():
    from panollava.models.presets import load_preset_config

    return load_preset_config("siglip2-so400m-patch16-256"), load_preset_config("qwen3-0.6b")


# -- data -------------------------------------------------------------------------------------------------------------
def quic_structure(max_panoramas: int | None = None, csv_path: Path = QUIC_TEST) -> list[tuple[str, list[str]]]:
    """(url, queries) of the QuIC-360 test split in file order (374 panoramas, 1,149 queries)."""
    if not csv_path.is_file():
        raise SystemExit(
            f"error: the QuIC-360 test CSV is not at {csv_path}: pass --quic_csv PATH (on a GPU machine, where "
            "../shared does not travel, benchmarks/gpu_bench.sh prepare copies it into .gpu_data/)"
        )
    groups: dict[str, list[str]] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            queries = groups.setdefault(row["url"], [])
            if row["query"] not in queries:
                queries.append(row["query"])
    items = list(groups.items())
    return items[:max_panoramas] if max_panoramas else items


def synthetic_panorama(index: int, size_hw: tuple[int, int]) -> torch.Tensor:
    """A smooth random (3, H, W) uint8 panorama, different for every index."""
    g = torch.Generator().manual_seed(index)
    small = torch.rand(1, 3, 16, 32, generator=g)
    big = torch.nn.functional.interpolate(small, size=size_hw, mode="bilinear", align_corners=False)[0]
    return (big * 255).round().to(torch.uint8)


def write_jpegs(count: int, size_hw: tuple[int, int], folder: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(count):
        path = folder / f"pano_{i:04d}.jpg"
        Image.fromarray(synthetic_panorama(i, size_hw).permute(1, 2, 0).numpy()).save(path, quality=90)
        paths.append(path)
    return paths


def make_batch(samples: list[tuple[str, str, str]], views: dict[str, torch.Tensor]) -> dict:
    """An evaluation batch (interface of panollava.data.panorama_batches) from (sample_id, key, query) triples."""
    keys: list[str] = []
    index = []
    for _, key, _ in samples:
        if key not in keys:
            keys.append(key)
        index.append(keys.index(key))
    return {
        "index": list(range(len(samples))),
        "sample_id": [s[0] for s in samples],
        "query": [s[2] for s in samples],
        "pixel_values": torch.stack([views[k] for k in keys]),
        "panorama_index": torch.tensor(index),
        "panorama_key": keys,
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# -- baselines --------------------------------------------------------------------------------------------------------
def generate_captions(vlm, prompts, tokenizer, batch: dict, max_new_tokens: int) -> list[str]:
    """``generate`` with vision per sample (the path panollava had before the throughput issue)."""
    device = vlm.projector.weight.device
    pv = batch["pixel_values"][batch["panorama_index"]].to(device)
    enc = prompts.encode(batch["query"], vlm.num_image_tokens(pv.shape[1], tuple(pv.shape[-2:])))
    new = vlm.generate(pixel_values=pv, input_ids=enc["input_ids"].to(device),
                       attention_mask=enc["attention_mask"].to(device), max_new_tokens=max_new_tokens,
                       do_sample=False, temperature=None, top_p=None, top_k=None,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def chunks(samples: list, batch_size: int) -> Iterator[list]:
    for start in range(0, len(samples), batch_size):
        yield samples[start : start + batch_size]


def run_baselines(vlm, prompts, tokenizer, samples, views, max_new_tokens: int, batch_size: int, device: str):
    """(loop seconds, loop captions, batched seconds, batched captions) for ``samples``."""
    sync(device)
    start = time.perf_counter()
    loop = []
    for s in samples:
        loop += generate_captions(vlm, prompts, tokenizer, make_batch([s], views), max_new_tokens)
    sync(device)
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = []
    for chunk in chunks(samples, batch_size):
        batched += generate_captions(vlm, prompts, tokenizer, make_batch(chunk, views), max_new_tokens)
    sync(device)
    return loop_s, loop, time.perf_counter() - start, batched


def run_ours(vlm, prompts, samples, views, settings, batch_size: int, share: bool, device: str,
             compile_decode: bool = False):
    gen = CaptionGenerator(vlm, prompts, settings, share_prefix=share, compile_decode=compile_decode, profile=True)
    sync(device)
    start = time.perf_counter()
    captions = []
    for chunk in panorama_batches(samples, batch_size):
        captions += gen.generate(make_batch(chunk, views))
    sync(device)
    return time.perf_counter() - start, captions, gen


def panorama_batches(samples: list[tuple[str, str, str]], batch_size: int) -> Iterator[list]:
    """Batches of at most ``batch_size`` samples that keep a panorama's queries together when they fit."""
    chunk: list = []
    i = 0
    while i < len(samples):
        key = samples[i][1]
        j = i
        while j < len(samples) and samples[j][1] == key:
            j += 1
        group = samples[i:j]
        if chunk and len(chunk) + len(group) > batch_size:
            yield chunk
            chunk = []
        while len(group) > batch_size:  # a panorama with more queries than a batch: split (features carry over)
            yield group[:batch_size]
            group = group[batch_size:]
        chunk += group
        i = j
    if chunk:
        yield chunk


def run_compiled(vlm, prompts, samples, views, settings, batch_size: int, device: str, eager_s: float,
                 eager_captions: list[str], eager_gen) -> dict:
    """``compile_decode`` against the eager shared path on the same samples: a first (compiling) pass, then a timed
    one. Any failure is recorded, not raised, so the other figures survive."""
    try:
        torch._dynamo.reset()
        start = time.perf_counter()
        run_ours(vlm, prompts, samples, views, settings, batch_size, True, device, compile_decode=True)
        sync(device)
        first_s = time.perf_counter() - start
        compiled_s, compiled, gen = run_ours(vlm, prompts, samples, views, settings, batch_size, True, device,
                                             compile_decode=True)
    except Exception as exc:  # a compiler failure is a finding of the benchmark, not its end
        return {"error": f"{type(exc).__name__}: {exc}"[:800]}
    eager_step = 1000 * eager_gen.timings["decode_s"] / max(1, eager_gen.stats["decode_forwards"])
    step = 1000 * gen.timings["decode_s"] / max(1, gen.stats["decode_forwards"])
    return {
        "mode": gen.describe().get("compile_mode"),
        "first_pass_with_compilation_s": round(first_s, 2),
        "compiled_s": round(compiled_s, 3),
        "eager_s": round(eager_s, 3),
        "speedup_compiled_vs_eager": round(eager_s / compiled_s, 2),
        "decode_ms_per_step_compiled": round(step, 2),
        "decode_ms_per_step_eager": round(eager_step, 2),
        "agreement_compiled_vs_eager": sum(a == b for a, b in zip(compiled, eager_captions)) / len(samples),
    }


# -- (a) CPU ----------------------------------------------------------------------------------------------------------
def bench_cpu(args) -> dict:
    from panollava.data.views import ViewConfig, normalize_views, render_views

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    prompts = PromptEncoder(tokenizer, IMAGE_TOKEN)
    vision_config, lm_config = small_configs(tokenizer, smoke=False)
    vlm = build_model(vision_config, lm_config, 256, tokenizer, "cpu", torch.float32)
    size = vision_config.image_size
    config = ViewConfig(crop_strategy="anyres_e2p", image_size=(size, size))
    structure = quic_structure(csv_path=args.quic_csv)
    panoramas = args.panoramas
    samples, views = [], {}
    for p in range(panoramas):
        key = f"pano{p}"
        views[key] = normalize_views(render_views(synthetic_panorama(p, (512, 1024)), config), [0.5] * 3, [0.5] * 3)
        queries = (structure[p][1] + ["interior", "furniture", "what they are doing"])[:3]
        samples += [(f"s{p}-{q}", key, query) for q, query in enumerate(queries)]
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens)
    image_tokens = vlm.num_image_tokens(len(views["pano0"]), (size, size))
    # warm-up (first calls allocate and pick kernels)
    run_baselines(vlm, prompts, tokenizer, samples[:2], views, 2, 2, "cpu")
    run_ours(vlm, prompts, samples[:2], views, DecodeSettings(max_new_tokens=2), 2, True, "cpu")
    loop_s, loop, batched_s, batched = run_baselines(vlm, prompts, tokenizer, samples, views, args.max_new_tokens,
                                                     len(samples), "cpu")
    ours_s, ours, gen = run_ours(vlm, prompts, samples, views, settings, len(samples), True, "cpu")
    plain_s, plain, _ = run_ours(vlm, prompts, samples, views, settings, len(samples), False, "cpu")
    n = len(samples)
    figures = {
        "benchmark": "bench_eval (a) cpu",
        "device": f"cpu: {platform.processor() or platform.machine()}, torch threads {args.threads}",
        "torch": torch.__version__,
        "samples": n,
        "panoramas": panoramas,
        "image_tokens_per_panorama": image_tokens,
        "max_new_tokens": args.max_new_tokens,
        "loop_s": round(loop_s, 3),
        "batched_generate_s": round(batched_s, 3),
        "shared_s": round(ours_s, 3),
        "plain_s": round(plain_s, 3),
        "shared_samples_per_s": round(n / ours_s, 2),
        "speedup_vs_loop": round(loop_s / ours_s, 2),
        "speedup_vs_batched_generate": round(batched_s / ours_s, 2),
        "speedup_vs_plain": round(plain_s / ours_s, 2),
        "identical_vs_loop": ours == loop,
        "identical_vs_batched_generate": ours == batched,
        "agreement_plain_vs_shared": sum(a == b for a, b in zip(plain, ours)) / n,
        "shared_stages_s": {k: round(v, 3) for k, v in gen.timings.items()},
        "vision_panoramas_encoded": gen.stats["panoramas_encoded"],
    }
    if args.compile:
        figures["compile_decode"] = run_compiled(vlm, prompts, samples, views, settings, len(samples), "cpu", ours_s,
                                                 ours, gen)
        print(f"compile_decode vs eager shared: {figures['compile_decode']}")
    print(f"per-sample loop (generate, batch 1) : {loop_s:7.2f} s  {n / loop_s:6.2f} samples/s")
    print(f"batched generate (batch {n})        : {batched_s:7.2f} s  {n / batched_s:6.2f} samples/s")
    print(f"ours, plain path                    : {plain_s:7.2f} s  {n / plain_s:6.2f} samples/s")
    print(f"ours, shared prefix                 : {ours_s:7.2f} s  {n / ours_s:6.2f} samples/s "
          f"(vision {gen.timings['vision_s']:.2f}, prefill {gen.timings['prefill_s']:.2f}, "
          f"decode {gen.timings['decode_s']:.2f})")
    return figures


# -- (b) GPU / smoke --------------------------------------------------------------------------------------------------
class PanoramaFiles(torch.utils.data.Dataset):
    """Decodes one JPEG per item into uint8 (3, H, W) (in a DataLoader worker), timing the decode."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from panollava.data.images import load_panorama

        start = time.perf_counter()
        pano = load_panorama(self.paths[i]).contiguous()
        return i, pano, time.perf_counter() - start


def bench_gpu(args) -> dict:
    from panollava.data.views import ViewConfig, normalize_views, render_views

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    tokenizer = load_tokenizer()
    prompts = PromptEncoder(tokenizer, IMAGE_TOKEN)
    if args.smoke:
        torch.set_num_threads(args.threads)
        vision_config, lm_config = small_configs(tokenizer, smoke=True)
        structure, pano_hw, latent, subset = quic_structure(6, args.quic_csv), (256, 512), 64, 8
        max_new, batch_size, workers = 4, 8, 1
    else:
        vision_config, lm_config = real_configs()
        structure, pano_hw, latent, subset = quic_structure(None, args.quic_csv), (1024, 2048), 768, 64
        max_new, batch_size, workers = args.max_new_tokens, args.batch_size, args.workers
    build_start = time.perf_counter()
    vlm = build_model(vision_config, lm_config, latent, tokenizer, device, dtype)
    build_s = time.perf_counter() - build_start
    size = vision_config.image_size
    config = ViewConfig(crop_strategy="anyres_e2p", image_size=(size, size))
    settings = DecodeSettings(max_new_tokens=max_new)
    tmp = tempfile.TemporaryDirectory(prefix="bench_eval_")
    paths = write_jpegs(len(structure), pano_hw, Path(tmp.name))
    samples = [(f"{p}:{q}", f"pano{p}", query) for p, (_, queries) in enumerate(structure)
               for q, query in enumerate(queries)]
    by_panorama: dict[int, list] = {}
    for s in samples:
        by_panorama.setdefault(int(s[1][4:]), []).append(s)

    def views_of(pano: torch.Tensor) -> torch.Tensor:
        pano = pano.to(device, non_blocking=True)
        return normalize_views(render_views(pano, config), [0.5] * 3, [0.5] * 3)

    # warm-up: kernels, allocator
    warm = {"pano0": views_of(synthetic_panorama(0, pano_hw))}
    run_ours(vlm, prompts, by_panorama[0], warm, DecodeSettings(max_new_tokens=2), batch_size, True, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # ours, end to end over the whole set
    loader = torch.utils.data.DataLoader(PanoramaFiles(paths), batch_size=None, num_workers=workers,
                                         pin_memory=device == "cuda", prefetch_factor=4 if workers else None)
    gen = CaptionGenerator(vlm, prompts, settings, share_prefix=True, profile=True)
    jpeg_s = views_s = 0.0
    captions: dict[str, str] = {}
    pending: list = []
    views: dict[str, torch.Tensor] = {}

    def flush() -> None:
        batch = make_batch(pending, views)
        for s, text in zip(pending, gen.generate(batch)):
            captions[s[0]] = text
        pending.clear()
        views.clear()

    sync(device)
    start = time.perf_counter()
    for p, pano, decode_s in loader:
        jpeg_s += decode_s
        group = by_panorama[p]
        if pending and len(pending) + len(group) > batch_size:
            flush()
        t0 = time.perf_counter()
        views[f"pano{p}"] = views_of(pano)
        sync(device)
        views_s += time.perf_counter() - t0
        pending += group
    if pending:
        flush()
    sync(device)
    ours_s = time.perf_counter() - start
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    # baselines and plain path on a fixed subset (views precomputed: model side only)
    sub = samples[:subset]
    sub_views = {s[1]: views_of(synthetic_panorama_from_jpeg(paths[int(s[1][4:])])) for s in sub}
    loop_s, loop, batched_s, batched = run_baselines(vlm, prompts, tokenizer, sub, sub_views, max_new, subset, device)
    shared_sub_s, shared_sub, shared_sub_gen = run_ours(vlm, prompts, sub, sub_views, settings, subset, True, device)
    plain_sub_s, plain_sub, _ = run_ours(vlm, prompts, sub, sub_views, settings, subset, False, device)
    n, m = len(samples), len(sub)
    ours_sub = [captions[s[0]] for s in sub]
    t = gen.timings
    figures = {
        "benchmark": "bench_eval (b) " + ("smoke, cpu, tiny sizes" if args.smoke else "cuda, real-size presets"),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "model_build_s": round(build_s, 1),
        "panoramas": len(structure),
        "samples": n,
        "image_tokens_per_panorama": vlm.num_image_tokens(9, (size, size)),
        "max_new_tokens": max_new,
        "batch_size": batch_size,
        "ours_end_to_end_s": round(ours_s, 2),
        "ours_samples_per_s": round(n / ours_s, 2),
        "stages_s": {
            "jpeg_decode_in_workers_cpu_s": round(jpeg_s, 2),
            "views_s": round(views_s, 2),
            "vision_s": round(t["vision_s"], 2),
            "prefill_s": round(t["prefill_s"], 2),
            "decode_s": round(t["decode_s"], 2),
        },
        "decode_steps": gen.stats["decode_forwards"],
        "ms_per_decode_step": round(1000 * t["decode_s"] / max(1, gen.stats["decode_forwards"]), 2),
        "peak_memory_gib": round(peak_gib, 2) if peak_gib is not None else None,
        "subset_samples": m,
        "loop_samples_per_s_on_subset": round(m / loop_s, 2),
        "batched_generate_samples_per_s_on_subset": round(m / batched_s, 2),
        "shared_samples_per_s_on_subset_model_side": round(m / shared_sub_s, 2),
        "loop_extrapolated_full_s": round(loop_s / m * n, 1),
        "batched_generate_extrapolated_full_s": round(batched_s / m * n, 1),
        "speedup_vs_loop": round((loop_s / m * n) / ours_s, 2),
        "speedup_vs_batched_generate": round((batched_s / m * n) / ours_s, 2),
        "speedups_note": "baselines timed on the subset (model side) and extrapolated to the full set; ours end to end",
        "identical_vs_loop_on_subset": sum(a == b for a, b in zip(ours_sub, loop)) / m,
        "identical_vs_batched_generate_on_subset": sum(a == b for a, b in zip(ours_sub, batched)) / m,
        "agreement_plain_vs_shared_on_subset": sum(a == b for a, b in zip(plain_sub, shared_sub)) / m,
        "plain_samples_per_s_on_subset_model_side": round(m / plain_sub_s, 2),
    }
    print(f"ours end to end: {n} samples in {ours_s:.1f} s = {n / ours_s:.1f} samples/s; stages {figures['stages_s']}")
    print(f"subset of {m}: loop {m / loop_s:.2f}/s, batched generate {m / batched_s:.2f}/s, "
          f"ours shared {m / shared_sub_s:.2f}/s, plain {m / plain_sub_s:.2f}/s")
    if args.compile:  # last: the other figures stand even if compilation fails or runs past the time limit
        if args.json is not None:
            args.json.write_text(json.dumps({**figures, "compile_decode_on_subset": "not finished"}, indent=1) + "\n")
        figures["compile_decode_on_subset"] = run_compiled(vlm, prompts, sub, sub_views, settings, subset, device,
                                                           shared_sub_s, shared_sub, shared_sub_gen)
        print(f"compile_decode vs eager shared on the subset: {figures['compile_decode_on_subset']}")
    tmp.cleanup()
    return figures


def synthetic_panorama_from_jpeg(path: Path) -> torch.Tensor:
    from panollava.data.images import load_panorama

    return load_panorama(path).contiguous()


# -- hf family (issue 20): off-the-shelf VLMs through panollava.families.hf ------------------------------------------
HF_SAMPLE_CSV = ROOT.parent / "shared" / "data" / "quic360-sample" / "test.csv"
HF_CPU_KINDS = ("qwen2_vl", "llava", "qwen2_5_vl_small")
# Qwen2.5-VL-3B-Instruct's published config.json / preprocessor_config.json sizes (transformers' Qwen2_5_VLConfig
# defaults are the 7B/72B ones): language model 2048 wide, 36 layers, 16 query heads over 2 key/value heads of 128,
# MLP 11008, tied embeddings, vocabulary 151,936, multimodal rotary sections 16/24/24, theta 1e6; vision tower 32
# blocks of 1280 (MLP 3420, 16 heads), windowed attention (112 px) with full attention in blocks 7/15/23/31, merged
# 2×2 into the LM's width; images between 3,136 and 12,845,056 pixels, CLIP mean/std.
QWEN25_VL_3B = {
    "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                 use_sliding_window=False, sliding_window=32768, max_window_layers=70, tie_word_embeddings=True),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                   fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"),
    "image_processor": dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                            image_mean=[0.48145466, 0.4578275, 0.40821073],
                            image_std=[0.26862954, 0.26130258, 0.27577711]),
    "initializer_range": 0.02,
}
# (a) hf's compute-bound row: the 3B code path at the size of (a)'s own small model (LM 384 wide × 4 layers, 6 query
# heads over 2 key/value heads; vision 192 wide × 4 blocks), 64 image tokens per 224² view; the wide initialiser of
# the tiny models keeps greedy choices clear of near-ties
QWEN25_VL_SMALL = {
    "text": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
                 num_key_value_heads=2, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                 tie_word_embeddings=True),
    "vision": dict(depth=4, hidden_size=192, intermediate_size=768, num_heads=4, out_hidden_size=384, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1, 3]),
    "image_processor": dict(min_pixels=28 * 28 * 4, max_pixels=224 * 224),
    "initializer_range": 0.2,
}
# the same code path with tiny sizes (--family hf --smoke); a wide initialiser as in panollava.offline.tiny_hf, so
# that random next-token distributions are peaked and the identity check tests the code, not near-ties
QWEN25_VL_SMOKE = {
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                 tie_word_embeddings=True),
    "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
    "image_processor": dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
    "initializer_range": 0.2,
}


def hf_sample_structure(csv_path: Path, queries_per_panorama: int) -> list[tuple[Path, list[str]]]:
    """(image path, first distinct queries) of each panorama of a QuIC-360-style CSV with images beside it."""
    if not csv_path.is_file():
        raise SystemExit(f"error: the sample CSV is not at {csv_path}: pass --hf_sample_csv PATH (a CSV with url and "
                         "query columns whose url paths are relative to its folder)")
    groups: dict[str, list[str]] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            queries = groups.setdefault(row["url"], [])
            if row["query"] not in queries:
                queries.append(row["query"])
    out = []
    for url, queries in groups.items():
        path = (csv_path.parent / url).resolve()
        if not path.is_file():
            raise SystemExit(f"error: {csv_path} names the image {url!r}, which is not at {path}")
        out.append((path, queries[:queries_per_panorama]))
    return out


def hf_naive_loop(model, samples: list[tuple[str, str, str]], images: dict[str, list], max_new_tokens: int,
                  sync_device: str) -> tuple[float, list[str]]:
    """What a user of the model does without panollava: per sample, the chat template, the model's processor on
    that sample's images and prompt (images processed again for every query), then ``generate`` at batch 1, greedy.
    The views (``images``: uint8 HWC arrays per panorama key) were rendered beforehand and are not timed."""
    from PIL import Image

    from panollava.data.prompts import format_user_text

    processor, hf = model.processor, model.hf_model
    weight = next(hf.parameters())
    device, dtype = weight.device, weight.dtype
    captions = []
    sync(sync_device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _, key, query in samples:
            pictures = [Image.fromarray(a) for a in images[key]]
            content = [{"type": "image"} for _ in pictures]
            content.append({"type": "text", "text": format_user_text(model.prompt_template, query)})
            text = processor.apply_chat_template([{"role": "user", "content": content}],
                                                 chat_template=model.loaded.chat_template, tokenize=False,
                                                 add_generation_prompt=True)
            inputs = processor(images=pictures, text=[text], return_tensors="pt")
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                      for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            out = hf.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              repetition_penalty=1.0)
            new = out[0, inputs["input_ids"].shape[1]:]
            captions.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    sync(sync_device)
    return time.perf_counter() - start, captions


def hf_batch(model, chunk: list[tuple[str, str, str]], inputs: dict[str, dict]) -> dict:
    """An engine batch of the hf family (interface of panollava.data.panorama_batches) from (sample_id, key, query)."""
    used = list(dict.fromkeys(key for _, key, _ in chunk))
    return {
        "index": list(range(len(chunk))),
        "sample_id": [s[0] for s in chunk],
        "query": [s[2] for s in chunk],
        "pixel_values": model.panorama_transform().collate([inputs[k] for k in used]),
        "panorama_index": torch.tensor([used.index(s[1]) for s in chunk]),
        "panorama_key": used,
    }


def hf_engine(model, samples: list[tuple[str, str, str]], panoramas: dict[str, torch.Tensor], batch_size: int,
              sync_device: str, timings: dict[str, float] | None = None) -> tuple[float, list[str]]:
    """The family's engine path: the image processor once per panorama (``panorama_transform``, views included),
    then ``generate`` on engine batches that keep a panorama's queries together (vision once per panorama, the
    shared prefix where the architecture allows it). ``timings`` receives ``image_inputs_s`` (the transforms)."""
    transform = model.panorama_transform()
    model.reset()
    inputs: dict[str, dict] = {}
    captions: list[str] = []
    transform_s = 0.0
    sync(sync_device)
    start = time.perf_counter()
    for chunk in panorama_batches(samples, batch_size):
        t0 = time.perf_counter()
        for _, key, _ in chunk:
            if key not in inputs:
                inputs[key] = transform(panoramas[key])
        transform_s += time.perf_counter() - t0
        captions += model.generate(hf_batch(model, chunk, inputs))
    sync(sync_device)
    if timings is not None:
        timings["image_inputs_s"] = transform_s
    return time.perf_counter() - start, captions


def bench_hf_cpu(args) -> dict:
    """(a) for the hf family: tiny real-class VLMs, real panoramas, naive per-sample loop vs the engine path."""
    import transformers

    from panollava.data.images import load_panorama
    from panollava.data.views import ViewConfig
    from panollava.families.hf import load_hf_model
    from panollava.families.hf.processor import panorama_images
    from panollava.offline.tiny_hf import build_tiny_hf_model

    torch.set_num_threads(args.threads)
    structure = hf_sample_structure(args.hf_sample_csv, args.hf_queries)
    panoramas = {p.stem: load_panorama(p) for p, _ in structure}
    samples = [(f"{p.stem}:{q}", p.stem, query) for p, queries in structure for q, query in enumerate(queries)]
    views = ViewConfig(crop_strategy="anyres_e2p", image_size=args.hf_view_size)
    tmp = tempfile.TemporaryDirectory(prefix="bench_eval_hf_")
    rows = []
    for kind in args.hf_kinds.split(","):
        if kind == "qwen2_5_vl_small":
            folder = write_random_qwen25_vl(Path(tmp.name) / kind, QWEN25_VL_SMALL, "cpu", torch.float32)
        else:
            folder = build_tiny_hf_model(kind, Path(tmp.name) / kind)
        model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=args.max_new_tokens))
        panorama_images(panoramas[samples[0][1]], views)  # warm: the first call computes the sampling grids
        start = time.perf_counter()
        images = {key: panorama_images(pano, views) for key, pano in panoramas.items()}
        views_s = time.perf_counter() - start  # the loop's views, once per panorama (not in its time)
        # warm-up: first calls allocate and pick kernels
        hf_naive_loop(model, samples[:1], images, 2, "cpu")
        hf_engine(model, samples[:2], panoramas, 2, "cpu")
        loop_times, engine_times, inputs_times = [], [], []
        for _ in range(args.hf_repeats):  # interleaved rounds; medians reported
            loop_s, loop = hf_naive_loop(model, samples, images, args.max_new_tokens, "cpu")
            stages: dict[str, float] = {}
            engine_s, engine = hf_engine(model, samples, panoramas, len(samples), "cpu", stages)
            loop_times.append(loop_s)
            engine_times.append(engine_s)
            inputs_times.append(stages["image_inputs_s"])
            if engine != loop:
                break
        loop_s, engine_s = statistics.median(loop_times), statistics.median(engine_times)
        image_tokens = hf_image_tokens(model, panoramas[samples[0][1]], samples[0][2])
        info = model.describe_decoding()
        n = len(samples)
        rows.append({
            "kind": kind,
            "architecture": model.identity["architecture"],
            "path": info["path"],
            "vision_encoder": info["vision_encoder"],
            "image_tokens_per_panorama": image_tokens,
            "rounds": len(loop_times),
            "loop_s": round(loop_s, 3),
            "engine_s": round(engine_s, 3),
            "engine_image_inputs_s": round(statistics.median(inputs_times), 3),
            "loop_s_rounds": [round(t, 3) for t in loop_times],
            "engine_s_rounds": [round(t, 3) for t in engine_times],
            "loop_samples_per_s": round(n / loop_s, 2),
            "engine_samples_per_s": round(n / engine_s, 2),
            "speedup_vs_loop": round(loop_s / engine_s, 2),
            "loop_views_once_per_panorama_s": round(views_s, 3),
            "speedup_vs_loop_plus_its_views": round((loop_s + views_s) / engine_s, 2),
            "identical_vs_loop": engine == loop,
            "identical_count": sum(a == b for a, b in zip(engine, loop)),
            "distinct_captions": len(set(loop)),
        })
        print(f"hf {kind:9s}: per-sample generate loop {loop_s:6.2f} s ({n / loop_s:5.2f}/s), engine "
              f"({info['path']}) {engine_s:6.2f} s ({n / engine_s:5.2f}/s): {loop_s / engine_s:.2f}x "
              f"({(loop_s + views_s) / engine_s:.2f}x with the loop's views), identical "
              f"{rows[-1]['identical_count']}/{n}")
    tmp.cleanup()
    return {
        "benchmark": "bench_eval (a) cpu, hf family",
        "device": f"cpu: {platform.processor() or platform.machine()}, torch threads {args.threads}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "panoramas": len(panoramas),
        "samples": len(samples),
        "crop_strategy": views.crop_strategy,
        "view_size": list(views.image_size),
        "max_new_tokens": args.max_new_tokens,
        "timed": "loop: chat template + processor (images and text) + generate per sample, views rendered "
                 "beforehand; engine: panorama_transform (views + image processor) once per panorama + generate",
        "models": rows,
    }


def hf_image_tokens(model, panorama: torch.Tensor, query: str) -> int:
    """Image tokens in one prompt of ``panorama``, as the family builds the prompt."""
    from panollava.data.prompts import format_user_text
    from panollava.families.hf.processor import prompt_inputs, render_prompt

    item = model.panorama_transform()(panorama)
    text = render_prompt(model.processor, model.loaded.chat_template, item["num_images"],
                         format_user_text(model.prompt_template, query))
    ids = prompt_inputs(model.processor, text, item["image_inputs"], item["num_images"])[0]["input_ids"]
    config = model.hf_model.config
    token = getattr(config, "image_token_id", None)
    token = token if token is not None else config.image_token_index
    return int((ids == token).sum())


def write_random_qwen25_vl(folder: Path, sizes: dict, device: str, dtype: torch.dtype) -> Path:
    """A Qwen2.5-VL folder with random weights (``sizes``: QWEN25_VL_3B or QWEN25_VL_SMOKE), the tiny tokenizer and
    chat template of ``panollava.offline.tiny_hf`` (their ids are valid in any vocabulary at least as large) and a
    ``Qwen2VLImageProcessorPil`` with ``sizes``' settings; the model is built on ``device`` in ``dtype``."""
    import shutil

    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from panollava.offline.tiny_hf import build_tiny_hf_model

    tiny = build_tiny_hf_model("qwen2_5_vl", folder.parent / f"{folder.name}-tiny-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(sizes["text"])
    text.setdefault("vocab_size", ((len(tokenizer) + 63) // 64) * 64)
    text.update(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                initializer_range=sizes["initializer_range"])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config={**sizes["vision"], "initializer_range": sizes["initializer_range"]},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        initializer_range=sizes["initializer_range"], tie_word_embeddings=text["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised in fp32 (15 GB on a GPU at the 3B size), then cast
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.save_pretrained(folder)
    del model
    image_processor = Qwen2VLImageProcessorPil(**sizes["image_processor"])
    image_processor.save_pretrained(folder)
    pre_path = folder / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text())
    pre["processor_class"] = "Qwen2_5_VLProcessor"
    pre_path.write_text(json.dumps(pre, indent=2))
    tokenizer.save_pretrained(folder)
    shutil.copy(tiny / "chat_template.json", folder / "chat_template.json")
    return folder


class HFPanoramaFiles(torch.utils.data.Dataset):
    """JPEG decode + the family's ``panorama_transform`` (views, image processor) per panorama, in a worker, as
    the engine's loader does."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from panollava.data.images import load_panorama

        start = time.perf_counter()
        item = self.transform(load_panorama(self.paths[i]).contiguous())
        return i, item, time.perf_counter() - start


def bench_hf_gpu(args) -> dict:
    """(b) for the hf family: a Qwen2.5-VL-3B-shaped model with random weights, bf16 on CUDA (``--smoke``: tiny
    sizes, fp32 on CPU), end to end through the family against the naive per-sample loop on a subset."""
    import transformers

    from panollava.data.views import ViewConfig
    from panollava.families.hf import load_hf_model
    from panollava.families.hf.processor import panorama_images

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if args.smoke:
        torch.set_num_threads(args.threads)
        sizes, structure, pano_hw, view_size = QWEN25_VL_SMOKE, quic_structure(3, args.quic_csv), (256, 512), 56
        max_new, batch_size, workers, subset = 8, 8, 1, 6
    else:
        sizes, structure, pano_hw = QWEN25_VL_3B, quic_structure(args.hf_panoramas, args.quic_csv), (1024, 2048)
        view_size, max_new, batch_size, workers, subset = (args.hf_view_size, args.max_new_tokens, args.batch_size,
                                                           args.workers, args.hf_subset)
    tmp = tempfile.TemporaryDirectory(prefix="bench_eval_hf_")
    folder = Path(tmp.name) / "qwen2_5_vl"
    start = time.perf_counter()
    write_random_qwen25_vl(folder, sizes, device, dtype)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    views = ViewConfig(crop_strategy="anyres_e2p", image_size=view_size)
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=max_new),
                          dtype=str(dtype).replace("torch.", ""), device=device)
    load_s = time.perf_counter() - start
    paths = write_jpegs(len(structure), pano_hw, Path(tmp.name))
    samples = [(f"{p}:{q}", f"pano{p}", query) for p, (_, queries) in enumerate(structure)
               for q, query in enumerate(queries)]
    by_panorama: dict[int, list] = {}
    for s in samples:
        by_panorama.setdefault(int(s[1][4:]), []).append(s)
    transform = model.panorama_transform()

    # warm-up: kernels, allocator
    warm = {"pano0": synthetic_panorama_from_jpeg(paths[0])}
    hf_engine(model, by_panorama[0][:2], warm, batch_size, device)
    hf_naive_loop(model, by_panorama[0][:1], {"pano0": panorama_images(warm["pano0"], views)}, 2, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # the engine path end to end: workers decode the JPEGs and run the image processor, the main process generates
    loader = torch.utils.data.DataLoader(HFPanoramaFiles(paths, transform), batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    model.reset()
    captions: dict[str, str] = {}
    pending: list = []
    inputs: dict[str, dict] = {}
    worker_s = 0.0
    generate_s = 0.0

    def flush() -> None:
        nonlocal generate_s
        t0 = time.perf_counter()
        for s, text in zip(pending, model.generate(hf_batch(model, pending, inputs))):
            captions[s[0]] = text
        sync(device)
        generate_s += time.perf_counter() - t0
        pending.clear()
        inputs.clear()

    sync(device)
    start = time.perf_counter()
    for p, item, seconds in loader:
        worker_s += seconds
        group = by_panorama[p]
        if pending and len(pending) + len(group) > batch_size:
            flush()
        inputs[f"pano{p}"] = item
        pending += group
    if pending:
        flush()
    sync(device)
    engine_s = time.perf_counter() - start
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    path = model.describe_decoding()["path"]

    # the naive loop on the first queries (views rendered beforehand), and the engine on the same, model side
    sub = samples[:subset]
    sub_panos = {s[1]: synthetic_panorama_from_jpeg(paths[int(s[1][4:])]) for s in sub}
    sub_images = {key: panorama_images(pano, views) for key, pano in sub_panos.items()}
    loop_s, loop = hf_naive_loop(model, sub, sub_images, max_new, device)
    engine_sub_s, engine_sub = hf_engine(model, sub, sub_panos, batch_size, device)
    image_tokens = hf_image_tokens(model, sub_panos[sub[0][1]], sub[0][2])
    n, m = len(samples), len(sub)
    params = sum(p.numel() for p in model.hf_model.parameters())
    ours_sub = [captions[s[0]] for s in sub]
    figures = {
        "benchmark": "bench_eval (b) hf family, " + ("smoke, cpu, tiny sizes" if args.smoke
                                                      else "cuda, Qwen2.5-VL-3B shape, random weights"),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": params,
        "model_write_s": round(build_s, 1),
        "model_load_s": round(load_s, 1),
        "path": path,
        "vision_encoder": model.describe_decoding()["vision_encoder"],
        "panoramas": len(structure),
        "samples": n,
        "crop_strategy": views.crop_strategy,
        "view_size": list(views.image_size),
        "image_tokens_per_panorama": image_tokens,
        "max_new_tokens": max_new,
        "batch_size": batch_size,
        "engine_end_to_end_s": round(engine_s, 2),
        "engine_samples_per_s": round(n / engine_s, 2),
        "engine_stages_s": {"jpeg_and_image_processor_in_workers_cpu_s": round(worker_s, 2),
                            "generate_s": round(generate_s, 2)},
        "peak_memory_gib": round(peak_gib, 2) if peak_gib is not None else None,
        "subset_samples": m,
        "loop_s_on_subset": round(loop_s, 3),
        "loop_samples_per_s_on_subset": round(m / loop_s, 2),
        "engine_samples_per_s_on_subset_model_side": round(m / engine_sub_s, 2),
        "speedup_vs_loop_on_subset": round(loop_s / engine_sub_s, 2),
        "loop_extrapolated_full_s": round(loop_s / m * n, 1),
        "speedup_vs_loop": round((loop_s / m * n) / engine_s, 2),
        "speedups_note": "loop timed on the subset (views rendered beforehand) and extrapolated to the full set; "
                         "engine end to end (JPEG decode and image processor in workers)",
        "identical_vs_loop_on_subset": sum(a == b for a, b in zip(engine_sub, loop)) / m,
        "distinct_loop_captions_on_subset": len(set(loop)),
        "identical_end_to_end_vs_subset_engine": sum(a == b for a, b in zip(ours_sub, engine_sub)) / m,
    }
    print(f"hf engine end to end: {n} samples in {engine_s:.1f} s = {n / engine_s:.2f} samples/s ({path}); "
          f"subset of {m}: loop {m / loop_s:.2f}/s, engine {m / engine_sub_s:.2f}/s, identical "
          f"{figures['identical_vs_loop_on_subset']:.2f}")
    del model
    tmp.cleanup()
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="the --device cuda code path, tiny sizes, on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--panoramas", type=int, default=8, help="(a): panoramas, 3 queries each")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: 16 on CPU, 32 on CUDA")
    parser.add_argument("--batch_size", type=int, default=64, help="(b): samples per batch")
    parser.add_argument("--workers", type=int, default=8, help="(b): DataLoader workers decoding JPEGs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--quic_csv", type=Path, default=QUIC_TEST,
                        help="the QuIC-360 test CSV whose panorama/query structure the benchmark copies")
    parser.add_argument("--family", choices=("panollava", "hf"), default="panollava",
                        help="hf: the off-the-shelf VLM family (issue 20) instead of our PanoramicVLM")
    parser.add_argument("--hf_kinds", default=",".join(HF_CPU_KINDS),
                        help="(a) hf: tiny VLMs to time (panollava.offline.tiny_hf kinds, comma-separated)")
    parser.add_argument("--hf_sample_csv", type=Path, default=HF_SAMPLE_CSV,
                        help="(a) hf: real panoramas and queries (url paths relative to the CSV's folder)")
    parser.add_argument("--hf_queries", type=int, default=3, help="(a) hf: queries per panorama")
    parser.add_argument("--hf_repeats", type=int, default=3, help="(a) hf: interleaved timing rounds (median)")
    parser.add_argument("--hf_view_size", type=int, default=None, help="hf: view side in px (default: 224 on CPU, "
                        "448 on CUDA, Qwen2.5-VL's tile size)")
    parser.add_argument("--hf_panoramas", type=int, default=48,
                        help="(b) hf: the first N panoramas of the QuIC-360 test split (all their queries)")
    parser.add_argument("--hf_subset", type=int, default=16, help="(b) hf: queries the per-sample loop runs on")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time compile_decode against the eager shared path (default: on with --device "
                             "cuda, off on CPU, where it measured slower)")
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = args.device == "cuda" and not args.smoke and args.family == "panollava"
    if args.family == "hf" and args.compile:
        parser.error("--compile is not available with --family hf (the hf family runs the model's own generate)")
    if args.hf_view_size is None:
        args.hf_view_size = 448 if args.device == "cuda" else 224
    if args.max_new_tokens is None:
        args.max_new_tokens = 32 if args.device == "cuda" else 16
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu --smoke to check the code path)")
    if args.family == "hf":
        figures = bench_hf_gpu(args) if (args.device == "cuda" or args.smoke) else bench_hf_cpu(args)
    else:
        figures = bench_gpu(args) if (args.device == "cuda" or args.smoke) else bench_cpu(args)
    print(json.dumps(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
