"""Model code: pure torch + transformers (never imports lightning)."""
