"""Data: panorama views, datasets, prompts and collation, and the synthetic captioning dataset."""
