#!/usr/bin/env bash
# GPU check (run on a lent GPU machine from the repository root; see docs/PERFORMANCE.md):
#  - the unit/e2e tests under the GPU machine's torch/transformers versions (CUDA tests included),
#  - tiny fit + test --ckpt_dir on CUDA with bf16-mixed,
# Needs: .whl/*.whl (jsonargparse, docstring-parser, typeshed-client, py360convert, pycocotools) and
# .whl/lite/pycocoevalcap (pycocoevalcap without its METEOR data and SPICE jars) carried along.
set -uo pipefail
REPO=$PWD
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$REPO/.whl/lite:$REPO PANOLLAVA_CACHE=/tmp/pcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, lightning, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
which java || echo "no java: METEOR unavailable, pure-Python PTB tokenizer"
echo "== pytest (CPU + CUDA tests, without the slow demo/parity/DDP ones)"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider -m "not slow" tests/ 2>&1 | tail -15
echo "== tiny fit + test on CUDA (bf16-mixed)"
mkdir -p /tmp/gpu_run && cd /tmp/gpu_run
start=$(date +%s.%N)
timeout 150 python3 -m panollava fit --config "$REPO/configs/tiny.yaml" --trainer.accelerator gpu --trainer.precision bf16-mixed > fit.log 2>&1; echo "fit rc=$? $(python3 -c "print(round($(date +%s.%N)-$start,1))") s"
tail -3 fit.log
start=$(date +%s.%N)
timeout 150 python3 -m panollava test --ckpt_dir runs/tiny/finetune/anyres-e2p_mlp --trainer.accelerator gpu --trainer.precision bf16-mixed --batch_size 16 --output_dir "$OUT/gpu_eval" > test.log 2>&1; echo "test rc=$? $(python3 -c "print(round($(date +%s.%N)-$start,1))") s"
grep -E "📊|bleu|cider|meteor|rouge|error" test.log | head -12
