"""Burnt-in mark removal: drawn marks go, echoes, specks and far pixels stay; the Preprocess option."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from project.data.marks import MarkConfig, find_marks, remove_marks
from project.data.transforms import Preprocess, Preprocessor

HEIGHT, WIDTH = 180, 240


def _speckle(seed: int = 0) -> np.ndarray:
    """Grey ultrasound-like speckle (laterally smeared Rayleigh noise) with a dark oval lesion, HxWx3."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.rayleigh(1.0, (HEIGHT, WIDTH)).astype(np.float32), (9, 3), 0)
    grey = np.clip(noise * 70 + 20, 0, 255).astype(np.uint8)
    cv2.ellipse(grey, (150, 90), (40, 25), 0, 0, 360, 25, -1)
    return np.repeat(cv2.GaussianBlur(grey, (3, 3), 0)[..., None], 3, axis=2)


def _draw_marks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image with coloured marks, two calliper crosses and text drawn on; and where they are."""
    marked = image.copy()
    cv2.line(marked, (20, 20), (90, 35), (0, 255, 0), 1)  # green measurement line
    for x in range(100, 190, 8):
        cv2.circle(marked, (x, 160), 1, (255, 255, 0), -1)  # yellow dotted line
    for cx, cy in ((110, 90), (190, 90)):  # white calliper crosses either side of the lesion
        cv2.line(marked, (cx - 5, cy), (cx + 5, cy), (255, 255, 255), 1)
        cv2.line(marked, (cx, cy - 5), (cx, cy + 5), (255, 255, 255), 1)
    cv2.putText(marked, "LT 4E", (15, 130), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    drawn = (marked != image).any(axis=2)
    return marked, drawn


def test_drawn_marks_are_inpainted_from_their_surroundings() -> None:
    clean = _speckle()
    marked, drawn = _draw_marks(clean)
    cleaned = remove_marks(marked)
    before = np.abs(marked.astype(int) - clean)[drawn].mean()
    after = np.abs(cleaned.astype(int) - clean)[drawn].mean()
    assert before > 80 and after < 25, (before, after)
    # No colour is left where the marks were, and no mark pixel stays white.
    chroma = cleaned.max(axis=2).astype(int) - cleaned.min(axis=2)
    assert chroma[drawn].max() <= 10
    assert (cleaned[drawn] >= 200).all(axis=1).mean() < 0.02


def test_pixels_far_from_marks_are_unchanged_exactly() -> None:
    clean = _speckle(1)
    marked, drawn = _draw_marks(clean)
    cleaned = remove_marks(marked)
    distance = cv2.distanceTransform((~drawn).astype(np.uint8), cv2.DIST_L2, 5)
    far = distance > MarkConfig().reach + MarkConfig().halo + 1
    assert far.mean() > 0.5
    np.testing.assert_array_equal(cleaned[far], marked[far])


@pytest.mark.parametrize("seed", range(3))
def test_plain_and_tinted_echo_images_are_untouched(seed: int) -> None:
    plain = _speckle(seed)
    assert remove_marks(plain) is plain
    tinted = np.clip(plain * np.array([0.85, 0.95, 1.1]), 0, 255).astype(np.uint8)  # a blue-grey scanner palette
    assert not find_marks(tinted).any()


def test_echoes_and_bright_specks_are_not_marks() -> None:
    image = _speckle(2)
    cv2.line(image, (10, 40), (230, 48), (230, 230, 230), 2)  # a bright specular echo (horizontal)
    for x, y in ((140, 80), (150, 95), (160, 85)):  # calcification-like specks inside the lesion
        cv2.rectangle(image, (x - 1, y - 1), (x + 1, y + 1), (250, 250, 250), -1)
    assert not find_marks(image).any()


def test_preprocess_round_trips_remove_marks_and_old_dicts_load() -> None:
    config = Preprocess(img_size=96, remove_marks=True)
    assert Preprocess.from_dict(config.to_dict()) == config
    old = Preprocess(img_size=96).to_dict()
    del old["remove_marks"]
    assert Preprocess.from_dict(old).remove_marks is False


def test_preprocessor_removes_marks_before_resizing(tmp_path: Path) -> None:
    marked, drawn = _draw_marks(_speckle(3))
    path = tmp_path / "marked.png"
    cv2.imwrite(str(path), cv2.cvtColor(marked, cv2.COLOR_RGB2BGR))
    size = 120
    with_removal, _ = Preprocessor(Preprocess(img_size=size, cut_black=None, remove_marks=True))(path)
    without, _ = Preprocessor(Preprocess(img_size=size, cut_black=None))(path)
    expected = cv2.resize(remove_marks(marked), (size, size), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(with_removal.astype(int), expected.astype(int), atol=1)
    assert np.abs(without.astype(int) - expected).max() > 100
