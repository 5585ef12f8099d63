"""The model an evaluation plan names, built by its family and wrapped for Lightning.

One entry point, :func:`load_evaluation_model`, for every family of :data:`panollava.families.base.FAMILIES`:
ours is restored with ``PanoLLaVAModule.load_from_checkpoint`` (strict keys, ``weights_only``) from the merged
settings; the original PanoLLaVA trainer's runs and Hugging Face VLMs are built by their family's loader and
wrapped in :class:`panollava.captioning.FamilyModule`. The CLI (``panollava.lightning_cli``) only calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panollava.captioning import CaptioningModule, FamilyModule
from panollava.console import echo
from panollava.data.views import ViewConfig
from panollava.errors import InvalidInputError, checkpoint_load_error
from panollava.evaluation.plan import EvaluationPlan
from panollava.families.base import FAMILY_HF, FAMILY_ORIGINAL, FAMILY_PANOLLAVA
from panollava.families.hf import load_hf_model
from panollava.families.original import load_original_run
from panollava.generation.settings import DecodeSettings
from panollava.module import PanoLLaVAModule


def load_evaluation_model(plan: EvaluationPlan, model_kwargs: dict[str, Any]) -> CaptioningModule:
    """Builds the plan's model, its weights restored strictly.

    Args:
        plan: the evaluation plan (family, checkpoint, merged settings, what the family's loader needs).
        model_kwargs: our family's init args after the merge (the config's ``model`` group, plain).

    Returns:
        The LightningModule that runs the evaluation steps. For other families the plan's provenance gains the
        family's ``model`` description and ``model_fingerprint``.

    Raises:
        InvalidInputError: the checkpoint cannot be loaded (what, where, how to fix), or no loader serves the family.
    """
    if plan.family == FAMILY_PANOLLAVA:
        ckpt = plan.checkpoint_path
        try:
            module = PanoLLaVAModule.load_from_checkpoint(
                ckpt, map_location="cpu", weights_only=True, strict=True, **model_kwargs
            )
        except Exception as exc:  # issue 12: a bad file is the user's error, explained (errors.py)
            explained = checkpoint_load_error(ckpt, exc)
            if explained is None:
                raise
            raise explained from exc
        if model_kwargs.get("merge_lora"):
            module.merge_adapter()
        echo(f"✅ Loaded {ckpt.name} (strict, weights_only)")
        return module
    source, values = plan.family_source, plan.merged.values
    decode = DecodeSettings.from_dict(plan.provenance["decoding"])
    if plan.family == FAMILY_ORIGINAL:
        caption_model = load_original_run(
            source["run_dir"], checkpoint=source["checkpoint"], config_yaml=source["config_yaml"],
            decode=decode, base_dir=Path.cwd(), share_prefix=bool(values["share_prefix"]),
        )
    elif plan.family == FAMILY_HF:
        views = ViewConfig(crop_strategy=values["crop_strategy"], fov_deg=float(values["fov_deg"]),
                           overlap_ratio=float(values["overlap_ratio"]), num_views=int(values["num_views"]),
                           **({"image_size": values["image_size"]} if values.get("image_size") else {}))
        caption_model = load_hf_model(
            source["name"], adapter=source["adapter"], views=views, prompt_template=values["prompt_template"],
            decode=decode, dtype=source["dtype"], share_prefix=bool(values["share_prefix"]),
        )
    else:  # pragma: no cover - every family of FAMILIES is handled above
        raise InvalidInputError(f"no loader for model family {plan.family!r}")
    plan.provenance["model"] = caption_model.provenance()
    plan.provenance["model_fingerprint"] = caption_model.fingerprint()
    echo(f"✅ Loaded {caption_model.provenance().get('model') or Path(plan.checkpoint_path).name} ({plan.family})")
    return FamilyModule(caption_model)
