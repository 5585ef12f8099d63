"""Offline stand-ins for what users bring: tiny models built from configs (ours and Hugging Face VLMs) and the
demo's generated panorama-captioning dataset. Not on the product path: tests, the demo and benchmarks use them."""
