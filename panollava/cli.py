"""``panollava-cli``: the only place that prints for the user or picks exit codes.

Lightning subcommands (``fit``, ``validate``, ``test``, ``predict``) go through :class:`PanoLLaVACLI`, a
``LightningCLI``; light commands (``views``, ``score``, ``tiny-models``, ``demo``) are parsed with argparse and import
only what they need, so ``panollava-cli --help`` and ``score`` start fast.

Errors caused by user input (:class:`panollava.errors.PanoLLaVAError`) print one short message and exit with
status 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence

from panollava.console import configure_logging as _configure_logging
from panollava.console import echo
from panollava.errors import InvalidInputError, PanoLLaVAError

logger = logging.getLogger("panollava.cli")

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

TOP_HELP = """usage: panollava-cli COMMAND [options]

Train and evaluate panoramic vision-language models.

commands:
  demo         train a tiny model on a generated dataset and evaluate it end to end (offline, CPU)
  fit          train (LightningCLI); writes runs/<experiment>/<stage>/<crop>_<resampler>/
  test         evaluate a run directory: test --ckpt_dir RUN_DIR [--csv_input CSV] [--output_dir DIR]
  predict      captions without scores: predict --ckpt_dir RUN_DIR --csv_input CSV
  validate     validation loss of a checkpoint (LightningCLI)
  score        metrics only, from predictions.jsonl or a CSV: score --predictions FILE --output_dir DIR
  views        cut and save the views of a panorama: views --image PANO --output_dir OUT
  report       (re)build report.html from an evaluation: report --predictions FILE [--metrics M] [--output_dir D]
  compare      leaderboard of evaluations with bootstrap intervals: compare DIR... [--baseline DIR] [--output_dir D]
  judge        LLM-judge rubric scores: judge --eval_dir DIR... --endpoint URL/v1 --judge_model NAME (or a local DIR)
  tiny-models  write the tiny offline models (built on demand anyway) and print their folders

Run 'panollava-cli COMMAND --help' for a command's options. Add --verbose to see tracebacks.
"""


# -- light commands ---------------------------------------------------------------------------------------------------
FUNCTION_COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "views": ("panollava.commands.views", "run_views", None),
    "score": ("panollava.commands.score", "run_score", None),
    "tiny-models": ("panollava.commands.tiny_models", "run_tiny_models", None),
    "demo": ("panollava.commands.demo", "run_demo", None),
    "report": ("panollava.commands.report", "run_report", None),
}
"""Light commands whose flags and ``--help`` come from a typed function (module, function, positional list
parameter): see :mod:`panollava.commands.function_cli`. The modules import torch only when the command runs."""


def _run_function(command: str, argv: Sequence[str]) -> int:
    import importlib

    from panollava.commands.function_cli import run_function_command

    module, name, positional = FUNCTION_COMMANDS[command]
    run_function_command(command, getattr(importlib.import_module(module), name), argv, positional)
    return 0


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _cmd_compare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="panollava-cli compare",
        description="Leaderboard of evaluations: markdown on stdout, leaderboard.csv and leaderboard.html, with "
        "95%% bootstrap intervals (CIDEr-D, METEOR) and paired bootstrap p-values against the baseline row, both "
        "resampling panoramas (the queries of one panorama together), Holm-corrected across the rows compared, "
        "with a verdict in words. A predictions CSV of the original PanoLLaVA tool must be scored first (score).",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="evaluation folders (metrics.json + predictions.jsonl) or run directories (their "
                        "latest evaluation under ./eval_results)")
    parser.add_argument("--baseline", default=None, help="the row the others are compared with (default: the first)")
    parser.add_argument("--output_dir", default=None, help="folder for leaderboard.csv/html (default: current folder)")
    args = parser.parse_args(argv)
    from panollava.commands.compare import run_compare_command

    run_compare_command(args.dirs, args.output_dir, args.baseline)
    return 0


# -- judge (self-contained block) --
def _cmd_judge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="panollava-cli judge",
        description="Score finished evaluations with an LLM judge and a rubric (default: 5 dimensions, 1-5 each, "
        "weighted, x 20 = a 20-100 score) through an OpenAI-compatible endpoint or a local transformers model. "
        "Answers are cached in the evaluation folder (a rerun asks only what is missing); failed samples are "
        "counted, never imputed. Writes the 'judge' block of metrics.json, judge_scores.jsonl and report.html. "
        "Exit status 3 when some samples failed. See docs/judge.md.",
        argument_default=argparse.SUPPRESS,  # the defaults live in panollava.judge.run.JudgeSettings
    )
    from panollava.judge.run import settings_defaults

    d = settings_defaults()
    source = parser.add_argument_group("what to judge (one of)")
    source.add_argument("--eval_dir", nargs="+", default=[], metavar="DIR",
                        help="evaluation folders (metrics.json + predictions.jsonl) or run directories")
    source.add_argument("--predictions", nargs="+", default=[], metavar="FILE",
                        help="predictions.jsonl files (metrics.json beside each gets the judge block)")
    source.add_argument("--pairwise", nargs=2, default=[], metavar=("DIR_A", "DIR_B"),
                        help="compare two evaluations caption by caption (random order per sample, position bias)")
    parser.add_argument("--output_dir", default=None, help="folder for judge_pairwise.json (default: current folder)")
    parser.add_argument("--judge_model", required=True,
                        help="served model name (with --endpoint) or a local transformers model folder")
    parser.add_argument("--endpoint", help="API base of an OpenAI-compatible server, e.g. http://gpu01:8000/v1")
    parser.add_argument("--api_key_env", help=f"environment variable with the API key (default {d['api_key_env']})")
    parser.add_argument("--judge_images", type=_parse_bool,
                        help="attach the panorama (default: true with --endpoint, false for a local model)")
    parser.add_argument("--image_width", type=int, help=f"width of the attached panorama in px ({d['image_width']})")
    parser.add_argument("--image_root", help="folder that relative image paths resolve against (default: as recorded)")
    parser.add_argument("--rubric", help="rubric YAML file (default: the shipped panollava/judge/rubrics/default.yaml)")
    parser.add_argument("--max_concurrency", type=int, help=f"requests in flight ({d['max_concurrency']})")
    parser.add_argument("--timeout_s", type=float, help=f"seconds per request ({d['timeout_s']:g})")
    parser.add_argument("--max_retries", type=int, help=f"retries of a 5xx/timeout ({d['max_retries']})")
    parser.add_argument("--max_rate_limit_retries", type=int,
                        help=f"retries of a 429, each after its Retry-After ({d['max_rate_limit_retries']})")
    parser.add_argument("--retry_backoff_s", type=float, help=f"first retry backoff ({d['retry_backoff_s']:g} s)")
    parser.add_argument("--seed", type=int, help=f"seed sent with each request and of the pairwise order ({d['seed']})")
    parser.add_argument("--temperature", type=float, help=f"judge temperature ({d['temperature']:g})")
    parser.add_argument("--max_tokens", type=int, help=f"longest answer ({d['max_tokens']})")
    parser.add_argument("--response_format", type=_parse_bool,
                        help="send the answer's JSON schema as response_format (default true)")
    parser.add_argument("--write_report", type=_parse_bool, help="rebuild report.html with a judge column (true)")
    parser.add_argument("--device", help="device of a local judge: auto, cpu, cuda (auto)")
    parser.add_argument("--count_tokens", default=None, metavar="TOKENIZER_DIR",
                        help="ask nothing: print the calls still to make and their prompt tokens with this tokenizer")
    args = vars(parser.parse_args(argv))
    eval_dirs, predictions, pairwise = args.pop("eval_dir"), args.pop("predictions"), args.pop("pairwise")
    output_dir, count_tokens = args.pop("output_dir"), args.pop("count_tokens")
    if sum(bool(x) for x in (eval_dirs, predictions, pairwise)) != 1:
        raise InvalidInputError("judge: pass exactly one of --eval_dir DIR..., --predictions FILE... or "
                                "--pairwise DIR_A DIR_B")
    from panollava.commands.judge import run_judge_command

    if count_tokens and pairwise:
        raise InvalidInputError("judge: --count_tokens works with --eval_dir or --predictions, not --pairwise")
    failed = run_judge_command(args, eval_dirs, predictions, pairwise, output_dir, count_tokens)
    return 3 if failed else 0  # 3: scores written, some samples failed (counted, not imputed)


LIGHT_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    **{command: functools.partial(_run_function, command) for command in FUNCTION_COMMANDS},
    "compare": _cmd_compare,
    "judge": _cmd_judge,
}


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``panollava-cli``.

    Args:
        args: Command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user error.
    """
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    _configure_logging(verbose)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    command = argv[0]
    try:
        if command in LIGHT_COMMANDS:
            return LIGHT_COMMANDS[command](argv[1:])
        if command in LIGHTNING_COMMANDS:
            from panollava.lightning_cli import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        print(f"error: unknown command {command!r}\n\n{TOP_HELP}", file=sys.stderr)
        return 2
    except PanoLLaVAError as exc:
        if verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2: user error; 3: results written but a metric failed (errors.py)
    except OSError as exc:  # a full disk or an unwritable folder is the machine's state, not a bug
        from panollava.errors import environment_error

        explained = environment_error(exc)
        if explained is None or verbose:
            raise
        print(f"error: {explained}", file=sys.stderr)
        return explained.exit_code
    except SystemExit as exc:  # argparse / jsonargparse errors and --help
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
