"""Crop strategies (SPEC §4): view counts, order, geometry, the letterboxed global view, windows, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from panollava.commands.views import parse_image_size, run_views
from panollava.data.views import (
    CROP_STRATEGIES,
    ViewConfig,
    ViewGeometry,
    anyres_pitch_centers,
    closed_loop_yaws,
    normalize_views,
    render_views,
    view_geometries,
)
from panollava.errors import InputNotFoundError, InvalidInputError

DEFAULT_YAWS = [0.0, 45.0, 90.0, 135.0, -180.0, -135.0, -90.0, -45.0]


def _pano(h: int = 64, w: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_strategy_names():
    assert CROP_STRATEGIES == ("anyres_e2p", "e2p", "cubemap", "sliding_window", "resize")


@pytest.mark.parametrize(
    ("strategy", "count"),
    [("anyres_e2p", 9), ("e2p", 8), ("cubemap", 4), ("sliding_window", 8), ("resize", 1)],
)
def test_view_counts_with_defaults(strategy, count):
    config = ViewConfig(strategy, image_size=(32, 32))
    geoms = view_geometries(config)
    assert len(geoms) == count
    views = render_views(_pano(), config)
    assert views.shape == (count, 3, 32, 32) and views.dtype == torch.float32
    assert 0.0 <= views.min() and views.max() <= 1.0
    assert all((g.height, g.width) == (32, 32) for g in geoms)


def test_anyres_defaults_geometry_and_order():
    geoms = view_geometries(ViewConfig())
    assert geoms[0] == ViewGeometry("global", None, None, None, 224, 224)
    tiles = geoms[1:]
    assert [g.yaw_deg for g in tiles] == DEFAULT_YAWS
    assert {(g.kind, g.pitch_deg, g.fov_deg) for g in tiles} == {("perspective", 0.0, 90.0)}
    assert closed_loop_yaws(90.0, 0.5) == DEFAULT_YAWS
    assert anyres_pitch_centers(90.0, 0.5, (-45.0, 45.0)) == [0.0]


@pytest.mark.parametrize(
    ("fov", "overlap", "yaws"),
    [
        (90.0, 0.0, [0.0, 90.0, -180.0, -90.0]),
        (100.0, 0.3, [0.0, 60.0, 120.0, -180.0, -120.0, -60.0]),  # ceil(360 / 70) = 6 -> step 60
        (120.0, 0.5, [0.0, 60.0, 120.0, -180.0, -120.0, -60.0]),
        (60.0, 0.75, [15.0 * i for i in range(12)] + [-180.0 + 15.0 * i for i in range(12)]),  # step 15
    ],
)
def test_closed_loop_yaw_step(fov, overlap, yaws):
    assert closed_loop_yaws(fov, overlap) == pytest.approx(yaws)


def test_pitch_rows():
    config = ViewConfig(pitch_range_deg=(-90.0, 90.0), image_size=(16, 16))
    geoms = view_geometries(config)
    assert len(geoms) == 1 + 3 * 8
    # row by row, bottom first; yaws in the closed-loop order within each row
    assert [g.pitch_deg for g in geoms[1:]] == [-45.0] * 8 + [0.0] * 8 + [45.0] * 8
    assert [g.yaw_deg for g in geoms[1:9]] == DEFAULT_YAWS
    assert anyres_pitch_centers(60.0, 0.5, (-60.0, 60.0)) == [-30.0, 0.0, 30.0]
    # the spec's rule: steps from min + fov/2, not beyond max - fov/2
    assert anyres_pitch_centers(90.0, 0.5, (-60.0, 60.0)) == [-15.0]
    # narrower than one tile: one row in the middle, not zero tiles
    assert anyres_pitch_centers(120.0, 0.5, (-45.0, 45.0)) == [0.0]
    assert len(view_geometries(ViewConfig(fov_deg=120.0))) == 1 + 6


def test_global_view_is_letterboxed():
    pano = _pano(128, 256, seed=1)
    view = render_views(pano, ViewConfig(image_size=(64, 64)))[0]
    # 2:1 scaled to full width (64 x 32), centred: black bars of 16 rows above and below
    assert torch.count_nonzero(view[:, :16]) == 0 and torch.count_nonzero(view[:, 48:]) == 0
    ref = np.asarray(Image.fromarray(pano.permute(1, 2, 0).numpy()).resize((64, 32), Image.BILINEAR)) / 255.0
    assert np.abs(view[:, 16:48].permute(1, 2, 0).numpy() - ref).mean() < 1.0 / 255
    # float input in [0, 1] gives the same picture
    as_float = render_views(pano.float() / 255, ViewConfig(image_size=(64, 64)))[0]
    assert (as_float - view).abs().max() < 1.0 / 255


def test_global_view_of_non_square_views_and_non_2to1_panoramas():
    view = render_views(_pano(64, 192), ViewConfig(image_size=(48, 96)))[0]  # 3:1 into 1:2 -> 96 x 32, bars 8
    assert torch.count_nonzero(view[:, :8]) == 0 and torch.count_nonzero(view[:, 40:]) == 0
    assert torch.count_nonzero(view[:, 8:40]) > 0


def test_resize_strategy():
    pano = _pano(128, 256, seed=2)
    view = render_views(pano, ViewConfig("resize", image_size=(32, 48)))
    ref = F.interpolate(pano[None].float(), size=(32, 48), mode="bilinear", antialias=True)
    assert view.shape == (1, 3, 32, 48)
    assert (view - ref / 255).abs().max() < 1.0 / 255
    assert view_geometries(ViewConfig("resize"))[0] == ViewGeometry("resize", None, None, None, 224, 224)


def test_sliding_windows_wrap_at_the_seam():
    # the left half of the panorama is black, the right half white
    pano = torch.zeros(3, 64, 128, dtype=torch.uint8)
    pano[:, :, 64:] = 255
    config = ViewConfig("sliding_window", image_size=(16, 16), fov_deg=90.0, num_views=4)
    geoms = view_geometries(config)
    assert [(g.kind, g.yaw_deg, g.pitch_deg, g.fov_deg) for g in geoms] == [
        ("window", y, 0.0, 90.0) for y in (0.0, 90.0, -180.0, -90.0)
    ]
    views = render_views(pano, config)
    # yaw 0: columns 48..79 (black | white); yaw 90: all white; yaw -180: 112..127 + 0..15 (white | black)
    assert views[0, :, :, :7].max() == 0 and views[0, :, :, 9:].min() == 1
    assert views[1].min() == 1 and views[3].max() == 0
    assert views[2, :, :, :7].min() == 1 and views[2, :, :, 9:].max() == 0
    window = F.interpolate(pano[None, :, :, 48:80].float(), size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(views[0], window[0] / 255, atol=1 / 255)


def test_cubemap_geometry():
    geoms = view_geometries(ViewConfig("cubemap", fov_deg=60.0))
    assert [(g.kind, g.yaw_deg, g.pitch_deg, g.fov_deg) for g in geoms] == [
        ("cubemap", y, 0.0, 90.0) for y in (0.0, 90.0, -180.0, -90.0)
    ]


def test_e2p_strategy_geometry():
    geoms = view_geometries(ViewConfig("e2p", num_views=6, fov_deg=70.0))
    assert [g.yaw_deg for g in geoms] == [0.0, 60.0, 120.0, -180.0, -120.0, -60.0]
    assert {(g.kind, g.pitch_deg, g.fov_deg) for g in geoms} == {("perspective", 0.0, 70.0)}


def test_geometry_to_dict_is_json():
    geoms = view_geometries(ViewConfig())
    assert json.loads(json.dumps([g.to_dict() for g in geoms]))[1] == {
        "kind": "perspective", "yaw_deg": 0.0, "pitch_deg": 0.0, "fov_deg": 90.0, "height": 224, "width": 224
    }


def test_view_config_accepts_ints_and_lists():
    assert ViewConfig(image_size=256).image_size == (256, 256)
    assert ViewConfig(image_size=np.int64(256), fov_deg=np.float32(90.0)) == ViewConfig(image_size=(256, 256))
    assert ViewConfig(image_size=[256, 128]).image_size == (256, 128)
    assert ViewConfig(pitch_range_deg=[-30, 30]).pitch_range_deg == (-30, 30)
    assert hash(ViewConfig(image_size=[256, 256])) == hash(ViewConfig(image_size=(256, 256)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_strategy": "anyres"}, r"must be one of anyres_e2p, e2p, cubemap, sliding_window, resize"),
        ({"fov_deg": 0.0}, r"fov_deg must lie in the open interval \(0, 180\)"),
        ({"fov_deg": 180.0}, r"fov_deg must lie in the open interval \(0, 180\)"),
        ({"fov_deg": -10.0}, r"fov_deg"),
        ({"overlap_ratio": 1.0}, r"overlap_ratio must lie in \[0, 1\)"),
        ({"overlap_ratio": -0.1}, r"overlap_ratio must lie in \[0, 1\)"),
        ({"image_size": (0, 224)}, r"image_size must be"),
        ({"image_size": True}, r"image_size must be"),
        ({"pitch_range_deg": (-100.0, 45.0)}, r"pitch_range_deg must be"),
        ({"pitch_range_deg": (45.0, -45.0)}, r"pitch_range_deg must be"),
        ({"num_views": 0}, r"num_views must be an integer >= 1"),
        ({"crop_strategy": "cubemap", "image_size": (224, 256)}, r"square image_size"),
    ],
)
def test_invalid_config_is_named(kwargs, match):
    config = ViewConfig(**kwargs)
    with pytest.raises(InvalidInputError, match=match):
        config.validate()
    with pytest.raises(InvalidInputError, match=match):
        render_views(_pano(), config)


def test_render_views_rejects_non_rgb():
    with pytest.raises(InvalidInputError, match=r"\(3, H, W\) RGB"):
        render_views(torch.zeros(4, 64, 128, dtype=torch.uint8), ViewConfig(image_size=16))


def test_normalize_views():
    views = torch.rand(2, 3, 4, 4)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    out = normalize_views(views, mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (views[:, c] - mean[c]) / std[c])
    assert normalize_views(views, None, None) is views
    with pytest.raises(InvalidInputError, match="3 values each"):
        normalize_views(views, [0.5], [0.5])


def test_parse_image_size():
    assert parse_image_size(256) == (256, 256)
    assert parse_image_size("256") == (256, 256)
    assert parse_image_size("[256, 128]") == (256, 128)
    assert parse_image_size([224]) == (224, 224)
    with pytest.raises(InvalidInputError, match="--image_size"):
        parse_image_size("big")


def test_cli_writes_views_json_and_contact_sheet(sample_panoramas, tmp_path, capsys):
    pano_path = sample_panoramas[0]
    out = run_views(str(pano_path), str(tmp_path / "out"), image_size="[128, 128]")
    assert out == (tmp_path / "out").absolute()
    info = json.loads((out / "views.json").read_text())
    assert info["image"] == str(pano_path) and info["crop_strategy"] == "anyres_e2p"
    assert (info["fov_deg"], info["overlap_ratio"]) == (90.0, 0.5)
    views = info["views"]
    assert [v["kind"] for v in views] == ["global"] + ["perspective"] * 8
    assert [v["yaw_deg"] for v in views[1:]] == DEFAULT_YAWS
    assert all(v.keys() >= {"kind", "yaw_deg", "pitch_deg", "fov_deg", "height", "width"} for v in views)
    for i, v in enumerate(views):
        assert v["file"] == f"view_{i:02d}.png"
        with Image.open(out / v["file"]) as img:
            assert (img.mode, img.size) == ("RGB", (128, 128))
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 3 * 128 and sheet.height > 3 * 128
    assert "Wrote 9 anyres_e2p views" in capsys.readouterr().out
    # a second run with fewer views leaves no stale view files behind
    run_views(str(pano_path), str(out), crop_strategy="cubemap", image_size=64)
    assert sorted(p.name for p in out.glob("view_*.png")) == [f"view_{i:02d}.png" for i in range(4)]


def test_cli_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        run_views(str(tmp_path / "nope.jpg"), str(tmp_path / "out"))
    with pytest.raises(InvalidInputError, match="fov_deg"):
        run_views(str(tmp_path / "nope.jpg"), str(tmp_path / "out"), fov_deg=200.0)


def test_view_modules_import_neither_lightning_nor_transformers():
    code = (
        "import sys, panollava.commands.views, panollava.data.views, panollava.data.images, "
        "panollava.data.projection; bad = [m for m in ('lightning', 'transformers', 'pytorch_lightning') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
