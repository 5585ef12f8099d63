"""Runs several ``panollava-cli`` commands one after another in one process (launched by torchrun in
tests/test_eval_scale.py, so that two evaluations share one process launch and one process group).

Usage: python tests/multi_eval.py '[["test", "--ckpt_dir", ...], [...]]'
"""

import json
import sys

from panollava.cli import main

if __name__ == "__main__":
    for args in json.loads(sys.argv[1]):
        status = main(args)
        if status:
            sys.exit(status)
