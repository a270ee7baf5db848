"""Torch datasets over layout records: preprocess (or read the RAM cache), lesion-box CutMix, augment, normalise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from project.data.cache import ImageCache, Loaded, fill_cache
from project.data.layout import Sample
from project.data.transforms import (
    XYXY,
    AugmentConfig,
    Preprocess,
    Preprocessor,
    box_area,
    build_augment,
    jitter_box,
    paste_box,
    random_box,
    to_tensor,
)
from project.losses import UNKNOWN_MAP

# The lesion map travels with a target at a quarter of the image side: fine enough for any grid of
# stride 4 or more, and 16 times less to collate than the full map.
LESION_MAP_REDUCTION = 4


class Targets(Protocol):
    """What the dataset asks its task (project.tasks): a sample's target and how two targets mix."""

    name: str

    def target(self, sample: Sample) -> torch.Tensor: ...

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor: ...


@dataclass
class CutMixConfig:
    """Box CutMix: with probability `p` the lesion of another image replaces this image's lesion.

    Where both images have a lesion box the pasted lesion brings its own target. Without boxes a
    random rectangle is pasted and the task mixes the two targets by the pasted share of the area
    (features: the area-weighted mix; classes: the label that covers most of the image).
    """

    p: float = 0.0
    random_area: tuple[float, float] = (0.1, 0.4)


class LesionDataset(Dataset):
    """Images of one split for one task; returns (CHW float tensor, the task's target tensor).

    Every image is preprocessed (decode, CutBlack, CLAHE, resize), CutMixed, then augmented. The
    preprocessed images can be held in RAM (`cache_images`) so that each epoch only mixes and augments.
    With `lesion_maps`, each image's lesion map (its mask, else its filled box) is mixed and augmented
    with it, and the item's target becomes (the task's target, the map at a quarter of the image side,
    UNKNOWN_MAP everywhere where it is not known) for losses.LesionMapLoss.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: Preprocess,
        task: Targets,
        augment: AugmentConfig | None = None,
        cutmix: CutMixConfig | None = None,
        seed: int = 0,
        lesion_maps: bool = False,
        box_jitter: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.task = task
        self.preprocessor = Preprocessor(preprocess)
        self.augment = build_augment(augment) if augment else None
        self.cache: ImageCache | None = None
        self.cutmix = cutmix if cutmix and cutmix.p > 0 else None
        self.lesion_maps = lesion_maps
        self.box_jitter = box_jitter if preprocess.lesion_crop else 0.0
        self.seed = seed
        self.draws = 0
        self.reseed(seed)  # DataLoader workers reseed their copies; without workers this stream is used

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """Give this copy (one per DataLoader worker) its own augmentation stream."""
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def cache_images(self) -> ImageCache:
        """Preprocess every image once into RAM; call before the DataLoader workers start."""
        desc = f"caching {len(self)} {self.task.name} images at {self.preprocess.img_size} px"
        self.cache = fill_cache(len(self), self.preprocess.img_size, self.preprocessed, desc, self.lesion_maps,
                                self.preprocess.channels)
        return self.cache

    @property
    def cacheable(self) -> bool:
        """Whether preprocessing gives the same image every time (a jittered lesion crop does not)."""
        return not self.box_jitter

    def preprocessed(self, index: int) -> Loaded:
        sample = self.samples[index]
        box = sample.box
        if self.box_jitter and box is not None:
            box = jitter_box(box, self._rng(index), self.box_jitter)
        if self.lesion_maps:
            return self.preprocessor.with_lesion_map(sample.path, box, sample.mask)
        return (*self.preprocessor(sample.path, box), None)

    def target(self, index: int) -> torch.Tensor:
        return self.task.target(self.samples[index])

    def load(self, index: int) -> Loaded:
        """Preprocessed uint8 image with its lesion box and map (None if unknown or not asked for),
        from the cache once it is filled."""
        return self.cache[index] if self.cache is not None else self.preprocessed(index)

    def _rng(self, index: int) -> np.random.Generator:
        # Distinct per item, per epoch and per worker, yet reproducible from the seed.
        self.draws += 1
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        return np.random.default_rng((self.seed, index, worker, self.draws, torch.initial_seed() % 2**32))

    def _mix(
        self, index: int, image: np.ndarray, box: XYXY | None, lesion: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
        """The image, its lesion map and target after CutMix; the map is known only where both parts' maps are."""
        rng = self._rng(index)
        target = self.target(index)
        if self.cutmix is None or rng.random() >= self.cutmix.p:
            return image, lesion, target
        other = int(rng.integers(len(self.samples)))
        other_image, other_box, other_lesion = self.load(other)
        both_maps = lesion is not None and other_lesion is not None
        if box is not None and other_box is not None:
            pasted = paste_box(lesion, box, other_lesion, other_box) if both_maps else None
            return paste_box(image, box, other_image, other_box), pasted, self.target(other)
        region = random_box(rng, self.cutmix.random_area)
        pasted = paste_box(lesion, region, other_lesion, region) if both_maps else None
        mixed = paste_box(image, region, other_image, region)
        return mixed, pasted, self.task.mix(target, self.target(other), box_area(region))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        # CutMix before augmentation: the pasted lesion moves and changes with the image around it,
        # and the augmentation never has to track boxes (which would cost it three quarters of its time).
        image, lesion, target = self._mix(index, *self.load(index))
        if self.augment is not None:
            if lesion is not None:
                augmented = self.augment(image=image, mask=lesion)
                image, lesion = augmented["image"], augmented["mask"]
            else:
                image = self.augment(image=image)["image"]
        tensor = to_tensor(image, self.preprocess.mean, self.preprocess.std)
        if not self.lesion_maps:
            return tensor, target
        side = self.preprocess.img_size // LESION_MAP_REDUCTION
        if lesion is None:
            return tensor, (target, torch.full((side, side), UNKNOWN_MAP))
        reduced = cv2.resize(lesion.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
        return tensor, (target, torch.from_numpy(reduced))
