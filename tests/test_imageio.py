"""Robust image reading: formats, bit depths, modes, EXIF orientation and named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from project.data.imageio import ImageReadError, read_image

GREY = np.arange(48 * 40, dtype=np.uint8).reshape(48, 40) % 251


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_grey_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    array = read_image(_save(tmp_path / f"g{suffix}", Image.fromarray(GREY)))
    assert array.dtype == np.uint8 and array.shape == (48, 40, 3)
    assert np.array_equal(array[:, :, 0], GREY) and np.array_equal(array[:, :, 2], GREY)


def test_jpeg_rgb_and_cmyk(tmp_path: Path) -> None:
    rgb = np.stack([GREY, 255 - GREY, np.full_like(GREY, 128)], axis=2)
    out = read_image(_save(tmp_path / "c.jpg", Image.fromarray(rgb), quality=100, subsampling=0))
    assert out.shape == (48, 40, 3) and np.abs(out.astype(int) - rgb).mean() < 3
    cmyk = read_image(_save(tmp_path / "k.jpg", Image.fromarray(rgb).convert("CMYK"), quality=100, subsampling=0))
    assert cmyk.shape == (48, 40, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 6


def test_sixteen_bit_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    twelve_bit = (GREY.astype(np.uint16) * 16).clip(0, 4095)
    twelve_bit[0, 0] = 4095
    out = read_image(_save(tmp_path / "d.png", Image.fromarray(twelve_bit)))
    expected = np.round(twelve_bit * (255 / 4095)).astype(np.uint8)
    assert np.array_equal(out[:, :, 0], expected)


def test_rgba_palette_and_grey_alpha(tmp_path: Path) -> None:
    rgba = Image.fromarray(np.stack([GREY] * 3 + [np.full_like(GREY, 7)], axis=2), "RGBA")
    assert np.array_equal(read_image(_save(tmp_path / "a.png", rgba))[:, :, 1], GREY)
    palette = Image.fromarray(GREY).convert("P")
    assert read_image(_save(tmp_path / "p.png", palette)).shape == (48, 40, 3)
    la = Image.fromarray(GREY).convert("LA")
    assert np.array_equal(read_image(_save(tmp_path / "la.png", la))[:, :, 0], GREY)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(GREY)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = read_image(_save(tmp_path / "o.jpg", image, exif=exif, quality=100))
    assert out.shape == (40, 48, 3)
    assert np.abs(out[:, :, 0].astype(int) - np.rot90(GREY, k=-1)).mean() < 3


def test_large_image_is_reduced(tmp_path: Path) -> None:
    big = Image.fromarray(np.zeros((300, 500), np.uint8))
    assert read_image(_save(tmp_path / "big.png", big), max_side=100).shape == (60, 100, 3)
    assert read_image(tmp_path / "big.png", max_side=None).shape == (300, 500, 3)


def test_bad_files_raise_one_error_naming_the_file(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.jpg", Image.fromarray(GREY), quality=90).read_bytes()
    cases = {
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "text.png": b"this is not an image at all",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    causes = {}
    for name in [*cases, "folder.jpg", "missing.png"]:
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        causes[name] = info.value.cause
    assert "empty" in causes["empty.jpg"] and "truncated" in causes["truncated.jpg"]
    assert "directory" in causes["folder.jpg"] and "not found" in causes["missing.png"]
    assert "not a recognised image" in causes["text.png"]
