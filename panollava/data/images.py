"""Decoding equirectangular panoramas from image files.

``load_panorama`` turns any common image file into the one format the crop strategies take: 8-bit RGB,
``(3, H, W)`` uint8. Modes other than RGB are converted and the conversion is logged (INFO when nothing is
lost, WARNING when information is dropped or approximated); inputs that cannot be a panorama raise
``InvalidInputError`` naming the absolute path.

Very large panoramas are decoded at reduced size: a JPEG wider than ``2 * MAX_DECODE_WIDTH_PX`` is decoded
through libjpeg's DCT scaling (``Image.draft``, 1/2, 1/4 or 1/8) to the smallest size at least
``MAX_DECODE_WIDTH_PX`` wide, so a 16384x8192 JPEG never exists in memory at full size (measured in
``tests/test_catalogue.py``: peak RSS grows by well under the 400 MB of the full image). Other formats are decoded
whole and then reduced by an integer factor (``Image.reduce``). Views of 90 degrees at up to 1024 px need under
3300 px of panorama width, so nothing a view can show is lost. Pillow's decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS``) still applies: above twice that limit the file is refused with a clear error.

Images are local files only: a URL (``https://...``, also after being joined to an image root, which turns it into
``.../https:/host/...``) is refused with :func:`remote_url_error`'s message (urls are not downloaded; download the
panoramas and point the CSV at the local files) instead of being reported as a missing file.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from panollava.errors import InputNotFoundError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "EQUIRECT_RATIO_TOLERANCE", "MAX_DECODE_WIDTH_PX", "MIN_PANORAMA_SIDE_PX", "load_panorama", "remote_url_error",
]

#: Panoramas more than twice this wide are decoded reduced to at least this width (see the module docstring).
MAX_DECODE_WIDTH_PX = 4096

#: Both sides of a panorama must have at least this many pixels.
MIN_PANORAMA_SIDE_PX = 64

#: Relative deviation of W / H from 2 above which a panorama is reported as not equirectangular.
EQUIRECT_RATIO_TOLERANCE = 0.01

# "scheme://" at the start of a CSV url (two letters at least: "C://x" stays a Windows-style path)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
# a URL joined to a folder: pathlib collapses "//", so ".../https:/host/p.jpg"
_JOINED_URL = re.compile(r"(?:^|/)((?:https?|ftps?|s3|gs|hf):)/+(.*)$", re.IGNORECASE)


def remote_url_error(url: str | Path, where: str = "panorama image") -> InvalidInputError | None:
    """The error for an image given as a URL (panollava reads local files only), or None for a local path.

    Args:
        url: The CSV's ``url`` value, or a path built from it (``/root/https:/host/p.jpg`` is recognised).
        where: What holds it, for the message (``caption CSV '/abs/test.csv' line 7``).

    Returns:
        An :class:`InvalidInputError` saying that URLs are not downloaded and how to point the CSV at local files,
        or None when ``url`` is not a URL.
    """
    text = str(url)
    match = _URL.match(text)
    if match is not None:
        shown = text
    else:
        joined = _JOINED_URL.search(text.replace("\\", "/"))
        if joined is None:
            return None
        shown = f"{joined.group(1)}//{joined.group(2)}"
    if shown.lower().startswith("file:"):
        fix = "write the local path itself (without file://)"
    else:
        fix = (
            "download the panoramas, then point the CSV's url column at the local files (absolute paths, or paths "
            "relative to --data.image_root, which defaults to the CSV's folder)"
        )
    return InvalidInputError(f"{where}: url '{shown}' is a URL; panollava reads local image files and does not "
                             f"download urls: {fix}")


# modes that PIL converts to RGB losslessly (up to replicating gray into three channels)
_LOSSLESS_MODES = {"L": "8-bit grayscale", "1": "1-bit black and white", "P": "palette"}
# modes whose alpha channel is dropped
_ALPHA_MODES = {
    "RGBA": "RGBA", "LA": "grayscale + alpha", "PA": "palette + alpha", "RGBa": "RGBa", "La": "La",
}


def load_panorama(path: str | Path, max_width: int = MAX_DECODE_WIDTH_PX) -> torch.Tensor:
    """Decode an equirectangular image file to uint8 ``(3, H, W)`` RGB.

    Converts grayscale (L, 1), palette (P), alpha (RGBA, LA, PA: alpha dropped), CMYK, YCbCr/LAB/HSV and
    16-bit (I;16*, I, and 16-bit-per-channel RGB PNGs) inputs to 8-bit RGB, logging each conversion once per
    call. 16-bit values are scaled (``v / 257``), not clipped.

    Args:
        path: The image file (JPEG, PNG, anything Pillow decodes).
        max_width: A panorama more than twice this wide is decoded reduced to at least this width (see the
            module docstring; the report's thumbnails ask for far less than the model's views).

    Returns:
        ``(3, H, W)`` uint8 RGB on CPU. Its memory is the decoded ``(H, W, 3)`` buffer seen through a permute
        (channels-last strides, no copy), which the crop strategies read fastest; call ``.contiguous()`` if a
        caller needs standard strides.

    Raises:
        InputNotFoundError: If ``path`` does not exist or is a directory.
        InvalidInputError: For a URL (see :func:`remote_url_error`), a file that cannot be decoded (corrupt, truncated, not an image), a portrait
            image (H > W), or an image smaller than ``MIN_PANORAMA_SIDE_PX`` on either side.
    """
    remote = remote_url_error(path)
    if remote is not None:
        raise remote
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise InputNotFoundError(f"panorama image '{path}' does not exist; check the path (or the CSV's url)")
    if path.is_dir():
        raise InputNotFoundError(f"panorama image '{path}' is a directory; pass an image file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            full_size = img.size
            reduced = _draft_if_huge(img, max_width)
            if not reduced:
                for warning in caught:  # decoded at full size: the warning is the user's business
                    logger.warning("panorama image '%s': %s", path, warning.message)
            raw_modes = _raw_modes(img)
            img.load()
            img = _reduce_if_huge(img, max_width)
            if img.size != full_size:
                logger.info(
                    "panorama image '%s' is %dx%d px: decoded at %dx%d (views need far less; MAX_DECODE_WIDTH_PX=%d)",
                    path, *full_size, *img.size, max_width,
                )
            arr = _to_rgb8(img, path, raw_modes)
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(
            f"panorama image '{path}' is too large to decode safely ({exc}); downscale it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except PermissionError as exc:
        raise InvalidInputError(
            f"cannot read panorama image '{path}': {exc.strerror}; check its permissions"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInputError(
            f"cannot decode panorama image '{path}': {type(exc).__name__}: {exc}. Expected a readable image "
            f"file (JPEG, PNG, ...); the file may be corrupt or truncated"
        ) from None
    height, width = arr.shape[:2]
    _check_shape(path, height, width)
    return torch.from_numpy(arr).permute(2, 0, 1)


def _draft_if_huge(img: Image.Image, max_width: int = MAX_DECODE_WIDTH_PX) -> bool:
    """Ask libjpeg for a DCT-scaled decode of a JPEG more than twice ``max_width`` wide."""
    width, height = img.size
    if img.format != "JPEG" or width < 2 * max_width:
        return False
    target = (max_width, max(1, round(height * max_width / width)))
    img.draft(img.mode if img.mode in ("RGB", "L") else None, target)
    return img.size[0] < width


def _reduce_if_huge(img: Image.Image, max_width: int = MAX_DECODE_WIDTH_PX) -> Image.Image:
    """Integer-factor reduction of a decoded image still more than twice ``max_width`` wide."""
    factor = img.size[0] // max_width
    if factor < 2 or img.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "I;16", "I", "F", "1", "P"):
        return img
    if img.mode in ("1", "P"):
        img = img.convert("RGB")
    return img.reduce(factor)


def _raw_modes(img: Image.Image) -> list[str]:
    """The decoder's raw modes, e.g. ``"RGB;16B"``: the only trace of a 16-bit RGB PNG (opened as RGB)."""
    modes = []
    for tile in getattr(img, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, tuple) and args:
            args = args[0]
        if isinstance(args, str):
            modes.append(args)
    return modes


def _to_rgb8(img: Image.Image, path: Path, raw_modes: list[str]) -> np.ndarray:
    """``img`` as a writable (H, W, 3) uint8 array, converting and logging non-RGB modes."""
    mode = img.mode
    wide = any(";16" in m for m in raw_modes)
    if mode == "RGB":
        if wide:
            logger.warning("panorama image '%s' has 16 bits per channel: reduced to 8-bit RGB", path)
        return np.array(img, dtype=np.uint8)
    if mode in _LOSSLESS_MODES:
        logger.info(
            "panorama image '%s' is %s (mode %s): converted to RGB", path, _LOSSLESS_MODES[mode], mode
        )
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if mode in _ALPHA_MODES:
        logger.warning(
            "panorama image '%s' is %s (mode %s): alpha channel dropped%s, converted to RGB",
            path, _ALPHA_MODES[mode], mode, " and 16-bit values reduced to 8 bits" if wide else "",
        )
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if mode == "CMYK":
        logger.warning(
            "panorama image '%s' is CMYK: converted to RGB without colour management (colours approximate)",
            path,
        )
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.array(img).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        logger.warning(
            "panorama image '%s' is 16-bit grayscale (mode %s): scaled to 8 bits (v / 257), converted to RGB",
            path, mode,
        )
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.array(img).astype(np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        logger.warning(
            "panorama image '%s' is 32-bit float grayscale: mapped to 8 bits (x%g, clipped), made RGB",
            path, scale,
        )
        return np.repeat(gray[..., None], 3, axis=2)
    # YCbCr, LAB, HSV and anything else Pillow can convert
    logger.warning("panorama image '%s' has mode %s: converted to RGB", path, mode)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _check_shape(path: Path, height: int, width: int) -> None:
    if height < MIN_PANORAMA_SIDE_PX or width < MIN_PANORAMA_SIDE_PX:
        raise InvalidInputError(
            f"panorama image '{path}' is {width}x{height} px: both sides must be at least "
            f"{MIN_PANORAMA_SIDE_PX} px (an equirectangular panorama is W x H = 2:1, e.g. 2048x1024)"
        )
    if height > width:
        raise InvalidInputError(
            f"panorama image '{path}' is portrait ({width}x{height} px, W:H = {width / height:.3g}:1): an "
            f"equirectangular panorama is landscape, W:H = 2:1; is the image rotated or not a 360 panorama?"
        )
    ratio = width / height
    if abs(ratio / 2.0 - 1.0) > EQUIRECT_RATIO_TOLERANCE:
        logger.warning(
            "panorama image '%s' is %dx%d px, W:H = %.3f:1, not the 2:1 of an equirectangular panorama: its "
            "views assume it covers 360x180 degrees, so they will be stretched",
            path, width, height, ratio,
        )
