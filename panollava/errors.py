"""User-facing error types.

Library code raises these; ``panollava.cli`` turns them into a short message and a non-zero exit code (the
traceback only with ``--verbose``). A message says what was expected, what was found, where (absolute path, CSV
row, metadata key) and how to fix it. Each class also derives from the matching built-in exception, so callers
can catch ``FileNotFoundError`` or ``ValueError`` as usual.

Exit codes (``exit_code`` of each class; ``panollava.cli.main`` returns it): 2 for a user error, 3 when results
were written but a metric failed (or was unavailable under ``--strict_metrics``), 130 after an interruption.
"""

import errno as errno_names
import pickle
import zipfile


class PanoLLaVAError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    #: Exit status of ``panollava-cli`` when this error ends a command.
    exit_code: int = 2


class InputNotFoundError(PanoLLaVAError, FileNotFoundError):
    """A file or directory the user pointed at does not exist or holds nothing usable."""


class InvalidInputError(PanoLLaVAError, ValueError):
    """An input exists but is malformed: a bad flag value, CSV, metadata file or image."""


class ModelUnavailableError(PanoLLaVAError, OSError):
    """A model name is neither a local folder nor available in the offline Hugging Face cache."""


class MetricFailedError(PanoLLaVAError, RuntimeError):
    """A metric raised while being computed (or, in strict mode, could not run here).

    Raised after the predictions and the metrics that could be computed were written, so that the command exits
    non-zero (status 3) without losing them. The message names each metric, its reason and the files written.
    """

    exit_code = 3


def checkpoint_load_error(path: object, exc: BaseException) -> PanoLLaVAError | None:
    """A user-facing error for an exception raised while loading checkpoint ``path``, or None if it is a bug.

    ``torch.load(weights_only=True)`` refuses a pickle that would import or call anything but tensors and plain
    values; this names that refusal (and never offers to load the file unsafely), a truncated or corrupt file,
    weights of another architecture and a LoRA adapter that does not fit the base model.

    Args:
        path: The checkpoint file (absolute path).
        exc: What loading raised.

    Returns:
        An :class:`InvalidInputError` with what/where/fix, or None when ``exc`` is not explained by the file.
    """
    if isinstance(exc, PanoLLaVAError):
        return None  # already explained
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), first)
        return InvalidInputError(
            f"refused to load checkpoint '{path}': it is a pickle that asks to run or import code ({detail[:200]}), "
            "and checkpoints are loaded with torch.load(weights_only=True) so that a file from elsewhere cannot run "
            "code on this machine. Use a checkpoint written by 'panollava-cli fit'; if you wrote this file yourself, "
            "re-save it with plain (JSON-able) hyper-parameters"
        )
    if isinstance(exc, (EOFError, zipfile.BadZipFile)) or "PytorchStreamReader failed" in text or (
        "central directory" in text
    ):
        return InvalidInputError(
            f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}: {first[:160]}). Copy it again, or "
            "evaluate another checkpoint of the run (--ckpt_path FILE, or the rule last)"
        )
    if "Error(s) in loading state_dict" in text:
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        shown = "; ".join(lines[:2]) + (f"; and {len(lines) - 2} more" if len(lines) > 2 else "")
        if "PeftModel" in first or "lora_" in text:
            return InvalidInputError(
                f"the LoRA adapter does not fit the model built for checkpoint '{path}' ({shown}). The "
                "lora_weights/ folder (adapter_config.json: r, target_modules, base model) belongs to another model "
                "or run: restore the run's own lora_weights/ or remove it to use the LoRA tensors in the checkpoint"
            )
        return InvalidInputError(
            f"checkpoint '{path}' holds weights of another architecture than the metadata describes ({shown}). "
            "Check model_config in checkpoint_metadata.json (latent_dimension, resampler_type, image_size, model "
            "names) or pass the run directory this checkpoint came from"
        )
    if isinstance(exc, KeyError) and "state_dict" in text:
        return InvalidInputError(
            f"'{path}' is not a Lightning checkpoint (no 'state_dict' in it); pass a .ckpt written by "
            "'panollava-cli fit'"
        )
    return None


_WRITE_ERRNOS = {
    "ENOSPC": "the disk is full",
    "EDQUOT": "the disk quota is exceeded",
    "EFBIG": "the file size limit was reached",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EROFS": "the file system is read-only",
    "ENOTDIR": "a part of the path is a file, not a folder",
}


def environment_error(exc: OSError) -> PanoLLaVAError | None:
    """A user-facing error for an ``OSError`` caused by the machine (full disk, no permission), or None.

    Files are written atomically (a temporary file renamed into place), so when this happens no half-written
    output is left behind under its final name.

    Args:
        exc: The error raised while reading or writing a file.

    Returns:
        A :class:`PanoLLaVAError` naming the path, the cause and the fix;
        None when ``exc`` is not one of these environment failures.
    """
    name = errno_names.errorcode.get(exc.errno or -1)
    if name not in _WRITE_ERRNOS or isinstance(exc, PanoLLaVAError):
        return None
    where = f"'{exc.filename}'" if exc.filename else "a file"
    if name in ("ENOSPC", "EDQUOT", "EFBIG"):
        fix = "free space (or raise the limit) and run the same command again, or choose another --output_dir"
    else:
        fix = "choose a folder you can write (--output_dir), or fix its permissions"
    return PanoLLaVAError(
        f"cannot write {where}: {exc.strerror or name} ({name}: {_WRITE_ERRNOS[name]}); nothing was left under a "
        f"final name by the failed write. {fix[0].upper()}{fix[1:]}"
    )
