"""Equirectangular → perspective projection against py360convert, on the five real panoramas and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from py360convert import e2c, e2p
from py360convert.utils import EquirecSampler

from panollava.data.images import load_panorama
from panollava.data.projection import (
    clear_projection_caches,
    equirect_to_cubemap,
    equirect_to_perspective,
    pad_equirect,
    perspective_coords,
    projection_cache_info,
    vertical_fov_deg,
)
from panollava.data.views import ViewConfig, render_views, view_geometries
from panollava.errors import InvalidInputError

TOL = 1.0 / 255.0  # the bound: mean absolute difference on a 0-1 scale


@pytest.fixture(scope="module")
def real_panos(sample_panoramas) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, (3, H, W) uint8 tensor, (H, W, 3) uint8 array) of the five real panoramas, decoded once."""
    out = []
    for path in sample_panoramas:
        pano = load_panorama(path)
        out.append((path.name, pano, pano.permute(1, 2, 0).numpy()))
    return out


def _mad(view: torch.Tensor, ref: np.ndarray) -> float:
    """Mean absolute difference (0-1 scale) of a (3, h, w) [0, 1] view and an (h, w, 3) uint8 reference."""
    ours = view.permute(1, 2, 0).numpy().astype(np.float64)
    return float(np.abs(ours - ref.astype(np.float64) / 255.0).mean())


def _random_pano(h: int = 64, w: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_anyres_tiles_match_py360convert_on_real_panoramas(real_panos):
    config = ViewConfig("anyres_e2p", image_size=(224, 224))
    geoms = view_geometries(config)
    worst = 0.0
    for name, pano, img in real_panos:
        views = render_views(pano, config)
        for geom, view in zip(geoms, views):
            if geom.kind != "perspective":
                continue
            ref = e2p(img, geom.fov_deg, geom.yaw_deg, geom.pitch_deg, (224, 224), mode="bilinear")
            mad = _mad(view, ref)
            assert mad < TOL, (name, geom, mad * 255)
            worst = max(worst, mad)
    # exact geometry: only py360convert's rounding to uint8 remains (~0.25/255)
    assert worst < 0.35 / 255


def test_cubemap_faces_match_py360convert_e2c_on_real_panoramas(real_panos):
    config = ViewConfig("cubemap", image_size=(128, 128))
    for name, pano, img in real_panos:
        views = render_views(pano, config)
        faces = e2c(img, face_w=128, mode="bilinear", cube_format="dict")
        for key, view in zip("FRBL", views):
            assert _mad(view, faces[key]) < TOL, (name, key)


def test_pitch_rows_poles_and_other_fovs_match_py360convert(real_panos):
    name, pano, img = real_panos[0]
    # three pitch rows (-45, 0, 45) and 24 tiles; reaches the poles' padding rows
    config = ViewConfig("anyres_e2p", image_size=(64, 64), pitch_range_deg=(-90.0, 90.0))
    for geom, view in zip(view_geometries(config)[1:], render_views(pano, config)[1:]):
        ref = e2p(img, geom.fov_deg, geom.yaw_deg, geom.pitch_deg, (64, 64))
        assert _mad(view, ref) < TOL, geom
    # e2p strategy, another fov; straight up and down; non-square views (vertical fov from the aspect ratio)
    config = ViewConfig("e2p", image_size=(48, 48), fov_deg=62.5, num_views=5)
    for geom, view in zip(view_geometries(config), render_views(pano, config)):
        assert _mad(view, e2p(img, 62.5, geom.yaw_deg, 0.0, (48, 48))) < TOL, geom
    views = equirect_to_perspective(pano, [10.0, -170.0], [90.0, -90.0], 120.0, (40, 40))
    assert _mad(views[0], e2p(img, 120.0, 10.0, 90.0, (40, 40))) < TOL
    assert _mad(views[1], e2p(img, 120.0, -170.0, -90.0, (40, 40))) < TOL
    vfov = vertical_fov_deg(100.0, (48, 96))
    view = equirect_to_perspective(pano, 33.0, -20.0, (100.0, vfov), (48, 96))[0]
    assert _mad(view, e2p(img, (100.0, vfov), 33.0, -20.0, (48, 96))) < TOL


def test_seam_and_sign_conventions_match_py360convert():
    pano = _random_pano(64, 128, seed=1)
    img = pano.permute(1, 2, 0).numpy().copy()
    yaws = [-180.0, 179.0, -179.5, 90.0, -90.0, 0.0]
    pitches = [0.0, 10.0, -30.0, 45.0, 80.0, -89.0]
    views = equirect_to_perspective(pano, yaws, pitches, 75.0, (32, 32))
    for view, yaw, pitch in zip(views, yaws, pitches):
        # random pixels: any sign or seam error would give a difference of ~85/255
        assert _mad(view, e2p(img, 75.0, yaw, pitch, (32, 32))) < TOL, (yaw, pitch)
    # yaw 0 looks at the centre column, positive yaw turns right, positive pitch looks up
    coords = perspective_coords((64, 128), (33, 33), 60.0, 0.0, 0.0)
    assert coords[16, 16].tolist() == pytest.approx([63.5, 31.5], abs=1e-4)
    right = perspective_coords((64, 128), (33, 33), 60.0, 90.0, 0.0)[16, 16]
    up = perspective_coords((64, 128), (33, 33), 60.0, 0.0, 45.0)[16, 16]
    assert right.tolist() == pytest.approx([95.5, 31.5], abs=1e-4)
    assert up.tolist() == pytest.approx([63.5, 15.5], abs=1e-4)


def test_pad_equirect_equals_py360convert_padding():
    pano = _random_pano(16, 33, seed=2)  # odd width: the pole rows roll by W // 2
    img = pano.permute(1, 2, 0).numpy()
    padded = pad_equirect(pano)
    for c in range(3):
        ref = EquirecSampler._pad(None, img[..., c].copy())  # the method does not use self
        assert torch.equal(padded[c], torch.from_numpy(ref.astype(np.float32)))


def test_uint8_float_and_memory_layouts_agree():
    pano = _random_pano(64, 128, seed=3)
    as_float = pano.float() / 255.0
    channels_last = pano.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert channels_last.stride(0) == 1
    args = ([0.0, 45.0, -180.0], [0.0, 20.0, -60.0], 90.0, (24, 24))
    ref = equirect_to_perspective(pano, *args)
    assert ref.dtype == torch.float32 and ref.shape == (3, 3, 24, 24)
    assert 0.0 <= ref.min() and ref.max() <= 1.0
    assert torch.allclose(equirect_to_perspective(as_float, *args), ref, atol=1e-5)
    assert torch.allclose(equirect_to_perspective(channels_last, *args), ref, atol=1e-5)
    assert torch.allclose(equirect_to_perspective(as_float.double(), *args), ref, atol=1e-5)
    out = torch.empty(3, 3, 24, 24)
    assert equirect_to_perspective(pano, *args, out=out) is out and torch.equal(out, ref)
    with pytest.raises(ValueError, match="out must be"):
        equirect_to_perspective(pano, *args, out=torch.empty(2, 3, 24, 24))


def test_grids_are_cached_by_geometry():
    clear_projection_caches()
    pano = _random_pano(64, 128, seed=4)
    first = equirect_to_perspective(pano, [0.0, 90.0], 0.0, 90.0, (16, 16))
    info = projection_cache_info()
    assert (info["coords"], info["grids"], info["grid_misses"], info["grid_hits"]) == (2, 1, 1, 0)
    again = equirect_to_perspective(pano.clone(), [0.0, 90.0], 0.0, 90.0, (16, 16))
    assert torch.equal(first, again)
    assert projection_cache_info()["grid_hits"] == 1 and projection_cache_info()["coords"] == 2
    # a new view set reuses the per-view coordinates it shares
    equirect_to_perspective(pano, [90.0, 180.0], 0.0, 90.0, (16, 16))
    info = projection_cache_info()
    assert (info["coords"], info["grids"], info["coord_hits"]) == (3, 2, 1)
    # another input size, output size, fov or pitch is another grid
    equirect_to_perspective(_random_pano(32, 64), [0.0, 90.0], 0.0, 90.0, (16, 16))
    equirect_to_perspective(pano, [0.0, 90.0], 0.0, 80.0, (16, 16))
    assert projection_cache_info()["grids"] == 4


def test_equirect_to_cubemap_up_and_down_faces():
    pano = _random_pano(64, 128, seed=5)
    img = pano.permute(1, 2, 0).numpy().copy()
    faces = e2c(img, face_w=24, cube_format="dict")
    views = equirect_to_cubemap(pano, 24, faces="FRBLUD")
    for key, view in zip("FRBLUD", views):
        assert _mad(view, faces[key]) < TOL, key
    with pytest.raises(InvalidInputError, match="FRBLUD"):
        equirect_to_cubemap(pano, 24, faces="FX")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fov_deg": 0.0}, r"fov_deg must lie in the open interval \(0, 180\)"),
        ({"fov_deg": 180.0}, r"fov_deg must lie in the open interval \(0, 180\)"),
        ({"fov_deg": (90.0, -1.0)}, r"fov_deg must lie"),
        ({"out_hw": (0, 16)}, r"out_hw must be a \(H, W\) pair"),
        ({"yaw_deg": [0.0, 1.0], "pitch_deg": [0.0, 1.0, 2.0]}, "same non-zero length"),
        ({"yaw_deg": float("nan")}, "finite"),
    ],
)
def test_bad_projection_arguments_raise(kwargs, match):
    call = {"yaw_deg": 0.0, "pitch_deg": 0.0, "fov_deg": 90.0, "out_hw": (16, 16)} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        equirect_to_perspective(_random_pano(), **call)


def test_bad_panorama_tensors_raise():
    with pytest.raises(InvalidInputError, match=r"\(C, H, W\) tensor"):
        equirect_to_perspective(torch.zeros(64, 128), 0.0)
    with pytest.raises(InvalidInputError, match="uint8 or floating point"):
        equirect_to_perspective(torch.zeros(3, 64, 128, dtype=torch.int32), 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["anyres_e2p", "e2p", "cubemap", "sliding_window", "resize"])
def test_cuda_matches_cpu(strategy):
    pano = _random_pano(128, 256, seed=6)
    config = ViewConfig(strategy, image_size=(64, 64), pitch_range_deg=(-90.0, 90.0))
    cpu = render_views(pano, config)
    channels_last = pano.cuda().permute(1, 2, 0).contiguous().permute(2, 0, 1)
    for gpu_pano in (pano.cuda(), pano.cuda().half() / 255, channels_last):
        gpu = render_views(gpu_pano, config)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32 and gpu.shape == cpu.shape
        assert (gpu.cpu() - cpu).abs().mean() < 1.0 / 255, strategy


def test_caches_filled_under_inference_mode_work_in_training_mode():
    """Lightning's test/predict run under torch.inference_mode; a later fit in the same process reuses the
    cached grids and scratch buffers, which must therefore never be inference tensors."""
    from panollava.data.projection import clear_projection_caches
    from panollava.data.views import ViewConfig, render_views

    clear_projection_caches()
    pano = (torch.arange(3 * 64 * 128, dtype=torch.float32).reshape(3, 64, 128) % 255).to(torch.uint8)
    config = ViewConfig(image_size=(32, 32))
    with torch.inference_mode():
        inside = render_views(pano, config)
    outside = render_views(pano, config)
    assert not outside.is_inference()
    assert torch.equal(inside, outside)
