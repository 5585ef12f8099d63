"""Resamplers: turn vision patch features into latent tokens.

A resampler maps ``(N, T, vision_hidden)`` patch features of ``N`` views to ``(N, T', latent_dimension)``.
Register new kinds in :data:`RESAMPLERS`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from panollava.errors import InvalidInputError


class MLPResampler(nn.Module):
    """Linear → LayerNorm → GELU → Linear to ``latent_dimension``; keeps the token count."""

    def __init__(self, in_dim: int, latent_dimension: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, latent_dimension),
            nn.LayerNorm(latent_dimension),
            nn.GELU(),
            nn.Linear(latent_dimension, latent_dimension),
        )
        self.out_dim = latent_dimension

    def num_tokens(self, tokens_per_view: int) -> int:
        return tokens_per_view

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, T, in_dim) → (N, T, latent_dimension)."""
        return self.net(features)


class IdentityResampler(nn.Module):
    """Passes features through; ``latent_dimension`` is the vision width."""

    def __init__(self, in_dim: int, latent_dimension: int | None = None) -> None:
        super().__init__()
        self.out_dim = in_dim

    def num_tokens(self, tokens_per_view: int) -> int:
        return tokens_per_view

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class AvgPoolResampler(nn.Module):
    """2×2 average pooling over the square patch grid (4× fewer tokens), then the MLP of :class:`MLPResampler`."""

    def __init__(self, in_dim: int, latent_dimension: int, pool: int = 2) -> None:
        super().__init__()
        self.pool = pool
        self.mlp = MLPResampler(in_dim, latent_dimension)
        self.out_dim = latent_dimension

    def num_tokens(self, tokens_per_view: int) -> int:
        side = math.isqrt(tokens_per_view)
        return (side // self.pool) ** 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, T, in_dim) with T a square number → (N, T / pool², latent_dimension)."""
        n, t, d = features.shape
        side = math.isqrt(t)
        if side * side != t:
            raise InvalidInputError(f"avgpool resampler needs a square patch grid, got {t} tokens per view")
        grid = features.transpose(1, 2).reshape(n, d, side, side)
        pooled = nn.functional.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return self.mlp(pooled)


RESAMPLERS: dict[str, type[nn.Module]] = {
    "mlp": MLPResampler,
    "identity": IdentityResampler,
    "avgpool": AvgPoolResampler,
}


def build_resampler(resampler_type: str, in_dim: int, latent_dimension: int) -> nn.Module:
    """Instantiate a registered resampler.

    Raises:
        InvalidInputError: ``resampler_type`` is not registered.
    """
    if resampler_type not in RESAMPLERS:
        raise InvalidInputError(
            f"unknown resampler_type {resampler_type!r}; choose one of {sorted(RESAMPLERS)} "
            "(model_config.resampler_type in the metadata or --model.model_config.resampler_type)"
        )
    return RESAMPLERS[resampler_type](in_dim, latent_dimension)
