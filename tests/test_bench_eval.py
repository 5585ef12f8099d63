"""The evaluation-throughput benchmark's GPU code paths (issue 11 (b), and issue 20's hf family) on CPU with tiny
sizes (``--smoke``), and its hf-family CPU comparison on a small slice of the real panoramas.

The GPU runs happen only when a session is lent a GPU; this keeps ``benchmarks/bench_eval.py --device cuda`` (with
and without ``--family hf``) working in between: the same functions (JPEG workers, views, shared/plain paths, the
baselines, the ``compile_decode`` comparison, the random-weight Qwen2.5-VL folder, the JSON file) run here on tiny
models.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_eval", PROJECT_ROOT / "benchmarks" / "bench_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pre_encoded() -> bool:
    """Whether this transformers takes pre-encoded images (``mm_encoder_outputs``; absent from 5.17), which the hf
    family's shared-prefix path needs."""
    import inspect

    from transformers import Qwen2_5_VLForConditionalGeneration

    return "mm_encoder_outputs" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters


def test_bench_eval_smoke_runs_the_gpu_code_path_and_writes_its_figures(bench, shared_data_dir: Path, tmp_path: Path):
    out = tmp_path / "bench.json"
    figures = bench.main(["--device", "cpu", "--smoke", "--compile", "--json", str(out),
                          "--quic_csv", str(shared_data_dir / "quic360" / "test.csv")])
    assert json.loads(out.read_text()) == figures
    assert figures["samples"] == 18 and figures["panoramas"] == 6  # the first 6 QuIC-360 test panoramas
    assert set(figures["stages_s"]) == {"jpeg_decode_in_workers_cpu_s", "views_s", "vision_s", "prefill_s", "decode_s"}
    assert figures["identical_vs_loop_on_subset"] == 1.0 and figures["identical_vs_batched_generate_on_subset"] == 1.0
    assert figures["agreement_plain_vs_shared_on_subset"] == 1.0
    compiled = figures["compile_decode_on_subset"]
    assert "error" not in compiled, compiled
    assert compiled["mode"] == "default" and compiled["agreement_compiled_vs_eager"] == 1.0


HF_B_KEYS = {
    "benchmark", "device", "torch", "transformers", "dtype", "parameters", "model_write_s", "model_load_s", "path",
    "vision_encoder", "panoramas", "samples", "crop_strategy", "view_size", "image_tokens_per_panorama",
    "max_new_tokens", "batch_size", "engine_end_to_end_s", "engine_samples_per_s", "engine_stages_s",
    "peak_memory_gib", "subset_samples", "loop_s_on_subset", "loop_samples_per_s_on_subset",
    "engine_samples_per_s_on_subset_model_side", "speedup_vs_loop_on_subset", "loop_extrapolated_full_s",
    "speedup_vs_loop", "speedups_note", "identical_vs_loop_on_subset", "distinct_loop_captions_on_subset",
    "identical_end_to_end_vs_subset_engine",
}


def test_bench_eval_hf_smoke_runs_the_gpu_code_path_with_identical_captions(bench, shared_data_dir: Path,
                                                                           tmp_path: Path):
    """The hf family's (b) path: a random-weight Qwen2.5-VL folder written by the 3B builder (tiny sizes), loaded
    through the family, engine end to end (loader worker) against the naive per-sample generate loop."""
    out = tmp_path / "bench_hf.json"
    figures = bench.main(["--family", "hf", "--device", "cpu", "--smoke", "--json", str(out),
                          "--quic_csv", str(shared_data_dir / "quic360" / "test.csv")])
    assert json.loads(out.read_text()) == figures
    assert set(figures) == HF_B_KEYS
    assert figures["panoramas"] == 3 and figures["samples"] == 9 and figures["subset_samples"] == 6
    assert figures["image_tokens_per_panorama"] == 9 * 4  # 9 views of 56² → 2×2 merged tokens each
    # greedy: the engine's captions are the per-sample loop's, and they differ from each other (a real check)
    assert figures["identical_vs_loop_on_subset"] == 1.0 and figures["identical_end_to_end_vs_subset_engine"] == 1.0
    assert figures["distinct_loop_captions_on_subset"] > 1
    expected = "shared_prefix" if _pre_encoded() else "generate"
    assert figures["path"] == expected
    assert figures["engine_samples_per_s"] > 0 and figures["loop_samples_per_s_on_subset"] > 0


def test_bench_eval_hf_cpu_compares_the_engine_with_a_per_sample_loop_on_real_panoramas(bench,
                                                                                        shared_data_dir: Path):
    figures = bench.main(["--family", "hf", "--device", "cpu", "--hf_kinds", "qwen2_vl,llava", "--hf_queries", "2",
                          "--hf_repeats", "1", "--max_new_tokens", "6", "--hf_view_size", "112",
                          "--hf_sample_csv", str(shared_data_dir / "quic360-sample" / "test.csv")])
    assert figures["panoramas"] == 5 and figures["samples"] == 10  # the 5 real panoramas, 2 queries each
    assert [row["kind"] for row in figures["models"]] == ["qwen2_vl", "llava"]
    for row in figures["models"]:
        assert row["identical_vs_loop"] is True and row["identical_count"] == 10, row
        assert row["distinct_captions"] > 1, row
        # the seconds are rounded to the millisecond in the figures, the ratio is not
        assert row["speedup_vs_loop"] == pytest.approx(row["loop_s"] / row["engine_s"], rel=0.05)
        assert row["path"] == ("shared_prefix" if _pre_encoded() else "generate")


def test_bench_eval_hf_refuses_compile_and_a_missing_gpu(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--family", "hf", "--device", "cpu", "--compile"])
    assert "--compile is not available with --family hf" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main(["--family", "hf", "--device", "cuda"])
        assert "--device cuda needs a CUDA GPU" in capsys.readouterr().err
