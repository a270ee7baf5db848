"""RAM cache of the deterministic part of the data pipeline: images decoded, border-cut and resized once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from project.data.imageio import ImageReadError
from project.data.transforms import XYXY

MEMINFO = Path("/proc/meminfo")
# The cache may take at most this share of the memory available when it is filled.
MAX_MEMORY_SHARE = 0.5


class UnreadableImages(Exception):
    """Images that failed while the cache was filled; the message lists every one of them."""

    def __init__(self, errors: list[ImageReadError]) -> None:
        lines = "\n  ".join(str(error) for error in errors)
        super().__init__(f"{len(errors)} image(s) cannot be read:\n  {lines}")
        self.errors = errors


Loaded = tuple[np.ndarray, XYXY | None, np.ndarray | None]
"""A preprocessed uint8 image, its lesion box and its lesion map (None: unknown or not asked for)."""


class ImageCache:
    """Equal-sized uint8 images in one array, with each image's lesion box and, if asked for, lesion map.

    One array rather than a list of arrays: DataLoader workers forked after the fill then share
    its memory pages (copy-on-write, never written), where a list of arrays would be copied
    page by page as the workers touch each object's reference count.
    """

    def __init__(
        self, images: np.ndarray, boxes: list[XYXY | None], seconds: float,
        lesion_maps: np.ndarray | None = None, known_maps: np.ndarray | None = None,
    ) -> None:
        self.images = images
        self.boxes = boxes
        self.seconds = seconds
        self.lesion_maps, self.known_maps = lesion_maps, known_maps

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> Loaded:
        # Copies, so an in-place augmentation can never alter the cache.
        lesion = None
        if self.lesion_maps is not None and self.known_maps[index]:
            lesion = self.lesion_maps[index].copy()
        return self.images[index].copy(), self.boxes[index], lesion


def cache_bytes(count: int, img_size: int, lesion_maps: bool = False, channels: int = 3) -> int:
    return count * img_size * img_size * (channels + lesion_maps)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable); None where unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fits_in_memory(needed: int) -> tuple[bool, str]:
    """Whether a cache of `needed` bytes stays within MAX_MEMORY_SHARE of the available memory, and why."""
    available = available_memory()
    if available is None:
        return True, f"{needed / 2**20:.0f} MiB (available memory unknown)"
    verdict = needed <= MAX_MEMORY_SHARE * available
    return verdict, f"{needed / 2**20:.0f} MiB of {available / 2**30:.1f} GiB available"


def fill_cache(
    count: int, img_size: int, load: Callable[[int], Loaded], desc: str = "caching images", lesion_maps: bool = False,
    channels: int = 3,
) -> ImageCache:
    """Run `load` (index → HxWxchannels uint8 of side img_size, box, lesion map) on every index, in threads.

    The lesion maps are kept only when `lesion_maps` is set. Decoding and resizing release the GIL,
    so threads use all cores. Every unreadable image is collected first and then reported together
    (UnreadableImages).
    """
    started = time.perf_counter()
    images = np.empty((count, img_size, img_size, channels), dtype=np.uint8)
    maps = np.zeros((count, img_size, img_size), dtype=np.uint8) if lesion_maps else None
    known = np.zeros(count, dtype=bool)
    boxes: list[XYXY | None] = [None] * count
    errors: list[ImageReadError] = []

    def store(index: int) -> None:
        try:
            images[index], boxes[index], lesion = load(index)
        except ImageReadError as error:
            errors.append(error)
            return
        if maps is not None and lesion is not None:
            maps[index], known[index] = lesion, True

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in tqdm(pool.map(store, range(count)), total=count, desc=desc, leave=False):
            pass
    if errors:
        raise UnreadableImages(sorted(errors, key=lambda error: str(error.path)))
    return ImageCache(images, boxes, time.perf_counter() - started, maps, known if lesion_maps else None)
