"""Breast region of interest: find the breast, put it on the left, crop, resize and pad.

The breast is the largest connected bright region of the display image (after VOI and
MONOCHROME1 inversion, so tissue is bright and air dark). The threshold starts from Otsu's
and is lowered towards the background level so that the faint skin line stays inside the
mask; a small opening removes detector noise and thin lines; OpenCV's external contours
then give the components, and the largest one by area is the breast. Burnt-in labels,
markers and rulers are separate, smaller components, so they neither win nor stretch the
box; with ``clean=True`` whatever lies outside the (slightly dilated) breast component
inside the crop box is set to the background value.

The flip makes the chest wall sit on the left edge: ``flip="auto"`` looks at which side
holds more of the breast (the laterality tag decides when the image is ambiguous),
``flip="laterality"`` flips every R image, ``flip="none"`` never flips. The crop is then
resized keeping its aspect ratio to fit (height, width), placed against the left edge and
centred vertically, and padded with the background value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

FlipMode = Literal["auto", "laterality", "none"]


@dataclass(frozen=True)
class CropInfo:
    """Where the output came from. Boxes are (x0, y0, x1, y1), end-exclusive, in the input."""

    box: tuple[int, int, int, int]  # crop box in the input image (before any flip)
    found: bool  # False when no breast-like region was found (the whole image is used)
    side: str  # where the breast was found in the input: "left" or "right"
    flipped: bool
    scale: float  # output pixels per input pixel
    offset: tuple[int, int]  # (x, y) of the resized crop inside the output
    resized: tuple[int, int]  # (height, width) of the resized crop

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A display image scaled to uint8 for mask finding (floats are taken as [0, 1])."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    values = image.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.rint(scaled * 255.0).astype(np.uint8)


def breast_mask(image: np.ndarray, min_fraction: float = 0.01) -> tuple[np.ndarray, bool]:
    """(mask of the largest bright component as uint8 0/255, found)."""
    img8 = to_uint8(image)
    h, w = img8.shape[:2]
    blurred = cv2.GaussianBlur(img8, (5, 5), 0)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    below = blurred[blurred <= otsu]
    background = float(np.median(below)) if below.size else 0.0
    # lower the cut towards the background level so that the thin skin edge stays in
    level = background + max(2.0, 0.2 * (float(otsu) - background))
    binary = (blurred > level).astype(np.uint8) * 255
    k = max(3, (min(h, w) // 100) | 1)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((h, w), np.uint8)
    if not contours:
        return mask, False
    largest = max(contours, key=cv2.contourArea)
    if cv2.contourArea(largest) < min_fraction * h * w:
        return mask, False
    cv2.drawContours(mask, [largest], -1, 255, thickness=cv2.FILLED)
    # keep the thresholded pixels of that component (holes in the tissue stay tissue)
    return mask, True


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, bw, bh = cv2.boundingRect(mask)
    return (int(x), int(y), int(x + bw), int(y + bh))


def _side(mask: np.ndarray) -> tuple[str, float]:
    """('left' or 'right', confidence in [0, 1]) from the mask's mass in the two halves."""
    w = mask.shape[1]
    left = float(np.count_nonzero(mask[:, : w // 2]))
    right = float(np.count_nonzero(mask[:, w - w // 2 :]))
    total = left + right
    if total == 0:
        return "left", 0.0
    return ("left" if left >= right else "right"), abs(left - right) / total


def crop_breast(
    image: np.ndarray,
    *,
    size: tuple[int, int] | None = (1024, 512),
    laterality: str | None = None,
    flip: FlipMode = "auto",
    margin: float = 0.01,
    clean: bool = True,
    background: float | int | None = None,
) -> tuple[np.ndarray, CropInfo]:
    """Crop the breast from a display image (tissue bright), chest wall to the left.

    `image` is HxW uint8, uint16 or float. `size` = (height, width) of the output, or None
    for the crop at its own size. `margin` widens the box by that fraction of the image
    size on each side. `background` is the fill value (default: 0).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a HxW grey-scale image, got shape {image.shape}")
    h, w = image.shape
    fill = 0 if background is None else background
    mask, found = breast_mask(image)
    if found:
        x0, y0, x1, y1 = _box_of(mask)
        mx, my = int(round(margin * w)), int(round(margin * h))
        x0, y0 = max(0, x0 - mx), max(0, y0 - my)
        x1, y1 = min(w, x1 + mx), min(h, y1 + my)
        side, confidence = _side(mask)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
        side, confidence = "left", 0.0
    lat = (laterality or "").strip().upper()[:1]
    if flip == "none":
        flipped = False
    elif flip == "laterality":
        flipped = lat == "R"
    elif flip == "auto":
        if found and confidence >= 0.05:
            flipped = side == "right"
        else:
            flipped = lat == "R"
    else:
        raise ValueError(f"flip must be auto, laterality or none, not {flip!r}")

    crop = image[y0:y1, x0:x1].copy()
    if clean and found:
        k = max(3, (min(h, w) // 50) | 1)
        keep = cv2.dilate(mask, np.ones((k, k), np.uint8))[y0:y1, x0:x1] > 0
        crop[~keep] = fill
    if flipped:
        crop = crop[:, ::-1].copy()

    if size is None:
        info = CropInfo((x0, y0, x1, y1), found, side, flipped, 1.0, (0, 0), crop.shape[:2])
        return crop, info
    out_h, out_w = size
    ch, cw = crop.shape
    scale = min(out_h / ch, out_w / cw)
    new_h = max(1, min(out_h, int(round(ch * scale))))
    new_w = max(1, min(out_w, int(round(cw * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    work = crop.astype(np.float32) if crop.dtype not in (np.uint8, np.uint16) else crop
    resized = cv2.resize(work, (new_w, new_h), interpolation=interp)
    out = np.full((out_h, out_w), fill, dtype=resized.dtype)
    oy = (out_h - new_h) // 2
    out[oy : oy + new_h, :new_w] = resized
    if out.dtype != image.dtype:
        out = out.astype(image.dtype)
    info = CropInfo((x0, y0, x1, y1), found, side, flipped, float(scale), (0, oy), (new_h, new_w))
    return out, info
