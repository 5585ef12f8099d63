"""Runs several ``panollava-cli`` commands one after another in one process (launched by torchrun in
tests/test_eval_scale.py, so that two evaluations share one process launch and one process group; launched plainly
by tests/test_eval_guard.py, so that several refusals cost one process start).

Usage: python tests/multi_eval.py [--keep-going] '[["test", "--ckpt_dir", ...], [...]]'

Without ``--keep-going`` it stops at the first non-zero status and exits with it; with it, it runs every command
and prints ``STATUSES [s1, s2, ...]`` last (exit 0).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from panollava.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a panollava process a test starts: one torch thread, unbuffered output, this checkout
    first on the path, no pause points inherited from the test's own environment; ``extra`` added last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("PANOLLAVA_TEST_PAUSE", "PANOLLAVA_TEST_PAUSE_DIR"):
        env.pop(key, None)
    env.update(extra)
    return env


def torchrun(commands: list[list[str]], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """One torchrun launch of ``nproc`` ranks running ``commands`` one after another (this script), output kept."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
         json.dumps(commands)],
        cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )

if __name__ == "__main__":
    keep_going = "--keep-going" in sys.argv
    commands = json.loads([a for a in sys.argv[1:] if a != "--keep-going"][0])
    statuses = []
    for args in commands:
        status = main(args)
        statuses.append(status)
        if status and not keep_going:
            sys.exit(status)
    if keep_going:
        print("STATUSES " + json.dumps(statuses), flush=True)
