"""Lesion boxes from a lesion-map head: where a lesion-crop classifier (Preprocess.lesion_crop) looks at prediction.

A classifier trained with `--lesion-map` learns, beside its classes, one lesion logit per cell of its
stride-32 grid (or a finer one, `--lesion-map-stride`). Read at prediction, that map locates the
lesion; `box_from_map` turns it into a box, and the box is carried back through CutBlack onto the
file, where a `--lesion-crop` model crops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from project.data.layout import Box
from project.data.transforms import uncrop_box, yolo_to_xyxy
from project.models.lesion_map import WithLesionMap
from project.predict import ImageFolderDataset, Member, collate_images
from project.runtime import make_loader

PEAK_SHARE = 0.5  # cells joined to the peak with at least this share of its probability make up the lesion
UNIFORM_SPREAD = 12.0  # a uniform extent of width w has variance w**2 / 12; one cell adds 1 / 12 of its own


def box_from_map(probs: np.ndarray) -> Box:
    """A YOLO box, normalised to the map's frame, from an h x w map of lesion probabilities.

    The lesion is the cells 4-connected to the most probable one whose probability is at least
    PEAK_SHARE of its. The box is centred on their probability-weighted centroid, and each side is
    the extent of a uniform box with their spread, each cell counted as spread over its width:
    sqrt(12 x variance of the cell centres + 1) cells, so n equal cells in a row give n. A map with
    no probability anywhere gives the whole frame.
    """
    rows, cols = probs.shape
    regions, _ = ndimage.label(probs >= PEAK_SHARE * probs.max())
    peak = np.unravel_index(int(np.argmax(probs)), probs.shape)
    weights = np.where(regions == regions[peak], probs, 0.0).astype(np.float64)
    total = weights.sum()
    if total <= 0:
        return 0.5, 0.5, 1.0, 1.0
    ys, xs = np.mgrid[0:rows, 0:cols] + 0.5
    cy, cx = (weights * ys).sum() / total, (weights * xs).sum() / total
    height = np.sqrt(UNIFORM_SPREAD * (weights * (ys - cy) ** 2).sum() / total + 1.0)
    width = np.sqrt(UNIFORM_SPREAD * (weights * (xs - cx) ** 2).sum() / total + 1.0)
    return float(cx / cols), float(cy / rows), float(min(width / cols, 1.0)), float(min(height / rows, 1.0))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two YOLO boxes."""
    ax0, ay0, ax1, ay1 = yolo_to_xyxy(a)
    bx0, by0, bx1, by1 = yolo_to_xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def check_localiser(member: Member) -> None:
    """Raise ValueError unless `member` can locate lesions: a lesion-map head and a stretched whole image."""
    if not isinstance(member.model, WithLesionMap):
        raise ValueError(f"{member.path}: not a localiser: it has no lesion-map head (train one with --lesion-map)")
    if member.preprocess.keep_aspect or member.preprocess.lesion_crop:
        raise ValueError(f"{member.path}: a localiser must see the whole image stretched (it was trained with "
                         "--keep-aspect or --lesion-crop)")


@torch.inference_mode()
def locate_lesions(
    paths: Sequence[Path], localiser: Member, device: torch.device, batch_size: int = 32, workers: int = 0,
) -> tuple[list[Box | None], dict[int, str]]:
    """Each file's lesion box in its own coordinates (None where unreadable), and why the others failed."""
    check_localiser(localiser)
    boxes: list[Box | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    dataset = ImageFolderDataset(paths, localiser.preprocess, framed=True)
    loader = make_loader(dataset, batch_size, workers, collate_fn=collate_images)
    for indices, images, bad, frames in tqdm(loader, desc="localise", unit="batch", leave=False,
                                             disable=len(paths) == 0):
        errors.update(bad)
        if images is None:
            continue
        maps = torch.sigmoid(localiser.model.lesion_map(images.to(device)).float()).cpu().numpy()
        for index, (bounds, shape), probs in zip(indices, frames, maps, strict=True):
            boxes[index] = uncrop_box(box_from_map(probs), bounds, shape)
    return boxes, errors
