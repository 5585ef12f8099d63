#!/usr/bin/env python
"""The original tool's evaluation interface, as a thin wrapper over ``panollava-cli test``.

    python scripts/eval.py --checkpoint-dir runs/EXP/finetune/anyres-e2p_mlp [--config YAML] [--csv-input CSV]
        [--max-samples N] [--log-samples] [--log-interval N] [--log-max-samples M] [--output-dir DIR]

Any further arguments are passed to ``panollava-cli test`` unchanged (e.g. ``--trainer.devices 2``).
"""

from __future__ import annotations

import argparse
import sys


def build_args(argv: list[str] | None = None) -> list[str]:
    """Translate the original flags into ``panollava-cli test`` arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True, help="run directory written by training")
    parser.add_argument("--config", help="training config (YAML); metadata wins where they disagree")
    parser.add_argument("--csv-input", help="CSV to evaluate instead of the metadata's dataset")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N samples (quick test)")
    parser.add_argument("--log-samples", action="store_true", help="print prediction/reference pairs")
    parser.add_argument("--log-interval", type=int, default=10, help="with --log-samples: every N batches")
    parser.add_argument("--log-max-samples", type=int, default=16, help="with --log-samples: at most M pairs")
    parser.add_argument("--output-dir", help="where predictions and metrics go")
    args, rest = parser.parse_known_args(argv)
    out = ["test", "--ckpt_dir", args.checkpoint_dir]
    if args.config:
        out += ["--config", args.config]
    if args.csv_input:
        out += ["--csv_input", args.csv_input]
    if args.max_samples is not None:
        out += ["--max_samples", str(args.max_samples)]
    if args.log_samples:
        out += ["--log_samples", "true", "--log_interval", str(args.log_interval),
                "--log_max_samples", str(args.log_max_samples)]
    if args.output_dir:
        out += ["--output_dir", args.output_dir]
    return out + rest


if __name__ == "__main__":
    from panollava.cli import main

    sys.exit(main(build_args()))
