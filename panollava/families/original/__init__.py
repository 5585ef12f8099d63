"""The original PanoLLaVA architecture (family ``panollava-v1``): run directories of the original trainer.

Entry points for the integrator (pure torch/transformers; no Lightning):

- :func:`recognise` (``run_dir → Recognition | None``): the reasons, for the start-up banner;
- :func:`load_original_run` (``run_dir, checkpoint=None|"best"|"last"|path, config_yaml=None, decode=…,
  base_dir=cwd``) → :class:`OriginalCaptionModel`, a ``CaptionModel`` (see :mod:`panollava.families.base`); its
  ``checkpoint.reason`` is the banner's checkpoint line, ``resolved`` the settings with their sources and
  warnings, ``load_report.lines()`` what was loaded, ignored and checked;
- :func:`resolve_settings` — the settings resolution alone (testable without any model);
- :func:`choose_checkpoint` — the checkpoint rule of original runs (lowest loss in a file name; ``last.ckpt`` is a
  regular file there).

What is built: the ``mlp`` resampler path with the vision LayerNorm, projection positional encodings,
``concat``/``drop_overlap`` stitching, the ``<|vision|>`` prompt and the ``anyres_e2p`` views through the vision
processor. Other resamplers, crop strategies and stitching modes raise a clear error (see docs/original-runs.md).
"""

from panollava.families.original.caption import OriginalCaptionModel, OriginalPromptEncoder, load_original_run
from panollava.families.original.loading import (
    ChosenCheckpoint,
    LoadReport,
    Recognition,
    choose_checkpoint,
    recognise,
)
from panollava.families.original.model import OriginalPanoramaVLM
from panollava.families.original.settings import (
    FAMILY,
    OriginalSettings,
    ResolvedSettings,
    resolve_settings,
    settings_from_weights,
)
from panollava.families.original.views import OriginalViewTransform

__all__ = [
    "FAMILY",
    "ChosenCheckpoint",
    "LoadReport",
    "OriginalCaptionModel",
    "OriginalPanoramaVLM",
    "OriginalPromptEncoder",
    "OriginalSettings",
    "OriginalViewTransform",
    "Recognition",
    "ResolvedSettings",
    "choose_checkpoint",
    "load_original_run",
    "recognise",
    "resolve_settings",
    "settings_from_weights",
]
