"""Equirectangular → perspective projection as pure tensor functions (no I/O).

The geometry is ``py360convert`` 1.0.4's, reproduced exactly (``e2p`` and ``e2c`` are the references the tests
compare against):

* yaw (``u_deg``) 0 looks at the panorama's centre column and positive yaw turns right; pitch (``v_deg``) is
  positive upwards;
* a perspective pixel ``(i, j)`` of an ``(h, w)`` view is the ray ``(x_j, -y_i, 1)`` with ``x``/``y``
  spaced by ``linspace(-tan(fov/2), tan(fov/2))`` (the edge pixels' centres lie exactly on the field-of-view
  border), rotated by pitch about X and then by ``-yaw`` about Y (row vectors times ``Rx @ Ry``);
* the ray's longitude/latitude map to equirectangular pixel coordinates with pixel centres at integers
  (``x = (lon / 2π + 0.5) W - 0.5``, ``y = (-lat / π + 0.5) H - 0.5``);
* the image is padded by one pixel as py360convert does: the columns wrap around the seam, the row above
  the top (below the bottom) is the top (bottom) row rotated by ``W // 2`` columns: the pixel across the pole;
* bilinear interpolation (``grid_sample(..., align_corners=True)`` on the padded image reproduces
  ``scipy.ndimage.map_coordinates(order=1)``; py360convert rounds its uint8 result, we keep floats).

Speed: all views of one call are sampled by ONE ``grid_sample`` (the per-view grids are stacked into one tall
grid, so the panorama is never copied per view); only the band of rows that the views can reach is converted
to float; the sampling grids are cached (an LRU keyed by input size, output size, fov, yaw and pitch, and one
by the whole set of views and the device), so a warm call does no trigonometry; on CPU the float band lives in
a reusable per-thread buffer (up to 256 MB), because fresh allocations of tens of MB are page-faulted in on
every call. The panorama is never downscaled first: sampling a 2x antialiased copy of a 4096- or 5376-wide
panorama differed from py360convert on the original by 1.6-7.9/255 on average, over the 1/255 we hold to.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from panollava.errors import InvalidInputError
from panollava.schema import ViewSettings

__all__ = [
    "CUBE_FACE_YAW_PITCH_DEG",
    "clear_projection_caches",
    "equirect_to_cubemap",
    "equirect_to_perspective",
    "pad_equirect",
    "perspective_coords",
    "projection_cache_info",
    "vertical_fov_deg",
]

#: Cube faces as (yaw_deg, pitch_deg) of a 90° view: py360convert's ``e2c`` faces F, R, B, L, U, D.
CUBE_FACE_YAW_PITCH_DEG: dict[str, tuple[float, float]] = {
    "F": (0.0, 0.0),
    "R": (90.0, 0.0),
    "B": (-180.0, 0.0),
    "L": (-90.0, 0.0),
    "U": (0.0, 90.0),
    "D": (0.0, -90.0),
}

_COORD_CACHE_SIZE = 128  # per-view coordinates: (h, w, 2) float32, 0.5 MB at 256x256
_GRID_CACHE_SIZE = 16  # whole view sets on a device: (1, V*h, w, 2) float32
_MAX_REUSED_BAND_BYTES = 256 << 20  # a 5376x2688 input's +-45 deg band is 87 MB; larger bands are not kept

_lock = threading.Lock()
_coord_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_grid_cache: OrderedDict[tuple, tuple[torch.Tensor, int, int]] = OrderedDict()
_stats = {"coord_hits": 0, "coord_misses": 0, "grid_hits": 0, "grid_misses": 0}
_buffers = threading.local()


def clear_projection_caches() -> None:
    """Empty the sampling-grid caches and this thread's band buffer (tests, or to free memory)."""
    with _lock:
        _coord_cache.clear()
        _grid_cache.clear()
        for key in _stats:
            _stats[key] = 0
    _buffers.__dict__.clear()


def projection_cache_info() -> dict[str, int]:
    """Sizes and hit/miss counters of the grid caches.

    Returns:
        ``{"coords", "grids", "coord_hits", "coord_misses", "grid_hits", "grid_misses"}``.
    """
    with _lock:
        return {"coords": len(_coord_cache), "grids": len(_grid_cache), **_stats}


def vertical_fov_deg(fov_deg: float, out_hw: tuple[int, int]) -> float:
    """The vertical field of view that gives square pixels for a horizontal ``fov_deg`` and an (H, W) view.

    Args:
        fov_deg: Horizontal field of view in degrees, in (0, 180).
        out_hw: View size (H, W).

    Returns:
        The vertical field of view in degrees (``fov_deg`` itself for a square view).
    """
    h, w = out_hw
    if h == w:
        return float(fov_deg)
    return math.degrees(2.0 * math.atan(math.tan(math.radians(fov_deg) / 2.0) * h / w))


def _check_fov(fov_deg: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(fov_deg, (int, float)):
        fovs = (float(fov_deg), float(fov_deg))
    else:
        try:
            h_fov, v_fov = fov_deg
            fovs = (float(h_fov), float(v_fov))
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"fov_deg must be a number or a (horizontal, vertical) pair of degrees, got {fov_deg!r}"
            ) from None
    for f in fovs:
        if not (0.0 < f < 180.0):
            raise InvalidInputError(
                f"fov_deg must lie in the open interval (0, 180) degrees, got {fov_deg!r}"
            )
    return fovs


def _check_hw(out_hw: Sequence[int], name: str = "out_hw") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in out_hw)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{name} must be a (H, W) pair of positive integers, got {out_hw!r}"
        ) from None
    if h < 1 or w < 1:
        raise InvalidInputError(f"{name} must be a (H, W) pair of positive integers, got {out_hw!r}")
    return h, w


def _check_pano(pano: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(pano, torch.Tensor) or pano.ndim != 3:
        shape = tuple(pano.shape) if isinstance(pano, torch.Tensor) else type(pano).__name__
        raise InvalidInputError(f"the panorama must be a (C, H, W) tensor, got {shape}")
    c, h, w = pano.shape
    if h < 2 or w < 2:
        raise InvalidInputError(
            f"the panorama must be at least 2x2 pixels, got (C, H, W) = {tuple(pano.shape)}"
        )
    if not (pano.dtype == torch.uint8 or pano.is_floating_point()):
        raise InvalidInputError(f"the panorama must be uint8 or floating point, got {pano.dtype}")
    return c, h, w


def perspective_coords(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    fov_deg: float | tuple[float, float],
    yaw_deg: float,
    pitch_deg: float,
) -> torch.Tensor:
    """Where each pixel of a perspective view samples the equirectangular image (cached).

    Args:
        in_hw: Equirectangular image size (H, W).
        out_hw: Perspective view size (h, w).
        fov_deg: Field of view in degrees, one number (horizontal = vertical) or (horizontal, vertical).
        yaw_deg: Horizontal viewing angle; 0 = the image's centre column, positive = right.
        pitch_deg: Vertical viewing angle; positive = up.

    Returns:
        ``(h, w, 2)`` float32 (read-only by convention: it is the cached tensor), ``[..., 0]`` the column
        and ``[..., 1]`` the row in the UNPADDED image, pixel centres at integers: columns in
        [-0.5, W - 0.5], rows in [-0.5, H - 0.5].
    """
    in_h, in_w = _check_hw(in_hw, "in_hw")
    h, w = _check_hw(out_hw)
    h_fov, v_fov = _check_fov(fov_deg)
    key = (in_h, in_w, h, w, h_fov, v_fov, float(yaw_deg), float(pitch_deg))
    with _lock:
        coords = _coord_cache.get(key)
        if coords is not None:
            _coord_cache.move_to_end(key)
            _stats["coord_hits"] += 1
            return coords
        _stats["coord_misses"] += 1
    # Cached tensors outlive the caller's mode: never make them inference tensors (Lightning's test/predict run
    # under torch.inference_mode, and a later training step would fail to use them).
    with torch.inference_mode(False):
        coords = _compute_perspective_coords(in_h, in_w, h, w, h_fov, v_fov, float(yaw_deg), float(pitch_deg))
    with _lock:
        _coord_cache[key] = coords
        while len(_coord_cache) > _COORD_CACHE_SIZE:
            _coord_cache.popitem(last=False)
    return coords


def _compute_perspective_coords(
    in_h: int, in_w: int, h: int, w: int, h_fov: float, v_fov: float, yaw_deg: float, pitch_deg: float
) -> torch.Tensor:
    # float64 throughout; py360convert computes in float32 (differences ~1e-4 px, far below interpolation
    # error)
    f64 = torch.float64
    x_max = math.tan(math.radians(h_fov) / 2.0)
    y_max = math.tan(math.radians(v_fov) / 2.0)
    xs = torch.linspace(-x_max, x_max, w, dtype=f64)
    ys = torch.linspace(-y_max, y_max, h, dtype=f64)
    rays = torch.empty(h, w, 3, dtype=f64)
    rays[..., 0] = xs[None, :]
    rays[..., 1] = -ys[:, None]
    rays[..., 2] = 1.0
    u = -math.radians(yaw_deg)
    v = math.radians(pitch_deg)
    cv, sv, cu, su = math.cos(v), math.sin(v), math.cos(u), math.sin(u)
    rot_x = torch.tensor([[1.0, 0.0, 0.0], [0.0, cv, -sv], [0.0, sv, cv]], dtype=f64)
    rot_y = torch.tensor([[cu, 0.0, su], [0.0, 1.0, 0.0], [-su, 0.0, cu]], dtype=f64)
    xyz = rays @ (rot_x @ rot_y)
    x, y, z = xyz.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(y, torch.hypot(x, z))
    col = (lon / (2.0 * math.pi) + 0.5) * in_w - 0.5
    row = (-lat / math.pi + 0.5) * in_h - 0.5
    return torch.stack([col, row], dim=-1).to(torch.float32)


def _view_set_grid(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    fovs: tuple[float, float],
    yaw_pitch: tuple[tuple[float, float], ...],
    device: torch.device,
) -> tuple[torch.Tensor, int, int]:
    """The normalised grid of a whole view set on ``device`` and the padded-row band [r0, r1] it reads."""
    key = (in_hw, out_hw, fovs, yaw_pitch, str(device))
    with _lock:
        hit = _grid_cache.get(key)
        if hit is not None:
            _grid_cache.move_to_end(key)
            _stats["grid_hits"] += 1
            return hit
        _stats["grid_misses"] += 1
    with torch.inference_mode(False):
        return _compute_view_set_grid(key, in_hw, out_hw, fovs, yaw_pitch, device)


def _compute_view_set_grid(key, in_hw, out_hw, fovs, yaw_pitch, device) -> tuple[torch.Tensor, int, int]:
    in_h, in_w = in_hw
    coords = torch.cat([perspective_coords(in_hw, out_hw, fovs, y, p) for y, p in yaw_pitch], dim=0)
    # coordinates in the 1-pixel padded image; only the rows [r0, r1] of it are materialised
    col = coords[..., 0].double() + 1.0
    row = coords[..., 1].double() + 1.0
    r0 = max(0, int(math.floor(row.min().item())))
    r1 = min(in_h + 1, int(math.ceil(row.max().item())))
    if r1 <= r0:  # a band of one row: widen it so the normalisation below is defined
        r1, r0 = (r0 + 1, r0) if r0 < in_h + 1 else (r0, r0 - 1)
    grid = torch.stack([col / (in_w + 1) * 2.0 - 1.0, (row - r0) / (r1 - r0) * 2.0 - 1.0], dim=-1)
    grid = grid.to(dtype=torch.float32, device=device)[None].contiguous()
    entry = (grid, r0, r1)
    with _lock:
        _grid_cache[key] = entry
        while len(_grid_cache) > _GRID_CACHE_SIZE:
            _grid_cache.popitem(last=False)
    return entry


def _band_buffer(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 scratch tensor of ``shape``: reused per thread on CPU, fresh on accelerators."""
    if device.type != "cpu" or math.prod(shape) * 4 > _MAX_REUSED_BAND_BYTES:
        return torch.empty(shape, dtype=torch.float32, device=device)
    buf = getattr(_buffers, "band", None)
    if buf is None or tuple(buf.shape) != shape or (buf.is_inference() and not torch.is_inference_mode_enabled()):
        with torch.inference_mode(False):  # reusable in and out of inference mode
            buf = torch.empty(shape, dtype=torch.float32)
        _buffers.band = buf  # keep only the latest shape: bounded memory
    return buf


def _padded_band(pano: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0..r1`` (inclusive) of py360convert's 1-pixel padded image, as float32 ``(1, C, n, W + 2)``.

    The copy follows the input's memory layout: a channels-last input (the permuted HWC buffer that
    ``load_panorama`` returns) gives a channels-last band, which both the copy and ``grid_sample`` stream
    through.
    """
    c, h, w = pano.shape
    n = r1 - r0 + 1
    channels_last = pano.stride(0) == 1 and c > 1
    if channels_last:
        band = _band_buffer((1, n, w + 2, c), pano.device).permute(0, 3, 1, 2)
    else:
        band = _band_buffer((1, c, n, w + 2), pano.device)
    out = band[0]
    # padded row k holds image row k - 1
    a, b = max(r0, 1), min(r1, h)
    if a <= b:
        out[:, a - r0 : b - r0 + 1, 1 : w + 1].copy_(pano[:, a - 1 : b])
    if r0 == 0:
        out[:, 0, 1 : w + 1].copy_(torch.roll(pano[:, 0], w // 2, dims=-1))
    if r1 == h + 1:
        out[:, n - 1, 1 : w + 1].copy_(torch.roll(pano[:, h - 1], w // 2, dims=-1))
    out[:, :, 0].copy_(out[:, :, w])
    out[:, :, w + 1].copy_(out[:, :, 1])
    return band


def pad_equirect(pano: torch.Tensor) -> torch.Tensor:
    """py360convert's 1-pixel padding of an equirectangular image.

    Columns wrap around the seam; the row above the top (below the bottom) is the top (bottom) row rotated by
    ``W // 2`` columns (the pixel across the pole).

    Args:
        pano: ``(C, H, W)`` uint8 or float.

    Returns:
        ``(C, H + 2, W + 2)`` float32 in the input's value range, on the input's device (a new tensor).
    """
    _, h, _ = _check_pano(pano)
    return _padded_band(pano, 0, h + 1)[0].clone()


def _broadcast_angles(
    yaw_deg: float | Sequence[float], pitch_deg: float | Sequence[float]
) -> list[tuple[float, float]]:
    yaws = [float(yaw_deg)] if isinstance(yaw_deg, (int, float)) else [float(y) for y in yaw_deg]
    pitches = [float(pitch_deg)] if isinstance(pitch_deg, (int, float)) else [float(p) for p in pitch_deg]
    if len(yaws) == 1 and len(pitches) > 1:
        yaws = yaws * len(pitches)
    if len(pitches) == 1 and len(yaws) > 1:
        pitches = pitches * len(yaws)
    if len(yaws) != len(pitches) or not yaws:
        raise InvalidInputError(
            f"yaw_deg and pitch_deg must be numbers or sequences of the same non-zero length, got "
            f"{len(yaws)} yaws and {len(pitches)} pitches"
        )
    for angle in (*yaws, *pitches):
        if not math.isfinite(angle):
            raise InvalidInputError(f"view angles must be finite numbers of degrees, got {angle}")
    return list(zip(yaws, pitches))


def equirect_to_perspective(
    pano: torch.Tensor,
    yaw_deg: float | Sequence[float],
    pitch_deg: float | Sequence[float] = 0.0,
    fov_deg: float | tuple[float, float] = ViewSettings.fov_deg,
    out_hw: tuple[int, int] = (224, 224),
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Perspective views of an equirectangular panorama, all in one ``grid_sample`` call.

    Equals ``py360convert.e2p(img, fov_deg, u_deg=yaw, v_deg=pitch, out_hw, mode="bilinear")`` per view, up to
    py360convert's rounding to uint8.

    Args:
        pano: ``(C, H, W)`` uint8 (0-255) or float (any range, typically [0, 1]), on any device.
        yaw_deg: One yaw or a sequence (one per view); 0 = the centre column, positive = right.
        pitch_deg: One pitch or a sequence of the same length as ``yaw_deg``; positive = up.
        fov_deg: Field of view in degrees, one number (same horizontal and vertical) or (horizontal,
            vertical), each in (0, 180); the same for every view of the call.
        out_hw: Size (h, w) of every view.
        out: Optional ``(V, C, h, w)`` float32 tensor on ``pano``'s device to write into (e.g. a slice of a
            larger batch); saves a copy.

    Returns:
        ``(V, C, h, w)`` float32 on ``pano``'s device: uint8 input mapped to [0, 1], float input in its own
        range. ``out`` when it was given.

    Raises:
        InvalidInputError: For a malformed panorama, angle, fov or size.
    """
    c, in_h, in_w = _check_pano(pano)
    h, w = _check_hw(out_hw)
    fovs = _check_fov(fov_deg)
    yaw_pitch = tuple(_broadcast_angles(yaw_deg, pitch_deg))
    v = len(yaw_pitch)
    if out is not None and (tuple(out.shape) != (v, c, h, w) or out.dtype != torch.float32
                            or out.device != pano.device or not out.is_contiguous()):
        raise ValueError(
            f"out must be a contiguous float32 ({v}, {c}, {h}, {w}) tensor on {pano.device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    grid, r0, r1 = _view_set_grid((in_h, in_w), (h, w), fovs, yaw_pitch, pano.device)
    band = _padded_band(pano, r0, r1)
    tall = F.grid_sample(band, grid, mode="bilinear", padding_mode="border", align_corners=True)
    views = tall.reshape(c, v, h, w).permute(1, 0, 2, 3)  # (1, C, V*h, w) -> (V, C, h, w)
    if out is None:
        out = torch.empty((v, c, h, w), dtype=torch.float32, device=pano.device)
    if pano.dtype == torch.uint8:
        torch.mul(views, 1.0 / 255.0, out=out)
    else:
        out.copy_(views)
    return out


def equirect_to_cubemap(pano: torch.Tensor, face_w: int, faces: str = "FRBL") -> torch.Tensor:
    """Cube faces of an equirectangular panorama (py360convert's ``e2c`` faces, as 90° perspective views).

    Args:
        pano: ``(C, H, W)`` uint8 or float, on any device.
        face_w: Side of each square face in pixels.
        faces: Which faces, in order, from ``"FRBLUD"`` (front, right, back, left, up, down).

    Returns:
        ``(len(faces), C, face_w, face_w)`` float32 (uint8 input mapped to [0, 1]) on ``pano``'s device; face
        ``k`` equals ``py360convert.e2c(img, face_w, cube_format="dict")[k]``.

    Raises:
        InvalidInputError: For an unknown face letter or a malformed panorama/size.
    """
    unknown = [f for f in faces if f not in CUBE_FACE_YAW_PITCH_DEG]
    if unknown or not faces:
        raise InvalidInputError(f"faces must be letters of 'FRBLUD', got {faces!r}")
    angles = [CUBE_FACE_YAW_PITCH_DEG[f] for f in faces]
    return equirect_to_perspective(
        pano, [a[0] for a in angles], [a[1] for a in angles], 90.0, (int(face_w), int(face_w))
    )
