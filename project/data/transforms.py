"""Image preprocessing and augmentation: CutBlack, lesion-box CutMix, albumentations presets."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from project.data import marks
from project.data.imageio import ImageReadError, read_image
from project.data.layout import Box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

XYXY = tuple[float, float, float, float]
"""A box as normalised (x_min, y_min, x_max, y_max)."""


@dataclass
class CutBlackConfig:
    """A row or column is cut when more than `max_black_fraction` of it is at or below `threshold`."""

    threshold: int = 10
    max_black_fraction: float = 0.8


@dataclass
class Preprocess:
    """Everything prediction must repeat exactly; stored in every checkpoint."""

    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cut_black: CutBlackConfig | None = field(default_factory=CutBlackConfig)
    clahe: bool = False
    remove_marks: bool = False  # inpaint burnt-in marks (project.data.marks) before CutBlack
    keep_aspect: bool = False  # letterbox: scale the longer side to img_size, pad the shorter with black
    lesion_crop: float | None = None  # crop to the lesion box grown by this factor first (project.localise)
    whole_view: bool = False  # with lesion_crop: the whole image follows the crop as channels 3-5 (two_view models)

    @property
    def channels(self) -> int:
        """Channels of a preprocessed image: RGB, or RGB of the lesion crop then RGB of the whole image."""
        return 6 if self.whole_view else 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Preprocess:
        cut_black = raw.get("cut_black")
        return cls(
            img_size=int(raw["img_size"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
            cut_black=CutBlackConfig(**cut_black) if cut_black else None,
            clahe=bool(raw.get("clahe", False)),
            remove_marks=bool(raw.get("remove_marks", False)),
            keep_aspect=bool(raw.get("keep_aspect", False)),
            lesion_crop=float(raw["lesion_crop"]) if raw.get("lesion_crop") else None,
            whole_view=bool(raw.get("whole_view", False)),
        )


def black_border_crop(image: np.ndarray, config: CutBlackConfig) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bounds keeping the rows and columns that are not mostly black."""
    # Pairwise np.maximum is an order of magnitude faster than max(axis=2) on HxWx3 uint8.
    grey = np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2]) if image.ndim == 3 else image
    black = grey <= config.threshold
    rows = np.flatnonzero(black.mean(axis=1) <= config.max_black_fraction)
    cols = np.flatnonzero(black.mean(axis=0) <= config.max_black_fraction)
    if rows.size == 0 or cols.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop(image: np.ndarray, bounds: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = bounds
    return image[top:bottom, left:right]


MIN_LESION_CROP = 48  # px: the smallest side of a lesion crop, so that a tiny box still shows its margin


def lesion_bounds(box: Box, shape: tuple[int, int], grow: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the lesion box grown `grow` times about its centre (each side at least
    MIN_LESION_CROP px), clipped to an image of `shape` (height, width)."""
    height, width = shape
    cx, cy, w, h = box
    half_w, half_h = max(w * width * grow, MIN_LESION_CROP) / 2, max(h * height * grow, MIN_LESION_CROP) / 2
    left, right = round(max(0.0, cx * width - half_w)), round(min(width, cx * width + half_w))
    top, bottom = round(max(0.0, cy * height - half_h)), round(min(height, cy * height + half_h))
    return top, max(bottom, top + 1), left, max(right, left + 1)


def jitter_box(box: Box, rng: np.random.Generator, amount: float) -> Box:
    """The box with each side scaled by a factor drawn log-uniformly from [1 / (1 + amount), 1 + amount] and
    its centre moved by up to amount / 4 of that side: a localiser's errors, for a lesion-crop model to bear."""
    cx, cy, w, h = box
    spread = np.log1p(amount)
    scale_w, scale_h = np.exp(rng.uniform(-spread, spread, 2))
    shift_x, shift_y = rng.uniform(-amount / 4, amount / 4, 2)
    return cx + shift_x * w, cy + shift_y * h, w * scale_w, h * scale_h


def uncrop_box(box: Box, bounds: tuple[int, int, int, int], shape: tuple[int, int]) -> Box:
    """The inverse of crop_box: a YOLO box of the crop to `bounds` in the coordinates of the whole image."""
    height, width = shape
    top, bottom, left, right = bounds
    cx, cy, w, h = box
    crop_h, crop_w = bottom - top, right - left
    return (cx * crop_w + left) / width, (cy * crop_h + top) / height, w * crop_w / width, h * crop_h / height


def crop_box(box: Box | None, bounds: tuple[int, int, int, int], shape: tuple[int, int]) -> Box | None:
    """A YOLO box of an image of `shape` (height, width) in the coordinates of its crop to `bounds`."""
    if box is None:
        return None
    height, width = shape
    top, bottom, left, right = bounds
    cx, cy, w, h = box
    new_h, new_w = bottom - top, right - left
    return (cx * width - left) / new_w, (cy * height - top) / new_h, w * width / new_w, h * height / new_h


def yolo_to_xyxy(box: Box) -> XYXY:
    cx, cy, w, h = box
    return (
        float(np.clip(cx - w / 2, 0, 1)),
        float(np.clip(cy - h / 2, 0, 1)),
        float(np.clip(cx + w / 2, 0, 1)),
        float(np.clip(cy + h / 2, 0, 1)),
    )


def _pixel_box(box: XYXY, height: int, width: int) -> tuple[int, int, int, int]:
    x0, y0 = int(np.floor(box[0] * width)), int(np.floor(box[1] * height))
    x1, y1 = int(np.ceil(box[2] * width)), int(np.ceil(box[3] * height))
    return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)


def paste_box(target: np.ndarray, target_box: XYXY, source: np.ndarray, source_box: XYXY) -> np.ndarray:
    """Box CutMix: the source's box region resized into the target's box region (a copy)."""
    ty0, ty1, tx0, tx1 = _pixel_box(target_box, *target.shape[:2])
    sy0, sy1, sx0, sx1 = _pixel_box(source_box, *source.shape[:2])
    patch = cv2.resize(source[sy0:sy1, sx0:sx1], (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_LINEAR)
    mixed = target.copy()
    mixed[ty0:ty1, tx0:tx1] = patch.reshape(mixed[ty0:ty1, tx0:tx1].shape)
    return mixed


def random_box(rng: np.random.Generator, area_range: tuple[float, float] = (0.1, 0.4)) -> XYXY:
    """A random rectangle of the given share of the image (CutMix where no lesion box is known)."""
    area = rng.uniform(*area_range)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    w, h = min(np.sqrt(area * aspect), 1.0), min(np.sqrt(area / aspect), 1.0)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return (x0, y0, x0 + w, y0 + h)


def box_area(box: XYXY) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


@dataclass
class AugmentConfig:
    """The training augmentation preset; probabilities of 0 switch a step off."""

    hflip: float = 0.5
    vflip: float = 0.0
    affine: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 15.0
    brightness_contrast: float = 0.5
    blur: float = 0.2
    coarse_dropout: float = 0.3
    clahe: float = 0.0


def build_augment(config: AugmentConfig) -> A.Compose | None:
    """Geometric and photometric augmentation of a preprocessed image.

    None when every step's probability is 0.
    """
    steps = [
        A.HorizontalFlip(p=config.hflip),
        A.VerticalFlip(p=config.vflip),
        A.Affine(
            translate_percent=(-config.shift, config.shift),
            scale=(1 - config.scale, 1 + config.scale),
            rotate=(-config.rotate, config.rotate),
            p=config.affine,
        ),
        A.RandomBrightnessContrast(p=config.brightness_contrast),
        A.GaussianBlur(blur_limit=(3, 5), p=config.blur),
        A.CLAHE(p=config.clahe),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                        hole_width_range=(0.05, 0.15), p=config.coarse_dropout),
    ]
    steps = [step for step in steps if step.p > 0]
    if not steps:
        return None
    return A.Compose(steps)


def build_resize(img_size: int, clahe: bool, keep_aspect: bool = False) -> A.Compose:
    """The deterministic part every image goes through at training and at prediction.

    keep_aspect letterboxes (longer side to img_size, the image centred on black) instead of
    stretching to a square, so a lesion keeps its width-to-height ratio: its orientation is a
    BI-RADS descriptor.
    """
    steps = [A.CLAHE(p=1.0)] if clahe else []
    if keep_aspect:
        steps += [A.LongestMaxSize(max_size=img_size),
                  A.PadIfNeeded(img_size, img_size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)]
    else:
        steps.append(A.Resize(img_size, img_size))
    bbox_params = A.BboxParams(format="albumentations", label_fields=["box_ids"], clip=True)
    return A.Compose(steps, bbox_params=bbox_params)


class Preprocessor:
    """What every image goes through, in training and in prediction: decode, mark removal, CutBlack, CLAHE, resize.

    Marks go first: text on a black border, once inpainted black, no longer keeps CutBlack from
    cutting that border, and the full-resolution image shows thin strokes best.
    """

    def __init__(self, preprocess: Preprocess) -> None:
        if preprocess.whole_view and not preprocess.lesion_crop:
            raise ValueError("whole_view needs lesion_crop: the whole image is the second view of a lesion crop")
        self.preprocess = preprocess
        self.resize = build_resize(preprocess.img_size, preprocess.clahe, preprocess.keep_aspect)

    def __call__(self, path: str | Path, box: Box | None = None) -> tuple[np.ndarray, XYXY | None]:
        """img_size x img_size x channels uint8 and the lesion box (in the crop) as normalised xyxy; raises
        ImageReadError. With whole_view, the whole image, put through the same CutBlack and resize, follows the
        crop's channels."""
        decoded = self._decode(path)
        image, box, _ = self._lesion_crop(path, decoded, box)
        resized, xyxy, _ = self._crop_and_resize(image, box, self._bounds(image))
        if self.preprocess.whole_view:
            whole, _, _ = self._crop_and_resize(decoded, None, self._bounds(decoded))
            resized = np.concatenate([resized, whole], axis=2)
        return resized, xyxy

    def framed(self, path: str | Path) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
        """As __call__ without a box, plus what maps the result back onto the file: the CutBlack bounds and
        the decoded image's (height, width). Only for stretched, uncropped preprocessing."""
        if self.preprocess.keep_aspect or self.preprocess.lesion_crop:
            raise ValueError("only a stretched whole image maps back onto its file (no keep_aspect, no lesion_crop)")
        image = self._decode(path)
        bounds = self._bounds(image)
        resized, _, _ = self._crop_and_resize(image, None, bounds)
        return resized, bounds, image.shape[:2]

    def with_lesion_map(
        self, path: str | Path, box: Box | None, mask_path: Path | None
    ) -> tuple[np.ndarray, XYXY | None, np.ndarray | None]:
        """As __call__, plus the lesion as an img_size x img_size uint8 map of 0 and 1 that follows the
        image's crop: the mask file where there is one, else the filled lesion box, else None (unknown)."""
        if self.preprocess.whole_view:
            raise ValueError("lesion maps follow one view; whole_view has two")
        image = self._decode(path)
        mask = read_mask(mask_path, image.shape[:2]) if mask_path is not None else None
        image, box, mask = self._lesion_crop(path, image, box, mask)
        bounds = self._bounds(image)
        if mask is not None:
            lesion = crop(mask, bounds)
            return self._crop_and_resize(image, box, bounds, lesion)
        resized, xyxy, _ = self._crop_and_resize(image, box, bounds)
        return resized, xyxy, box_map(xyxy, self.preprocess.img_size) if xyxy else None

    def _decode(self, path: str | Path) -> np.ndarray:
        image = read_image(path)
        return marks.remove_marks(image) if self.preprocess.remove_marks else image

    def _lesion_crop(
        self, path: str | Path, image: np.ndarray, box: Box | None, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, Box | None, np.ndarray | None]:
        """With `lesion_crop`, the image (and mask) cropped to the grown lesion box, and the box in the crop."""
        if not self.preprocess.lesion_crop:
            return image, box, mask
        if box is None:
            raise ImageReadError(path, "no lesion box to crop to (lesion_crop needs one: a label, a localiser or a "
                                       "box file)")
        bounds = lesion_bounds(box, image.shape[:2], self.preprocess.lesion_crop)
        return crop(image, bounds), crop_box(box, bounds, image.shape[:2]), None if mask is None else crop(mask, bounds)

    def _bounds(self, image: np.ndarray) -> tuple[int, int, int, int]:
        if self.preprocess.cut_black is None:
            return 0, image.shape[0], 0, image.shape[1]
        return black_border_crop(image, self.preprocess.cut_black)

    def _crop_and_resize(
        self, image: np.ndarray, box: Box | None, bounds: tuple[int, int, int, int], mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, XYXY | None, np.ndarray | None]:
        """The cropped image resized, its box, and `mask` (already cropped) put through the same resize."""
        box = crop_box(box, bounds, image.shape[:2])
        return apply_with_box(self.resize, crop(image, bounds), yolo_to_xyxy(box) if box else None, mask)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A lesion mask file as a uint8 map of 0 and 1; raises ImageReadError unless it is `shape` (height, width)."""
    mask = read_image(path)
    if mask.shape[:2] != shape:
        raise ImageReadError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} px, its image {shape[1]}x{shape[0]}")
    return (mask.max(axis=2) > 127).astype(np.uint8)


def box_map(box: XYXY, size: int) -> np.ndarray:
    """A size x size uint8 map with 1 inside the box: the lesion's extent where no mask was drawn."""
    lesion = np.zeros((size, size), dtype=np.uint8)
    y0, y1, x0, x1 = _pixel_box(box, size, size)
    lesion[y0:y1, x0:x1] = 1
    return lesion


def apply_with_box(
    transform: A.Compose, image: np.ndarray, box: XYXY | None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, XYXY | None, np.ndarray | None]:
    boxes = [box] if box is not None and box_area(box) > 0 else []
    extra = {} if mask is None else {"mask": mask}
    out = transform(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), box_ids=[0] * len(boxes),
                    **extra)
    kept = out["bboxes"]
    return out["image"], (tuple(float(v) for v in kept[0]) if len(kept) else None), out.get("mask")


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HxWxC uint8 → normalised float CHW tensor, (x / 255 - mean) / std as one multiply-add.

    C is 3, or a multiple of 3 (views of one image side by side in channels), each view normalised alike.
    The tensor keeps the image's HWC memory order (a channels-last view); torch handles either.
    """
    views = image.shape[2] // len(mean)
    scale, offset = _scale_and_offset(tuple(mean) * views, tuple(std) * views)
    return torch.from_numpy(image).permute(2, 0, 1).float().mul_(scale).sub_(offset)


@functools.lru_cache(maxsize=8)
def _scale_and_offset(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    std_ = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return 1 / (255 * std_), torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_
