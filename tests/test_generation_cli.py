"""The generation checks of issue 17 through the command line, on the shared tiny training run: an impossible
``--max_new_tokens`` is a short error, ``--min_new_tokens`` and the stop ids reach ``metrics.json``, and under
``--trainer.precision bf16-mixed`` (Lightning's autocast) the KV cache holds one dtype."""

from __future__ import annotations

import json

import pytest

from panollava.cli import main


def _test(tiny_run, shared_data_dir, out, *extra: str) -> int:
    csv = shared_data_dir / "quic360-sample" / "test.csv"
    return main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--output_dir", str(out), "--csv_input", str(csv),
                 "--max_samples", "2", *extra])


@pytest.mark.timeout(300)  # before the check, this evaluation ran on for minutes, growing a 1M-slot KV cache
def test_max_new_tokens_beyond_the_positions_is_a_short_error(tiny_run, shared_data_dir, tmp_path, capsys):
    assert _test(tiny_run, shared_data_dir, tmp_path / "out", "--max_new_tokens", "1000000") == 2
    err = capsys.readouterr().err
    assert "max_new_tokens 1000000" in err and "max_position_embeddings 4096" in err, err
    assert "lower --max_new_tokens to at most" in err and "Traceback" not in err


def test_min_new_tokens_and_bf16_mixed_reach_the_decoding_record(tiny_run, shared_data_dir, tmp_path):
    out = tmp_path / "out"
    assert _test(tiny_run, shared_data_dir, out, "--max_new_tokens", "6", "--min_new_tokens", "6",
                 "--trainer.precision", "bf16-mixed") == 0
    decoding = json.loads((out / "metrics.json").read_text())["decoding"]
    assert decoding["min_new_tokens"] == 6 and decoding["max_new_tokens"] == 6
    assert decoding["kv_cache_dtype"] == "bfloat16" and decoding["max_position_embeddings"] == 4096
    assert decoding["eos_token_ids"] == [decoding["eos_token_id"]]  # the tiny LM's config names <|im_end|> only
