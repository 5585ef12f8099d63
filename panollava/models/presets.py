"""Architecture configs of the real models, bundled so they can be inspected and built without a download.

The JSON files live in ``panollava/configs/presets/`` (package data, so they ship with ``pip install``):
the vision part of SigLIP2 so400m (patch16-256 and patch14-224) and Qwen3-0.6B, with the numbers of the
configs published on the Hugging Face hub. They define architecture only: no weights, no tokenizer, no image
processor. Users still name the hub ids (``google/siglip2-so400m-patch16-256``, ``Qwen/Qwen3-0.6B``) in their
configs; these presets serve tests (build the real shapes on the ``meta`` device), size estimates and docs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from panollava.errors import InvalidInputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "PRESET_DIR", "PRESET_HUB_IDS", "load_preset_config"]

#: Folder of the bundled preset JSON files.
PRESET_DIR: Path = Path(__file__).resolve().parent.parent / "configs" / "presets"

#: Preset name -> JSON file (a transformers config: ``model_type`` picks the config class).
PRESETS: dict[str, Path] = {
    "siglip2-so400m-patch16-256": PRESET_DIR / "siglip2-so400m-patch16-256.vision.json",
    "siglip2-so400m-patch14-224": PRESET_DIR / "siglip2-so400m-patch14-224.vision.json",
    "qwen3-0.6b": PRESET_DIR / "qwen3-0.6b.json",
}

#: Hugging Face hub id -> preset name. The SigLIP2 presets hold only the vision tower's config (the hub's
#: ``config.json`` is a full ``SiglipConfig`` with a text tower too).
PRESET_HUB_IDS: dict[str, str] = {
    "google/siglip2-so400m-patch16-256": "siglip2-so400m-patch16-256",
    "google/siglip2-so400m-patch14-224": "siglip2-so400m-patch14-224",
    "Qwen/Qwen3-0.6B": "qwen3-0.6b",
}


def load_preset_config(name: str) -> PretrainedConfig:
    """Load a bundled architecture config.

    Args:
        name: A key of :data:`PRESETS` (``"qwen3-0.6b"``) or a hub id of :data:`PRESET_HUB_IDS`
            (``"Qwen/Qwen3-0.6B"``); case-insensitive.

    Returns:
        The config object of the class its ``model_type`` names: ``SiglipVisionConfig`` for the SigLIP2
        presets, ``Qwen3Config`` for Qwen3-0.6B.

    Raises:
        InvalidInputError: If ``name`` is not a known preset or hub id.
        FileNotFoundError: If the package's preset file is missing (a broken installation).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    lowered = {key.lower(): key for key in PRESETS}
    hub_lowered = {hub.lower(): preset for hub, preset in PRESET_HUB_IDS.items()}
    key = lowered.get(name.lower()) or hub_lowered.get(name.lower())
    if key is None:
        raise InvalidInputError(
            f"unknown model preset {name!r}: expected one of {sorted(PRESETS)} or a hub id of "
            f"{sorted(PRESET_HUB_IDS)}"
        )
    path = PRESETS[key]
    if not path.is_file():
        raise FileNotFoundError(
            f"preset file '{path}' is missing: reinstall panollava (it ships as package data)"
        )
    model_type = json.loads(path.read_text(encoding="utf-8"))["model_type"]
    config = CONFIG_MAPPING[model_type].from_json_file(str(path))
    logger.info("Loaded model preset %r from '%s' (%s).", key, path, type(config).__name__)
    return config
