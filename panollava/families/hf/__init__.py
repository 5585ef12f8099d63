"""Hugging Face VLM family."""
