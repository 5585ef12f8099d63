"""Runs one ``panollava-cli`` command with a fault injected into one rank (launched by torchrun in
tests/test_eval_guard.py).

Usage: python tests/fault_eval.py FAULT RANK '["test", "--ckpt_dir", ...]'

FAULT is ``shard_write`` (the rank's first shard append fails with ENOSPC, as on a full disk) or ``merge``
(rank 0's merge of the gathered records raises). RANK is the global rank (``RANK``, set by torchrun) that fails.
The patches replace library functions in this process only; the code under test is unchanged.
"""

import errno
import json
import os
import sys
import time
from pathlib import Path

from panollava.callbacks.eval_writer import EvaluationWriter
from panollava.cli import main
from panollava.evaluation.state import ShardWriter

if __name__ == "__main__":
    fault, rank, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    mine = int(os.environ.get("RANK", "0")) == rank

    def record_time() -> None:  # when the fault fired (the test measures how long every rank takes to end)
        Path(f"fault_{fault}.time").write_text(repr(time.time()))

    if mine and fault == "shard_write":
        def append(self, records):
            record_time()
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

        ShardWriter.append = append
    elif mine and fault == "merge":
        def merge(self, *args, **kwargs):
            record_time()
            raise RuntimeError("injected merge fault")

        EvaluationWriter._merge = merge
    sys.exit(main(args))
