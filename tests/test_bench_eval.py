"""The evaluation-throughput benchmark's GPU code path (issue 11 (b)) on CPU with tiny sizes (``--smoke``).

The GPU run happens only when a session is lent a GPU; this keeps ``benchmarks/bench_eval.py --device cuda``
working in between: the same functions (JPEG workers, views, shared/plain paths, both baselines, the
``compile_decode`` comparison, the JSON file) run here on the tiny model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_bench_eval_smoke_runs_the_gpu_code_path_and_writes_its_figures(shared_data_dir: Path, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("bench_eval", PROJECT_ROOT / "benchmarks" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
