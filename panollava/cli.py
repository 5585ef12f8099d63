"""``panollava-cli``: the only place that prints for the user or picks exit codes.

Lightning subcommands (``fit``, ``validate``, ``test``, ``predict``) go through :class:`PanoLLaVACLI`, a
``LightningCLI``; the light commands (``views``, ``score``, ``report``, ``compare``, ``judge``, ``tiny-models``,
``demo``) take their flags and ``--help`` from their typed ``run_*`` functions (:mod:`panollava.commands.function_cli`)
and import only what they need, so ``panollava-cli --help`` and ``score`` start fast.

Errors caused by user input (:class:`panollava.errors.PanoLLaVAError`) print one short message and exit with
status 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from panollava.commands.function_cli import run_function_command
from panollava.console import configure_logging as _configure_logging
from panollava.errors import PanoLLaVAError, environment_error

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
    "compare": ("panollava.commands.compare", "run_compare_command", "dirs"),
}
"""Light commands whose flags and ``--help`` come from a typed function (module, function, positional list
parameter): see :mod:`panollava.commands.function_cli`. The modules import torch only when the command runs."""


def _run_function(command: str, argv: Sequence[str]) -> int:
    module, name, positional = FUNCTION_COMMANDS[command]
    run_function_command(command, getattr(importlib.import_module(module), name), argv, positional)
    return 0


def _cmd_judge(argv: Sequence[str]) -> int:
    from panollava.commands.judge import run_judge_command
    from panollava.judge.run import JudgeSettings

    failed = run_function_command("judge", run_judge_command, argv, settings_class=JudgeSettings)
    return 3 if failed else 0  # 3: scores written, some samples failed (counted, not imputed)


LIGHT_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    **{command: functools.partial(_run_function, command) for command in FUNCTION_COMMANDS},
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
        explained = environment_error(exc)
        if explained is None or verbose:
            raise
        print(f"error: {explained}", file=sys.stderr)
        return explained.exit_code
    except SystemExit as exc:  # argparse / jsonargparse errors and --help
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
