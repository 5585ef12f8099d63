"""The bundled real-model presets build the published architectures (on the meta device: no download).

The expected parameter counts are computed from the architecture by hand below and cross-checked against the
published sizes.
"""

from __future__ import annotations

import json

import pytest
import torch

from panollava.errors import InvalidInputError
from panollava.models.presets import PRESET_HUB_IDS, PRESETS, load_preset_config

transformers = pytest.importorskip("transformers")


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def _siglip_vision_params(d: int, ff: int, layers: int, patch: int, image: int, channels: int = 3) -> int:
    """Parameters of a SigLIP vision tower with its attention-pooling head, counted from the architecture."""
    embeddings = channels * patch * patch * d + d + (image // patch) ** 2 * d  # patch conv + position table
    layer = 2 * 2 * d + 4 * (d * d + d) + (d * ff + ff) + (ff * d + d)  # 2 LayerNorms, q/k/v/o, MLP
    head = d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d)  # probe, MHA, LN, MLP
    return embeddings + layers * layer + 2 * d + head  # + post LayerNorm


def _qwen3_params(vocab: int, d: int, ff: int, layers: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Parameters of Qwen3ForCausalLM with tied embeddings, counted from the architecture."""
    attention = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d + 2 * head_dim
    layer = attention + 3 * d * ff + 2 * d  # q/k/v/o + q/k RMSNorm, gate/up/down, 2 RMSNorms
    return vocab * d + layers * layer + d  # + final RMSNorm; lm_head shares the embedding


def test_preset_files_are_package_data_and_plain_json() -> None:
    assert set(PRESETS) == {"siglip2-so400m-patch16-256", "siglip2-so400m-patch14-224", "qwen3-0.6b"}
    for name, path in PRESETS.items():
        assert path.is_file(), path
        assert "panollava" in path.parts and path.parent.name == "presets"
        assert "model_type" in json.loads(path.read_text())
    assert set(PRESET_HUB_IDS.values()) == set(PRESETS)


@pytest.mark.parametrize(
    ("name", "patch", "image"),
    [("siglip2-so400m-patch16-256", 16, 256), ("siglip2-so400m-patch14-224", 14, 224)],
)
def test_siglip2_so400m_vision_tower_on_meta(name: str, patch: int, image: int) -> None:
    config = load_preset_config(name)
    assert isinstance(config, transformers.SiglipVisionConfig)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (1152, 4304, 27)
    assert (config.num_attention_heads, config.patch_size, config.image_size) == (16, patch, image)
    assert config.hidden_act == "gelu_pytorch_tanh" and config.layer_norm_eps == 1e-6

    with torch.device("meta"):
        model = transformers.SiglipVisionModel(config)
        out = model(pixel_values=torch.empty(2, 3, image, image))
    # (256/16)^2 = (224/14)^2 = 256 image tokens per view, 1152 wide.
    assert tuple(out.last_hidden_state.shape) == (2, 256, 1152)
    assert len(model.encoder.layers) == 27

    n = _num_params(model)
    assert n == _siglip_vision_params(1152, 4304, 27, patch, image)
    # so400m = the shape-optimised SoViT-400m/14 (Alabdulmohsin et al. 2023, "Getting ViT in Shape"); its
    # vision tower with the attention-pooling head has ~428 M parameters. Exact counts as built here:
    # patch16-256 427,888,064; patch14-224 427,680,704 (they differ only in the patch embedding and the
    # position table).
    expected = {16: 427_888_064, 14: 427_680_704}[patch]
    assert n == pytest.approx(expected, rel=0.01)
    assert 400e6 < n < 430e6


def test_qwen3_0_6b_on_meta() -> None:
    config = load_preset_config("qwen3-0.6b")
    assert isinstance(config, transformers.Qwen3Config)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (151936, 1024, 3072)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (28, 16, 8)
    assert config.head_dim == 128 and config.max_position_embeddings == 40960 and config.rms_norm_eps == 1e-6
    assert config.tie_word_embeddings is True
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", None)}
    assert rope["rope_theta"] == 1_000_000

    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(config)
        logits = model(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits
    assert tuple(logits.shape) == (1, 5, 151936)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(model.model.layers) == 28

    n = _num_params(model)
    assert n == _qwen3_params(151936, 1024, 3072, 28, 16, 8, 128)
    # Qwen3-0.6B model card: 0.6 B parameters, 0.44 B without embeddings. Exact count: 596,049,920 (tied).
    assert n == pytest.approx(596_049_920, rel=0.01)
    assert n - 151936 * 1024 == pytest.approx(0.44e9, rel=0.01)


def test_hub_ids_resolve_to_presets() -> None:
    assert load_preset_config("Qwen/Qwen3-0.6B").hidden_size == 1024
    assert load_preset_config("google/siglip2-so400m-patch14-224").patch_size == 14
    with pytest.raises(InvalidInputError, match="unknown model preset 'qwen3-8b'.*qwen3-0.6b"):
        load_preset_config("qwen3-8b")
