"""Crop strategies: the views of a panorama that the vision tower sees (SPEC §4).

Every strategy renders its views directly at the vision tower's input size, from the panorama at its original
resolution, in one place used by training and evaluation alike:

* ``anyres_e2p``: view 0 is the whole panorama letterboxed into the view (scaled to full width, centred, black
  bars above and below); then perspective tiles of ``fov_deg`` on a closed yaw loop (step
  ``360 / ceil(360 / (fov (1 - overlap)))``: 0, 45, 90, 135, -180, -135, -90, -45 for the defaults) for each
  pitch row (centres from ``pitch_min + vfov/2`` to ``pitch_max - vfov/2`` in steps of ``vfov (1 - overlap)``:
  one row at 0 for the defaults). 9 views by default.
* ``e2p``: ``num_views`` perspective tiles of ``fov_deg`` around the horizon, yaw ``i * 360 / num_views``.
* ``cubemap``: the four side faces F, R, B, L of py360convert's ``e2c`` (90° views at yaw 0, 90, -180, -90).
* ``sliding_window``: ``num_views`` full-height windows of the equirectangular image itself, ``fov_deg`` of
  longitude wide, centred at yaw ``i * 360 / num_views`` (wrapping at the seam), each resized to the view
  size.
* ``resize``: the whole panorama resized (squashed) to the view size.

Perspective tiles of a non-square ``image_size`` keep square pixels: ``fov_deg`` is the horizontal field of
view and the vertical one follows from the aspect ratio. Resizing (global view, windows, ``resize``) is
bilinear with antialiasing (PIL's ``BILINEAR``).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from panollava.data.projection import CUBE_FACE_YAW_PITCH_DEG, equirect_to_perspective, vertical_fov_deg
from panollava.errors import InvalidInputError
from panollava.schema import CROP_STRATEGIES, FOV_DEG_RANGE, ViewSettings

logger = logging.getLogger(__name__)

__all__ = [
    "CROP_STRATEGIES",
    "VIEW_KINDS",
    "ViewConfig",
    "ViewGeometry",
    "anyres_pitch_centers",
    "closed_loop_yaws",
    "letterbox",
    "normalize_views",
    "render_views",
    "resize_panorama",
    "view_geometries",
    "wrap_yaw_deg",
]


#: ``ViewGeometry.kind`` values.
VIEW_KINDS: tuple[str, ...] = ("global", "perspective", "cubemap", "window", "resize")

_MIN_VIEW_SIDE = 8
_EPS = 1e-9


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view looks.

    Attributes:
        kind: ``"global"`` (the letterboxed whole panorama), ``"perspective"`` (a perspective tile),
            ``"cubemap"`` (a cube face), ``"window"`` (a window of the equirectangular image) or ``"resize"``
            (the whole panorama resized).
        yaw_deg: Centre yaw in [-180, 180) (0 = the panorama's centre column, positive = right); None for
            ``global`` and ``resize``.
        pitch_deg: Centre pitch (positive = up); None for ``global`` and ``resize``; 0 for windows (they span
            the full height).
        fov_deg: Horizontal field of view (tiles, faces) or longitude span (windows) in degrees; None for
            ``global`` and ``resize``.
        height: View height in pixels.
        width: View width in pixels.
    """

    kind: str
    yaw_deg: float | None
    pitch_deg: float | None
    fov_deg: float | None
    height: int
    width: int

    def to_dict(self) -> dict:
        """Plain JSON-able dict with the fields above."""
        return asdict(self)


@dataclass(frozen=True)
class ViewConfig:
    """How to cut views from a panorama.

    Args:
        crop_strategy: One of ``CROP_STRATEGIES``.
        image_size: (H, W) of every view (the vision tower's input size); an int means a square.
        fov_deg: Horizontal field of view of perspective tiles (``anyres_e2p``, ``e2p``), or the longitude
            span of ``sliding_window`` windows, in degrees, in (0, 180). ``cubemap`` always uses 90.
        overlap_ratio: Overlap of neighbouring ``anyres_e2p`` tiles, in [0, 1).
        pitch_range_deg: (min, max) pitch that the ``anyres_e2p`` tile rows cover, within [-90, 90].
        num_views: Number of views of ``e2p`` (tiles on the horizon) and ``sliding_window``.
    """

    crop_strategy: str = ViewSettings.crop_strategy
    image_size: tuple[int, int] = (224, 224)
    fov_deg: float = ViewSettings.fov_deg
    overlap_ratio: float = ViewSettings.overlap_ratio
    pitch_range_deg: tuple[float, float] = (-45.0, 45.0)
    num_views: int = ViewSettings.num_views

    def __post_init__(self) -> None:
        # accept an int, a list, numpy scalars (YAML/JSON/CLI values) and keep the config hashable
        size = self.image_size
        if _is_integral(size):
            size = (size, size)
        elif isinstance(size, list) and len(size) == 1:
            size = (size[0], size[0])
        if isinstance(size, (list, tuple)):
            size = tuple(int(v) if _is_integral(v) else v for v in size)
        object.__setattr__(self, "image_size", size)
        if isinstance(self.pitch_range_deg, (list, tuple)):
            pr = tuple(float(p) if _is_real(p) else p for p in self.pitch_range_deg)
            object.__setattr__(self, "pitch_range_deg", pr)
        for name in ("fov_deg", "overlap_ratio"):
            if _is_real(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        if _is_integral(self.num_views):
            object.__setattr__(self, "num_views", int(self.num_views))

    def validate(self) -> None:
        """Check every field.

        Raises:
            InvalidInputError: Naming the bad field, its value and the allowed range or names.
        """
        if self.crop_strategy not in CROP_STRATEGIES:
            raise InvalidInputError(
                f"crop_strategy must be one of {', '.join(CROP_STRATEGIES)}; got {self.crop_strategy!r}"
            )
        size = self.image_size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= _MIN_VIEW_SIDE for v in size)
        ):
            raise InvalidInputError(
                f"image_size must be an int or an (H, W) pair of ints, each >= {_MIN_VIEW_SIDE} px; "
                f"got {size!r}"
            )
        if not _is_number(self.fov_deg) or not (FOV_DEG_RANGE[0] < self.fov_deg < FOV_DEG_RANGE[1]):
            raise InvalidInputError(
                f"fov_deg must lie in the open interval ({FOV_DEG_RANGE[0]:g}, {FOV_DEG_RANGE[1]:g}) degrees; got {self.fov_deg!r}"
            )
        if not _is_number(self.overlap_ratio) or not (0.0 <= self.overlap_ratio < 1.0):
            raise InvalidInputError(f"overlap_ratio must lie in [0, 1); got {self.overlap_ratio!r}")
        pr = self.pitch_range_deg
        if (
            not isinstance(pr, tuple)
            or len(pr) != 2
            or not all(_is_number(p) for p in pr)
            or not (-90.0 <= pr[0] <= pr[1] <= 90.0)
        ):
            raise InvalidInputError(
                f"pitch_range_deg must be a (min, max) pair with -90 <= min <= max <= 90 degrees; got {pr!r}"
            )
        nv = self.num_views
        if not isinstance(nv, int) or isinstance(nv, bool) or nv < 1:
            raise InvalidInputError(f"num_views must be an integer >= 1; got {nv!r}")
        if self.crop_strategy == "cubemap" and size[0] != size[1]:
            raise InvalidInputError(
                f"crop_strategy 'cubemap' needs a square image_size (cube faces); got {size}"
            )


def _is_integral(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def wrap_yaw_deg(yaw_deg: float) -> float:
    """Wrap an angle to [-180, 180) degrees (180 becomes -180)."""
    wrapped = (float(yaw_deg) + 180.0) % 360.0 - 180.0
    return 0.0 if wrapped == 0.0 else wrapped  # no -0.0


def closed_loop_yaws(fov_deg: float, overlap_ratio: float) -> list[float]:
    """Yaw centres that close the loop: step ``360 / ceil(360 / (fov (1 - overlap)))``, starting at 0.

    Args:
        fov_deg: Horizontal field of view of a tile.
        overlap_ratio: Overlap of neighbours, in [0, 1).

    Returns:
        Yaws in view order, wrapped to [-180, 180): ``[0, 45, 90, 135, -180, -135, -90, -45]`` for (90, 0.5).
    """
    step_raw = fov_deg * (1.0 - overlap_ratio)
    n = max(1, math.ceil(360.0 / step_raw - _EPS))
    step = 360.0 / n
    return [wrap_yaw_deg(i * step) for i in range(n)]


def anyres_pitch_centers(
    vfov_deg: float, overlap_ratio: float, pitch_range_deg: tuple[float, float]
) -> list[float]:
    """Pitch rows of ``anyres_e2p``: ``min + vfov/2`` to ``max - vfov/2`` in steps of ``vfov (1 - overlap)``.

    A range narrower than one tile (``max - min < vfov``) gives one row at its middle.

    Args:
        vfov_deg: Vertical field of view of a tile.
        overlap_ratio: Overlap of neighbours, in [0, 1).
        pitch_range_deg: (min, max) pitch.

    Returns:
        Pitch centres, bottom row first: ``[0.0]`` for (90, 0.5, (-45, 45)).
    """
    lo, hi = pitch_range_deg
    first, last = lo + vfov_deg / 2.0, hi - vfov_deg / 2.0
    if last < first - _EPS:
        _log_once(
            ("narrow_pitch", vfov_deg, lo, hi),
            "pitch_range_deg (%g, %g) is narrower than one tile's vertical fov (%g deg): using one row of "
            "tiles at pitch %g",
            lo, hi, vfov_deg, (lo + hi) / 2.0,
        )
        return [(lo + hi) / 2.0]
    step = vfov_deg * (1.0 - overlap_ratio)
    n = int(math.floor((last - first) / step + _EPS)) + 1
    return [first + i * step for i in range(n)]


_logged: set = set()


def _log_once(key: tuple, msg: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(msg, *args)


@functools.lru_cache(maxsize=64)
def _geometries(config: ViewConfig) -> tuple[ViewGeometry, ...]:
    h, w = config.image_size
    strategy = config.crop_strategy
    if strategy == "resize":
        return (ViewGeometry("resize", None, None, None, h, w),)
    if strategy == "cubemap":
        return tuple(
            ViewGeometry("cubemap", CUBE_FACE_YAW_PITCH_DEG[f][0], 0.0, 90.0, h, w) for f in "FRBL"
        )
    fov = float(config.fov_deg)
    yaws_even = [wrap_yaw_deg(i * 360.0 / config.num_views) for i in range(config.num_views)]
    if strategy == "e2p":
        return tuple(ViewGeometry("perspective", y, 0.0, fov, h, w) for y in yaws_even)
    if strategy == "sliding_window":
        return tuple(ViewGeometry("window", y, 0.0, fov, h, w) for y in yaws_even)
    # anyres_e2p
    yaws = closed_loop_yaws(fov, float(config.overlap_ratio))
    pitches = anyres_pitch_centers(vertical_fov_deg(fov, (h, w)), float(config.overlap_ratio),
                                   config.pitch_range_deg)
    tiles = [ViewGeometry("perspective", y, p, fov, h, w) for p in pitches for y in yaws]
    return (ViewGeometry("global", None, None, None, h, w), *tiles)


def view_geometries(config: ViewConfig) -> list[ViewGeometry]:
    """The views of a strategy, in order, without looking at an image.

    Args:
        config: The view configuration.

    Returns:
        One ``ViewGeometry`` per view (``len()`` is the number of views).

    Raises:
        InvalidInputError: When ``config`` is invalid.
    """
    config.validate()
    return list(_geometries(config))


def _check_rgb(pano: torch.Tensor) -> None:
    if not isinstance(pano, torch.Tensor) or pano.ndim != 3 or pano.shape[0] != 3:
        shape = tuple(pano.shape) if isinstance(pano, torch.Tensor) else type(pano).__name__
        raise InvalidInputError(f"the panorama must be a (3, H, W) RGB tensor, got {shape}")
    if pano.shape[1] < 2 or pano.shape[2] < 2:
        raise InvalidInputError(f"the panorama must be at least 2x2 pixels, got {tuple(pano.shape)}")
    if not (pano.dtype == torch.uint8 or pano.is_floating_point()):
        raise InvalidInputError(f"the panorama must be uint8 or floating point, got {pano.dtype}")


def resize_panorama(
    pano: torch.Tensor, out_hw: tuple[int, int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Bilinear, antialiased resize (PIL ``BILINEAR``) to float32 in [0, 1].

    Args:
        pano: ``(C, H, W)`` uint8 or float in [0, 1], any device. A channels-last uint8 tensor (what
            ``load_panorama`` returns) takes torch's fast uint8 path on CPU.
        out_hw: Output size (h, w).
        out: Optional float32 ``(C, h, w)`` tensor (may be a view) to write into.

    Returns:
        ``(C, h, w)`` float32 in [0, 1] (``out`` when given).
    """
    h, w = out_hw
    x = pano[None]
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        x = x.float()  # antialiased uint8 resampling is a CPU kernel
    elif x.dtype != torch.uint8 and x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    resized = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    if out is None:
        out = torch.empty((pano.shape[0], h, w), dtype=torch.float32, device=pano.device)
    if pano.dtype == torch.uint8:
        torch.mul(resized, 1.0 / 255.0, out=out)
    else:
        out.copy_(resized)
    return out


def letterbox(pano: torch.Tensor, out_hw: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """The whole panorama scaled to fit ``out_hw`` (2:1 into a square: full width), centred, black bars.

    Args:
        pano: ``(C, H, W)`` uint8 or float in [0, 1], any device.
        out_hw: Output size (h, w).
        out: Optional float32 ``(C, h, w)`` tensor to write into.

    Returns:
        ``(C, h, w)`` float32 in [0, 1]; for a 2:1 panorama into a square ``s``: rows
        ``[(s - round(s/2)) // 2, ... + round(s/2))`` hold the image, the rest is 0.
    """
    h, w = out_hw
    in_h, in_w = pano.shape[-2:]
    scale = min(w / in_w, h / in_h)
    nh, nw = max(1, min(h, round(in_h * scale))), max(1, min(w, round(in_w * scale)))
    top, left = (h - nh) // 2, (w - nw) // 2
    if out is None:
        out = torch.empty((pano.shape[0], h, w), dtype=torch.float32, device=pano.device)
    out.zero_()
    resize_panorama(pano, (nh, nw), out=out[:, top : top + nh, left : left + nw])
    return out


def _window_columns(yaw_deg: float, span_deg: float, width: int, device: torch.device) -> torch.Tensor:
    """Column indices of a window centred at ``yaw_deg``, ``span_deg`` of longitude wide, wrapping at the
    seam."""
    n = max(1, min(width, round(width * span_deg / 360.0)))
    centre = width / 2.0 + yaw_deg / 360.0 * width  # in pixel-edge units: column x covers [x, x + 1)
    start = math.floor(centre - n / 2.0 + 0.5)
    return torch.remainder(torch.arange(start, start + n, device=device), width)


def render_views(pano: torch.Tensor, config: ViewConfig) -> torch.Tensor:
    """Cut the views of ``config`` from a panorama.

    Args:
        pano: ``(3, H, W)`` equirectangular RGB, uint8 or float in [0, 1], on any device (CPU or GPU). The
            channels-last layout that ``load_panorama`` returns is the fastest on CPU.
        config: The view configuration (validated here).

    Returns:
        ``(V, 3, h, w)`` float32 in [0, 1] on ``pano``'s device, in ``view_geometries(config)`` order, with
        ``(h, w) = config.image_size``.

    Raises:
        InvalidInputError: For an invalid config or a panorama that is not a (3, H, W) uint8/float tensor.
    """
    geoms = view_geometries(config)
    _check_rgb(pano)
    h, w = config.image_size
    out = torch.empty((len(geoms), 3, h, w), dtype=torch.float32, device=pano.device)
    persp = [i for i, g in enumerate(geoms) if g.kind in ("perspective", "cubemap")]
    if persp:
        # all tiles share fov and size and are consecutive: one projection call writes them in place
        first, last = persp[0], persp[-1]
        assert persp == list(range(first, last + 1)), persp
        fov = float(geoms[first].fov_deg)  # type: ignore[arg-type]
        equirect_to_perspective(
            pano,
            [g.yaw_deg for g in geoms[first : last + 1]],  # type: ignore[misc]
            [g.pitch_deg for g in geoms[first : last + 1]],  # type: ignore[misc]
            (fov, vertical_fov_deg(fov, (h, w))),
            (h, w),
            out=out[first : last + 1],
        )
    in_w = pano.shape[2]
    for i, g in enumerate(geoms):
        if g.kind == "global":
            letterbox(pano, (h, w), out=out[i])
        elif g.kind == "resize":
            resize_panorama(pano, (h, w), out=out[i])
        elif g.kind == "window":
            cols = _window_columns(g.yaw_deg, g.fov_deg, in_w, pano.device)  # type: ignore[arg-type]
            resize_panorama(pano.index_select(2, cols), (h, w), out=out[i])
    return out


def normalize_views(
    views: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` (the vision processor's normalisation).

    Args:
        views: ``(V, 3, H, W)`` float in [0, 1].
        mean: Per-channel mean (3 values), or None to return ``views`` unchanged.
        std: Per-channel std (3 values), or None to return ``views`` unchanged.

    Returns:
        ``(V, 3, H, W)`` float32, a new tensor (or ``views`` itself when mean or std is None).

    Raises:
        InvalidInputError: When mean/std do not have one positive value per channel.
    """
    if mean is None or std is None:
        return views
    c = views.shape[-3]
    mean_t = torch.as_tensor(mean, dtype=views.dtype, device=views.device).flatten()
    std_t = torch.as_tensor(std, dtype=views.dtype, device=views.device).flatten()
    if mean_t.numel() != c or std_t.numel() != c or bool((std_t <= 0).any()):
        raise InvalidInputError(
            f"mean and std must have {c} values each (std > 0), got mean={list(mean)} std={list(std)}"
        )
    return (views - mean_t[:, None, None]) / std_t[:, None, None]
