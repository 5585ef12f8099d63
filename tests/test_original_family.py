"""The original PanoLLaVA family (``panollava.families.original``) against the fixture of the original tool.

The fixture (``../shared/fixtures/panollava-v1``, read-only) is a run directory written by the original trainer
with the outputs its model computed; tests that remove or change files copy the run directory to ``tmp_path``.
Other configurations (stitching, PE, resampler size, LoRA rank) are exercised on run directories laid out the way
the original trainer lays them out (state-dict key names, hyper-parameters, ``lora_weights/adapter_model.bin`` with
the embedding rows, original metadata keys), built from the fixture's tiny models.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from panollava.errors import InputNotFoundError, InvalidInputError, ModelUnavailableError
from panollava.families.original import (
    choose_checkpoint,
    load_original_run,
    recognise,
    resolve_settings,
    settings_from_weights,
)
from panollava.families.original.model import (
    ProjectionPositionalEncoding,
    infer_token_grid,
    stitch,
    stitched_token_count,
)
from panollava.families.original.views import tile_pitches_deg, tile_yaws_deg
from panollava.generation import DecodeSettings

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "panollava-v1"
RUN = "runs/only_finetune/finetune/anyres-e2p_mlp"
LOSS_CKPT = "siglip_mlp_anyres-e2p_train_epoch00_loss8.9649.ckpt"
DECODE = DecodeSettings(max_new_tokens=12, repetition_penalty=1.1, min_new_tokens=5)  # greedy, as eval.py decoded

pytestmark = pytest.mark.skipif(not (FIXTURE / RUN).is_dir(), reason=f"fixture not found at {FIXTURE}")


def _sample(k: int) -> tuple[dict, dict]:
    root = FIXTURE / "expected" / f"sample_{k}"
    return json.loads((root / "prompt.json").read_text()), json.loads((root / "generation.json").read_text())


def _batch(model, samples: list[int], pixels: dict[str, torch.Tensor]) -> dict:
    prompts = [_sample(k)[0] for k in samples]
    urls = list(dict.fromkeys(p["url"] for p in prompts))
    return {
        "query": [p["query"] for p in prompts],
        "sample_id": [str(k) for k in samples],
        "pixel_values": model.panorama_transform().collate([pixels[u] for u in urls]),
        "panorama_index": torch.tensor([urls.index(p["url"]) for p in prompts]),
        "panorama_key": urls,
    }


def _copy_run(tmp_path: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """The fixture run directory copied to tmp (one checkpoint: the loss-named one), without ``drop``."""
    dst = tmp_path / "run"
    dst.mkdir()
    src = FIXTURE / RUN
    for name in (LOSS_CKPT, "config.yaml", "checkpoint_metadata.json"):
        if name not in drop:
            shutil.copy(src / name, dst / name)
    if "lora_weights" not in drop:
        shutil.copytree(src / "lora_weights", dst / "lora_weights")
    return dst


@pytest.fixture(scope="module")
def fixture_model():
    return load_original_run(FIXTURE / RUN, decode=DECODE, base_dir=FIXTURE)


@pytest.fixture(scope="module")
def pixels(fixture_model):
    from panollava.data.images import load_panorama

    urls = {_sample(k)[0]["url"] for k in range(4)}
    return {u: fixture_model.panorama_transform()(load_panorama(FIXTURE / u)) for u in urls}


# -- recognition and checkpoint ------------------------------------------------------------------------------


def test_recognised_with_reasons(tmp_path):
    rec = recognise(FIXTURE / RUN)
    assert rec is not None and rec.family == "panollava-v1"
    text = " | ".join(rec.reasons)
    assert "checkpoint_metadata.json has the original trainer's keys" in text and "training_config.lora_rank" in text
    assert "hyper-parameters are the original VLMModule's" in text and "model_overlap_ratio" in text
    assert "model.vision_backbone.encoder, model.resampler_module.resampler, model.projector.linear" in text
    assert "last.ckpt is a regular file" in text
    assert recognise(tmp_path) is None  # an empty directory is nobody's run
    run = _copy_run(tmp_path, drop=("checkpoint_metadata.json", "config.yaml", "lora_weights"))
    rec = recognise(run)  # the checkpoint alone is enough
    assert rec is not None and not any("checkpoint_metadata" in r for r in rec.reasons)


def test_truncated_metadata_of_the_original_is_recognised_and_set_aside(tmp_path, pixels, caplog):
    """What the original's metadata callback leaves when run by hand: JSON cut at the pydantic value."""
    run = _copy_run(tmp_path)
    truncated = json.loads((FIXTURE / "expected" / "build_info.json").read_text())["metadata_truncated_by_original"]
    (run / "checkpoint_metadata.json").write_text(truncated)
    rec = recognise(run)
    assert any("truncated metadata" in r for r in rec.reasons)
    with caplog.at_level(logging.WARNING):
        model = load_original_run(run, decode=DECODE, base_dir=FIXTURE)
    assert "is not valid JSON" in caplog.text and "truncated file; it is not used" in caplog.text
    assert model.generate(_batch(model, [2], pixels)) == [_sample(2)[1]["prediction"]]


def test_runs_of_panollava_itself_are_not_recognised(tmp_path):
    """Our own layout (``vlm.*`` weights, ``model_config`` hyper-parameters, metadata with schema_version)."""
    torch.save({"state_dict": {"vlm.projector.weight": torch.zeros(2, 2)},
                "hyper_parameters": {"model_config": {"vision_name": "v", "language_model_name": "l"}}},
               tmp_path / "tiny-siglip_mlp_anyres-e2p_quic360_epoch00_loss1.0000.ckpt")
    (tmp_path / "checkpoint_metadata.json").write_text(json.dumps(
        {"schema_version": 2, "experiment_name": "x", "stage": "finetune", "model_config": {}}))
    assert recognise(tmp_path) is None


def test_checkpoint_rule_messages():
    chosen = choose_checkpoint(FIXTURE / RUN)
    assert chosen.path.name == LOSS_CKPT
    assert chosen.reason == f"no best.ckpt link; {LOSS_CKPT} has the lowest loss in its name (8.9649) → used"
    assert choose_checkpoint(FIXTURE / RUN, "best").path.name == LOSS_CKPT
    last = choose_checkpoint(FIXTURE / RUN, "last")
    assert last.path.name == "last.ckpt" and "regular file" in last.reason and "not a link" in last.reason
    given = choose_checkpoint(FIXTURE / RUN, str(FIXTURE / RUN / "last.ckpt"))
    assert given.rule == "given file"


def test_checkpoint_rule_lowest_loss_and_failures(tmp_path):
    stem = "siglip_mlp_anyres-e2p_train"
    for name in (f"{stem}_epoch00_loss2.5000.ckpt", f"{stem}_epoch01_loss1.2500.ckpt", f"{stem}_epoch02_lossnan.ckpt",
                 "last.ckpt"):
        (tmp_path / name).write_bytes(b"")
    chosen = choose_checkpoint(tmp_path)
    assert chosen.path.name.endswith("epoch01_loss1.2500.ckpt")
    assert "lowest loss in its name (1.25) (lowest of 2)" in chosen.reason
    with pytest.raises(InputNotFoundError, match="'last' was requested but there is no last.ckpt"):
        choose_checkpoint(_empty(tmp_path / "e"), "last")
    with pytest.raises(InputNotFoundError, match="no best.ckpt link and no checkpoint whose name carries"):
        choose_checkpoint(_empty(tmp_path / "f"), "best")
    with pytest.raises(InputNotFoundError, match="not found .*Pass an existing .ckpt file"):
        choose_checkpoint(tmp_path, "missing.ckpt")


def _empty(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text("{}")
    return path


# -- outputs of the original model ---------------------------------------------------------------------------


def test_load_report_and_banner_facts(fixture_model):
    report = fixture_model.load_report
    assert report.loaded == 115
    assert report.ignored["model.resampler."][0] == 10 and "alias" in report.ignored["model.resampler."][1]
    assert report.ignored["model.vision_to_language_projection."][0] == 2
    assert "VICReg" in report.ignored["model.vicreg_projector."][1]
    assert "embed_tokens [1027, 64]" in report.adapter and "weights_only=True" in report.adapter
    s = fixture_model.resolved.settings
    assert (s.use_projection_pe, s.stitching_mode, s.use_vicreg_norm) == (True, "drop_overlap", True)
    assert (s.resampler_hidden_dim, s.resampler_depth, s.latent_dimension, s.lora_rank, s.lora_alpha) == (
        1536, 3, 48, 4, 8.0)
    assert fixture_model.resolved.sources["use_projection_pe"] == "run config.yaml"
    assert fixture_model.resolved.sources["resampler_hidden_dim"] == "checkpoint weights"


def test_views_within_tolerance(fixture_model, pixels):
    for k in (0, 2):
        expected = np.load(FIXTURE / "expected" / f"sample_{k}" / "pixel_values.npy")
        diff = np.abs(pixels[_sample(k)[0]["url"]].numpy() - expected).max()
        assert diff <= 1e-6, diff


@pytest.mark.parametrize("k", range(4))
def test_prompt_vision_tokens_and_first_logits(fixture_model, k):
    prompt, _ = _sample(k)
    model = fixture_model.module
    n = model.num_image_tokens(9, (32, 32))
    assert n == prompt["num_vision_tokens"] == 80
    ids = fixture_model.prompts.prompt_ids(prompt["query"], n)
    i = prompt["vision_token_index"]
    assert fixture_model.prompts.render(prompt["query"]) == prompt["prompt"]
    assert ids == prompt["input_ids"][:i] + [prompt["vision_token_id"]] * n + prompt["input_ids"][i + 1:]
    assert len(ids) == prompt["fused_sequence_length"]
    root = FIXTURE / "expected" / f"sample_{k}"
    pv = torch.from_numpy(np.load(root / "pixel_values.npy"))[None]
    with torch.no_grad():
        tokens = model.get_image_features(pv)[0].numpy()
    assert np.abs(tokens - np.load(root / "vision_tokens.npy")).max() <= 1e-5
    logits = model.first_logits(torch.tensor([ids]), pv)[0].numpy()
    assert logits.shape == (1027,)
    assert np.abs(logits - np.load(root / "first_logits.npy")).max() <= 1e-4


@pytest.mark.parametrize("share", [True, False])
def test_captions_equal_expected(fixture_model, pixels, share):
    fixture_model.share_prefix = share
    fixture_model._generator = None
    try:
        for samples in ([0], [1], [2], [3], [0, 1, 2], [1, 2, 3]):
            captions = fixture_model.generate(_batch(fixture_model, samples, pixels))
            assert captions == [_sample(k)[1]["prediction"] for k in samples], samples
        path = fixture_model.describe_decoding()["path"]
        assert path == ("shared_prefix" if share else "plain")
        assert fixture_model.describe_decoding()["min_new_tokens"] == 5
    finally:
        fixture_model.share_prefix = True
        fixture_model._generator = None


def test_fingerprint_and_provenance(fixture_model):
    fp = fixture_model.fingerprint()
    assert len(fp["checkpoint_sha256"]) == 64 and fp["settings"]["use_projection_pe"] is True
    json.dumps(fp)
    prov = fixture_model.provenance()
    assert prov["family"] == "panollava-v1" and prov["checkpoint_rule"] == "lowest loss in file name"
    assert [v["kind"] for v in prov["views"]["geometry"]] == ["global"] + ["perspective"] * 8
    json.dumps(prov)


def test_transform_is_picklable(fixture_model):
    import pickle

    transform = pickle.loads(pickle.dumps(fixture_model.panorama_transform()))
    assert transform == fixture_model.panorama_transform()


# -- settings sources ----------------------------------------------------------------------------------------


def test_without_metadata_and_config_given_yaml(tmp_path, pixels, caplog):
    run = _copy_run(tmp_path, drop=("checkpoint_metadata.json", "config.yaml"))
    with caplog.at_level(logging.WARNING):
        model = load_original_run(run, config_yaml=FIXTURE / "configs" / "default.yaml", decode=DECODE,
                                  base_dir=FIXTURE)
    assert "no usable checkpoint_metadata.json" in caplog.text and "'models/siglip-tiny-patch8-32'" in caplog.text
    assert model.resolved.sources["use_projection_pe"].startswith("--config ")
    captions = model.generate(_batch(model, [0, 1, 2, 3], pixels))
    assert captions == [_sample(k)[1]["prediction"] for k in range(4)]


def test_without_yaml_assumes_code_defaults_like_eval_py(tmp_path, pixels, caplog):
    """No metadata, no config.yaml, no --config: PE off by the code default — what the original eval.py built."""
    run = _copy_run(tmp_path, drop=("checkpoint_metadata.json", "config.yaml"))
    with caplog.at_level(logging.WARNING):
        model = load_original_run(run, decode=DECODE, base_dir=FIXTURE)
    assumed = model.resolved.assumed
    assert assumed["use_projection_pe"] is False and assumed["stitching_mode"] == "drop_overlap"
    warning = next(w for w in model.resolved.warnings if "original code's defaults" in w)
    for key, value in assumed.items():
        assert f"{key}={value!r}" in warning
    assert sum("original code's defaults" in r.getMessage() for r in caplog.records) == 1
    literal = FIXTURE / "expected" / "evalpy_literal"
    for k in range(4):
        prompt, _ = _sample(k)
        pv = torch.from_numpy(np.load(FIXTURE / "expected" / f"sample_{k}" / "pixel_values.npy"))[None]
        ids = model.prompts.prompt_ids(prompt["query"], 80)
        logits = model.module.first_logits(torch.tensor([ids]), pv)[0].numpy()
        assert np.abs(logits - np.load(literal / f"sample_{k}" / "first_logits.npy")).max() <= 1e-4
        with torch.no_grad():
            tokens = model.module.get_image_features(pv)[0].numpy()
        assert np.abs(tokens - np.load(literal / f"sample_{k}" / "vision_tokens.npy")).max() <= 1e-5
    captions = model.generate(_batch(model, [0, 1, 2, 3], pixels))
    expected = [json.loads((literal / f"sample_{k}" / "generation.json").read_text())["prediction"] for k in range(4)]
    assert captions == expected
    assert captions != [_sample(k)[1]["prediction"] for k in range(4)]  # PE matters


def _fixture_ckpt() -> dict:
    return torch.load(FIXTURE / RUN / LOSS_CKPT, map_location="cpu", weights_only=True)


def test_settings_resolution_alone():
    ckpt = _fixture_ckpt()
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    weights = settings_from_weights(shapes)
    assert weights["resampler_hidden_dim"] == 1536 and weights["resampler_depth"] == 3 and weights["lora_rank"] == 4
    assert weights["use_vicreg_norm"] is True and len(weights["lora_target_modules"]) == 7
    run_config = {"models": {"use_projection_positional_encoding": True, "pe_magic": 1},
                  "image_processing": {"stitching_mode": "concat"}, "experiment": {"anything": 1}}
    resolved = resolve_settings(hparams=ckpt["hyper_parameters"],
                                datamodule_hparams=ckpt["datamodule_hyper_parameters"], shapes=shapes,
                                run_config=run_config,
                                user_config={"models": {"use_projection_positional_encoding": False}})
    s = resolved.settings
    assert s.use_projection_pe is True and s.stitching_mode == "drop_overlap"  # image_processing.* not read
    assert s.system_msg == "You are a helpful assistant. Describe the panorama image."
    text = " ".join(resolved.warnings)
    assert "no usable checkpoint_metadata.json" in text and "vision 'models/siglip-tiny-patch8-32'" in text
    assert "use_projection_pe: run config.yaml True vs --config False" in text
    assert "models.pe_magic are not read" in text and "Supported keys: generation.length_penalty" in text
    assert "experiment.anything" not in text
    assert resolved.generation["min_new_tokens"] == 5 and resolved.generation["do_sample"] is True


def test_wrong_setting_against_the_weights_is_an_error():
    ckpt = _fixture_ckpt()
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    for config, key in (({"models": {"resampler_hidden_dim": 64}}, "resampler_hidden_dim"),
                        ({"models": {"latent_dimension": 768}}, "latent_dimension"),
                        ({"lora": {"rank": 32}}, "lora_rank")):
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("latent_dimension", "lora_rank")}
        with pytest.raises(InvalidInputError, match=f"{key} is .* in --config but .* weights say"):
            resolve_settings(hparams=hp, datamodule_hparams=ckpt["datamodule_hyper_parameters"], shapes=shapes,
                             user_config=config)


def test_metadata_keys_and_stringified_csv_lists():
    ckpt = _fixture_ckpt()
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    metadata = json.loads((FIXTURE / RUN / "checkpoint_metadata.json").read_text())
    metadata["dataset"]["train_csv"] = "['data/quic360/train.csv', 'data/train_stanford_dummy_anno.csv']"
    resolved = resolve_settings(hparams={}, datamodule_hparams={}, shapes=shapes, metadata=metadata)
    assert resolved.sources["lora_alpha"] == "checkpoint_metadata.json" and resolved.settings.lora_alpha == 8
    assert resolved.sources["vision_name"] == "checkpoint_metadata.json"
    assert resolved.dataset["train_csv"] == ["data/quic360/train.csv", "data/train_stanford_dummy_anno.csv"]
    assert resolved.settings.crop_strategy == "anyres_e2p" and resolved.settings.fov_deg == 90.0


@pytest.mark.parametrize("rtype,needs", [("bimamba", "mamba-ssm"), ("qformer", "Q-Former"),
                                         ("perceiver", "Perceiver")])
def test_unsupported_resampler_named(rtype, needs):
    ckpt = _fixture_ckpt()
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if "resampler" not in k}
    shapes["model.resampler_module.resampler.layers.0.mixer.A_log"] = (8, 4)
    hp = {**ckpt["hyper_parameters"], "resampler_type": rtype}
    match = f"resampler_type '{rtype}' .* builds only the 'mlp' resampler.*{needs}"
    with pytest.raises(InvalidInputError, match=match):
        resolve_settings(hparams=hp, datamodule_hparams=ckpt["datamodule_hyper_parameters"], shapes=shapes)


def test_bimamba_run_that_fell_back_to_mlp_loads_as_mlp():
    ckpt = _fixture_ckpt()
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    hp = {**ckpt["hyper_parameters"], "resampler_type": "bimamba"}
    resolved = resolve_settings(hparams=hp, datamodule_hparams=ckpt["datamodule_hyper_parameters"], shapes=shapes)
    assert resolved.settings.resampler_type == "bimamba"
    assert any("fell back to an MLP" in w for w in resolved.warnings)


# -- failure modes of files ----------------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_code_running_adapter_is_refused(tmp_path):
    run = _copy_run(tmp_path, drop=("checkpoint_metadata.json",))
    torch.save({"base_model.model.x": _RunsCode()}, run / "lora_weights" / "adapter_model.bin")
    match = r"refused to load LoRA adapter .*adapter_model.bin.*import or run code"
    with pytest.raises(InvalidInputError, match=match):
        load_original_run(run, decode=DECODE, base_dir=FIXTURE)


def test_code_running_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": _RunsCode()}, run / LOSS_CKPT)
    with pytest.raises(InvalidInputError, match="refused to load checkpoint .*weights_only=True"):
        load_original_run(run, decode=DECODE, base_dir=FIXTURE)


def test_adapter_that_differs_from_the_checkpoint_is_reported(tmp_path, caplog):
    run = _copy_run(tmp_path, drop=("checkpoint_metadata.json",))
    path = run / "lora_weights" / "adapter_model.bin"
    tensors = torch.load(path, weights_only=True)
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key] = tensors[key] + 1.0
    torch.save(tensors, path)
    with caplog.at_level(logging.WARNING):
        model = load_original_run(run, decode=DECODE, base_dir=FIXTURE)
    assert "differs from the checkpoint's LoRA/embedding tensors (max |Δ| 1" in model.load_report.adapter
    assert "the checkpoint's own tensors are used" in caplog.text


def test_missing_model_folder_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = _copy_run(tmp_path, drop=("lora_weights",))
    with pytest.raises(ModelUnavailableError, match="pass that directory as base_dir"):
        load_original_run(run, decode=DECODE, base_dir=tmp_path)


# -- other configurations, laid out like the original trainer ------------------------------------------------


def _build_original_run(root: Path, *, hidden: int, depth: int, rank: int, alpha: int, targets: tuple[str, ...],
                        stitching: str | None, pe: bool | None, vicreg_norm: bool = True, seed: int = 0,
                        metadata_hidden: int | None = None) -> Path:
    """A run directory in the original trainer's layout with the fixture's tiny vision tower and LM."""
    gen = torch.Generator().manual_seed(seed)
    base = _fixture_ckpt()
    sd = {}
    for key, value in base["state_dict"].items():
        if key.startswith(("model.resampler", "model.vision_backbone.norm.")) or ".lora_" in key:
            continue
        sd[key.replace(".base_layer.", ".")] = value
    # LoRA: the LM's target modules get base_layer + lora_A/B (adapter "default") of the given rank
    lm_prefix = "model.language_model.base_model.model."
    adapter = {}
    for key in [k for k in sd if k.startswith(lm_prefix) and k.endswith("_proj.weight")]:
        module = key[: -len(".weight")]
        if module.rsplit(".", 1)[-1] not in targets:
            continue
        weight = sd.pop(key)
        sd[module + ".base_layer.weight"] = weight
        a = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
        b = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
        sd[module + ".lora_A.default.weight"], sd[module + ".lora_B.default.weight"] = a, b
        short = "base_model.model." + module[len(lm_prefix):]
        adapter[short + ".lora_A.weight"], adapter[short + ".lora_B.weight"] = a, b
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        adapter["base_model.model." + name] = sd[lm_prefix + name]
    if vicreg_norm:
        sd["model.vision_backbone.norm.weight"] = torch.ones(32)
        sd["model.vision_backbone.norm.bias"] = torch.zeros(32)
    latent, width, index = 48, 32, 0
    for _ in range(depth - 1):
        sd[f"model.resampler_module.resampler.mlp.{index}.weight"] = (
            torch.randn(hidden, width, generator=gen) / width ** 0.5)
        sd[f"model.resampler_module.resampler.mlp.{index}.bias"] = torch.randn(hidden, generator=gen) * 0.1
        sd[f"model.resampler_module.resampler.mlp.{index + 1}.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
        sd[f"model.resampler_module.resampler.mlp.{index + 1}.bias"] = 0.1 * torch.randn(hidden, generator=gen)
        index, width = index + 3, hidden
    sd[f"model.resampler_module.resampler.mlp.{index}.weight"] = (
        torch.randn(latent, width, generator=gen) / width ** 0.5)
    sd[f"model.resampler_module.resampler.mlp.{index}.bias"] = torch.randn(latent, generator=gen) * 0.1
    for key in [k for k in sd if k.startswith("model.resampler_module.resampler.")]:
        sd["model.resampler." + key[len("model.resampler_module.resampler."):]] = sd[key]
    stage = "finetune" if targets else "resampler"
    run = root / "runs" / "knobs" / stage / "anyres-e2p_mlp"
    (run / "lora_weights").mkdir(parents=True)
    hp = {**base["hyper_parameters"], "lora_rank": rank, "lora_alpha": alpha, "stage": stage}
    if not targets:  # no LoRA (the resampler stage): the LM is not wrapped by peft, no lora_weights/
        plain = "model.language_model."
        sd = {(plain + k[len(lm_prefix):] if k.startswith(lm_prefix) else k): v for k, v in sd.items()}
        hp.update(use_lora=False, lora_rank=None, lora_alpha=None)
    name = f"siglip_mlp_anyres-e2p_train_epoch01_loss{3.0 + seed:.4f}.ckpt"
    torch.save({"epoch": 1, "global_step": 4, "state_dict": sd, "hyper_parameters": hp,
                "datamodule_hyper_parameters": base["datamodule_hyper_parameters"]}, run / name)
    shutil.copy(run / name, run / "last.ckpt")  # save_last: a copy, not a link
    if targets:
        torch.save(adapter, run / "lora_weights" / "adapter_model.bin")
    else:
        (run / "lora_weights").rmdir()
    if targets:
        (run / "lora_weights" / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
             "base_model_name_or_path": "models/Qwen3-tiny", "task_type": "CAUSAL_LM"}))
    metadata = json.loads((FIXTURE / RUN / "checkpoint_metadata.json").read_text())
    metadata["model_config"]["resampler_config"].update(hidden_dim=metadata_hidden or hidden, depth=depth)
    metadata["model_config"]["resampler_hidden_dim"] = metadata_hidden or hidden
    metadata["training_config"].update(lora_rank=rank, lora_alpha=alpha, use_lora=bool(targets))
    if not targets:
        metadata["training_config"].update(lora_rank=None, lora_alpha=None)
    metadata["dataset"]["train_csv"] = "['data/quic360/train.csv', 'data/extra.csv']"
    (run / "checkpoint_metadata.json").write_text(json.dumps(metadata))
    models = {"vision_name": "models/siglip-tiny-patch8-32", "language_model_name": "models/Qwen3-tiny",
              "resampler_type": "mlp", "latent_dimension": latent}
    if stitching is not None:
        models["stitching_mode"] = stitching
    if pe is not None:
        models["use_projection_positional_encoding"] = pe
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump({
        "models": models, "image_processing": {"crop_strategy": "anyres_e2p", "fov_deg": 90.0, "overlap_ratio": 0.5,
                                               "use_vision_processor": True},
        "lora": {"use_lora": bool(targets), "rank": rank, "alpha": alpha, "target_modules": list(targets)},
        "system_messages": {"default": "You are a helpful assistant. Describe the panorama image."}}))
    return run


KNOBS = [
    # (stitching, pe, hidden, depth, rank, alpha, targets, vicreg_norm, tokens)
    ("concat", False, 64, 3, 2, 4, ("q_proj", "v_proj"), True, 9 * 16),
    ("drop_overlap", True, 96, 2, 8, 8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
     False, 80),
    (None, None, 40, 4, 1, 2, ("o_proj", "down_proj"), True, 80),
    ("stride_views", True, 32, 1, None, None, (), True, 80),  # resampler stage: no LoRA; depth 1 = one Linear
]


@pytest.mark.parametrize("knobs", KNOBS, ids=["concat-noPE-h64-r2", "drop-PE-h96d2-r8-nonorm", "defaults-h40d4-r1",
                                               "stride-views-depth1-noLoRA"])
def test_configurations_load_strictly_and_generate_deterministically(tmp_path, pixels, knobs):
    stitching, pe, hidden, depth, rank, alpha, targets, norm, tokens = knobs
    run = _build_original_run(tmp_path, hidden=hidden, depth=depth, rank=rank, alpha=alpha, targets=targets,
                              stitching=stitching, pe=pe, vicreg_norm=norm)
    assert recognise(run) is not None
    model = load_original_run(run, decode=DECODE, base_dir=FIXTURE)
    s, vlm = model.resolved.settings, model.module
    assert (s.stitching_mode, s.use_projection_pe) == (stitching or "drop_overlap", bool(pe))
    assert (s.resampler_depth, s.lora_rank, s.use_vicreg_norm, s.use_lora) == (depth, rank, norm, bool(targets))
    assert s.resampler_hidden_dim == hidden  # with depth 1 (no hidden layer) the recorded value, unused
    if targets:
        assert set(s.lora_target_modules) == set(targets)
        assert "equal to the checkpoint's own" in model.load_report.adapter
    else:
        assert model.load_report.adapter is None and not hasattr(vlm.language_model, "peft_config")
    assert (vlm.positional is not None) == bool(pe) and vlm.num_image_tokens(9, (32, 32)) == tokens
    assert vlm.resampler.mlp[0].out_features == (hidden if depth > 1 else 48)
    lora_layer = vlm.language_model.base_model.model.model.layers[0].self_attn.q_proj if "q_proj" in targets else None
    if lora_layer is not None:
        assert lora_layer.scaling["default"] == alpha / rank
    assert model.load_report.loaded == len(vlm.state_dict())
    assert model.resolved.dataset["train_csv"] == ["data/quic360/train.csv", "data/extra.csv"]
    batch = _batch(model, [0, 1, 2], pixels)
    first = model.generate(batch)
    model.reset()
    assert model.generate(batch) == first
    model.share_prefix, model._generator = False, None
    assert model.generate(batch) == first
    assert len(first) == 3 and all(isinstance(c, str) for c in first)


def test_models_are_built_in_float32_whatever_their_config_says(tmp_path):
    """The original evaluated in fp32; a hub config saying bfloat16 (Qwen3-0.6B's) must not change that."""
    for name in ("Qwen3-tiny", "siglip-tiny-patch8-32"):
        shutil.copytree(FIXTURE / "models" / name, tmp_path / "models" / name)
        config = json.loads((tmp_path / "models" / name / "config.json").read_text())
        config["dtype"] = config["torch_dtype"] = "bfloat16"
        (tmp_path / "models" / name / "config.json").write_text(json.dumps(config))
    run = _copy_run(tmp_path, drop=("lora_weights",))
    model = load_original_run(run, decode=DECODE, base_dir=tmp_path)
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}


def test_configuration_settings_change_the_outputs(tmp_path):
    """PE and stitching are real: the same weights give other image tokens with them switched."""
    run = _build_original_run(tmp_path / "a", hidden=64, depth=3, rank=2, alpha=4, targets=("q_proj",),
                              stitching="concat", pe=True)
    model = load_original_run(run, decode=DECODE, base_dir=FIXTURE)
    pv = torch.from_numpy(np.load(FIXTURE / "expected" / "sample_0" / "pixel_values.npy"))[None]
    with torch.no_grad():
        with_pe = model.module.get_image_features(pv)
        positional, model.module.positional = model.module.positional, None
        without = model.module.get_image_features(pv)
        model.module.positional = positional
    assert with_pe.shape == without.shape == (1, 144, 64) and not torch.allclose(with_pe, without)


def test_wrong_hidden_size_in_metadata_is_detected(tmp_path):
    run = _build_original_run(tmp_path, hidden=64, depth=3, rank=2, alpha=4, targets=("q_proj",), stitching=None,
                              pe=None, metadata_hidden=1536)
    match = "resampler_hidden_dim is 1536 in checkpoint_metadata.json but .* weights say 64"
    with pytest.raises(InvalidInputError, match=match):
        load_original_run(run, decode=DECODE, base_dir=FIXTURE)


# -- geometry and arithmetic of the original, from its facts -------------------------------------------------


def test_view_geometry_facts():
    assert tile_yaws_deg(90.0, 0.5) == [0.0, 45.0, 90.0, 135.0, -180.0, -135.0, -90.0, -45.0]
    assert tile_pitches_deg(90.0, 0.5) == [0.0]
    assert tile_yaws_deg(120.0, 0.0) == [60.0, -180.0, -60.0]  # the loop starts at -180, then sorted from 0
    assert tile_pitches_deg(60.0, 0.5) == [-15.0, 15.0]


def test_stitching_orders():
    p, v, h, w = 1, 3, 2, 4
    tokens = torch.arange(p * v * h * w, dtype=torch.float32).view(p, v, h, w, 1)
    concat = stitch(tokens, "concat", 0.5)[0, :, 0].tolist()
    assert concat == [tokens[0, vi, r, c, 0].item() for r in range(h) for vi in range(v) for c in range(w)]
    dropped = stitch(tokens, "drop_overlap", 0.5)[0, :, 0].tolist()
    expected = [tokens[0, vi, r, c, 0].item() for r in range(h) for vi in range(v) for c in range(w)
                if vi == 0 or c >= 2]
    assert dropped == expected and len(dropped) == stitched_token_count(v, (h, w), "drop_overlap", 0.5)
    assert infer_token_grid(16) == (4, 4) and infer_token_grid(12) == (3, 4)
    assert stitched_token_count(9, (5, 5), "drop_overlap", 0.5) == 5 * (5 + 8 * 3)  # round(2.5) = 2 in Python


def test_positional_code_formula():
    pe = ProjectionPositionalEncoding(4, 0.5)
    code = pe.code(2, (1, 2), torch.device("cpu"))
    g = [[0.0, 0.5], [0.5, 1.0]]  # v·(1 − 0.5) + x/w
    length = 2 - 1 * 0.5
    freqs = [1.0, 10000 ** -0.5]
    for v in range(2):
        for x in range(2):
            phi = 2 * math.pi * g[v][x] / length
            yaw = [math.sin(phi * f) for f in freqs] + [math.cos(phi * f) for f in freqs]
            col = [math.sin(g[v][x] * f) for f in freqs] + [math.cos(g[v][x] * f) for f in freqs]
            row = [0.0, 0.0, 1.0, 1.0]
            want = [a + b + c for a, b, c in zip(yaw, col, row)]
            assert torch.allclose(code[v, 0, x], torch.tensor(want), atol=1e-6)
