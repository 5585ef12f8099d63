"""Off-the-shelf Hugging Face VLMs (and their peft LoRA adapters) as a ``CaptionModel``: see docs/baselines.md."""

from panollava.families.hf.model import ARCHITECTURES, HFCaptionModel, load_hf_model

__all__ = ["ARCHITECTURES", "HFCaptionModel", "load_hf_model"]
