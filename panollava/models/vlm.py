"""The panoramic VLM: vision tower → resampler → projector → causal LM with image tokens spliced in.

Pure torch + transformers; Lightning never appears here. Image tokens: the prompt holds the tokenizer's image
placeholder token (``<|image_pad|>`` by default) repeated once per image feature vector (the module expands the
single placeholder of the chat-templated prompt with :meth:`PanoramicVLM.num_image_tokens`); here each
placeholder embedding is replaced by one projected image feature, in view order. The same prompt layout is used in
training and in generation, so the image tokens sit at the same positions in both.
"""

from __future__ import annotations

import torch
from torch import nn

from panollava.errors import InvalidInputError


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, as ``generate`` derives them (left padding gets position 1).

    Args:
        attention_mask: (B, L) with 0 at padding.

    Returns:
        (B, L) long tensor.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


class PanoramicVLM(nn.Module):
    """Vision tower + resampler + projector + language model.

    Args:
        vision_tower: ``SiglipVisionModel`` (takes images) or ``Siglip2VisionModel`` (takes pre-cut patches).
        vision_kind: ``"siglip"`` or ``"siglip2"``.
        patch_size: The vision tower's patch size in pixels.
        resampler: Maps (N, T, vision_hidden) to (N, T', latent); has ``num_tokens(T)`` and ``out_dim``.
        language_model: A causal LM (possibly wrapped by peft).
        image_token_id: Id of the placeholder token replaced by image features.
    """

    def __init__(
        self,
        vision_tower: nn.Module,
        vision_kind: str,
        patch_size: int,
        resampler: nn.Module,
        language_model: nn.Module,
        image_token_id: int,
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.vision_kind = vision_kind
        self.patch_size = patch_size
        self.resampler = resampler
        lm_hidden = language_model.get_input_embeddings().embedding_dim
        self.projector = nn.Linear(resampler.out_dim, lm_hidden)
        self.language_model = language_model
        self.image_token_id = image_token_id

    def tokens_per_view(self, image_hw: tuple[int, int]) -> int:
        """Number of LM tokens one view of size ``image_hw`` (H, W) becomes."""
        h, w = image_hw
        return self.resampler.num_tokens((h // self.patch_size) * (w // self.patch_size))

    def num_image_tokens(self, num_views: int, image_hw: tuple[int, int]) -> int:
        """Number of placeholder tokens a prompt needs for ``num_views`` views of size ``image_hw``."""
        return num_views * self.tokens_per_view(image_hw)

    def _vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) → patch features (N, T, vision_hidden)."""
        if self.vision_kind == "siglip2":
            n, c, h, w = images.shape
            p = self.patch_size
            gh, gw = h // p, w // p
            # Same patch layout as Siglip2ImageProcessor: (gh, gw, p, p, C) flattened per patch.
            patches = images.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)
            mask = torch.ones(n, gh * gw, dtype=torch.long, device=images.device)
            shapes = torch.tensor([[gh, gw]] * n, dtype=torch.long, device=images.device)
            out = self.vision_tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        else:
            out = self.vision_tower(pixel_values=images)
        return out.last_hidden_state

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode all views of each panorama.

        Args:
            pixel_values: (B, V, 3, H, W) normalised views.

        Returns:
            (B, V · T', lm_hidden) image embeddings, views in order.
        """
        b, v = pixel_values.shape[:2]
        vision_dtype = next(self.vision_tower.parameters()).dtype
        feats = self._vision_features(pixel_values.flatten(0, 1).to(vision_dtype))
        tokens = self.projector(self.resampler(feats.to(self.projector.weight.dtype)))
        return tokens.reshape(b, v * tokens.shape[1], tokens.shape[2])

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by image features.

        Args:
            input_ids: (B, L) with exactly ``image_features.shape[1]`` placeholder tokens per row.
            image_features: (B, N, lm_hidden).

        Returns:
            (B, L, lm_hidden) input embeddings.

        Raises:
            InvalidInputError: a row's placeholder count differs from the number of image features.
        """
        mask = input_ids == self.image_token_id
        counts = mask.sum(dim=1)
        expected = image_features.shape[1]
        if bool((counts != expected).any()):
            bad = int((counts != expected).nonzero()[0, 0])
            raise InvalidInputError(
                f"image token count mismatch in batch row {bad}: the prompt has {int(counts[bad])} image placeholder "
                f"tokens (id {self.image_token_id}) but the views give {expected} image feature vectors; "
                "the prompt must be built with PanoramicVLM.num_image_tokens for the same views and image size"
            )
        embeds = self.language_model.get_input_embeddings()(input_ids)
        return embeds.masked_scatter(mask.unsqueeze(-1), image_features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
    ):
        """Teacher-forced pass.

        Args:
            input_ids: (B, L) left-padded prompt + answer tokens.
            attention_mask: (B, L).
            pixel_values: (B, V, 3, H, W).
            labels: (B, L) with -100 everywhere but the answer tokens (the LM shifts them itself).

        Returns:
            The LM's ``CausalLMOutputWithPast`` (``loss`` set when ``labels`` is given).
        """
        embeds = self.embed_inputs(input_ids, self.get_image_features(pixel_values))
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            labels=labels,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate continuations of left-padded prompts.

        Args:
            input_ids: (B, L) left-padded prompts ending with the assistant turn's opening.
            attention_mask: (B, L).
            pixel_values: (B, V, 3, H, W).
            **generate_kwargs: Passed to ``generate`` (max_new_tokens, num_beams, do_sample, eos/pad ids, …).

        Returns:
            (B, T_new) new token ids only.
        """
        if bool((attention_mask[:, -1] == 0).any()):
            raise InvalidInputError("batched generation needs left-padded prompts (a row ends with padding)")
        embeds = self.embed_inputs(input_ids, self.get_image_features(pixel_values))
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
