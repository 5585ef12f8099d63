"""``panollava-cli views``: cut a panorama into the model's views and save them for inspection.

Writes, into the output folder: ``view_00.png``, ``view_01.png``, ... (8-bit RGB, before normalisation, in
view order), ``views.json`` (the panorama, the configuration and each view's geometry) and
``contact_sheet.png`` (every view in one labelled picture).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from typing import TYPE_CHECKING

from panollava.errors import InvalidInputError
from panollava.schema import CropStrategy, FovDeg, PositiveInt, Ratio, ViewSettings

if TYPE_CHECKING:  # torch, PIL and the view code load when a command runs, not for --help (fast start)
    import torch

    from panollava.data.views import ViewGeometry

logger = logging.getLogger(__name__)

__all__ = ["parse_image_size", "run_views", "write_contact_sheet"]

_VIEW_FILE = re.compile(r"^view_(\d+)\.png$")


def parse_image_size(image_size: int | str | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """``256``, ``"256"``, ``[256]``, ``[256, 256]`` or ``"[256, 256]"`` → ``(H, W)``.

    Raises:
        InvalidInputError: For anything else, naming ``--image_size``.
    """
    value: object = image_size
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        if all(_is_whole_number(v) for v in value):
            sides = [int(v) for v in value]
            return (sides[0], sides[-1])
    raise InvalidInputError(
        f"--image_size must be an integer such as 256 or a pair [H, W], got {image_size!r}"
    )


def _is_whole_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()


def _label(index: int, geom: ViewGeometry) -> str:
    if geom.kind in ("global", "resize"):
        return f"{index:02d} {geom.kind}"
    kind = {"perspective": "", "cubemap": "cube ", "window": "window "}[geom.kind]
    return f"{index:02d} {kind}yaw {geom.yaw_deg:g} pitch {geom.pitch_deg:g} fov {geom.fov_deg:g}"


def write_contact_sheet(
    views_u8: torch.Tensor, geometries: list[ViewGeometry], path: Path, title: str = ""
) -> Path:
    """All views in one labelled grid picture.

    Args:
        views_u8: ``(V, 3, h, w)`` uint8 views.
        geometries: One geometry per view (for the labels).
        path: The PNG file to write.
        title: A line written above the grid.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw, ImageFont

    v, _, h, w = views_u8.shape
    cols = max(1, math.ceil(math.sqrt(v)))
    rows = math.ceil(v / cols)
    font = ImageFont.load_default()
    pad, label_h, title_h = 4, 14, 16 if title else 0
    size = (cols * (w + pad) + pad, title_h + rows * (h + label_h + pad) + pad)
    sheet = Image.new("RGB", size, (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 2), title, fill=(255, 255, 255), font=font)
    for i in range(v):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), title_h + pad + r * (h + label_h + pad)
        sheet.paste(Image.fromarray(views_u8[i].permute(1, 2, 0).numpy()), (x, y))
        draw.text((x, y + h + 1), _label(i, geometries[i]), fill=(255, 255, 255), font=font)
    sheet.save(path)
    return path


def run_views(
    image: str,
    output_dir: str,
    crop_strategy: CropStrategy = ViewSettings.crop_strategy,
    fov_deg: FovDeg = ViewSettings.fov_deg,
    overlap_ratio: Ratio = ViewSettings.overlap_ratio,
    image_size: int | list[int] = 224,
    num_views: PositiveInt = ViewSettings.num_views,
) -> Path:
    """Cut ``image`` into views and write them, their geometry and a contact sheet to ``output_dir``.

    Args:
        image: Equirectangular panorama file (2:1).
        output_dir: Folder to write into (created if missing). Earlier ``view_NN.png`` files beyond this run's
            views are removed, so the folder always matches its ``views.json``.
        crop_strategy: anyres_e2p, e2p, cubemap, sliding_window or resize.
        fov_deg: Field of view of perspective views in degrees, in (0, 180).
        overlap_ratio: Overlap of neighbouring anyres_e2p tiles, in [0, 1).
        image_size: View size: ``256`` or ``[H, W]``.
        num_views: Views for e2p and sliding_window.

    Returns:
        The output folder (absolute).

    Raises:
        InvalidInputError: For an invalid option or image; InputNotFoundError for a missing image.
    """
    import torch
    from PIL import Image

    from panollava.data.images import load_panorama
    from panollava.data.views import ViewConfig, render_views, view_geometries

    config = ViewConfig(
        crop_strategy=crop_strategy,
        image_size=parse_image_size(image_size),
        fov_deg=fov_deg,
        overlap_ratio=overlap_ratio,
        num_views=num_views,
    )
    geometries = view_geometries(config)  # validates before the (slow) decode
    image_path = Path(image).expanduser().absolute()
    pano = load_panorama(image_path)
    views = render_views(pano, config)
    views_u8 = views.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)

    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--output_dir '{out}' is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        match = _VIEW_FILE.match(old.name)
        if match and int(match.group(1)) >= len(geometries):
            old.unlink()
            logger.info("removed stale %s from an earlier run", old)

    entries = []
    for i, (geom, view) in enumerate(zip(geometries, views_u8)):
        name = f"view_{i:02d}.png"
        Image.fromarray(view.permute(1, 2, 0).numpy()).save(out / name)
        entries.append({"index": i, "file": name, **geom.to_dict()})
    info = {
        "image": str(image_path),
        "image_hw": [int(pano.shape[1]), int(pano.shape[2])],
        "crop_strategy": config.crop_strategy,
        "image_size": list(config.image_size),
        "fov_deg": config.fov_deg,
        "overlap_ratio": config.overlap_ratio,
        "pitch_range_deg": list(config.pitch_range_deg),
        "num_views": len(geometries),
        "views": entries,
    }
    (out / "views.json").write_text(json.dumps(info, indent=2) + "\n")
    h, w = config.image_size
    write_contact_sheet(
        views_u8, geometries, out / "contact_sheet.png",
        title=f"{image_path.name}  {config.crop_strategy}  {len(geometries)} views of {h}x{w}",
    )
    print(
        f"Wrote {len(geometries)} {config.crop_strategy} views of {h}x{w} px from {image_path} "
        f"({pano.shape[2]}x{pano.shape[1]}) to {out}: view_00.png..view_{len(geometries) - 1:02d}.png, "
        "views.json, contact_sheet.png"
    )
    return out
