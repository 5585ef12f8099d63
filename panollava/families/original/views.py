"""The original PanoLLaVA trainer's ``anyres_e2p`` views, pixel for pixel.

What the original fed its model for one panorama (``use_vision_processor: true``, the only mode built here):

1. **View 0 (global):** the whole panorama letterboxed into a ``GLOBAL_SIZE_PX`` square: PIL bicubic resize so the
   long side is 336 (``round`` of each side), pasted centred on black (offsets ``(336 - size) // 2``).
2. **Tiles:** ``py360convert.e2p`` (bilinear, uint8 output) at ``TILE_RENDER_PX`` square, one per (pitch, yaw),
   pitch-major. Yaw centres: a closed loop of ``N = ceil(360 / (fov (1 - overlap)))`` centres ``360 / N`` apart,
   starting at -180 and sorted by ``(yaw + 360) % 360`` (so 0, 45, …, 135, -180, -135, … for fov 90 / overlap 0.5);
   pitch centres from ``-45 + fov/2`` to ``45 - fov/2`` in steps of ``fov (1 - overlap)``.
3. **Vision processor:** every view resized to the processor's ``size`` with torch's uint8 antialiased bicubic
   kernel (what transformers' fast SigLIP processor runs on CPU), then ``x * rescale_factor``, ``(x - mean) / std``.

The views pass through float and back to uint8 in the original (``/255``, then ``* 255`` truncated): exact for all
256 levels, so the uint8 images are used directly here. The panorama comes in decoded as
:func:`panollava.data.images.load_panorama` returns it (the original decoded with PIL too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from panollava.errors import InvalidInputError

GLOBAL_SIZE_PX = 336
"""Side of the letterboxed global view before the vision processor (the original's ``anyres_e2p_base_size``)."""

TILE_RENDER_PX = 672
"""Side at which the original rendered each perspective tile (``anyres_e2p_tile_size``)."""

PITCH_RANGE_DEG = (-45.0, 45.0)
"""Pitch range of the tiles (``anyres_e2p_pitch_range``)."""

YAW_START_DEG = -180.0
"""The closed loop of yaw centres starts here before sorting."""

_RESAMPLE_MODES = {3: "bicubic", 2: "bilinear"}  # PIL resample codes the processor config may name


def _wrap_180(angle: float) -> float:
    return ((angle + 180.0) % 360.0) - 180.0


def tile_yaws_deg(fov_deg: float, overlap_ratio: float) -> list[float]:
    """Yaw centres of the tiles in the original's order.

    Args:
        fov_deg: Horizontal field of view of a tile.
        overlap_ratio: Overlap of neighbouring tiles, in [0, 1).

    Returns:
        ``[0, 45, 90, 135, -180, -135, -90, -45]`` for (90, 0.5).
    """
    step_raw = fov_deg * (1.0 - overlap_ratio)
    n = max(1, math.ceil(360.0 / step_raw))
    step = 360.0 / n
    centres: list[float] = []
    for i in range(n):
        c = _wrap_180(YAW_START_DEG + i * step)
        if all(abs(_wrap_180(c - u)) > 1e-6 for u in centres):
            centres.append(c)
    return sorted(centres, key=lambda x: (x + 360.0) % 360.0)


def tile_pitches_deg(fov_deg: float, overlap_ratio: float) -> list[float]:
    """Pitch centres of the tile rows (bottom first): ``[0.0]`` for (90, 0.5)."""
    lo, hi = PITCH_RANGE_DEG
    step = fov_deg * (1.0 - overlap_ratio)
    centres = []
    cur = lo + fov_deg / 2.0
    while cur <= hi - fov_deg / 2.0 + 1e-9:
        centres.append(cur)
        cur += step
    return centres


def _letterbox_uint8(pano_hwc: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(pano_hwc)
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return np.array(canvas)


@dataclass(frozen=True)
class OriginalViewTransform:
    """Panorama → the original's normalised views (picklable: it is sent to DataLoader workers).

    Args:
        fov_deg: ``image_processing.fov_deg`` of the run.
        overlap_ratio: ``image_processing.overlap_ratio`` of the run (tile spacing).
        out_hw: The vision processor's output size (H, W).
        mean: The processor's per-channel mean.
        std: The processor's per-channel std.
        rescale_factor: The processor's rescale factor (1/255).
        resample: The processor's resize mode: ``"bicubic"`` or ``"bilinear"``.
    """

    fov_deg: float
    overlap_ratio: float
    out_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1.0 / 255.0
    resample: str = "bicubic"
    on_device = False  # PIL letterbox and py360convert tiles: CPU only (a ClassVar, not a field)

    def collate(self, items) -> torch.Tensor:
        """P view stacks (V, 3, h, w) → (P, V, 3, h, w)."""
        return torch.stack(list(items))

    @property
    def num_views(self) -> int:
        """1 global view + one tile per (pitch, yaw)."""
        return 1 + len(tile_yaws_deg(self.fov_deg, self.overlap_ratio)) * len(
            tile_pitches_deg(self.fov_deg, self.overlap_ratio)
        )

    def view_geometry(self) -> list[dict]:
        """Kind, yaw, pitch and fov of each view, in order (for provenance and reports)."""
        views = [{"kind": "global", "size_px": GLOBAL_SIZE_PX}]
        for pitch in tile_pitches_deg(self.fov_deg, self.overlap_ratio):
            for yaw in tile_yaws_deg(self.fov_deg, self.overlap_ratio):
                views.append({"kind": "perspective", "yaw_deg": yaw, "pitch_deg": pitch, "fov_deg": self.fov_deg,
                              "render_px": TILE_RENDER_PX})
        return views

    def uint8_views(self, panorama: torch.Tensor) -> list[np.ndarray]:
        """The views as the original's PIL images held them: uint8 ``(h, w, 3)`` arrays, global first."""
        from py360convert import e2p

        if panorama.dtype != torch.uint8 or panorama.ndim != 3 or panorama.shape[0] != 3:
            raise InvalidInputError(
                f"a panorama must be a uint8 (3, H, W) RGB tensor as panollava.data.images.load_panorama returns, "
                f"got {panorama.dtype} {tuple(panorama.shape)}"
            )
        hwc = np.ascontiguousarray(panorama.permute(1, 2, 0).cpu().numpy())
        views = [_letterbox_uint8(hwc, GLOBAL_SIZE_PX)]
        for pitch in tile_pitches_deg(self.fov_deg, self.overlap_ratio):
            for yaw in tile_yaws_deg(self.fov_deg, self.overlap_ratio):
                tile = e2p(hwc, self.fov_deg, yaw, pitch, out_hw=(TILE_RENDER_PX, TILE_RENDER_PX))
                views.append(np.asarray(tile, dtype=np.uint8))
        return views

    def __call__(self, panorama: torch.Tensor) -> torch.Tensor:
        """Normalised views of one panorama.

        Args:
            panorama: uint8 ``(3, H, W)`` RGB.

        Returns:
            float32 ``(V, 3, H_out, W_out)``: view 0 global, then the tiles.
        """
        mode = self.resample
        out = []
        for view in self.uint8_views(panorama):
            chw = torch.from_numpy(np.array(view, dtype=np.uint8, copy=True)).permute(2, 0, 1).unsqueeze(0)
            # torch's native uint8 kernel (rounds and clamps like the fast processor's resize)
            resized = F.interpolate(chw, size=tuple(self.out_hw), mode=mode, antialias=True)
            out.append(resized[0])
        views = torch.stack(out).to(torch.float32) * self.rescale_factor
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (views - mean) / std


def view_transform_from_processor(vision_name: str, fov_deg: float, overlap_ratio: float) -> OriginalViewTransform:
    """The view transform with the vision processor's size, mean, std and rescale factor.

    Args:
        vision_name: The vision model (hub id or local folder) whose image processor the original loaded.
        fov_deg: Tile field of view.
        overlap_ratio: Tile overlap.

    Returns:
        The transform.

    Raises:
        InvalidInputError: the processor resizes another way than to a fixed (height, width), or with a resample
            mode other than bicubic/bilinear, or does not rescale and normalise.
    """
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(vision_name)
    size = getattr(proc, "size", None)
    size = dict(size) if size is not None else {}
    if "height" not in size or "width" not in size:
        raise InvalidInputError(
            f"the image processor of '{vision_name}' resizes to {size} (not a fixed height and width); the original "
            "PanoLLaVA family supports fixed-size processors such as SigLIP's"
        )
    resample = int(getattr(proc, "resample", 3) or 3)
    if resample not in _RESAMPLE_MODES:
        raise InvalidInputError(
            f"the image processor of '{vision_name}' uses resample {resample}; supported: 3 (bicubic), 2 (bilinear)"
        )
    if not all(getattr(proc, k, True) for k in ("do_rescale", "do_normalize", "do_resize")):
        raise InvalidInputError(
            f"the image processor of '{vision_name}' does not resize, rescale and normalise; only processors that do "
            "all three are supported"
        )
    return OriginalViewTransform(
        fov_deg=float(fov_deg),
        overlap_ratio=float(overlap_ratio),
        out_hw=(int(size["height"]), int(size["width"])),
        mean=tuple(float(x) for x in proc.image_mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in proc.image_std),  # type: ignore[arg-type]
        rescale_factor=float(proc.rescale_factor),
        resample=_RESAMPLE_MODES[resample],
    )
