"""Model building: tiny offline models, the VLM's shapes, resamplers, LoRA placement, generation and errors.

Everything runs on tiny models written to a temporary folder (once per session) and loaded through the real
``from_pretrained(local_dir)`` path.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from panollava.data.prompts import PromptEncoder
from panollava.errors import InvalidInputError, ModelUnavailableError
from panollava.models.build import build_vlm, load_image_preprocessing, load_tokenizer
from panollava.models.resampler import RESAMPLERS, AvgPoolResampler, IdentityResampler, MLPResampler, build_resampler
from panollava.offline.tiny_models import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_models
from panollava.models.vlm import position_ids_from_mask

IMAGE_TOKEN = "<|image_pad|>"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")



@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny") / "models")


def _config(tiny_dirs: dict[str, Path], vision: str, resampler: str = "mlp", latent: int = 48) -> dict:
    return {
        "vision_name": str(tiny_dirs[vision]),
        "language_model_name": str(tiny_dirs["tiny-qwen3"]),
        "resampler_type": resampler,
        "latent_dimension": latent,
    }


@pytest.fixture(scope="module")
def vlms(tiny_dirs: dict[str, Path]) -> dict[str, tuple]:
    """One VLM per vision kind, with LoRA r=4 / alpha=8 (not the defaults, so that honouring them is visible)."""
    torch.manual_seed(0)
    out = {}
    for kind in ("siglip", "siglip2"):
        vlm, tok = build_vlm(_config(tiny_dirs, f"tiny-{kind}"), lora={"r": 4, "alpha": 8, "dropout": 0.0})
        out[kind] = (vlm.eval(), tok)
    return out


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Large random weights, so that greedy generation depends on every input token (the tiny LM's 0.02-std init
    emits one token over and over)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                scale = (0.75 if "embed" in name else 1.5) / p.shape[-1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def gen_vlm(tiny_dirs: dict[str, Path]):
    torch.manual_seed(0)
    vlm, tok = build_vlm(_config(tiny_dirs, "tiny-siglip2", "avgpool"), lora={"r": 4, "alpha": 8})
    _randomise(vlm, seed=1)
    return vlm.eval(), tok


# -- tiny models ---------------------------------------------------------------------------------------------------
def test_tiny_models_are_complete_local_folders(tiny_dirs: dict[str, Path]) -> None:
    assert set(tiny_dirs) == {"tiny-siglip", "tiny-siglip2", "tiny-qwen3"}
    for path in tiny_dirs.values():
        assert path.is_absolute() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (tiny_dirs["tiny-siglip"] / "preprocessor_config.json").is_file()
    assert (tiny_dirs["tiny-siglip2"] / "preprocessor_config.json").is_file()
    # A second call finds the complete set and returns the same folders without rebuilding.
    stamp = (tiny_dirs["tiny-qwen3"] / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_models(tiny_dirs["tiny-qwen3"].parent) == tiny_dirs
    assert (tiny_dirs["tiny-qwen3"] / "model.safetensors").stat().st_mtime_ns == stamp


def test_image_mean_and_std_come_from_the_processor_json(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Read from ``preprocessor_config.json`` without building an image processor (which needs torchvision on
    transformers 5.17); a processor without mean/std, or none at all, is an error that says what to record."""
    folder = tmp_path / "vision"
    shutil.copytree(tiny_dirs["tiny-siglip"], folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config.update(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    prep = load_image_preprocessing(str(folder), None, True)
    assert prep.mean == (0.1, 0.2, 0.3) and prep.std == (0.4, 0.5, 0.6) and prep.image_size == (32, 32)
    del config["image_std"]
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=r"does not record image_std: .*--data.image_std"):
        load_image_preprocessing(str(folder), None, True)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(InvalidInputError, match=r"cannot read the image processor.*--data.image_mean"):
        load_image_preprocessing(str(folder), None, True)


def test_tiny_tokenizer_reloads_through_auto_tokenizer(tiny_dirs: dict[str, Path]) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dirs["tiny-qwen3"])
    again = transformers.AutoTokenizer.from_pretrained(tiny_dirs["tiny-qwen3"])
    assert tok.get_vocab() == again.get_vocab()
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in SPECIAL_TOKENS:  # each special token is one id and survives a round trip
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
    text = 'In this panoramic image, please provide a concise but detailed description of "furniture {x}".'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == again(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    ("name", "config_cls", "model_cls"),
    [
        ("tiny-siglip", "SiglipVisionConfig", "SiglipVisionModel"),
        ("tiny-siglip2", "Siglip2VisionConfig", "Siglip2VisionModel"),
        ("tiny-qwen3", "Qwen3Config", "AutoModelForCausalLM"),
    ],
)
def test_tiny_model_reloads_with_identical_outputs(
    tiny_dirs: dict[str, Path], name: str, config_cls: str, model_cls: str
) -> None:
    config = transformers.AutoConfig.from_pretrained(tiny_dirs[name])
    assert type(config).__name__ == config_cls
    loader = getattr(transformers, model_cls)
    model, info = loader.from_pretrained(tiny_dirs[name], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # The build seeds 0 right before constructing the model: the same init in memory must equal the saved one.
    torch.manual_seed(0)
    if model_cls == "AutoModelForCausalLM":
        fresh = transformers.Qwen3ForCausalLM(config)
    else:
        fresh = getattr(transformers, model_cls)(config)
    model.eval(), fresh.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name == "tiny-qwen3":
            ids = torch.randint(0, config.vocab_size, (2, 7), generator=g)
            a, b = model(input_ids=ids).logits, fresh(input_ids=ids).logits
        elif name == "tiny-siglip":
            px = torch.randn(2, 3, 32, 32, generator=g)
            a, b = model(pixel_values=px).last_hidden_state, fresh(pixel_values=px).last_hidden_state
        else:
            kw = {
                "pixel_values": torch.randn(2, 16, 8 * 8 * 3, generator=g),
                "pixel_attention_mask": torch.ones(2, 16, dtype=torch.long),
                "spatial_shapes": torch.tensor([[4, 4], [4, 4]]),
            }
            a, b = model(**kw).last_hidden_state, fresh(**kw).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "vision_kwargs", "kind"),
    [
        ("SiglipConfig", "SiglipModel", {"image_size": 32}, "siglip"),
        ("Siglip2Config", "Siglip2Model", {"num_patches": 16}, "siglip2"),
    ],
)
def test_full_siglip_checkpoint_loads_its_vision_part(
    tmp_path: Path, config_cls: str, model_cls: str, vision_kwargs: dict, kind: str
) -> None:
    # Hub checkpoints are full image-text models: the vision tower must come out with the saved weights.
    from panollava.models.build import load_vision_tower

    config = getattr(transformers, config_cls)(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "patch_size": 8, **vision_kwargs},
    )
    torch.manual_seed(0)
    full = getattr(transformers, model_cls)(config)
    full.save_pretrained(tmp_path / "full")
    tower, got_kind, patch = load_vision_tower(str(tmp_path / "full"))
    assert (got_kind, patch) == (kind, 8)
    expected = full.vision_model.state_dict()
    state = tower.state_dict()
    assert state and all(torch.equal(value, expected[key]) for key, value in state.items())
    assert not any(key.startswith("head.") for key in state)  # patch tokens are used, not the pooled output


# -- shapes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_image_features_shape(vlms: dict, kind: str) -> None:
    vlm, _ = vlms[kind]
    assert vlm.vision_kind == kind and vlm.patch_size == 8
    lm_hidden = vlm.language_model.get_input_embeddings().embedding_dim
    per_view = vlm.tokens_per_view((32, 32))
    assert per_view == (32 // 8) ** 2
    assert vlm.num_image_tokens(3, (32, 32)) == 3 * per_view
    with torch.no_grad():
        feats = vlm.get_image_features(torch.randn(2, 3, 3, 32, 32))
    assert feats.shape == (2, 3 * per_view, lm_hidden)
    assert torch.isfinite(feats).all()


def test_image_features_keep_view_order(vlms: dict) -> None:
    vlm, _ = vlms["siglip"]
    views = torch.randn(1, 3, 3, 32, 32)
    per_view = vlm.tokens_per_view((32, 32))
    with torch.no_grad():
        all_views = vlm.get_image_features(views)
        second = vlm.get_image_features(views[:, 1:2])
    torch.testing.assert_close(all_views[:, per_view : 2 * per_view], second, rtol=1e-5, atol=1e-5)


def test_siglip2_patches_match_the_image_processor_layout(vlms: dict) -> None:
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    vlm, _ = vlms["siglip2"]
    seen = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)

    handle = vlm.vision_tower.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        images = torch.randn(1, 2, 3, 32, 32)
        with torch.no_grad():
            vlm.get_image_features(images)
    finally:
        handle.remove()
    for i in range(2):
        expected = convert_image_to_patches(images[0, i].numpy(), 8)
        np.testing.assert_array_equal(seen["pixel_values"][i].numpy(), expected)
    assert seen["spatial_shapes"].tolist() == [[4, 4], [4, 4]]
    assert seen["pixel_attention_mask"].shape == (2, 16) and bool(seen["pixel_attention_mask"].all())


# -- resamplers ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "cls", "tokens_in", "tokens_out", "width"),
    [
        ("mlp", MLPResampler, 16, 16, 24),
        ("identity", IdentityResampler, 16, 16, 32),
        ("avgpool", AvgPoolResampler, 16, 4, 24),
        ("avgpool", AvgPoolResampler, 256, 64, 24),
    ],
)
def test_resampler_shapes(kind: str, cls: type, tokens_in: int, tokens_out: int, width: int) -> None:
    resampler = build_resampler(kind, 32, 24)
    assert isinstance(resampler, cls)
    assert resampler.num_tokens(tokens_in) == tokens_out
    assert resampler.out_dim == width
    out = resampler(torch.randn(3, tokens_in, 32))
    assert out.shape == (3, tokens_out, width)


def test_avgpool_averages_2x2_blocks_of_the_patch_grid() -> None:
    resampler = AvgPoolResampler(1, 4)
    resampler.mlp = torch.nn.Identity()
    grid = torch.arange(16.0).reshape(1, 16, 1)  # 4×4 grid, row-major
    assert resampler(grid).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(InvalidInputError, match="square"):
        resampler(torch.randn(1, 12, 1))


def test_mlp_resampler_layers() -> None:
    net = MLPResampler(32, 24).net
    assert [type(m).__name__ for m in net] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert (net[0].in_features, net[0].out_features, net[3].out_features) == (32, 24, 24)


def test_identity_resampler_through_build_vlm(tiny_dirs: dict[str, Path]) -> None:
    vlm, _ = build_vlm(_config(tiny_dirs, "tiny-siglip", "identity", latent=999))
    assert vlm.projector.in_features == vlm.vision_tower.config.hidden_size
    with torch.no_grad():
        assert vlm.get_image_features(torch.randn(1, 2, 3, 32, 32)).shape == (1, 32, 64)


def test_unknown_resampler_names_the_allowed_ones() -> None:
    with pytest.raises(InvalidInputError, match="'perceiver'") as info:
        build_resampler("perceiver", 32, 24)
    for name in RESAMPLERS:
        assert repr(name) in str(info.value)


# -- LoRA ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_lora_only_on_the_language_model(vlms: dict, kind: str) -> None:
    vlm, _ = vlms[kind]
    names = [n for n, _ in vlm.named_parameters()]
    assert not [n for n in names if n.startswith("vision_tower.") and "lora_" in n]
    assert not [n for n, _ in vlm.vision_tower.named_modules() if "lora" in n.lower()]
    lora_names = [n for n in names if "lora_" in n]
    assert lora_names and all(n.startswith("language_model.") for n in lora_names)
    layers = vlm.language_model.get_base_model().config.num_hidden_layers
    for target in LORA_TARGETS:
        hits = [n for n in lora_names if re.search(rf"\.{target}\.lora_[AB]\.", n)]
        assert len(hits) == 2 * layers, (target, hits)


def test_lora_rank_and_alpha_are_honoured(vlms: dict) -> None:
    from peft.tuners.lora import LoraLayer

    vlm, _ = vlms["siglip"]
    layers = [m for m in vlm.language_model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 7 * 2
    for layer in layers:
        assert layer.r["default"] == 4
        assert layer.lora_alpha["default"] == 8
        assert layer.scaling["default"] == pytest.approx(2.0)
        assert layer.lora_A["default"].weight.shape[0] == 4
        assert layer.lora_B["default"].weight.shape[1] == 4


def test_default_lora_settings(tiny_dirs: dict[str, Path]) -> None:
    from panollava.models.build import lora_settings

    settings = lora_settings({})
    assert (settings["r"], settings["alpha"]) == (32, 64)
    assert sorted(settings["target_modules"]) == sorted(LORA_TARGETS)
    vlm, _ = build_vlm(_config(tiny_dirs, "tiny-siglip"))
    assert not any("lora_" in n for n, _ in vlm.named_parameters())  # no LoRA unless asked


# -- image tokens, generation --------------------------------------------------------------------------------------
def test_image_token_count_mismatch(vlms: dict) -> None:
    vlm, tok = vlms["siglip"]
    encoder = PromptEncoder(tok, IMAGE_TOKEN)
    needed = vlm.num_image_tokens(2, (32, 32))
    enc = encoder.encode(["room"], needed - 1)
    with pytest.raises(InvalidInputError, match=rf"has {needed - 1} image placeholder.*give {needed} image feature"):
        vlm(pixel_values=torch.randn(1, 2, 3, 32, 32), **enc)
    with pytest.raises(InvalidInputError, match=rf"has {needed + 5} .*give {needed} "):
        vlm.generate(pixel_values=torch.randn(1, 2, 3, 32, 32), **encoder.encode(["room"], needed + 5))


def test_position_ids_from_mask() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


QUERIES = [
    "room",
    "what they are doing",
    "the red car near the building on the left",
    "sky",
    "a",
    "furniture in the room behind the sofa and the table",
    "people",
    "tree, road, sky and a car",
    "a {query} with {braces}",
]


def _strip(tokens: list[int], tok) -> list[int]:
    while tokens and tokens[-1] == tok.pad_token_id:
        tokens = tokens[:-1]
    return tokens


def test_batched_left_padded_generation_equals_one_by_one(gen_vlm) -> None:
    vlm, tok = gen_vlm
    encoder = PromptEncoder(tok, IMAGE_TOKEN)
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(len(QUERIES), 2, 3, 32, 32, generator=g)
    n = vlm.num_image_tokens(2, (32, 32))
    kwargs = {
        "max_new_tokens": 10, "do_sample": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    }
    enc = encoder.encode(QUERIES, n)
    lengths = enc["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 5  # prompts of different lengths: real left padding
    assert bool((enc["attention_mask"][:, 0] == 0).any()) and bool((enc["attention_mask"][:, -1] == 1).all())
    batched = vlm.generate(pixel_values=pixels, **enc, **kwargs)
    singles = []
    for i, query in enumerate(QUERIES):
        one = vlm.generate(pixel_values=pixels[i : i + 1], **encoder.encode([query], n), **kwargs)
        singles.append(_strip(one[0].tolist(), tok))
        assert _strip(batched[i].tolist(), tok) == singles[i], (i, query)
    assert len({tuple(s) for s in singles}) == len(QUERIES)  # the outputs depend on the input


def test_right_padded_prompts_are_refused(gen_vlm) -> None:
    vlm, tok = gen_vlm
    encoder = PromptEncoder(tok, IMAGE_TOKEN)
    n = vlm.num_image_tokens(2, (32, 32))
    enc = encoder.encode(["room", "the red car near the building"], n)
    # Re-pad on the right.
    ids, mask = enc["input_ids"].clone(), enc["attention_mask"].clone()
    for row in range(ids.shape[0]):
        keep = int(mask[row].sum())
        ids[row] = torch.cat([ids[row, -keep:], ids[row, :-keep]]) if keep < ids.shape[1] else ids[row]
        mask[row] = torch.cat([torch.ones(keep, dtype=torch.long), torch.zeros(ids.shape[1] - keep, dtype=torch.long)])
    with pytest.raises(InvalidInputError, match="left-padded"):
        vlm.generate(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 2, 3, 32, 32), max_new_tokens=2)


def test_teacher_forced_logits_equal_first_generation_step(gen_vlm) -> None:
    vlm, tok = gen_vlm
    encoder = PromptEncoder(tok, IMAGE_TOKEN)
    n = vlm.num_image_tokens(2, (32, 32))
    pixels = torch.randn(4, 2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    enc = encoder.encode(QUERIES[:4], n)
    with torch.no_grad():
        forced = vlm(pixel_values=pixels, **enc).logits[:, -1]
        out = vlm.generate(
            pixel_values=pixels, **enc, max_new_tokens=1, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    first = out.logits[0]
    torch.testing.assert_close(first, forced, rtol=0, atol=1e-5)
    assert forced.std() > 0.1  # the check is not vacuous


def test_teacher_forced_answer_logits_do_not_depend_on_padding(gen_vlm) -> None:
    # Rows of a left-padded batch score their answers exactly as they would alone (positions from the mask).
    vlm, tok = gen_vlm
    encoder = PromptEncoder(tok, IMAGE_TOKEN)
    n = vlm.num_image_tokens(2, (32, 32))
    pixels = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    queries, answers = ["sky", QUERIES[5]], ["a blue sky", "a table and a sofa"]
    with torch.no_grad():
        batch = vlm(pixel_values=pixels, **encoder.encode(queries, n, answers)).logits
        alone = vlm(pixel_values=pixels[:1], **encoder.encode(queries[:1], n, answers[:1])).logits
    torch.testing.assert_close(batch[0, -alone.shape[1] :], alone[0], rtol=0, atol=1e-4)


# -- errors: unavailable models, tokenizer -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "name"),
    [("vision_name", "google/siglip2-so400m-patch16-256"), ("language_model_name", "Qwen/Qwen3-0.6B")],
)
def test_hub_name_not_cached_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_dirs, key: str, name: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache, whatever the machine holds
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    config = {**_config(tiny_dirs, "tiny-siglip"), key: name}
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache") as info:
        build_vlm(config)
    message = str(info.value)
    assert repr(name) in message and "HF_HUB_OFFLINE" in message
    assert "pass a local folder (--model.model_config." in message


def test_nonexistent_local_path_is_named(tmp_path: Path, tiny_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "models" / "no-such-model"
    config = _config(tiny_dirs, "tiny-siglip")
    config["language_model_name"] = str(missing)
    with pytest.raises(ModelUnavailableError, match=re.escape(f"'{missing}' does not exist")):
        build_vlm(config)
    monkeypatch.chdir(tmp_path)
    config = _config(tiny_dirs, "tiny-siglip")
    config["vision_name"] = "./relative/vision"
    with pytest.raises(ModelUnavailableError, match=re.escape(str(tmp_path / "relative" / "vision"))):
        build_vlm(config)


def test_unknown_tiny_name_lists_the_tiny_models(tiny_dirs) -> None:
    config = _config(tiny_dirs, "tiny-siglip")
    config["vision_name"] = "tiny:xyz"
    with pytest.raises(ModelUnavailableError, match="tiny:xyz") as info:
        build_vlm(config)
    for name in ("tiny:siglip", "tiny:siglip2", "tiny:qwen3"):
        assert name in str(info.value)
    # The known names resolve to the cached tiny folders.
    assert load_tokenizer("tiny:qwen3", IMAGE_TOKEN).name_or_path == str(build_tiny_models()["tiny-qwen3"])


def test_tokenizer_without_the_image_token(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    raw.train_from_iterator(["a room with a table"] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(tmp_path / "tok")
    config = {**_config(tiny_dirs, "tiny-siglip"), "tokenizer_name": str(tmp_path / "tok")}
    with pytest.raises(InvalidInputError, match=re.escape(f"no token '{IMAGE_TOKEN}'")):
        build_vlm(config)
    # The tiny tokenizer has it, but not a made-up placeholder.
    with pytest.raises(InvalidInputError, match="no token '<image>'"):
        load_tokenizer(str(tiny_dirs["tiny-qwen3"]), "<image>")
    assert load_tokenizer(str(tiny_dirs["tiny-qwen3"]), IMAGE_TOKEN).padding_side == "left"
