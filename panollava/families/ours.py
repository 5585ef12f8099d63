"""The ``panollava`` family: the run directories our ``fit`` writes (:mod:`panollava.models.vlm`), as a
:class:`~panollava.families.base.CaptionModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from panollava.errors import InvalidInputError
from panollava.families.base import FAMILY_PANOLLAVA, StackedViews
from panollava.schema import GenerationSettings, typed


def view_normalisation(views, image_preprocessing: Callable[[bool], Any]):
    """The view size (from the model) and normalisation: ``image_mean``/``image_std`` when given (a run's
    metadata records them), else the vision processor's; mean 0 / std 1 without ``use_vision_processor``.

    Args:
        views: The view settings (``panollava.schema.ViewSettings`` fields).
        image_preprocessing: ``use_vision_processor -> ImagePreprocessing`` of the model.
    """
    mean, std = views.image_mean, views.image_std
    if (mean is None) != (std is None):
        raise InvalidInputError(
            f"image_mean {mean} and image_std {std}: give both or neither (--data.image_mean / --data.image_std, "
            "or training_config.image_mean/image_std in the metadata)"
        )
    if not views.use_vision_processor:
        return image_preprocessing(False)
    if mean is not None:
        size_only = image_preprocessing(False)  # reads only the vision config
        return replace(size_only, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    return image_preprocessing(True)


def stacked_views_for(views, image_preprocessing: Callable[[bool], Any]) -> StackedViews:
    """The :class:`StackedViews` transform of a model that takes normalised views of its vision tower's size."""
    from panollava.data.views import ViewConfig

    prep = view_normalisation(views, image_preprocessing)
    config = ViewConfig(
        crop_strategy=views.crop_strategy,
        image_size=tuple(int(x) for x in prep.image_size),
        fov_deg=float(views.fov_deg),
        overlap_ratio=float(views.overlap_ratio),
        num_views=int(views.num_views),
    )
    config.validate()
    return StackedViews(config, prep.mean, prep.std, views.image_blind)


class PanoLLaVACaptionModel:
    """Our architecture (vision tower → resampler → projector → LoRA LM) behind the family seam.

    Args:
        vlm: The :class:`~panollava.models.vlm.PanoramicVLM`.
        generator: Its :class:`~panollava.generation.CaptionGenerator`.
        image_preprocessing: ``use_vision_processor -> ImagePreprocessing`` (view size, mean/std).
        identity: Model names and settings for the provenance.
    """

    family = FAMILY_PANOLLAVA

    def __init__(self, vlm, generator, image_preprocessing: Callable[[bool], Any], identity: dict[str, Any]) -> None:
        self.module = vlm
        self.generator = generator
        self.image_preprocessing = image_preprocessing
        self.identity = dict(identity)

    @classmethod
    def for_module(cls, module) -> PanoLLaVACaptionModel:
        """The caption model of a built :class:`panollava.module.PanoLLaVAModule` (its VLM, prompts, settings)."""
        from panollava.generation import CaptionGenerator, DecodeSettings

        gen = typed(GenerationSettings, module.hparams.generation)
        generator = CaptionGenerator(module.vlm, module.prompts, DecodeSettings.from_dict(module.hparams.generation),
                                     share_prefix=bool(gen.share_prefix), compile_decode=bool(gen.compile_decode))
        model = module.model_settings
        identity = {"vision_name": model.vision_name, "language_model_name": model.language_model_name}
        return cls(module.vlm, generator, module.image_preprocessing, identity)

    def panorama_transform(self, views) -> StackedViews:
        return stacked_views_for(views, self.image_preprocessing)

    def generate(self, batch: dict[str, Any]) -> list[str]:
        return self.generator.generate(batch)

    def reset(self) -> None:
        self.generator.reset()

    def describe_decoding(self) -> dict[str, Any]:
        return self.generator.describe()

    def provenance(self) -> dict[str, Any]:
        return {"family": self.family, **self.identity}

    def fingerprint(self) -> dict[str, Any]:
        # The checkpoint's and adapter's sha256 and every setting are fingerprinted by the evaluation plan.
        return {"family": self.family}
