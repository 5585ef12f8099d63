"""Light commands from typed functions, the litgpt way: a ``run_*`` function's signature (types, defaults) and the
``Args:`` section of its Google docstring are the command's flags and ``--help``, written once. A settings
dataclass (its ``Attributes:`` docs) can add its fields as top-level flags too.

jsonargparse builds the parser (it validates the types and prints the docstring lines); nothing here imports torch,
so ``panollava-cli score --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser

_BOOL_WORDS = ("true", "false", "yes", "no", "1", "0")


def _kinds(*sources: Any) -> tuple[set[str], set[str]]:
    """``(boolean flags, list flags)`` of the functions' parameters and the dataclasses' fields."""
    bools: set[str] = set()
    lists: set[str] = set()
    for source in sources:
        if source is None:
            continue
        hints = typing.get_type_hints(source)
        names = ([f.name for f in dataclasses.fields(source)] if dataclasses.is_dataclass(source)
                 else list(inspect.signature(source).parameters))
        for name in names:
            kind = hints.get(name)
            union = typing.get_origin(kind) in (typing.Union, types.UnionType)
            args = set(typing.get_args(kind)) - {type(None)} if union else {kind}
            if args == {bool}:
                bools.add(name)
            if any(typing.get_origin(a) in (list, Sequence, tuple) for a in args):
                lists.add(name)
    return bools, lists


def normalise_argv(
    func: Callable[..., Any], argv: Sequence[str], positional: str | None = None, settings_class: type | None = None
) -> list[str]:
    """The command line in the form jsonargparse reads.

    - a bare boolean flag (``--force``, the argparse ``store_true`` form) means ``--force true``;
    - a list flag takes every word that follows it up to the next flag (``--eval_dir A B``);
    - with ``positional``, the words that are neither flags nor a flag's value are that list parameter's values
      (``compare DIR DIR --baseline DIR`` → ``--dirs '["DIR", "DIR"]' --baseline DIR``).
    """
    bools, lists = _kinds(func, settings_class)
    items = list(argv)
    out: list[str] = []
    values: list[str] = []
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("-"):
            name = arg.lstrip("-").split("=", 1)[0]
            if "=" in arg or name in ("h", "help"):
                out.append(arg)
            elif name in lists:
                words = []
                while i + 1 < len(items) and not items[i + 1].startswith("--"):
                    words.append(items[i + 1])
                    i += 1
                single_json = len(words) == 1 and words[0].lstrip().startswith("[")
                out += [arg, words[0] if single_json else json.dumps(words)]
            elif name in bools:
                nxt = items[i + 1] if i + 1 < len(items) else None
                if nxt is not None and nxt.lower() in _BOOL_WORDS:
                    out += [arg, nxt]
                    i += 1
                else:
                    out += [arg, "true"]
            else:
                out.append(arg)
                if i + 1 < len(items):
                    out.append(items[i + 1])
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
    prog: str,
    func: Callable[..., Any],
    argv: Sequence[str],
    positional: str | None = None,
    settings_class: type | None = None,
) -> Any:
    """Parses ``argv`` against ``func``'s signature and calls it.

    Args:
        prog: The command name shown in usage lines (``panollava-cli <prog>``).
        func: A typed function with a Google docstring; its first paragraph is the command's description.
        argv: The command's arguments.
        positional: The name of a list parameter given as leading positional words.
        settings_class: A dataclass whose fields are flags too; ``func`` then gets an instance as ``settings``.

    Returns:
        What ``func`` returns.

    Raises:
        SystemExit: For ``--help`` (0) and invalid arguments (2), as argparse does.
    """
    doc = inspect.getdoc(func) or ""
    description = doc.split("\n\n", 1)[0]
    parser = ArgumentParser(prog=f"panollava-cli {prog}", description=description, exit_on_error=True)
    skip = {"settings"} if settings_class is not None else set()
    parser.add_function_arguments(func, fail_untyped=True, skip=skip)
    if settings_class is not None:
        parser.add_class_arguments(settings_class, nested_key=None, fail_untyped=True)
    values = parser.parse_args(normalise_argv(func, argv, positional, settings_class)).as_dict()
    if settings_class is not None:
        names = {f.name for f in dataclasses.fields(settings_class)}
        values["settings"] = settings_class(**{k: values.pop(k) for k in list(values) if k in names})
    return func(**values)
