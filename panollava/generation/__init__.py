"""Caption generation: one vision pass and one image prefix per panorama, and one decode loop.

- :class:`DecodeSettings` / :func:`sample_seed` (``settings.py``): what decoding runs, per-sample seeds;
- ``sampling.py``: Hugging Face's logits processors and per-row seeded sampling;
- ``decode.py``: prefill (plain or shared prefix) into a preallocated KV cache, and the decode loop;
- :class:`CaptionGenerator` (``generator.py``): batches of panoramas → captions, with counters and provenance.
"""

from panollava.generation.generator import CaptionGenerator
from panollava.generation.settings import DecodeSettings, sample_seed

__all__ = ["CaptionGenerator", "DecodeSettings", "sample_seed"]
