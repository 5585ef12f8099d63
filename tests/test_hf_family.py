"""The hf family: off-the-shelf Hugging Face VLMs (tiny random-weight folders saved here) as CaptionModels.

Captions are checked against the model's own ``generate`` called per sample at batch 1 on inputs built
independently here (AutoProcessor where it builds; for Qwen2-VL without torchvision, the image processor, the
chat template and the placeholder expansion by hand), on three real QuIC-360 panoramas with 1-3 queries each.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from panollava.data.images import load_panorama
from panollava.data.views import ViewConfig, letterbox, render_views
from panollava.errors import InputNotFoundError, InvalidInputError, ModelUnavailableError
from panollava.families.hf.model import load_hf_model
from panollava.families.hf.processor import load_processor, merged_call_kwargs, panorama_images, prompt_inputs
from panollava.offline.tiny_hf import build_tiny_hf_model
from panollava.generation.settings import DecodeSettings
from panollava.schema import DEFAULT_PROMPT_TEMPLATE

MAX_NEW = 10
VIEW_SIZE = (56, 56)
# (panorama, query): 3 panoramas with 1, 3 and 2 queries (real QuIC-360 test queries of these images)
SAMPLES = [
    (0, "interior"),
    (1, "furniture"), (1, "interior"), (1, "small objects"),
    (2, "monuments"), (2, "people"),
]


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken wheel raises RuntimeError, not ImportError
        return False
    return True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tiny")
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = build_tiny_hf_model(kind, root / kind)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def panoramas(sample_panoramas):
    chosen = [sample_panoramas[i] for i in (0, 1, 2)]
    return [(p.stem, load_panorama(p, max_width=512)) for p in chosen]


def _views(strategy: str) -> ViewConfig:
    return ViewConfig(crop_strategy=strategy, image_size=VIEW_SIZE)


def _batches(samples, batch_size):
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]


def run_engine(model, panoramas, samples=SAMPLES, batch_size=4, order=None, ids=None):
    """What the engine does: batches of samples, each with the panoramas it reads (image inputs made once)."""
    inputs = {}
    transform = model.panorama_transform()
    indexed = [(f"s{k}", p, q) for k, (p, q) in enumerate(samples)] if ids is None else [
        (sid, p, q) for sid, (p, q) in zip(ids, samples)]
    if order is not None:
        indexed = [indexed[i] for i in order]
    captions = {}
    model.reset()
    for chunk in _batches(indexed, batch_size):
        used = list(dict.fromkeys(p for _, p, _ in chunk))
        for p in used:
            if p not in inputs:
                inputs[p] = transform(panoramas[p][1])
        batch = {
            "query": [q for _, _, q in chunk],
            "sample_id": [sid for sid, _, _ in chunk],
            "pixel_values": model.panorama_transform().collate([inputs[p] for p in used]),
            "panorama_index": torch.tensor([used.index(p) for _, p, _ in chunk]),
            "panorama_key": [panoramas[p][0] for p in used],
        }
        for (sid, _, _), caption in zip(chunk, model.generate(batch)):
            captions[sid] = caption
    return captions


def _images(pano: torch.Tensor, views: ViewConfig):
    """The protocol's images, built here from the view functions (not through the family)."""
    from PIL import Image

    if views.crop_strategy == "resize":
        return [Image.fromarray(pano.permute(1, 2, 0).contiguous().numpy())]
    rendered = (render_views(pano, views) * 255).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(v.permute(1, 2, 0).contiguous().numpy()) for v in rendered]


def _messages(n: int, query: str):
    text = DEFAULT_PROMPT_TEMPLATE.replace("{query}", query)
    return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]


def _chat(processor, messages) -> str:
    # Blip2Processor drops its chat template at init; the tokenizer reads it from the folder's chat_template.jinja
    template = processor.chat_template or processor.tokenizer.chat_template
    return processor.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def reference_inputs(folder: Path, kind: str, pano: torch.Tensor, query: str, views: ViewConfig) -> dict:
    """Inputs of one prompt as a user of the model would build them."""
    images = _images(pano, views)
    if kind in ("qwen2_vl", "qwen2_5_vl", "internvl") and not _torchvision_importable():
        return manual_inputs(folder, kind, images, query)
    from transformers import AutoProcessor

    return canonical_inputs(AutoProcessor.from_pretrained(folder), images, query)


def canonical_inputs(processor, images, query: str) -> dict:
    """The documented way: the processor's apply_chat_template with the images in the conversation, tokenised."""
    messages = _messages(len(images), query)
    messages[0]["content"] = [{"type": "image", "image": img} for img in images] + messages[0]["content"][-1:]
    template = processor.chat_template or processor.tokenizer.chat_template  # Blip2Processor drops its own
    return dict(processor.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_tensors="pt",
        add_generation_prompt=True,
    ))


def manual_inputs(folder: Path, kind: str, images, query: str) -> dict:
    """AutoProcessor needs torchvision for these (their processors hold a video processor): the inputs by hand,
    from the Pil image processor, the chat template and each model's documented placeholder expansion."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "internvl":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        image_processor = GotOcr2ImageProcessorPil.from_pretrained(folder)
        pixels = dict(image_processor(images, crop_to_patches=True, return_tensors="pt"))
        template = (folder / "chat_template.jinja").read_text()
        placeholder = "<IMG_CONTEXT>"
        seq = json.loads((folder / "processor_config.json").read_text())["image_seq_length"]
        expansions = [f"<img>{placeholder * seq * int(n)}</img>" for n in pixels.pop("num_patches")]
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
        pixels = dict(image_processor(images, return_tensors="pt"))
        template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        placeholder = "<|image_pad|>"
        counts = (pixels["image_grid_thw"].prod(-1) // image_processor.merge_size**2).tolist()
        expansions = [placeholder * c for c in counts]
    text = tokenizer.apply_chat_template(
        _messages(len(images), query), chat_template=template, tokenize=False, add_generation_prompt=True
    )
    parts = text.split(placeholder)
    assert len(parts) == len(images) + 1
    text = parts[0] + "".join(e + rest for e, rest in zip(expansions, parts[1:]))
    ids = dict(tokenizer(text, return_tensors="pt"))
    if kind != "internvl":  # Qwen2-VL's processor marks image tokens for the multimodal rotary positions
        ids["mm_token_type_ids"] = (ids["input_ids"] == tokenizer.convert_tokens_to_ids(placeholder)).long()
    return {**ids, **pixels}


def reference_caption(model, tokenizer, inputs: dict, max_new: int = MAX_NEW) -> str:
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new, repetition_penalty=1.0)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def reference_captions(folder, kind, panoramas, views, adapter=None):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    captions = {}
    with torch.inference_mode():
        for k, (p, q) in enumerate(SAMPLES):
            inputs = reference_inputs(folder, kind, panoramas[p][1], q, views)
            captions[f"s{k}"] = reference_caption(model, tokenizer, inputs)
    return captions


def _pre_encoded() -> bool:
    import inspect

    from transformers import Qwen2VLForConditionalGeneration

    return "mm_encoder_outputs" in inspect.signature(Qwen2VLForConditionalGeneration.forward).parameters


PRE_ENCODED = _pre_encoded()
SHARED_PREFIX_KINDS = ("qwen2_vl", "qwen2_5_vl", "llava", "internvl")
FAMILIES = [("qwen2_vl", "anyres_e2p"), ("qwen2_5_vl", "cubemap"), ("llava", "anyres_e2p"), ("gemma3", "cubemap"),
            ("internvl", "anyres_e2p")]


@pytest.mark.parametrize("kind,strategy", FAMILIES)
def test_greedy_equals_per_sample_generate(tiny, panoramas, kind, strategy):
    folder = tiny(kind)
    views = _views(strategy)
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW))
    expected = reference_captions(folder, kind, panoramas, views)
    assert any(expected.values()), expected
    assert len(set(expected.values())) > 1, f"{kind}: every caption is the same, the check would be weak: {expected}"
    for batch_size in (1, 4):
        assert run_engine(model, panoramas, batch_size=batch_size) == expected, (kind, batch_size)
    info = model.describe_decoding()
    shared = PRE_ENCODED and kind in SHARED_PREFIX_KINDS
    assert info["path"] == ("shared_prefix" if shared else "generate"), info
    assert info["vision_encoder"] == ("once_per_panorama" if PRE_ENCODED else "per_sample")
    if kind == "gemma3" and PRE_ENCODED:
        assert "sliding-window" in info["shared_prefix_refused"]
    # the plain path: one left-padded generate over whole prompts
    plain = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW), share_prefix=False)
    assert run_engine(plain, panoramas, batch_size=4) == expected, (kind, "generate path")
    assert plain.describe_decoding()["path"] == "generate" and plain.describe_decoding()["padding"] == "left"
    # the path of transformers without pre-encoded inputs (e.g. 5.17): pixels through generate, per sample
    plain._encode_once = False
    assert run_engine(plain, panoramas, batch_size=4) == expected, (kind, "per-sample encoder")
    assert plain.describe_decoding()["vision_encoder"] == "per_sample"


def test_single_image_family_resize_equals_generate_and_refuses_several(tiny, panoramas):
    folder = tiny("blip2")
    views = _views("resize")
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW))
    assert run_engine(model, panoramas, batch_size=4) == reference_captions(folder, "blip2", panoramas, views)
    assert model.describe_decoding()["vision_encoder"] == "per_sample"  # its generate takes pixels only
    with pytest.raises(InvalidInputError, match=r"BLIP-2 .* takes 1 image per prompt, but crop_strategy 'anyres_e2p' "
                                                r"gives 9 images .* use --data.crop_strategy resize"):
        load_hf_model(folder, crop_strategy="anyres_e2p")


@pytest.mark.skipif(not PRE_ENCODED, reason="the shared prefix needs mm_encoder_outputs (absent from 5.17)")
def test_shared_prefix_with_prefixes_of_different_lengths(tiny, panoramas):
    """resize with Qwen2-VL: a 3:2 crop gives another image-token count, so another prefix length (two groups)."""
    folder = tiny("qwen2_vl")
    views = _views("resize")
    mixed = list(panoramas)
    mixed[1] = ("cropped", panoramas[1][1][:, :, : panoramas[1][1].shape[2] * 3 // 4].contiguous())
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW))
    counts = {model.panorama_transform()(p)["image_inputs"]["image_grid_thw"].prod().item() for _, p in mixed}
    assert len(counts) == 2
    expected = reference_captions(folder, "qwen2_vl", mixed, views)
    assert run_engine(model, mixed, batch_size=6) == expected
    assert model.describe_decoding()["path"] == "shared_prefix"


@pytest.mark.skipif(not PRE_ENCODED, reason="this transformers has no mm_encoder_outputs (pre-encoded images, absent "
                                         "from 5.17): the vision encoder runs inside generate, per sample")
def test_vision_encoder_runs_once_per_panorama(tiny, panoramas):
    model = load_hf_model(tiny("qwen2_vl"), views=_views("cubemap"), decode=DecodeSettings(max_new_tokens=3))
    base = model.hf_model.base_model
    calls = []
    original = base.get_image_features

    @functools.wraps(original)  # keeps the signature, which decides what the family hands it
    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    base.get_image_features = counting
    try:
        run_engine(model, panoramas, batch_size=len(SAMPLES))
        assert len(calls) == 3  # 6 samples, 3 panoramas
        calls.clear()
        run_engine(model, panoramas, batch_size=2)  # batches [0,1] [1,1] [2,2]: panorama 1 carried over
        assert len(calls) == 3
    finally:
        del base.get_image_features


SAMPLING = dict(do_sample=True, temperature=1.3, top_k=50, top_p=0.95, seed=11, max_new_tokens=MAX_NEW)


@pytest.mark.parametrize("kind,strategy", FAMILIES)
def test_sampled_captions_do_not_depend_on_batching_or_ranks(tiny, panoramas, kind, strategy):
    folder = tiny(kind)
    model = load_hf_model(folder, views=_views(strategy), decode=DecodeSettings(**SAMPLING))
    reference = run_engine(model, panoramas, batch_size=1)
    assert run_engine(model, panoramas, batch_size=4) == reference
    assert run_engine(model, panoramas, batch_size=6, order=[5, 2, 0, 4, 1, 3]) == reference
    # two ranks: panoramas {0, 2} and {1}
    rank0 = [(p, q) for p, q in SAMPLES if p != 1]
    rank1 = [(p, q) for p, q in SAMPLES if p == 1]
    ids0 = [f"s{k}" for k, (p, _) in enumerate(SAMPLES) if p != 1]
    ids1 = [f"s{k}" for k, (p, _) in enumerate(SAMPLES) if p == 1]
    split = {}
    for ids, part in ((ids0, rank0), (ids1, rank1)):  # sample ids stay global, as the engine's do
        split.update(run_engine(model, panoramas, samples=part, ids=ids, batch_size=3))
    assert split == reference
    plain = load_hf_model(folder, views=_views(strategy), decode=DecodeSettings(**SAMPLING), share_prefix=False)
    assert run_engine(plain, panoramas, batch_size=4) == reference  # shared-prefix and plain paths agree
    greedy = load_hf_model(folder, views=_views(strategy), decode=DecodeSettings(max_new_tokens=MAX_NEW))
    assert run_engine(greedy, panoramas, batch_size=6) != reference
    other_seed = load_hf_model(folder, views=_views(strategy), decode=DecodeSettings(**{**SAMPLING, "seed": 12}))
    assert run_engine(other_seed, panoramas, batch_size=6) != reference
    assert model.describe_decoding()["sampling"] == "seeded_per_sample_logits_processor"


def test_peft_adapter_changes_captions_and_equals_generate_on_adapted_model(tiny, panoramas, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    folder = tiny("llava")
    views = _views("cubemap")
    base = AutoModelForImageTextToText.from_pretrained(folder)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                        init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():  # B != 0 and large enough to change greedy tokens
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()

    decode = DecodeSettings(max_new_tokens=MAX_NEW)
    plain = run_engine(load_hf_model(folder, views=views, decode=decode), panoramas)
    adapted_model = load_hf_model(folder, adapter=adapter, views=views, decode=decode)
    adapted = run_engine(adapted_model, panoramas, batch_size=4)
    assert adapted != plain
    assert adapted == reference_captions(folder, "llava", panoramas, views, adapter=adapter)
    prov = adapted_model.provenance()["adapter"]
    assert prov["path"] == str(adapter.resolve())
    weights_sha = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert prov["files"]["adapter_model.safetensors"] == weights_sha
    assert adapted_model.fingerprint()["adapter_sha256"] == prov["sha256"]


@pytest.mark.parametrize("strategy,count", [("resize", 1), ("cubemap", 4), ("anyres_e2p", 9)])
def test_protocol_image_counts_and_order(tiny, panoramas, strategy, count):
    model = load_hf_model(tiny("qwen2_vl"), views=_views(strategy), decode=DecodeSettings(max_new_tokens=2))
    pano = panoramas[1][1]
    item = model.panorama_transform()(pano)
    assert item["num_images"] == count
    assert item["image_inputs"]["image_grid_thw"].shape[0] == count
    images = panorama_images(pano, _views(strategy))
    assert len(images) == count
    if strategy == "resize":  # the whole panorama, aspect kept; the processor keeps ~2:1 too
        assert images[0].shape == (pano.shape[1], pano.shape[2], 3)
        np.testing.assert_array_equal(images[0], pano.permute(1, 2, 0).numpy())
        _, h, w = item["image_inputs"]["image_grid_thw"][0].tolist()
        assert w >= 2 * h - 2
    else:
        views = render_views(pano, _views(strategy))
        for k in range(count):
            expected = (views[k] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(images[k], expected)
        if strategy == "anyres_e2p":  # view 0 is the letterboxed whole panorama
            glob = (letterbox(pano, VIEW_SIZE) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(images[0], glob)
        if strategy == "cubemap":  # F, R, B, L: face 0 looks at the panorama's centre column
            from panollava.data.views import view_geometries

            assert [g.yaw_deg for g in view_geometries(_views(strategy))] == [0.0, 90.0, -180.0, -90.0]
    assert model.provenance()["protocol"]["num_images"] == count


def test_repetition_penalty_applies_to_generated_tokens_only(tiny, panoramas):
    from transformers import AutoModelForImageTextToText, AutoTokenizer, LogitsProcessorList

    folder = tiny("llava")
    views = _views("cubemap")
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW, repetition_penalty=3.0))
    reference = AutoModelForImageTextToText.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def penalise_generated(prompt_length):
        def processor(input_ids, scores):
            for row in range(scores.shape[0]):
                for token in set(input_ids[row, prompt_length:].tolist()):
                    value = scores[row, token]
                    scores[row, token] = value * 3.0 if value < 0 else value / 3.0
            return scores
        return processor

    expected = {}
    with torch.inference_mode():
        for k, (p, q) in enumerate(SAMPLES):
            inputs = reference_inputs(folder, "llava", panoramas[p][1], q, views)
            length = inputs["input_ids"].shape[1]
            out = reference.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW,
                                     logits_processor=LogitsProcessorList([penalise_generated(length)]))
            expected[f"s{k}"] = tokenizer.decode(out[0, length:], skip_special_tokens=True).strip()
    assert run_engine(model, panoramas, batch_size=1) == expected
    assert run_engine(model, panoramas, batch_size=4) == expected
    plain = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=MAX_NEW))
    assert run_engine(plain, panoramas, batch_size=4) != expected
    assert model.describe_decoding()["repetition_penalty_on"] == "generated_tokens"


def test_resize_downscales_with_antialiasing_only_when_asked(tiny, panoramas):
    from panollava.data.views import resize_panorama

    pano = panoramas[0][1]  # 512 x 256
    as_is = panorama_images(pano, _views("resize"))[0]
    assert as_is.shape == (256, 512, 3)
    reduced = panorama_images(pano, _views("resize"), max_side=128)[0]
    assert reduced.shape == (64, 128, 3)
    expected = (resize_panorama(pano, (64, 128)) * 255).round().clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(reduced, expected.permute(1, 2, 0).numpy())
    # antialiased: not a nearest-neighbour subsample of the panorama
    assert not np.array_equal(reduced, pano.permute(1, 2, 0).numpy()[::4, ::4])
    model = load_hf_model(tiny("qwen2_vl"), crop_strategy="resize", resize_max_side=128)
    assert model.panorama_transform()(pano)["image_inputs"]["image_grid_thw"].shape[0] == 1
    assert model.fingerprint()["protocol"]["resize_max_side"] == 128
    with pytest.raises(InvalidInputError, match="resize_max_side must be an integer >= 8"):
        load_hf_model(tiny("qwen2_vl"), crop_strategy="resize", resize_max_side=0)


def test_beam_search_equals_per_sample_generate(tiny, panoramas):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = tiny("qwen2_vl")
    views = _views("cubemap")
    model = load_hf_model(folder, views=views, decode=DecodeSettings(max_new_tokens=6, num_beams=2))
    reference = AutoModelForImageTextToText.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = {}
    with torch.inference_mode():
        for k, (p, q) in enumerate(SAMPLES):
            inputs = reference_inputs(folder, "qwen2_vl", panoramas[p][1], q, views)
            out = reference.generate(**inputs, do_sample=False, num_beams=2, max_new_tokens=6)
            new = out[0, inputs["input_ids"].shape[1]:]
            expected[f"s{k}"] = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert run_engine(model, panoramas, batch_size=4) == expected


@pytest.mark.parametrize("kind", ["gemma3", "qwen2_vl", "internvl"])
def test_input_transform_is_picklable_and_deterministic(tiny, panoramas, kind):
    model = load_hf_model(tiny(kind), views=_views("anyres_e2p"))
    transform = pickle.loads(pickle.dumps(model.panorama_transform()))
    a, b = transform(panoramas[0][1]), model.panorama_transform()(panoramas[0][1])
    assert a.keys() == b.keys()
    for name in a["image_inputs"]:
        torch.testing.assert_close(a["image_inputs"][name], b["image_inputs"][name], rtol=0, atol=0)
    # the loader's collate_fn and the processor itself (assembled without torchvision: a run-time subclass) pickle
    assert pickle.loads(pickle.dumps(model.panorama_transform())).collate([a]) == [a]
    processor = pickle.loads(pickle.dumps(model.processor))
    assert type(processor).__name__ == type(model.processor).__name__
    assert processor.tokenizer("a room")["input_ids"] == model.processor.tokenizer("a room")["input_ids"]


@pytest.mark.parametrize("kind", ["llava", "gemma3", "blip2"])
def test_assembled_processor_gives_autoprocessor_inputs(tiny, panoramas, kind):
    """Without AutoProcessor (the Qwen2-VL route without torchvision), the same processor class built from the
    folder's parts and fed the panorama's precomputed image outputs gives exactly AutoProcessor's inputs."""
    from transformers import AutoProcessor

    folder = tiny(kind)
    views = _views("resize" if kind == "blip2" else "anyres_e2p")
    pano = panoramas[2][1]
    auto = AutoProcessor.from_pretrained(folder)
    images = _images(pano, views)
    text = _chat(auto, _messages(len(images), "people"))
    expected = canonical_inputs(auto, images, "people")
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    loaded = load_processor(folder, model_type, force_assembled=True)
    assert loaded.how == "assembled" and type(loaded.processor).__name__ == type(auto).__name__
    from panollava.families.hf.processor import PanoramaProcessor

    transform = PanoramaProcessor(loaded.processor.image_processor,
                                  merged_call_kwargs(loaded.processor)["images_kwargs"], views)
    item = transform(pano)
    text_inputs, image_keys = prompt_inputs(loaded.processor, text, item["image_inputs"], item["num_images"])
    got = {**text_inputs, **{k: item["image_inputs"][k] for k in image_keys}}
    assert set(expected.keys()) == set(got.keys())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", ["qwen2_vl", "internvl"])
def test_assembled_inputs_equal_reference_assembly(tiny, panoramas, kind):
    """Qwen2-VL's and InternVL's inputs (assembled processor without torchvision) equal the hand-built reference,
    token-type ids included; with torchvision importable, AutoProcessor's."""
    folder = tiny(kind)
    views = _views("anyres_e2p")
    model = load_hf_model(folder, views=views)
    pano = panoramas[0][1]
    item = model.panorama_transform()(pano)
    text = model._prompt("interior", item["num_images"])
    text_inputs, image_keys = prompt_inputs(model.processor, text, item["image_inputs"], item["num_images"])
    got = {**text_inputs, **{k: item["image_inputs"][k] for k in image_keys}}
    if _torchvision_importable():
        from transformers import AutoProcessor

        auto = AutoProcessor.from_pretrained(folder)
        expected = dict(auto(images=_images(pano, views), text=[text], return_tensors="pt"))
    else:
        assert model.loaded.how == "assembled" and "torchvision" in model.loaded.reason.lower()
        expected = reference_inputs(folder, kind, pano, "interior", views)
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_qwen_autoprocessor_and_assembled_agree_with_torchvision(tiny, panoramas):
    if not _torchvision_importable():
        pytest.skip("torchvision is not importable here (it does not import beside torch 2.13 CPU), so "
                    "AutoProcessor cannot build Qwen2-VL's processor; the assembled inputs are checked against the "
                    "hand-built reference in test_assembled_inputs_equal_reference_assembly")
    from transformers import AutoProcessor

    folder = tiny("qwen2_vl")
    views = _views("cubemap")
    pano = panoramas[1][1]
    auto = AutoProcessor.from_pretrained(folder)
    loaded = load_processor(folder, "qwen2_vl", force_assembled=True)
    images = _images(pano, views)
    text = auto.apply_chat_template(_messages(4, "furniture"), tokenize=False, add_generation_prompt=True)
    a = auto(images=images, text=[text], return_tensors="pt")
    b = loaded.processor(images=images, text=[text], return_tensors="pt")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_provenance_and_fingerprint(tiny, tmp_path):
    folder = tiny("qwen2_vl")
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--Org--Tiny-VL" / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    model = load_hf_model(snapshot, crop_strategy="cubemap", dtype="bfloat16")
    prov = model.provenance()
    assert prov["model"] == "Org/Tiny-VL" and prov["revision"] == revision
    assert prov["dtype"] == "bfloat16" and next(model.module.parameters()).dtype == torch.bfloat16
    assert prov["protocol"]["crop_strategy"] == "cubemap" and prov["protocol"]["num_images"] == 4
    assert prov["processor"]["how"] == ("AutoProcessor" if _torchvision_importable() else "assembled")
    assert prov["processor"]["image_processor"]["class"].startswith("Qwen2VLImageProcessor")
    assert prov["prompt_template"] == DEFAULT_PROMPT_TEMPLATE and prov["adapter"] is None
    json.dumps(prov)
    fp = model.fingerprint()
    assert fp["revision"] == revision and fp["weights_sha256"] is None
    local = load_hf_model(folder, crop_strategy="anyres_e2p")
    lfp = local.fingerprint()
    assert lfp["revision"] is None
    assert lfp["weights_sha256"]["model.safetensors"] == hashlib.sha256(
        (folder / "model.safetensors").read_bytes()).hexdigest()
    assert lfp["protocol"] != fp["protocol"]
    json.dumps(lfp)
    other_prompt = load_hf_model(folder, crop_strategy="anyres_e2p", prompt_template="Describe {query}.")
    assert other_prompt.fingerprint() != lfp


def test_hub_id_resolves_to_the_cached_snapshot(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub is unreachable here anyway
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "cache" / "models--Org--Tiny-Llava"
    shutil.copytree(tiny("llava"), repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    model = load_hf_model("Org/Tiny-Llava", crop_strategy="cubemap", cache_dir=tmp_path / "cache")
    prov = model.provenance()
    assert prov["model"] == "Org/Tiny-Llava" and prov["revision"] == revision
    assert Path(prov["folder"]) == (repo / "snapshots" / revision).resolve()
    with pytest.raises(ModelUnavailableError, match=r"cannot get the model 'Org/Absent' from the Hugging Face hub"):
        load_hf_model("Org/Absent", cache_dir=tmp_path / "cache")


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_hf_model(tmp_path / "nowhere")
    # unknown architecture: a text-only model folder
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text_only = tmp_path / "text-only"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(text_only)
    with pytest.raises(ModelUnavailableError, match=r"'qwen2' .* which the hf family does not serve; supported"):
        load_hf_model(text_only)
    # missing chat template
    bare = tmp_path / "no-template"
    shutil.copytree(tiny("llava"), bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match="has no chat template"):
        load_hf_model(bare)
    # a chat template that drops the images: refused at load time
    textual = tmp_path / "text-template"
    shutil.copytree(tiny("llava"), textual)
    (textual / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    with pytest.raises(InvalidInputError, match=r"the prompt does not fit the 9 image\(s\) of the panorama"):
        load_hf_model(textual, crop_strategy="anyres_e2p")
    # adapter folder that is not an adapter
    with pytest.raises(InputNotFoundError, match="is not a peft adapter"):
        load_hf_model(tiny("llava"), adapter=tiny("llava"))
    with pytest.raises(InvalidInputError, match="dtype must be one of"):
        load_hf_model(tiny("llava"), dtype="int8")
    with pytest.raises(InvalidInputError, match="has no '{query}' field"):
        load_hf_model(tiny("llava"), prompt_template="Describe it.")
