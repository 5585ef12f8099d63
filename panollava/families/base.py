"""The model-family seam: what a family gives the evaluation engine, and how a run directory is recognised.

Three families serve one engine: ``panollava`` (the run directories our ``fit`` writes), ``panollava-v1`` (the
original PanoLLaVA trainer's run directories) and ``hf`` (off-the-shelf Hugging Face VLMs). The data module, the
evaluation writer, resume, the report and ``compare`` only see the :class:`CaptionModel` protocol below, never a
family's classes. A family is plain torch + transformers (no Lightning): the Lightning layer wraps a
``CaptionModel`` (:class:`panollava.captioning.CaptioningModule`).

A family implements:

- **recognition** — ``recognise(run_dir) -> Recognition | None`` (pure, reads files only; the reasons become the
  banner line);
- **building and strict restore** — a loader that returns a :class:`CaptionModel` with its weights restored
  strictly (every key either loaded or explained);
- **inputs** — :meth:`CaptionModel.panorama_transform`: one decoded panorama → what the model needs of it, computed
  once for all its queries (in DataLoader workers, or on the model's device when the transform allows it);
- **generation** — :meth:`CaptionModel.generate` on the engine's batch layout (panoramas once, ``panorama_index``
  per sample), sharing an image prefix where that is exact for the family, seeded per sample when sampling;
- **provenance** — :meth:`CaptionModel.provenance` (identity), :meth:`CaptionModel.describe_decoding` (what ran)
  and :meth:`CaptionModel.fingerprint` (what changes captions, for resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the seam's names are read by light modules (the plan, compare): no torch import at run time
    import torch

FAMILY_PANOLLAVA = "panollava"
FAMILY_ORIGINAL = "panollava-v1"
FAMILY_HF = "hf"
FAMILIES = (FAMILY_PANOLLAVA, FAMILY_ORIGINAL, FAMILY_HF)


@dataclass(frozen=True)
class Recognition:
    """A run directory recognised as written for one family.

    Attributes:
        family: One of :data:`FAMILIES`.
        reasons: What gave it away (metadata keys, checkpoint hyper-parameters, state-dict prefixes), for the banner.
    """

    family: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def banner(self) -> str:
        """``family <name> (<reason>; <reason>)``."""
        return f"family {self.family}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


@runtime_checkable
class PanoramaTransform(Protocol):
    """One decoded panorama → the model's input for it. Picklable: it runs in DataLoader worker processes.

    Attributes:
        on_device: The transform also runs on the model's device, on a panorama already uploaded there (the
            data module then leaves it to after the batch transfer, ``--data.view_device model``).
    """

    on_device: bool

    def __call__(self, panorama: torch.Tensor) -> Any:
        """``panorama``: uint8 (3, H, W) RGB, as decoded. Deterministic."""

    def collate(self, items: Sequence[Any]) -> Any:
        """P per-panorama inputs → the batch's ``pixel_values``."""


class StackedViews:
    """Views cut and normalised by :func:`panollava.data.panorama_batches.cut_views`, stacked to (P, V, 3, H, W): the
    transform of the families whose models take normalised view tensors.

    Args:
        view_config: A :class:`panollava.data.views.ViewConfig`.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        image_blind: Replace every view by zeros (the image-blind baseline).
    """

    on_device = True

    def __init__(self, view_config, mean, std, image_blind: bool) -> None:
        self.view_config = view_config
        self.mean, self.std = mean, std
        self.image_blind = bool(image_blind)

    def __call__(self, panorama: torch.Tensor) -> torch.Tensor:
        from panollava.data.panorama_batches import cut_views

        return cut_views(panorama, self.spec())

    def spec(self) -> dict[str, Any]:
        return {"config": self.view_config, "mean": self.mean, "std": self.std, "image_blind": self.image_blind}

    def collate(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.stack(list(items))


class CaptionModel(Protocol):
    """What the evaluation engine needs of a model family (see the module docstring).

    Attributes:
        family: One of :data:`FAMILIES`.
        module: Every weight it uses; the caller moves it to the device.
    """

    family: str
    module: torch.nn.Module

    def panorama_transform(self, view_settings: Any) -> PanoramaTransform:
        """The transform for the data module, given the data module's view settings (``panollava.schema.
        ViewSettings`` fields: crop strategy, fov, overlap, image_blind, …); a family whose views are fixed by
        its run ignores or checks them."""

    def generate(self, batch: dict[str, Any]) -> list[str]:
        """One caption per sample, in batch order. Batch: ``query`` (B) · ``sample_id`` (B) · ``pixel_values``
        (the transform's collate of P panoramas) · ``panorama_index`` (B,) long · ``panorama_key`` (P)."""

    def reset(self) -> None:
        """Forget what is carried between batches (features of a panorama that continues, a kept cache)."""

    def describe_decoding(self) -> dict[str, Any]:
        """The decoding that ran: settings, path (shared prefix, plain, generate), eos ids."""

    def provenance(self) -> dict[str, Any]:
        """Identity: family, model names, revisions, adapter, dtype, view protocol, processor settings."""

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able: what changes captions besides the decoding settings (weights, revisions, adapter, views,
        prompt); a resume refuses when it changes."""
