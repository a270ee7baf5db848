"""What a mammography model sees: prepare's window/ROI settings plus normalisation, from a DICOM or a prepared PNG.

A :class:`MammoPreprocess` is stored in every mammography checkpoint (``preprocess``) so that
prediction repeats training exactly: a decoded DICOM goes through the same function as
``python -m project.mammo.prepare`` (:func:`project.mammo.prepare.process_one`: VOI window,
MONOCHROME1 inversion, breast crop with the chest wall on the left, fit into ``size``, 8 or
16 bits), then :func:`to_tensor` scales it to [0, 1] and normalises it into a one-channel
tensor. Training images prepared at the model's size are therefore the very pixels that
prediction computes from the DICOM; a prepared PNG of another size is resized (INTER_AREA).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from project.mammo.prepare import Settings, process_one
from project.mammo.roi import CropInfo

IMAGENET_GREY_MEAN = 0.449  # mean of ImageNet's channel means, for timm's in_chans=1 weights
IMAGENET_GREY_STD = 0.226
PREPARE_SETTINGS_FILE = "prepare.json"


class PreparedImageError(ValueError):
    """A prepared image that cannot be read as a grey-scale image."""


@dataclass(frozen=True)
class MammoPreprocess:
    """Everything prediction must repeat; `size` is the model input (height, width)."""

    size: tuple[int, int] = (512, 256)
    bits: int = 8
    flip: str = "auto"
    clean: bool = True
    window_index: int = 0
    mean: float = IMAGENET_GREY_MEAN
    std: float = IMAGENET_GREY_STD
    aggregate: str = "mean"  # how a breast's image probabilities are combined

    def settings(self) -> Settings:
        """The matching ``project.mammo.prepare`` settings."""
        return Settings(tuple(self.size), self.bits, self.flip, self.clean, self.window_index)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MammoPreprocess:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"not a mammography preprocess: unknown key(s) {unknown}")
        values = {k: v for k, v in raw.items() if k in known}
        if "size" in values:
            values["size"] = tuple(int(v) for v in values["size"])
        return cls(**values)

    @classmethod
    def from_prepared(cls, folder: str | os.PathLike, **overrides: Any) -> MammoPreprocess:
        """The settings a prepared folder was written with (its ``prepare.json``), then `overrides`."""
        path = Path(folder) / PREPARE_SETTINGS_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the preparation settings ({exc})") from None
        return cls.from_dict({**raw, **overrides})


def dicom_image(result: Any, pre: MammoPreprocess, laterality: str) -> tuple[np.ndarray, CropInfo]:
    """A decoded :class:`~project.mammo.dicom.DicomResult` -> the prepared image (as prepare writes it)."""
    return process_one(result, pre.settings(), laterality)


def read_prepared(path: str | os.PathLike, pre: MammoPreprocess) -> np.ndarray:
    """A prepared 8- or 16-bit grey PNG at the model's size."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PreparedImageError(f"{path}: missing or not a readable image")
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise PreparedImageError(f"{path}: expected a grey 8- or 16-bit image, got {image.dtype} {image.shape}")
    height, width = pre.size
    if image.shape != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def to_tensor(image: np.ndarray, pre: MammoPreprocess) -> torch.Tensor:
    """HxW uint8/uint16 -> normalised float [1, H, W]: (x / max - mean) / std."""
    peak = 255.0 if image.dtype == np.uint8 else 65535.0
    tensor = torch.from_numpy(image.astype(np.float32, copy=False)).unsqueeze(0)
    return tensor.mul_(1.0 / (peak * pre.std)).sub_(pre.mean / pre.std)


def map_point(info: CropInfo, x: float, y: float) -> tuple[float, float]:
    """A point of the source image (pixel-centre coordinates) in the cropped, flipped and resized output."""
    x0, y0, x1, _ = info.box
    cx = x - x0
    if info.flipped:
        cx = (x1 - x0 - 1) - cx
    return (cx + 0.5) * info.scale - 0.5 + info.offset[0], (y - y0 + 0.5) * info.scale - 0.5 + info.offset[1]
