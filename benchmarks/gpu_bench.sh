#!/usr/bin/env bash
# Issue 11 (b): the evaluation-throughput benchmark on a lent GPU machine, as one prepared call.
#
#   bash benchmarks/gpu_bench.sh prepare   # here, on the CPU machine (needs PyPI and ../shared)
#   then one device `run`:  command "bash benchmarks/gpu_bench.sh run", carry [".whl", ".gpu_data"],
#                           timeout_s 540; the figures come back as $OUT/bench_eval.json and bench_eval.log
#   then, as a second device call, "bash benchmarks/gpu_bench.sh run-hf" (issue 20, the hf family), same carry,
#                           timeout_s 480; $OUT/bench_eval_hf.json and bench_eval_hf.log
#
# prepare: downloads the wheels the GPU image lacks (jsonargparse and its two helpers; pure Python, for its
#   Python 3.12) into .whl/, copies the QuIC-360 test CSV (../shared does not travel) into .gpu_data/, and keeps
#   both out of git through .git/info/exclude.
# run: installs the wheels into /tmp/site and runs `benchmarks/bench_eval.py --device cuda` (real-size presets,
#   random weights, bf16; compile_decode compared last) under a time limit that leaves the call time to return.
#   PYTHON (default python3, the GPU image's) and BENCH_ARGS (extra flags, e.g. "--device cpu --smoke" to try the
#   script here) can be set.
# run-hf: issue 20's row for the hf family, as its own device call after `run` (so it cannot eat run's budget):
#   `bench_eval.py --family hf --device cuda` (a Qwen2.5-VL-3B-shaped model with random weights, bf16, written to
#   /tmp and loaded through the family; the engine path end to end against the per-sample generate loop on a
#   subset) under HF_BENCH_TIMEOUT (default 420 s): device `run` with carry [".whl", ".gpu_data"], timeout_s 480;
#   the figures come back as $OUT/bench_eval_hf.json and bench_eval_hf.log. It runs on the image's transformers:
#   the JSON's path / vision_encoder say which path that release allows (mm_encoder_outputs, absent from 5.17, is
#   needed for the shared prefix). HF_BENCH_ARGS: extra flags ("--device cpu --smoke" to try it here).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS="jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0"
case "${1:-}" in
prepare)
    mkdir -p .whl .gpu_data
    EXCLUDE=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)  # a worktree's too
    mkdir -p "$(dirname "$EXCLUDE")"
    for path in /.whl/ /.gpu_data/; do
        grep -qxF "$path" "$EXCLUDE" 2>/dev/null || echo "$path" >> "$EXCLUDE"
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS || exit 1
    install -m 0644 ../shared/data/quic360/test.csv .gpu_data/quic360_test.csv || exit 1
    ls -la .whl .gpu_data
    echo "prepared: now run 'bash benchmarks/gpu_bench.sh run' on the device with carry [\".whl\", \".gpu_data\"]"
    ;;
run | run-hf)
    OUT=${OUT:-/tmp/gpu_bench_out}
    mkdir -p "$OUT"
    PYTHON=${PYTHON:-python3}
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$REPO PANOLLAVA_CACHE=/tmp/pcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, transformers as t; print('torch', torch.__version__, 'transformers', t.__version__,
                                                    'cuda', torch.cuda.is_available())"
    if [ "$1" = run-hf ]; then
        timeout "${HF_BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/bench_eval.py --family hf --device cuda \
            --quic_csv .gpu_data/quic360_test.csv --json "$OUT/bench_eval_hf.json" ${HF_BENCH_ARGS:-} 2>&1 \
            | grep -v "Warning\|warnings.warn" | tee "$OUT/bench_eval_hf.log"
        echo "hf bench rc=${PIPESTATUS[0]}"
        exit 0
    fi
    timeout "${BENCH_TIMEOUT:-480}" "$PYTHON" benchmarks/bench_eval.py --device cuda \
        --quic_csv .gpu_data/quic360_test.csv --json "$OUT/bench_eval.json" ${BENCH_ARGS:-} 2>&1 \
        | grep -v "Warning\|warnings.warn" | tee "$OUT/bench_eval.log"
    echo "bench rc=${PIPESTATUS[0]}"
    ;;
*)
    echo "usage: bash benchmarks/gpu_bench.sh prepare|run|run-hf" >&2
    exit 2
    ;;
esac
