"""Runs several ``panollava-cli`` commands one after another in one process (launched by torchrun in
tests/test_eval_scale.py, so that two evaluations share one process launch and one process group; launched plainly
by tests/test_eval_guard.py, so that several refusals cost one process start).

Usage: python tests/multi_eval.py [--keep-going] '[["test", "--ckpt_dir", ...], [...]]'

Without ``--keep-going`` it stops at the first non-zero status and exits with it; with it, it runs every command
and prints ``STATUSES [s1, s2, ...]`` last (exit 0).
"""

import json
import sys

from panollava.cli import main

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
