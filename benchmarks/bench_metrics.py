"""Caption-metric speed: ``panollava-cli score`` against pycocoevalcap called directly, side by side.

Workload: the human leave-one-out predictions of ``../shared/data/quic360/test.csv`` (for each of the 1,119
(url, query) groups with at least two annotations, the first annotation is the prediction and the others are
its references). Each measurement is a fresh process, timed from start to exit (interpreter start and imports
included):

- ``direct``: a script doing what ``COCOEvalCap.evaluate`` does: ``PTBTokenizer().tokenize`` on references and
  on predictions, then ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` one after the other;
- ``panollava``: ``panollava-cli score --predictions loo.jsonl --output_dir OUT``.

The two alternate (``--repeats`` rounds), and the script checks that both give the same numbers (≤ 1e-4).

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 3] [--csv ../shared/data/quic360/test.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "quic360" / "test.csv"

DIRECT = r"""
import json, sys
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.cider.cider import Cider
records = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
gts = {r["sample_id"]: [{"caption": c} for c in r["references"]] for r in records}
res = {r["sample_id"]: [{"caption": r["prediction"]}] for r in records}
tokenizer = PTBTokenizer()
gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
out = {}
bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
out.update({f"bleu_{n + 1}": bleu[n] for n in range(4)})
out["meteor"], _ = Meteor().compute_score(gts, res)
out["rouge_l"], _ = Rouge().compute_score(gts, res)
out["cider"], _ = Cider().compute_score(gts, res)
print(json.dumps({k: float(v) for k, v in out.items()}))
"""


def leave_one_out(csv_path: Path) -> list[dict]:
    """One record per (url, query) group with ≥ 2 annotations: first annotation = prediction, rest =
    references."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    with csv_path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            groups[(row["url"], row["query"])].append(row["annotation"])
    return [
        {"sample_id": str(i), "image": url, "query": query, "prediction": anns[0], "references": anns[1:]}
        for i, ((url, query), anns) in enumerate((k, v) for k, v in groups.items() if len(v) >= 2)
    ]


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="QuIC-360 test.csv")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (direct, panollava)")
    args = parser.parse_args()
    records = leave_one_out(args.csv)
    bin_dir = Path(sys.executable).parent
    cli = bin_dir / "panollava-cli"
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        preds = Path(tmp) / "loo.jsonl"
        preds.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        script = Path(tmp) / "direct.py"
        script.write_text(DIRECT, encoding="utf-8")
        times: dict[str, list[float]] = {"direct": [], "panollava": []}
        results: dict[str, dict] = {}
        print(f"{len(records)} groups; {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; "
              f"load average at start {os.getloadavg()[0]:.2f}")
        for round_ in range(args.repeats):
            order = ("direct", "panollava") if round_ % 2 == 0 else ("panollava", "direct")
            for name in order:
                if name == "direct":
                    elapsed, stdout = timed([sys.executable, str(script), str(preds)])
                    results["direct"] = json.loads(stdout.strip().splitlines()[-1])
                else:
                    out_dir = Path(tmp) / f"out{round_}"
                    cmd = [str(cli), "score", "--predictions", str(preds), "--output_dir", str(out_dir)]
                    elapsed, _ = timed(cmd)
                    results["panollava"] = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
                times[name].append(elapsed)
                print(f"  round {round_ + 1} {name:<9} {elapsed:6.2f} s  (load {os.getloadavg()[0]:.2f})")
        diffs = {k: abs(results["direct"][k] - results["panollava"][k]) for k in results["direct"]}
        direct, ours = statistics.median(times["direct"]), statistics.median(times["panollava"])
        print(f"median: pycocoevalcap direct {direct:.2f} s, panollava-cli score {ours:.2f} s, "
              f"ratio {ours / direct:.2f}")
        print(f"max |difference| over {len(diffs)} metrics: {max(diffs.values()):.2e}")
        summary = {
            "direct_s": times["direct"],
            "panollava_s": times["panollava"],
            "metrics": {k: results["panollava"][k] for k in results["direct"]},
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
