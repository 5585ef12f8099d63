"""The original PanoLLaVA architecture (``mlp`` resampler), written from the facts of its public code.

Per panorama of V views (view 0 global, then the tiles), shapes for SigLIP with 16×16 patches on 256² views:

1. **Vision tower** — the ``vision_model`` of ``AutoModel.from_pretrained(vision_name)``; its
   ``last_hidden_state`` (V, S, C) (S = patch tokens, no CLS), then a **LayerNorm** over C when the run had
   ``use_vicreg_norm`` (the original's default; never trained, so weight 1 / bias 0 in real runs) or nothing.
2. **MLP resampler** per token: ``(Linear → LayerNorm(eps 1e-5) → GELU) × (depth − 1) → Linear``,
   C → hidden → … → latent (the original's default hidden 1536, depth 3). Token count unchanged.
3. **Projection positional encoding** (``use_projection_positional_encoding``, ``_PE`` runs): a parameter-free
   sinusoidal code added to the resampler output. The S tokens of a view form an (h, w) grid (the original's
   ``infer_hw``); column x of view v sits at ``g = v·s + x/w`` with ``s = 1 − overlap`` (``s = 1`` without
   continuity) — all V views count, the global one included. Code = sin/cos(2π g / L) over the channel
   frequencies (``L = V − (V − 1)·overlap``) + sin/cos(row index) + sin/cos(g), temperature 10000.
4. **Projector** ``Linear(latent → LM hidden)`` per token.
5. **Stitching** of the (V, h, w) token grid into one sequence: ``concat`` — row by row, each row the w columns of
   every view in turn (V·h·w tokens); ``drop_overlap`` (the original's default; ``stride_views`` ran the same
   code) — per row, view 0's w columns then each later view without its first ``k = round(w·overlap)`` columns
   (h·(w + (V − 1)(w − k)) tokens).
6. **Language model** with the tokens at the single ``<|vision|>`` placeholder. Here the placeholder is expanded
   to N copies and each copy's embedding replaced by one image token: the same embeddings, attention mask and
   positions as the original's removal of the placeholder and insertion of N tokens.

Pure torch + transformers; the language model is built and loaded by :mod:`.loading`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from panollava.errors import InvalidInputError

STITCHING_MODES = ("drop_overlap", "concat")
"""Stitching modes built here (``stride_views`` is an alias of ``drop_overlap``: the original ran the same code)."""

STITCHING_ALIASES = {"stride_views": "drop_overlap"}


def infer_token_grid(num_tokens: int) -> tuple[int, int]:
    """The (h, w) grid the original assumed for a view's S tokens: a square, else the divisor pair nearest it."""
    if num_tokens <= 0:
        raise InvalidInputError(f"a view must give at least one token, got {num_tokens}")
    side = int(math.isqrt(num_tokens))
    if side * side == num_tokens:
        return side, side
    for h in range(side, 0, -1):
        if num_tokens % h == 0:
            return h, num_tokens // h
    raise AssertionError("unreachable: 1 divides every positive integer")


def overlap_columns(width: int, overlap_ratio: float) -> int:
    """Columns dropped from each later view by ``drop_overlap``: Python's ``round(w·overlap)`` within [0, w]."""
    return int(max(0, min(width, round(width * overlap_ratio))))


def stitched_token_count(num_views: int, grid: tuple[int, int], mode: str, overlap_ratio: float) -> int:
    """Image tokens one panorama becomes after stitching."""
    h, w = grid
    k = overlap_columns(w, overlap_ratio)
    if mode == "concat" or num_views <= 1 or k <= 0:
        return num_views * h * w
    return h * (w + (num_views - 1) * (w - k))


class MLPResampler(nn.Module):
    """Per-token MLP ``in → hidden (× depth − 1) → out`` with LayerNorm and GELU between layers.

    Args:
        in_dim: Vision feature size.
        out_dim: Latent size.
        hidden_dim: Width of the hidden layers.
        depth: Number of Linear layers (≥ 1).
        use_ln: LayerNorm after each hidden Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, depth: int, use_ln: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise InvalidInputError(f"the mlp resampler needs depth >= 1, got {depth}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if use_ln:
                layers.append(nn.LayerNorm(hidden_dim, eps=1e-5))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, S, in_dim) → (N, S, out_dim)."""
        n, s, _ = features.shape
        return self.mlp(features.reshape(-1, self.in_dim)).view(n, s, self.out_dim)


def sinusoid(pos: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """``[sin(pos·f_i), cos(pos·f_i)]`` with ``f_i = temperature^(−2i/dim)``, i < dim/2 (zero-padded to dim).

    Args:
        pos: Positions, any shape, float32.
        dim: Output size.
        temperature: Frequency base.

    Returns:
        ``pos.shape + (dim,)`` float32.
    """
    half = dim // 2
    if half == 0:
        return torch.zeros(*pos.shape, dim, dtype=pos.dtype, device=pos.device)
    idx = torch.arange(half, dtype=pos.dtype, device=pos.device)
    freq = torch.exp(-math.log(temperature) * (2 * idx / max(1, dim)))
    angle = pos.unsqueeze(-1) * freq
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    if emb.shape[-1] < dim:
        emb = torch.cat([emb, emb.new_zeros(*emb.shape[:-1], dim - emb.shape[-1])], dim=-1)
    return emb


class ProjectionPositionalEncoding(nn.Module):
    """The original's parameter-free panorama positional code added before the projector (see module doc, 3).

    Args:
        embed_dim: Latent size.
        overlap_ratio: ``models.overlap_ratio`` (clamped to [0, 0.999]).
        enable_continuity: ``pe_enable_continuity``.
        temperature: ``pe_temperature``.
        spatial: ``pe_spatial_encoding_type``: ``"sinusoidal"`` adds the row/column term, anything else not.
    """

    def __init__(
        self,
        embed_dim: int,
        overlap_ratio: float,
        enable_continuity: bool = True,
        temperature: float = 10000.0,
        spatial: str = "sinusoidal",
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.overlap_ratio = max(0.0, min(float(overlap_ratio), 0.999))
        self.enable_continuity = bool(enable_continuity)
        self.temperature = float(temperature)
        self.spatial = spatial

    def code(self, num_views: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The code for (V, h, w) tokens: (V, h, w, embed_dim) float32."""
        h, w = grid
        d = self.embed_dim
        overlap = self.overlap_ratio if self.enable_continuity else 0.0
        step = 1.0 - overlap
        views = torch.arange(num_views, dtype=torch.float32, device=device).view(num_views, 1)
        cols = torch.arange(w, dtype=torch.float32, device=device) / max(1.0, float(w))
        g = views * step + cols.unsqueeze(0)  # (V, w): position along the panorama, in views
        length = num_views - (num_views - 1) * overlap
        yaw = sinusoid((2.0 * math.pi) * (g / max(1e-6, float(length))), d, self.temperature)
        yaw = yaw.view(num_views, 1, w, d).expand(num_views, h, w, d)
        if self.spatial == "sinusoidal":
            rows = sinusoid(torch.arange(h, dtype=torch.float32, device=device), d, self.temperature)
            spatial = rows.view(1, h, 1, d) + sinusoid(g, d, self.temperature).view(num_views, 1, w, d)
        else:
            spatial = torch.zeros(num_views, h, w, d, dtype=torch.float32, device=device)
        return yaw + spatial

    def forward(self, tokens: torch.Tensor, num_views: int, grid: tuple[int, int]) -> torch.Tensor:
        """tokens: (P·V, S, D) → the same with the code added."""
        pv, s, d = tokens.shape
        if d != self.embed_dim:
            raise InvalidInputError(f"positional encoding size {self.embed_dim} does not match latent size {d}")
        p = pv // num_views
        code = self.code(num_views, grid, tokens.device).to(tokens.dtype)
        return (tokens.view(p, num_views, grid[0], grid[1], d) + code).view(pv, s, d)


def stitch(tokens: torch.Tensor, mode: str, overlap_ratio: float) -> torch.Tensor:
    """(P, V, h, w, D) projected tokens → (P, N, D) in the original's order (module doc, 5)."""
    p, v, h, w, d = tokens.shape
    k = overlap_columns(w, overlap_ratio)
    if mode == "concat" or v <= 1 or k <= 0:
        return tokens.permute(0, 2, 1, 3, 4).reshape(p, h * v * w, d)
    rows = torch.cat([tokens[:, 0]] + [tokens[:, i, :, k:, :] for i in range(1, v)], dim=2)
    return rows.reshape(p, -1, d)


class VisionBackbone(nn.Module):
    """The vision tower and the optional feature LayerNorm (state-dict names as in the original)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, use_vicreg_norm: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.norm: nn.Module = nn.LayerNorm(hidden_size) if use_vicreg_norm else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) → normalised patch features (N, S, C)."""
        return self.norm(self.encoder(pixel_values=images, return_dict=True).last_hidden_state)


class OriginalPanoramaVLM(nn.Module):
    """Vision backbone → MLP resampler → [positional code] → projector → stitching → language model.

    Exposes what :class:`panollava.generation.CaptionGenerator` uses: :meth:`get_image_features`,
    :meth:`num_image_tokens`, :meth:`embed_inputs`, ``language_model`` and ``projector.weight``.

    Args:
        vision: The vision backbone.
        patch_size: The vision tower's patch size (pixels).
        resampler: The MLP resampler.
        positional: The projection positional encoding, or None (PE off).
        language_model: The causal LM (a peft ``PeftModel`` when the run used LoRA).
        vision_token_id: Id of ``<|vision|>``.
        stitching_mode: ``drop_overlap`` or ``concat``.
        overlap_ratio: ``models.overlap_ratio`` (stitching and positional code).
    """

    def __init__(
        self,
        vision: VisionBackbone,
        patch_size: int,
        resampler: MLPResampler,
        positional: ProjectionPositionalEncoding | None,
        language_model: nn.Module,
        vision_token_id: int,
        stitching_mode: str,
        overlap_ratio: float,
    ) -> None:
        super().__init__()
        mode = STITCHING_ALIASES.get(stitching_mode, stitching_mode)
        if mode not in STITCHING_MODES:
            raise InvalidInputError(
                f"stitching_mode {stitching_mode!r} is not built for the original PanoLLaVA family (supported: "
                f"{', '.join(STITCHING_MODES)}, and stride_views = drop_overlap); 'resample' would need its "
                "grid_sample fusion of overlapping columns"
            )
        self.vision_backbone = vision
        self.patch_size = int(patch_size)
        self.resampler = resampler
        self.positional = positional
        lm_hidden = language_model.get_input_embeddings().embedding_dim
        self.projector = nn.Linear(resampler.out_dim, lm_hidden)
        self.language_model = language_model
        self.vision_token_id = int(vision_token_id)
        self.stitching_mode = mode
        self.overlap_ratio = float(overlap_ratio)

    # -- token counts ---------------------------------------------------------------------------------------------
    def tokens_per_view(self, image_hw: tuple[int, int]) -> int:
        """Vision tokens of one view (no CLS: the original used every token of ``last_hidden_state``)."""
        return (int(image_hw[0]) // self.patch_size) * (int(image_hw[1]) // self.patch_size)

    def num_image_tokens(self, num_views: int, image_hw: tuple[int, int]) -> int:
        """Image tokens of one panorama of ``num_views`` views of size ``image_hw`` after stitching."""
        grid = infer_token_grid(self.tokens_per_view(image_hw))
        return stitched_token_count(num_views, grid, self.stitching_mode, self.overlap_ratio)

    # -- vision ---------------------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens of each panorama.

        Args:
            pixel_values: (P, V, 3, H, W) normalised views.

        Returns:
            (P, N, lm_hidden) in the LM's dtype, N = :meth:`num_image_tokens`.
        """
        p, v = pixel_values.shape[:2]
        vision_dtype = next(self.vision_backbone.parameters()).dtype
        feats = self.vision_backbone(pixel_values.flatten(0, 1).to(vision_dtype))
        s = feats.shape[1]
        expected = self.tokens_per_view(tuple(pixel_values.shape[-2:]))
        if s != expected:
            raise InvalidInputError(
                f"the vision tower gave {s} tokens per view for {tuple(pixel_values.shape[-2:])} views, but "
                f"{expected} were expected from its patch size {self.patch_size}: a vision tower with a CLS token or "
                "another patch layout is not supported by the original PanoLLaVA family"
            )
        latent = self.resampler(feats.to(self.projector.weight.dtype))
        grid = infer_token_grid(s)
        if self.positional is not None:
            latent = self.positional(latent, v, grid)
        projected = self.projector(latent.view(p, v, grid[0], grid[1], latent.shape[-1]))
        tokens = stitch(projected, self.stitching_mode, self.overlap_ratio)
        lm_dtype = self.language_model.get_input_embeddings().weight.dtype
        return tokens.to(lm_dtype)

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the ``<|vision|>`` copies replaced by image tokens, in order.

        Args:
            input_ids: (B, L) with exactly ``image_features.shape[1]`` vision tokens per row.
            image_features: (B, N, lm_hidden).

        Returns:
            (B, L, lm_hidden).

        Raises:
            InvalidInputError: a row's count of vision tokens differs from N.
        """
        mask = input_ids == self.vision_token_id
        counts = mask.sum(dim=1)
        expected = image_features.shape[1]
        if bool((counts != expected).any()):
            bad = int((counts != expected).nonzero()[0, 0])
            raise InvalidInputError(
                f"batch row {bad} holds {int(counts[bad])} <|vision|> tokens (id {self.vision_token_id}) but the "
                f"views give {expected} image tokens; build the prompt with num_image_tokens for the same views"
            )
        embeds = self.language_model.get_input_embeddings()(input_ids)
        return embeds.masked_scatter(mask.unsqueeze(-1), image_features.to(embeds.dtype))

    @torch.no_grad()
    def first_logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """The LM's raw logits at the first generated position of unpadded prompts (for checks).

        Args:
            input_ids: (B, L) prompts with the expanded vision tokens, no padding.
            pixel_values: (B, V, 3, H, W).

        Returns:
            (B, vocab) float32.
        """
        embeds = self.embed_inputs(input_ids, self.get_image_features(pixel_values))
        mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.logits[:, -1, :].float()
