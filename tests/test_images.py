"""Decoding panoramas: real files, mode conversions (logged), and clear errors for bad inputs."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panollava.data.images import load_panorama
from panollava.errors import InputNotFoundError, InvalidInputError

LOGGER = "panollava.data.images"


def _rgb(h: int = 64, w: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, which Pillow cannot write: bit depth 16, colour type 2, big-endian."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_real_panorama(sample_panoramas):
    path = sample_panoramas[0]
    pano = load_panorama(path)
    assert pano.shape == (3, 1024, 2048) and pano.dtype == torch.uint8
    with Image.open(path) as img:
        assert torch.equal(pano.permute(1, 2, 0), torch.from_numpy(np.array(img.convert("RGB"))))


def test_rgb_png_loads_without_log(tmp_path, caplog):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "p.png")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(str(tmp_path / "p.png"))
    assert torch.equal(pano.permute(1, 2, 0), torch.from_numpy(arr))
    assert not caplog.records


def test_grayscale_is_converted_and_logged(tmp_path, caplog):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(tmp_path / "g.png")
    for c in range(3):
        assert torch.equal(pano[c], torch.from_numpy(gray))
    assert any(r.levelno == logging.INFO and "grayscale" in r.getMessage() for r in caplog.records)


def test_rgba_drops_alpha_with_a_warning(tmp_path, caplog):
    arr = _rgb()
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(tmp_path / "a.png")
    assert torch.equal(pano.permute(1, 2, 0), torch.from_numpy(arr))
    assert any(r.levelno == logging.WARNING and "alpha channel dropped" in r.getMessage()
               for r in caplog.records)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path, caplog):
    values = np.random.default_rng(1).integers(0, 65536, (64, 128)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(tmp_path / "g16.png")
    expected = torch.from_numpy(np.rint(values / 257.0).astype(np.uint8))
    assert torch.equal(pano[0], expected) and torch.equal(pano[2], expected)
    assert any("16-bit" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_16bit_rgb_png_is_reduced_with_a_warning(tmp_path, caplog):
    values = np.random.default_rng(2).integers(0, 65536, (64, 128, 3)).astype(np.uint16)
    _write_png16(tmp_path / "rgb16.png", values)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(tmp_path / "rgb16.png")
    assert pano.shape == (3, 64, 128)
    assert torch.equal(pano.permute(1, 2, 0), torch.from_numpy((values >> 8).astype(np.uint8)))
    assert any("16 bits per channel" in r.getMessage() for r in caplog.records)


def test_cmyk_jpeg_is_converted_with_a_warning(tmp_path, caplog):
    Image.new("CMYK", (128, 64), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pano = load_panorama(tmp_path / "c.jpg")
    assert pano.shape == (3, 64, 128)
    r, g, b = (pano[c].float().mean().item() for c in range(3))
    assert r > 200 and g < 50 and b < 50
    assert any("CMYK" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_palette_is_converted(tmp_path, caplog):
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert load_panorama(tmp_path / "p.png").shape == (3, 64, 128)
    assert any("palette" in r.getMessage() for r in caplog.records)


def test_non_2to1_warns_with_its_ratio(tmp_path, caplog):
    Image.fromarray(_rgb(100, 150)).save(tmp_path / "wide.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert load_panorama(tmp_path / "wide.png").shape == (3, 100, 150)
    assert any("1.500:1" in r.getMessage() and "not the 2:1" in r.getMessage() for r in caplog.records)


def test_portrait_is_an_error(tmp_path):
    Image.fromarray(_rgb(128, 64)).save(tmp_path / "tall.png")
    with pytest.raises(InvalidInputError, match=r"portrait \(64x128 px") as info:
        load_panorama(tmp_path / "tall.png")
    assert str((tmp_path / "tall.png").absolute()) in str(info.value)


@pytest.mark.parametrize("hw", [(32, 64), (63, 126), (64, 63)])
def test_too_small_is_an_error(tmp_path, hw):
    Image.fromarray(_rgb(*hw)).save(tmp_path / "tiny.png")
    with pytest.raises(InvalidInputError, match="at least 64 px"):
        load_panorama(tmp_path / "tiny.png")


def test_corrupt_files_are_named(tmp_path, sample_panoramas):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 100)
    with pytest.raises(InvalidInputError, match=r"cannot decode panorama image '.*garbage\.jpg'"):
        load_panorama(garbage)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sample_panoramas[0].read_bytes()[:20000])
    with pytest.raises(InvalidInputError, match=r"truncated\.jpg'.*(corrupt|truncated)"):
        load_panorama(truncated)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty.png"):
        load_panorama(empty)


def test_missing_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputNotFoundError, match=f"'{tmp_path}/missing.jpg' does not exist"):
        load_panorama("missing.jpg")
    with pytest.raises(InputNotFoundError, match="is a directory"):
        load_panorama(tmp_path)
    with pytest.raises(FileNotFoundError):  # the built-in class still catches it
        load_panorama(tmp_path / "missing.jpg")


@pytest.mark.parametrize("url", ["https://example.org/p.jpg", "http://example.org/a/b.png", "s3://bucket/p.jpg"])
def test_a_url_is_refused_as_a_url_not_as_a_missing_file(tmp_path, url):
    from panollava.data.dataset import read_caption_csv

    with pytest.raises(InvalidInputError, match=rf"url '{url}' is a URL; panollava reads local image files and does "
                                                r"not download urls: download the panoramas.*--data\.image_root"):
        load_panorama(url)
    # joined to an image root, pathlib collapses "//": still recognised as the url it was
    with pytest.raises(InvalidInputError, match=rf"url '{url}' is a URL"):
        load_panorama(tmp_path / url)
    csv_path = tmp_path / "test.csv"
    csv_path.write_text(f"url,query,annotation\nlocal.jpg,sky,a sky\n{url},floor,a floor\n")
    for check_images in (True, False):
        with pytest.raises(InvalidInputError, match=rf"caption CSV '{csv_path}' line 3: url '{url}' is a URL"):
            read_caption_csv(csv_path, check_images=check_images)


def test_local_paths_are_not_urls(tmp_path):
    from panollava.data.images import remote_url_error

    assert remote_url_error(tmp_path / "pano.jpg") is None
    assert remote_url_error("images/https_mirror/p.jpg") is None and remote_url_error("C://x/p.jpg") is None
    assert "without file://" in str(remote_url_error("file:///data/p.jpg"))
