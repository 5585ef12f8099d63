"""Light commands from typed functions, the litgpt way: a ``run_*`` function's signature (types, defaults) and the
``Args:`` section of its Google docstring are the command's flags and ``--help``, written once.

jsonargparse builds the parser (it validates the types and prints the docstring lines); nothing here imports torch,
so ``panollava-cli score --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any


def _bool_params(func: Callable[..., Any]) -> set[str]:
    return {name for name, p in inspect.signature(func).parameters.items() if p.annotation in (bool, "bool")}


_BOOL_WORDS = ("true", "false", "yes", "no", "1", "0")


def normalise_argv(
    func: Callable[..., Any], argv: Sequence[str], positional: str | None = None
) -> list[str]:
    """The command line in the form jsonargparse reads.

    - a bare boolean flag (``--force``, the argparse ``store_true`` form) means ``--force true``;
    - with ``positional``, the words that are neither flags nor a flag's value are that list parameter's values
      (``compare DIR DIR --baseline DIR`` → ``--dirs '["DIR", "DIR"]' --baseline DIR``).
    """
    bools = _bool_params(func)
    items = list(argv)
    out: list[str] = []
    values: list[str] = []
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("-"):
            out.append(arg)
            name = arg.lstrip("-").split("=", 1)[0]
            if "=" not in arg and name not in ("h", "help"):
                nxt = items[i + 1] if i + 1 < len(items) else None
                if name in bools:
                    if nxt is not None and nxt.lower() in _BOOL_WORDS:
                        out.append(nxt)
                        i += 1
                    else:
                        out.append("true")
                elif nxt is not None:
                    out.append(nxt)
                    i += 1
        elif positional is not None:
            values.append(arg)
        else:
            out.append(arg)  # jsonargparse names the unexpected word
        i += 1
    if values:
        out = [f"--{positional}", json.dumps(values), *out]
    return out


def run_function_command(
    prog: str, func: Callable[..., Any], argv: Sequence[str], positional: str | None = None
) -> Any:
    """Parses ``argv`` against ``func``'s signature and calls it.

    Args:
        prog: The command name shown in usage lines (``panollava-cli <prog>``).
        func: A typed function with a Google docstring; its first paragraph is the command's description.
        argv: The command's arguments.
        positional: The name of a list parameter given as leading positional words.

    Returns:
        What ``func`` returns.

    Raises:
        SystemExit: For ``--help`` (0) and invalid arguments (2), as argparse does.
    """
    from jsonargparse import ArgumentParser

    doc = inspect.getdoc(func) or ""
    description = doc.split("\n\n", 1)[0]
    parser = ArgumentParser(prog=f"panollava-cli {prog}", description=description, exit_on_error=True)
    parser.add_function_arguments(func, fail_untyped=True)
    cfg = parser.parse_args(normalise_argv(func, argv, positional))
    return func(**cfg.as_dict())
