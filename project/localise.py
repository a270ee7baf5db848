"""Lesion boxes from a lesion-map head: where a lesion-crop classifier (Preprocess.lesion_crop) looks at prediction.

A classifier trained with `--lesion-map` learns, beside its classes, one lesion logit per cell of its
stride-32 grid (or a finer one, `--lesion-map-stride`). Read at prediction, that map locates the
lesion; `box_from_map` turns it, read at the input's resolution, into a box, and the box is carried
back through CutBlack onto the file, where a `--lesion-crop` model crops it. `lesion_probability_maps`
carries the map itself back, for an outline (project.lexicon). A box file (`read_box_file`) carries
boxes found by any other detector or segmenter instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from project.data.layout import Box
from project.data.transforms import uncrop_box, yolo_to_xyxy
from project.fileio import atomic_write_csv, read_csv_rows
from project.models.lesion_map import WithLesionMap
from project.predict import Frame, ImageFolderDataset, Member, collate_images
from project.runtime import make_loader

# Pixels joined to the peak with at least this share of its probability make up the lesion. Chosen on
# the first cross-validation fold's validation images (mean IoU with the labelled boxes flat from 0.3 to 0.4).
PEAK_SHARE = 0.4

BOX_COLUMNS = ("img_name", "x_center", "y_center", "width", "height")
"""A box file's header: the image's file name, then its lesion box as YOLO fractions of the file's size."""


def peak_region(probs: np.ndarray) -> np.ndarray:
    """The lesion in an h x w map of lesion probabilities: the pixels 4-connected to the most probable one
    whose probability is at least PEAK_SHARE of its (a bool map; all False where no pixel is probable)."""
    if probs.max() <= 0:
        return np.zeros(probs.shape, dtype=bool)
    regions, _ = ndimage.label(probs >= PEAK_SHARE * probs.max())
    return regions == regions[np.unravel_index(int(np.argmax(probs)), probs.shape)]


def box_from_map(probs: np.ndarray) -> Box:
    """A YOLO box, normalised to the map's frame, bounding the map's peak_region; the whole frame for a map
    with no probability anywhere."""
    region = peak_region(probs)
    if not region.any():
        return 0.5, 0.5, 1.0, 1.0
    rows, cols = probs.shape
    span_y, span_x = ndimage.find_objects(region.astype(np.int32))[0]
    return ((span_x.start + span_x.stop) / 2 / cols, (span_y.start + span_y.stop) / 2 / rows,
            (span_x.stop - span_x.start) / cols, (span_y.stop - span_y.start) / rows)


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
def _input_maps(
    paths: Sequence[Path], localiser: Member, device: torch.device, batch_size: int, workers: int,
    errors: dict[int, str],
) -> Iterator[tuple[int, np.ndarray, Frame]]:
    """(index, lesion probabilities at the input's resolution, frame) of each readable file; the others'
    reasons go into `errors`."""
    check_localiser(localiser)
    dataset = ImageFolderDataset(paths, localiser.preprocess, framed=True)
    loader = make_loader(dataset, batch_size, workers, collate_fn=collate_images)
    for indices, images, bad, frames in tqdm(loader, desc="localise", unit="batch", leave=False,
                                             disable=len(paths) == 0):
        errors.update(bad)
        if images is None:
            continue
        # Read at the input's resolution, so that the box's sides need not fall on the map's cell edges.
        logits = localiser.model.lesion_map(images.to(device)).float().unsqueeze(1)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = torch.sigmoid(logits).squeeze(1).cpu().numpy()
        yield from zip(indices, maps, frames, strict=True)


def locate_lesions(
    paths: Sequence[Path], localiser: Member, device: torch.device, batch_size: int = 32, workers: int = 0,
) -> tuple[list[Box | None], dict[int, str]]:
    """Each file's lesion box in its own coordinates (None where unreadable), and why the others failed."""
    boxes: list[Box | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    for index, probs, (bounds, shape) in _input_maps(paths, localiser, device, batch_size, workers, errors):
        boxes[index] = uncrop_box(box_from_map(probs), bounds, shape)
    return boxes, errors


def lesion_probability_maps(
    paths: Sequence[Path], localiser: Member, device: torch.device, batch_size: int = 32, workers: int = 0,
) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Each file's lesion probabilities, pixel by pixel of the file (0 outside CutBlack's crop; None where
    unreadable), and why the others failed."""
    maps: list[np.ndarray | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    for index, probs, ((top, bottom, left, right), shape) in _input_maps(paths, localiser, device, batch_size,
                                                                          workers, errors):
        canvas = np.zeros(shape, dtype=np.float32)
        canvas[top:bottom, left:right] = cv2.resize(probs, (right - left, bottom - top),
                                                    interpolation=cv2.INTER_LINEAR)
        maps[index] = canvas
    return maps, errors


def write_box_file(path: Path, boxes: Mapping[str, Box]) -> None:
    """Write `boxes` (file name -> YOLO box) as a box file, rows in name order, atomically."""
    atomic_write_csv(path, BOX_COLUMNS, ([name, *(f"{v:.6f}" for v in boxes[name])] for name in sorted(boxes)))


def read_box_file(path: Path) -> dict[str, Box]:
    """File name -> YOLO box from a box file (BOX_COLUMNS); ValueError naming the file (and row) when it cannot
    be read or a row is bad."""
    try:
        rows = read_csv_rows(path, BOX_COLUMNS, ValueError)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    boxes: dict[str, Box] = {}
    for row_number, row in enumerate(rows, start=2):
        name = row["img_name"]
        try:
            box = tuple(float(row[column]) for column in BOX_COLUMNS[1:])
        except ValueError:
            raise ValueError(f"{path}, row {row_number} ({name}): the box is not four numbers") from None
        cx, cy, w, h = box
        if not all(math.isfinite(v) for v in box) or not (0 < w <= 1 and 0 < h <= 1 and 0 <= cx <= 1 and 0 <= cy <= 1):
            raise ValueError(f"{path}, row {row_number} ({name}): a box needs its centre in [0, 1] and its width "
                             f"and height in (0, 1], as fractions of the image; got {box}")
        if name in boxes:
            raise ValueError(f"{path}, row {row_number}: {name} has a second box")
        boxes[name] = box
    return boxes
