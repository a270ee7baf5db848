"""Robust image reading: any common format, bit depth and mode in, one uint8 RGB array out."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A 20,000 x 20,000 scan is a real (if odd) input; anything past this is treated as a bomb.
MAX_PIXELS = 1_000_000_000
DEFAULT_MAX_SIDE = 4096
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(Exception):
    """An image that cannot be read; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = Path(path)
        self.cause = cause


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer data by its bit depth (a 12-bit image in a 16-bit file uses 12 bits)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        return np.round(np.nan_to_num(scaled) * 255).astype(np.uint8)
    array = np.clip(array.astype(np.int64), 0, None)
    bits = max(8, int(array.max()).bit_length())
    return np.round(array * (255.0 / (2**bits - 1))).astype(np.uint8)


def _pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    image.draft(image.mode, (max_side, max_side))  # JPEG decodes at reduced scale; no-op otherwise
    factor = -(-max(image.size) // max_side)
    return image.reduce(factor) if factor > 1 else image


def read_image(path: str | Path, max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied, larger images reduced to `max_side`.

    Raises ImageReadError for a missing, empty, truncated or non-image file.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path)
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image")
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = _shrink(image, max_side)
                image.load()
                image = ImageOps.exif_transpose(image)
                return np.ascontiguousarray(_pil_to_rgb_array(image))
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None


def _read_dicom(path: Path) -> np.ndarray:
    from project.mammo.dicom import DicomReadError, read_dicom_display

    try:
        grey = read_dicom_display(path)
    except DicomReadError as exc:
        raise ImageReadError(path, str(exc)) from None
    return grey if grey.ndim == 3 else np.repeat(grey[:, :, None], 3, axis=2)

