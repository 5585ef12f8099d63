"""``panollava-cli tiny-models``: write the tiny offline models and print their folders."""

from __future__ import annotations

from pathlib import Path

from panollava.console import echo


def run_tiny_models(output_dir: str | None = None, force: bool = False) -> dict[str, Path]:
    """Write the tiny offline models (SigLIP and SigLIP2 vision towers, a Qwen3 LM with its tokenizer) and print
    their folders. Configs name them tiny:siglip, tiny:siglip2 and tiny:qwen3; they are built on first use anyway.

    Args:
        output_dir: Parent folder (default: $PANOLLAVA_CACHE or ~/.cache/panollava).
        force: Rebuild even if present.

    Returns:
        Name → folder.
    """
    from panollava.offline.tiny_models import build_tiny_models

    folders = build_tiny_models(output_dir, force=force)
    for name, path in folders.items():
        echo(f"{name}: {path}")
    return folders
