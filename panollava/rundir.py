"""Resolve a training run directory into metadata, a checkpoint file (and why), and a LoRA folder.

The layout (SPEC §1)::

    runs/<experiment>/<stage>/<crop-short>_<resampler>/
      checkpoint_metadata.json
      best.ckpt -> <file>.ckpt          relative link to the lowest-val-loss checkpoint
      last.ckpt -> <file>.ckpt          relative link to the newest checkpoint
      <vision-short>_<resampler>_<crop-short>_<dataset>_epoch<NN>_loss<L.LLLL>.ckpt
      lora_weights/adapter_config.json, adapter_model.safetensors

Checkpoint choice (SPEC §2): ``best.ckpt`` → ``last.ckpt`` → the newest ``*.ckpt`` by modification time,
unless the caller asks for a rule (``"best"``/``"last"``) or a file. Every guess is logged at INFO with its
reason; every oddity (dangling link, missing metadata, incomplete LoRA folder) at WARNING and in
``ResolvedRun.warnings``. Only the standard library is imported here.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metadata import RunMetadata, read_metadata
from panollava.schema import METADATA_FILENAME, STAGES

logger = logging.getLogger(__name__)

BEST_LINK = "best.ckpt"
LAST_LINK = "last.ckpt"
LORA_DIRNAME = "lora_weights"
LORA_CONFIG = "adapter_config.json"
LORA_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

RULE_BEST = "best.ckpt link"
RULE_LAST = "last.ckpt link"
RULE_NEWEST = "newest *.ckpt by modification time"
RULE_PATH = "--ckpt_path"

_MAX_LISTED = 20
_RULE_LABEL = {RULE_BEST: "best", RULE_LAST: "last", RULE_NEWEST: "newest", RULE_PATH: "given"}
_CKPT_NAME = re.compile(
    r"^(?P<vision_short>[^_]+)_(?P<resampler_type>[^_]+)_(?P<crop_short>[^_]+)_(?P<dataset_name>.+)"
    r"_epoch(?P<epoch>\d+)_loss(?P<val_loss>-?\d+(?:\.\d+)?|nan|-?inf)\.ckpt$"
)


# --- naming (SPEC §1) ---------------------------------------------------------------------------------------


def crop_short(crop_strategy: str) -> str:
    """The crop strategy as it appears in paths: ``"anyres_e2p"`` → ``"anyres-e2p"``."""
    return crop_strategy.replace("_", "-")


def vision_short(vision_name: str) -> str:
    """The first ``-``-separated word of the vision model's last path part.

    ``"google/siglip2-so400m-patch16-256"`` → ``"siglip2"``; ``"/x/tiny-siglip/"`` → ``"tiny"``; the built-in
    tiny models ``"tiny:siglip"`` → ``"tiny-siglip"``. Underscores become ``-`` so that checkpoint file names stay
    parseable.

    Args:
        vision_name: a Hugging Face id or a local directory.

    Returns:
        The short name.

    Raises:
        InvalidInputError: the name is empty.
    """
    if vision_name.startswith("tiny:"):
        return "tiny-" + vision_name[5:].replace("_", "-").replace(":", "-")
    last = re.split(r"[\\/]+", vision_name.strip().rstrip("/\\"))[-1]
    word = last.split("-")[0].replace("_", "-")
    if not word:
        raise InvalidInputError(f"cannot derive a short vision name from vision_name {vision_name!r}")
    return word


def run_dir_path(
    runs_root: str | os.PathLike[str], experiment: str, stage: str, crop_strategy: str, resampler_type: str
) -> Path:
    """``<runs_root>/<experiment>/<stage>/<crop-short>_<resampler>`` (not checked for existence).

    Args:
        runs_root: the folder holding the experiments (``runs``).
        experiment: the experiment name.
        stage: ``vision``, ``resampler`` or ``finetune``.
        crop_strategy: e.g. ``anyres_e2p``.
        resampler_type: e.g. ``mlp``.

    Returns:
        The run directory path (relative when ``runs_root`` is).

    Raises:
        InvalidInputError: an empty part, a part containing a path separator, or an unknown stage.
    """
    parts = {"experiment_name": experiment, "stage": stage, "crop_strategy": crop_strategy,
             "resampler_type": resampler_type}
    for key, value in parts.items():
        bad = not isinstance(value, str) or not value.strip() or value in (".", "..")
        if bad or "/" in value or "\\" in value:
            raise InvalidInputError(f"{key} must be a non-empty name without '/', found {value!r}")
    if stage not in STAGES:
        raise InvalidInputError(f"stage must be one of {', '.join(STAGES)}, found {stage!r}")
    return Path(runs_root) / experiment / stage / f"{crop_short(crop_strategy)}_{resampler_type}"


def checkpoint_filename(
    vision_name: str, resampler_type: str, crop_strategy: str, dataset_name: str, epoch: int, val_loss: float
) -> str:
    """``<vision-short>_<resampler>_<crop-short>_<dataset>_epoch<NN>_loss<L.LLLL>.ckpt``.

    Args:
        vision_name: the vision model (hub id or local dir); shortened with :func:`vision_short`.
        resampler_type: e.g. ``mlp``.
        crop_strategy: e.g. ``anyres_e2p``; shortened with :func:`crop_short`.
        dataset_name: e.g. ``quic360``.
        epoch: the epoch (at least two digits).
        val_loss: the validation loss of that epoch (four decimals).

    Returns:
        e.g. ``"siglip2_mlp_anyres-e2p_quic360_epoch05_loss0.4201.ckpt"``.
    """
    dataset = re.sub(r"[\\/\s]+", "-", dataset_name.strip()) or "data"
    return (
        f"{vision_short(vision_name)}_{resampler_type.replace('_', '-')}_{crop_short(crop_strategy)}"
        f"_{dataset}_epoch{int(epoch):02d}_loss{float(val_loss):.4f}.ckpt"
    )


def parse_checkpoint_filename(name: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Parses a name written by :func:`checkpoint_filename`.

    Args:
        name: a file name or path.

    Returns:
        ``{"vision_short", "resampler_type", "crop_short", "dataset_name", "epoch": int, "val_loss": float}``,
        or None when the name does not follow the convention.
    """
    match = _CKPT_NAME.match(os.path.basename(os.fspath(name)))
    if match is None:
        return None
    parsed: dict[str, Any] = match.groupdict()
    parsed["epoch"] = int(parsed["epoch"])
    parsed["val_loss"] = float(parsed["val_loss"])
    return parsed


def update_link(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Points ``link`` at ``target`` with a relative symlink, replaced atomically.

    A temporary link is created beside ``link`` and renamed over it, so readers see the old or the new target,
    never a missing link.

    Args:
        link: the link to create or replace (e.g. ``run_dir / "best.ckpt"``).
        target: the file it should point at; a relative path is taken from the current directory.

    Raises:
        FileNotFoundError: ``target`` does not exist (a dangling link is never written).
        IsADirectoryError: ``link`` is an existing real directory.
    """
    link = Path(link)
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(
            f"cannot link '{os.path.abspath(link)}' to '{os.path.abspath(target)}': no such file"
        )
    # Resolve the folders (not the file itself) so the relative path is right even across symlinked folders.
    link_dir = os.path.realpath(link.parent)
    target_abs = os.path.join(os.path.realpath(target.parent), target.name)
    relative = os.path.relpath(target_abs, link_dir)
    tmp = os.path.join(link_dir, f".{link.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, os.path.join(link_dir, link.name))
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    logger.info("linked '%s' -> '%s'", link, relative)


# --- resolution ---------------------------------------------------------------------------------------------


@dataclass
class ResolvedRun:
    """What :func:`resolve_run_dir` found in a run directory.

    Attributes:
        run_dir: the run directory, absolute.
        metadata: the loaded ``checkpoint_metadata.json``, or None when the directory has none.
        metadata_path: where the metadata was read from (or looked for, when ``metadata`` is None).
        checkpoint_path: the checkpoint file to load, absolute, links resolved.
        checkpoint_rule: which rule chose it: :data:`RULE_BEST`, :data:`RULE_LAST`, :data:`RULE_NEWEST` or
            :data:`RULE_PATH`.
        checkpoint_reason: a sentence saying why, for logs and reports.
        lora_dir: the peft adapter folder (holding ``adapter_config.json``), or None.
        warnings: what was reported at WARNING while resolving (dangling links, missing metadata, ...).
        checkpoint_link: the ``best.ckpt``/``last.ckpt`` link the checkpoint was reached through, if any.
    """

    run_dir: Path
    metadata: RunMetadata | None
    metadata_path: Path
    checkpoint_path: Path
    checkpoint_rule: str
    checkpoint_reason: str
    lora_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    checkpoint_link: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able summary for ``metrics.json``."""
        return {
            "run_dir": str(self.run_dir),
            "metadata_path": str(self.metadata_path) if self.metadata is not None else None,
            "checkpoint_path": str(self.checkpoint_path),
            "checkpoint_rule": self.checkpoint_rule,
            "checkpoint_reason": self.checkpoint_reason,
            "lora_dir": str(self.lora_dir) if self.lora_dir is not None else None,
            "warnings": list(self.warnings),
        }


def _abspath(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _describe_contents(directory: Path, limit: int = _MAX_LISTED) -> str:
    """``"a.ckpt, best.ckpt -> a.ckpt, lora_weights/"`` (folders with a trailing ``/``), at most ``limit``."""
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if not entries:
        return "nothing, the directory is empty"
    names = []
    for entry in entries[:limit]:
        if entry.is_symlink():
            names.append(f"{entry.name} -> {os.readlink(entry)}")
        elif entry.is_dir():
            names.append(entry.name + "/")
        else:
            names.append(entry.name)
    if len(entries) > limit:
        names.append(f"... and {len(entries) - limit} more")
    return ", ".join(names)


def _subdirs(directory: Path, limit: int = _MAX_LISTED) -> list[str]:
    try:
        names = sorted(p.name + "/" for p in directory.iterdir() if p.is_dir())
    except OSError:
        return []
    return names[:limit] + ([f"... and {len(names) - limit} more"] if len(names) > limit else [])


def _run_dirs_below(directory: Path, max_depth: int = 3, limit: int = 5) -> list[str]:
    """Sub-folders (relative) that look like run directories: they hold metadata or ``*.ckpt`` files."""
    found: list[str] = []
    frontier = [directory]
    for _ in range(max_depth):
        next_frontier: list[Path] = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            for child in children:
                if (child / METADATA_FILENAME).is_file() or any(child.glob("*.ckpt")):
                    found.append(child.relative_to(directory).as_posix() + "/")
                    if len(found) >= limit:
                        return found
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return found


def _check_run_dir(run_dir: Path) -> None:
    """Raises InputNotFoundError when ``run_dir`` is missing or not a directory, with suggestions."""
    if run_dir.is_dir():
        return
    if run_dir.exists():
        hint = " Pass the run directory that training wrote."
        if run_dir.suffix == ".ckpt":
            hint = (
                f" It is a checkpoint file: pass its folder '{run_dir.parent}' as the run directory and the "
                f"file as --ckpt_path."
            )
        raise InputNotFoundError(f"run directory '{run_dir}' is a file, not a directory.{hint}")
    ancestor = run_dir.parent
    while not ancestor.is_dir() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    siblings = _subdirs(ancestor)
    listing = (
        f" Directories in '{ancestor}': {', '.join(siblings)}."
        if siblings
        else f" '{ancestor}' has no directories."
    )
    raise InputNotFoundError(
        f"run directory '{run_dir}' does not exist.{listing} Pass the run directory that training wrote "
        f"(runs/<experiment>/<stage>/<crop>_<resampler>/)."
    )


def _link_state(link: Path) -> tuple[Path | None, str | None]:
    """``(real_file, problem)`` for ``best.ckpt``/``last.ckpt``: the file it reaches, or what is wrong."""
    if not link.is_symlink() and not link.exists():
        return None, None
    real = Path(os.path.realpath(link))
    if link.is_symlink() and not real.exists():
        target = os.readlink(link)
        return None, f"{link.name} in '{link.parent}' is a dangling link to '{target}' (no such file)"
    if not real.is_file():
        return None, f"{link.name} in '{link.parent}' does not lead to a file ('{real}' is a directory)"
    return real, None


def _newest_checkpoint(run_dir: Path, warn: Any) -> tuple[Path | None, int]:
    """Newest regular ``*.ckpt`` (links resolved, ``best``/``last`` excluded) and how many there were."""
    candidates: dict[Path, int] = {}
    for entry in run_dir.glob("*.ckpt"):
        if entry.name in (BEST_LINK, LAST_LINK):
            continue
        real = Path(os.path.realpath(entry))
        if not real.is_file():
            if entry.is_symlink():
                warn(f"{entry.name} in '{run_dir}' is a dangling link to '{os.readlink(entry)}'; skipped")
            continue
        candidates[real] = real.stat().st_mtime_ns
    if not candidates:
        return None, 0
    # Ties (same mtime) are broken by name so the choice is deterministic.
    newest = max(candidates, key=lambda p: (candidates[p], p.name))
    return newest, len(candidates)


def _resolve_explicit_path(checkpoint: str, run_dir: Path) -> tuple[Path, list[Path]]:
    """``(file, tried)``: an absolute path, else relative to the current directory, then the run directory."""
    given = Path(os.path.expanduser(checkpoint))
    tried = [given] if given.is_absolute() else [Path.cwd() / given, run_dir / given]
    for candidate in tried:
        if candidate.is_file():
            return Path(os.path.realpath(candidate)), tried
    tried_text = ", ".join(f"'{os.path.abspath(p)}'" for p in tried)
    dirs = [p for p in tried if p.is_dir()]
    if dirs:
        raise InputNotFoundError(
            f"--ckpt_path {checkpoint!r} is a directory ('{os.path.abspath(dirs[0])}'), "
            f"not a checkpoint file. "
            f"Pass a .ckpt file, or pass the directory as the run directory."
        )
    ckpts = sorted(p.name for p in run_dir.glob("*.ckpt"))
    available = f" Checkpoints in the run directory: {', '.join(ckpts[:_MAX_LISTED])}." if ckpts else ""
    raise InputNotFoundError(
        f"--ckpt_path {checkpoint!r} not found (tried {tried_text}).{available} Pass an existing .ckpt file, "
        f"or 'best'/'last', or nothing to choose automatically."
    )


def resolve_run_dir(ckpt_dir: str | os.PathLike[str], checkpoint: str | None = None) -> ResolvedRun:
    """Finds the metadata, the checkpoint to load and the LoRA folder of a run directory.

    Args:
        ckpt_dir: the run directory that training wrote.
        checkpoint: None (or ``"auto"``): ``best.ckpt`` → ``last.ckpt`` → the newest ``*.ckpt`` by
            modification time; ``"best"`` or ``"last"``: that link only; otherwise a checkpoint file
            (absolute, or relative to the current directory, then to the run directory).

    Returns:
        The :class:`ResolvedRun`; its ``warnings`` were also logged at WARNING, the choice at INFO.

    Raises:
        InputNotFoundError: ``ckpt_dir`` is missing or not a directory (its nearest existing parent's folders
            are listed); no checkpoint could be found (the directory's contents are listed); the requested
            rule's link is missing or dangling; the given file does not exist.
        InvalidInputError: ``checkpoint_metadata.json`` exists but is malformed.
    """
    run_dir = _abspath(ckpt_dir)
    _check_run_dir(run_dir)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning("%s", message)

    metadata_path = run_dir / METADATA_FILENAME
    metadata: RunMetadata | None = None
    if metadata_path.is_file():
        metadata = read_metadata(metadata_path)
    else:
        warn(
            f"no {METADATA_FILENAME} in '{run_dir}': settings come from --config and defaults; "
            f"pass --config configs/<your-training-config>.yaml"
        )

    request = None if checkpoint in (None, "", "auto") else str(checkpoint)
    path, rule, reason, link = _choose_checkpoint(run_dir, request, warn)
    if metadata is not None and rule == RULE_BEST:
        best = (metadata.data.get("checkpoints") or {}).get("best")
        recorded = best.get("file") if isinstance(best, dict) else None
        if recorded and os.path.basename(recorded) != path.name:
            warn(
                f"{BEST_LINK} in '{run_dir}' points to '{path.name}' but {METADATA_FILENAME} records the "
                f"best checkpoint as '{recorded}'; using the link"
            )
    logger.info("checkpoint: %s (%s)", path, reason)

    lora_dir = _find_lora_dir(run_dir, metadata, warn)
    return ResolvedRun(
        run_dir=run_dir,
        metadata=metadata,
        metadata_path=metadata_path,
        checkpoint_path=path,
        checkpoint_rule=rule,
        checkpoint_reason=reason,
        lora_dir=lora_dir,
        warnings=warnings,
        checkpoint_link=link,
    )


def _choose_checkpoint(
    run_dir: Path, request: str | None, warn: Any
) -> tuple[Path, str, str, Path | None]:
    """Applies the checkpoint rules; returns ``(file, rule, reason, link)``."""
    if request is not None and request not in ("best", "last"):
        path, _ = _resolve_explicit_path(request, run_dir)
        if not path.is_relative_to(run_dir) and not path.is_relative_to(Path(os.path.realpath(run_dir))):
            warn(
                f"checkpoint '{path}' is outside the run directory '{run_dir}': the model is rebuilt from "
                f"that directory's metadata"
            )
        return path, RULE_PATH, f"--ckpt_path given: {request}", None

    links = [(BEST_LINK, RULE_BEST, "lowest validation loss"), (LAST_LINK, RULE_LAST, "newest checkpoint")]
    if request is not None:
        links = [entry for entry in links if entry[0] == f"{request}.ckpt"]
    problems: list[str] = []
    for name, rule, meaning in links:
        link = run_dir / name
        real, problem = _link_state(link)
        if real is not None:
            kind = "link" if link.is_symlink() else "file (not a link)"
            why = "requested" if request is not None else "the first rule that applies"
            skipped = f" after skipping {'; '.join(problems)}" if problems else ""
            reason = f"{name} {kind} ({meaning}, {why}) → {real.name}{skipped}"
            return real, rule, reason, link
        if problem is not None:
            problems.append(problem)
            if request is None:
                warn(f"{problem}; trying the next rule")
        if request is not None:
            state = problem or f"there is no {name} in '{run_dir}'"
            raise InputNotFoundError(
                f"the {request!r} checkpoint was requested but {state} "
                f"(found: {_describe_contents(run_dir)}). Ask for another rule ('best', 'last', or none to "
                f"choose automatically) or pass --ckpt_path FILE."
            )

    newest, count = _newest_checkpoint(run_dir, warn)
    if newest is not None:
        no_links = "; ".join(problems) if problems else f"no {BEST_LINK} or {LAST_LINK} link"
        reason = f"newest of {count} *.ckpt file(s) by modification time ({no_links}) → {newest.name}"
        return newest, RULE_NEWEST, reason, None

    links_text = "; ".join(problems) if problems else f"no {BEST_LINK} or {LAST_LINK} link"
    message = (
        f"no checkpoint in '{run_dir}': {links_text} and no *.ckpt file "
        f"(found: {_describe_contents(run_dir)}). "
        f"Pass the run directory that training wrote."
    )
    below = _run_dirs_below(run_dir)
    if below:
        message += f" Run directories below it: {', '.join(below)}"
    raise InputNotFoundError(message)


def _find_lora_dir(run_dir: Path, metadata: RunMetadata | None, warn: Any) -> Path | None:
    """The LoRA adapter folder: the metadata's ``lora_weights`` name, else ``lora_weights/``."""
    recorded = metadata.lora_weights if metadata is not None else None
    lora_dir = run_dir / (recorded or LORA_DIRNAME)
    if not lora_dir.is_dir():
        if recorded:
            warn(
                f"{METADATA_FILENAME} records LoRA weights in '{recorded}/' but '{lora_dir}' does not exist; "
                f"the LoRA adapter is not loaded separately"
            )
        return None
    if not (lora_dir / LORA_CONFIG).is_file():
        warn(
            f"'{lora_dir}' has no {LORA_CONFIG} (found: {_describe_contents(lora_dir)}); the folder is not a "
            f"peft adapter and is not loaded"
        )
        return None
    if not any((lora_dir / name).is_file() for name in LORA_WEIGHT_FILES):
        warn(f"'{lora_dir}' has {LORA_CONFIG} but no {' or '.join(LORA_WEIGHT_FILES)}; loading it will fail")
    logger.info("LoRA weights: %s", lora_dir)
    return lora_dir


# --- "config only" mode -------------------------------------------------------------------------------------


def find_run_dir_from_config(
    runs_root: str | os.PathLike[str],
    experiment_name: str | None,
    stage: str | None,
    crop_strategy: str | None,
    resampler_type: str | None,
) -> Path:
    """Derives the run directory from a config's keys (SPEC §2, "config only") and checks that it exists.

    Args:
        runs_root: the folder holding the experiments (``runs``).
        experiment_name: the config's experiment name.
        stage: the config's stage.
        crop_strategy: the config's crop strategy.
        resampler_type: the config's resampler type.

    Returns:
        The run directory, absolute.

    Raises:
        InvalidInputError: a key is missing (None) or invalid.
        InputNotFoundError: the derived directory does not exist; the message names it, the keys it came from
            and the run directories that do exist under ``runs_root/experiment_name`` (or the experiments
            under ``runs_root``).
    """
    keys = {"experiment_name": experiment_name, "stage": stage, "crop_strategy": crop_strategy,
            "resampler_type": resampler_type}
    missing = [k for k, v in keys.items() if v is None]
    if missing:
        raise InvalidInputError(
            f"cannot derive the run directory: the config does not set {', '.join(missing)} (needed: "
            f"{', '.join(keys)}). Set them in the config, or pass the run directory with --ckpt_dir."
        )
    root = _abspath(runs_root)
    assert experiment_name and stage and crop_strategy and resampler_type  # narrowed by the check above
    path = _abspath(run_dir_path(root, experiment_name, stage, crop_strategy, resampler_type))
    if path.is_dir():
        logger.info("run directory derived from the config: %s", path)
        return path
    origin = (
        f"experiment_name={experiment_name!r}, stage={stage!r}, crop_strategy={crop_strategy!r} "
        f"(→ {crop_short(crop_strategy)!r}), resampler_type={resampler_type!r}"
    )
    experiment_dir = root / experiment_name
    if experiment_dir.is_dir():
        runs = _run_dirs_below(experiment_dir, max_depth=2, limit=_MAX_LISTED)
        exists = (
            f"run directories under '{experiment_dir}': {', '.join(runs)}" if runs
            else f"'{experiment_dir}' holds no run directory"
        )
    elif root.is_dir():
        experiments = _subdirs(root)
        exists = (
            f"'{experiment_dir}' does not exist; experiments under '{root}': {', '.join(experiments)}"
            if experiments
            else f"'{experiment_dir}' does not exist and '{root}' holds no experiment"
        )
    else:
        exists = f"the runs folder '{root}' does not exist"
    raise InputNotFoundError(
        f"run directory '{path}' derived from the config ({origin}) does not exist; {exists}. "
        f"Fix those keys in the config, or pass the run directory with --ckpt_dir."
    )


# --- banner (SPEC §2) ---------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """A path relative to the current directory when below it (as users typed it), else absolute."""
    with suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def banner_lines(
    resolved: ResolvedRun, merged_ok: bool = True, *, include_warnings: bool = True
) -> list[str]:
    """The start-up banner of SPEC §2, as lines for the CLI to print.

    Args:
        resolved: the resolved run.
        merged_ok: whether the metadata merged into the settings without disagreeing with the config; False
            prints a ⚠️ line pointing at the mismatch warning instead of "✅ Metadata merged into config".
        include_warnings: append a ``⚠️`` line per ``resolved.warnings`` (leave out when the log already
            showed them on the console).

    Returns:
        The lines, without trailing newlines.
    """
    rule = "=" * 60
    lines = [rule, f"📂 Checkpoint directory: {_display(resolved.run_dir)}", rule]
    meta = resolved.metadata
    if meta is not None:
        lines.append(f"✅ Metadata loaded: {_display(resolved.metadata_path)}")
    else:
        lines.append(
            f"⚠️ No metadata: {_display(resolved.metadata_path)} is missing; "
            f"settings from --config and defaults"
        )
    label = _RULE_LABEL.get(resolved.checkpoint_rule, "")
    lines.append(
        f"✅ Using {label + ' ' if label else ''}checkpoint: {_display(resolved.checkpoint_path)} "
        f"({resolved.checkpoint_rule})"
    )
    if meta is not None:
        model, train = meta.model_config, meta.training_config
        lines.append(
            f"📋 From metadata: experiment {meta.experiment_name} · stage {meta.stage} "
            f"· vision {model['vision_name']}"
        )
        lines.append(
            f"   · language {model['language_model_name']} · resampler {model['resampler_type']} "
            f"· crop {train['crop_strategy']}"
        )
        if merged_ok:
            lines.append("✅ Metadata merged into config")
        else:
            lines.append(
                "⚠️ Metadata merged into config: config values that disagree were overridden (see warning)"
            )
    if resolved.lora_dir is not None:
        lines.append(f"✅ Found LoRA weights: {_display(resolved.lora_dir)}")
    if include_warnings:
        lines.extend(f"⚠️ {warning}" for warning in resolved.warnings)
    return lines
