"""Torch datasets over layout records: decode, CutBlack, augment, lesion-box CutMix, normalise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from project.data.imageio import read_image
from project.data.layout import Sample
from project.data.transforms import (
    XYXY,
    AugmentConfig,
    Preprocess,
    apply_with_box,
    box_area,
    build_augment,
    build_resize,
    cut_black,
    paste_box,
    random_box,
    to_tensor,
    yolo_to_xyxy,
)


def class_target(sample: Sample) -> torch.Tensor:
    return torch.tensor(sample.label, dtype=torch.long)


def feature_target(sample: Sample) -> torch.Tensor:
    """One float per task; NaN where the label is unknown."""
    values = [np.nan if v is None else float(v) for v in sample.features.values()]
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class CutMixConfig:
    """Box CutMix: with probability `p` the lesion of another image replaces this image's lesion.

    Where both images have a lesion box the pasted lesion brings its own label (classes and
    features alike). Without boxes a random rectangle is pasted and, for features, the
    label is the area-weighted mix of the two (NaN when either is unknown); a classification
    sample keeps the label that covers most of the image.
    """

    p: float = 0.0
    random_area: tuple[float, float] = (0.1, 0.4)


class LesionDataset(Dataset):
    """Images of one split for either task; returns (CHW float tensor, target tensor)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: Preprocess,
        kind: str,
        augment: AugmentConfig | None = None,
        cutmix: CutMixConfig | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in ("cla", "fea"):
            raise ValueError(f"kind must be 'cla' or 'fea', got {kind!r}")
        self.samples = list(samples)
        self.preprocess = preprocess
        self.kind = kind
        self.transform = build_augment(augment, preprocess.img_size) if augment else build_resize(
            preprocess.img_size, preprocess.clahe
        )
        self.cutmix = cutmix if cutmix and cutmix.p > 0 else None
        self.seed = seed
        self.draws = 0

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """Give this copy (one per DataLoader worker) its own augmentation stream."""
        self.transform.set_random_seed(seed)

    def target(self, index: int) -> torch.Tensor:
        sample = self.samples[index]
        return class_target(sample) if self.kind == "cla" else feature_target(sample)

    def load(self, index: int) -> tuple[np.ndarray, XYXY | None]:
        """Decoded, border-cut and transformed uint8 image with its lesion box (if any)."""
        sample = self.samples[index]
        image, box = read_image(sample.path), sample.box
        if self.preprocess.cut_black is not None:
            image, box = cut_black(image, box, self.preprocess.cut_black)
        return apply_with_box(self.transform, image, yolo_to_xyxy(box) if box else None)

    def _rng(self, index: int) -> np.random.Generator:
        # Distinct per item, per epoch and per worker, yet reproducible from the seed.
        self.draws += 1
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        return np.random.default_rng((self.seed, index, worker, self.draws, torch.initial_seed() % 2**32))

    def _mix(self, index: int, image: np.ndarray, box: XYXY | None) -> tuple[np.ndarray, torch.Tensor]:
        rng = self._rng(index)
        target = self.target(index)
        if self.cutmix is None or rng.random() >= self.cutmix.p:
            return image, target
        other = int(rng.integers(len(self.samples)))
        other_image, other_box = self.load(other)
        other_target = self.target(other)
        if box is not None and other_box is not None:
            return paste_box(image, box, other_image, other_box), other_target
        region = random_box(rng, self.cutmix.random_area)
        mixed = paste_box(image, region, other_image, region)
        share = box_area(region)
        if self.kind == "cla":
            return mixed, other_target if share > 0.5 else target
        return mixed, (1 - share) * target + share * other_target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, box = self.load(index)
        image, target = self._mix(index, image, box)
        return to_tensor(image, self.preprocess.mean, self.preprocess.std), target
