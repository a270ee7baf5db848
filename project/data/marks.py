"""Burnt-in mark removal: find overlay pixels (colour, calliper crosses, text, thin lines) and inpaint them."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class MarkConfig:
    """Thresholds of the detector, in grey levels and pixels of the decoded image.

    Colour: a pixel whose colour departs by `colour_distance` from the image's own tint (the
    median colour ratio: a blue-tinted echo image is not a mark). Grey marks: strokes brighter
    than `bright` that rise `contrast` above what a `stroke_width`-pixel opening keeps, and run
    `stroke_length` pixels straight. Seeds are crossings or junctions of a vertical and a
    horizontal stroke (calliper crosses, letters such as E, T, 4) and vertical lines
    `long_factor` times the stroke width long (rulers, cursors, frame lines); tissue echoes are
    horizontal and speckle and calcifications are dots, so neither makes a seed. Around a seed
    (`reach` pixels) a pixel `loose_contrast` above its surroundings and at least `level` times
    the seeds' median grey joins the mark.
    """

    colour_distance: float = 40.0
    bright: int = 100
    contrast: int = 35
    loose_contrast: int = 25
    stroke_width: int = 5
    stroke_length: int = 5
    gap: int = 3
    long_factor: int = 4
    reach: int = 9
    level: float = 0.8
    halo: int = 1
    inpaint_radius: float = 3.0


def _line(length: int, vertical: bool) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_RECT, (1, length) if vertical else (length, 1))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _tophat(grey: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel, borderType=cv2.BORDER_REPLICATE)


def colour_marks(image: np.ndarray, config: MarkConfig = MarkConfig()) -> np.ndarray:
    """Pixels whose colour departs from the image's tint (HxW bool); none in a grey image."""
    pixels = image.astype(np.float32)
    grey = pixels.mean(axis=2)
    sample, sample_grey = pixels[::4, ::4], grey[::4, ::4]  # the tint of every 16th pixel is plenty
    lit = sample_grey > 30
    if not lit.any():
        return np.zeros(grey.shape, bool)
    tint = np.median(sample[lit] / sample_grey[lit, None], axis=0)
    return np.abs(pixels - grey[..., None] * tint).max(axis=2) >= config.colour_distance


def _strokes(narrow: np.ndarray, vertical: bool, config: MarkConfig) -> np.ndarray:
    """Runs of at least stroke_length narrow pixels along one axis, gaps up to `gap` bridged."""
    closed = cv2.morphologyEx(narrow, cv2.MORPH_CLOSE, _line(config.gap, vertical))
    return cv2.morphologyEx(closed, cv2.MORPH_OPEN, _line(config.stroke_length, vertical))


def grey_marks(grey: np.ndarray, config: MarkConfig = MarkConfig()) -> np.ndarray:
    """Bright thin overlay strokes of a uint8 grey image (HxW bool): crosses, text, rulers, lines."""
    bright = grey >= config.bright
    width = config.stroke_width
    narrow_x = ((_tophat(grey, _line(width, False)) >= config.contrast) & bright).astype(np.uint8)
    narrow_y = ((_tophat(grey, _line(width, True)) >= config.contrast) & bright).astype(np.uint8)
    # Strokes that cross or touch (a corner of L, a T, a +): grown by one pixel so that they meet.
    touching = _disk(1)
    crossings = cv2.dilate(_strokes(narrow_x, True, config), touching) & cv2.dilate(
        _strokes(narrow_y, False, config), touching)
    lines = cv2.morphologyEx(narrow_x, cv2.MORPH_OPEN, _line(config.long_factor * width, True))
    seeds = (crossings | lines).astype(bool)
    if not seeds.any():
        return np.zeros(grey.shape, bool)
    loose = (_tophat(grey, _disk(width)) >= config.loose_contrast) | narrow_x.astype(bool) | narrow_y.astype(bool)
    return _grow(grey, seeds, loose & bright, config)


def _grow(grey: np.ndarray, seeds: np.ndarray, candidate: np.ndarray, config: MarkConfig) -> np.ndarray:
    """Candidate pixels within `reach` of a seed and at least `level` times as bright as its seeds.

    A mark is drawn at one grey level, so each seed zone keeps the pixels near its seeds' median
    level: a white cross on a striped echo takes the cross, not the stripes.
    """
    count, zones = cv2.connectedComponents(cv2.dilate(seeds.astype(np.uint8), _disk(config.reach)))
    levels = np.zeros(count, np.float32)
    for zone in range(1, count):
        levels[zone] = np.median(grey[seeds & (zones == zone)])
    return candidate & (zones > 0) & (grey >= config.level * levels[zones])


def find_marks(image: np.ndarray, config: MarkConfig = MarkConfig()) -> np.ndarray:
    """Overlay pixels of an HxWx3 uint8 RGB image, grown by `halo` pixels for anti-aliased edges."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    marks = (colour_marks(image, config) | grey_marks(grey, config)).astype(np.uint8)
    if config.halo and marks.any():
        marks = cv2.dilate(marks, _disk(config.halo))
    return marks.astype(bool)


def remove_marks(image: np.ndarray, config: MarkConfig = MarkConfig()) -> np.ndarray:
    """The image with its overlay pixels inpainted (OpenCV Telea); other pixels are unchanged.

    An image without marks is returned as it is (the same array).
    """
    marks = find_marks(image, config)
    if not marks.any():
        return image
    return cv2.inpaint(image, marks.astype(np.uint8), config.inpaint_radius, cv2.INPAINT_TELEA)
