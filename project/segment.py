"""The lesion segmenter: trained on lesion masks, saved as a checkpoint, and its outlines' boxes for a box file.

A lesion-crop classifier (`--lesion-crop`) needs each test image's box. The segmenter (OutlineNet,
project/models/outline.py) outlines the lesion; the box bounding its outline goes to a box file that
`run.py --boxes` and `project.report --boxes-from` read. On BUS-BRA its boxes have a mean IoU of about
0.80 with the labelled ones (docs/results.md, "Lesion crops framed by a segmenter's boxes").

    python -m project.segment train --data data/busbra --out segmenter.safetensors
    python -m project.segment boxes --weights segmenter.safetensors --images testB/cla --out boxes.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from timm.data import resolve_data_config
from tqdm import tqdm

from project.data.imageio import ImageReadError, read_image
from project.data.layout import Box, Sample, list_images, load_split
from project.data.transforms import Preprocess, read_mask
from project.localise import box_from_map, peak_region, write_box_file
from project.models.checkpoint import CheckpointConfig, CheckpointError, load_checkpoint, save_checkpoint
from project.models.outline import OutlineNet

TASK = "outline"


def resized_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image and its lesion mask (0/1 float32), both stretched to size x size."""
    image = read_image(sample.path, max_side=None)
    mask = read_mask(sample.mask, image.shape[:2])
    return (cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32))


def _normalised(images: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float, normalised as the trunk's weights expect."""
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


def _dice_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * masks).sum((1, 2, 3)) + 1) / (probs.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()


def train_segmenter(
    samples: Sequence[Sample], trunk: str = "tf_efficientnet_lite0", img_size: int = 224, epochs: int = 4,
    batch_size: int = 16, lr: float = 1e-3, seed: int = 0, pretrained: bool = True,
) -> tuple[OutlineNet, Preprocess]:
    """OutlineNet trained with BCE + Dice on the masks of `samples` (AdamW, one-cycle), and its preprocessing."""
    torch.manual_seed(seed)
    model = OutlineNet(trunk, pretrained_trunk=pretrained)
    config = resolve_data_config({}, model=model.trunk)
    preprocess = Preprocess(img_size=img_size, mean=tuple(config["mean"]), std=tuple(config["std"]), cut_black=None)
    cached = [resized_pair(s, img_size) for s in tqdm(samples, desc="caching masks", unit="image", leave=False)]
    augment = A.Compose([A.HorizontalFlip(), A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08),
                                                      rotate=(-10, 10), p=0.7),
                         A.RandomBrightnessContrast(0.2, 0.2, p=0.5)], seed=seed)
    steps = max(1, len(cached) // batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.train()
        order, total, started = rng.permutation(len(cached)), 0.0, time.perf_counter()
        for step in range(steps):
            batch = [augment(image=cached[i][0], mask=cached[i][1])
                     for i in order[step * batch_size:(step + 1) * batch_size]]
            images = _normalised(np.stack([b["image"] for b in batch]), preprocess)
            masks = torch.from_numpy(np.stack([b["mask"] for b in batch])).unsqueeze(1)
            loss = _dice_bce(model(images), masks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{epochs}: loss {total / steps:.4f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return model.eval(), preprocess


def save_segmenter(path: Path, model: OutlineNet, preprocess: Preprocess, trunk: str) -> None:
    config = CheckpointConfig(task=TASK, model_name="outline_fpn",
                              model_kwargs={"trunk": trunk, "width": model.lateral[0].out_channels},
                              labels=["lesion"], preprocess=preprocess.to_dict())
    save_checkpoint(path, model, config)


def load_segmenter(path: Path) -> tuple[OutlineNet, Preprocess]:
    """The segmenter of a checkpoint written by save_segmenter; CheckpointError for any other checkpoint."""
    model, config = load_checkpoint(path)
    if config.task != TASK:
        raise CheckpointError(f"{path}: a {config.task} checkpoint, not a lesion segmenter")
    return model, Preprocess.from_dict(config.preprocess)


@torch.inference_mode()
def outline(model: OutlineNet, preprocess: Preprocess, image: np.ndarray) -> np.ndarray:
    """The lesion in `image` (bool, the image's size): the largest part at probability 0.5 or more, flip TTA;
    where no pixel reaches 0.5, the region joined to the most probable one."""
    size = preprocess.img_size
    x = _normalised(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)[None], preprocess)
    probs = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1))).flip(-1))[0, 0].numpy() / 2
    probs = cv2.resize(probs, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    parts, count = ndimage.label(probs >= 0.5)
    if count == 0:
        return peak_region(probs)
    sizes = ndimage.sum(np.ones_like(probs), parts, range(1, count + 1))
    return parts == 1 + int(np.argmax(sizes))


def outline_box(model: OutlineNet, preprocess: Preprocess, image: np.ndarray) -> Box:
    """The YOLO box bounding the segmenter's outline of `image`."""
    return box_from_map(outline(model, preprocess, image).astype(np.float32))


def boxes_for_folder(weights: Path, images: Path) -> tuple[dict[str, Box], dict[str, str]]:
    """The box of each image in `images` (file name -> box), and why the unreadable ones were skipped."""
    model, preprocess = load_segmenter(weights)
    boxes, errors = {}, {}
    for path in tqdm(list_images(images), desc="outlining", unit="image", leave=False):
        try:
            boxes[path.name] = outline_box(model, preprocess, read_image(path, max_side=None))
        except ImageReadError as exc:
            errors[path.name] = str(exc)
    return boxes, errors


def _train_command(args: argparse.Namespace) -> int:
    scan, _ = load_split(args.data)
    samples = [s for s in scan.samples if s.mask is not None and (args.fold is None or s.fold != args.fold)]
    held_out = "" if args.fold is None else f" outside fold {args.fold}"
    if not samples:
        print(f"segment: no image with a mask in {args.data}{held_out}", file=sys.stderr)
        return 2
    print(f"segment: {len(samples)} images with masks{held_out}")
    model, preprocess = train_segmenter(samples, args.model, args.img_size, args.epochs, args.batch_size, args.lr,
                                        args.seed)
    save_segmenter(args.out, model, preprocess, args.model)
    print(f"segment: -> {args.out}")
    return 0


def _boxes_command(args: argparse.Namespace) -> int:
    if not args.images.is_dir():
        print(f"segment: {args.images}: no such folder of images", file=sys.stderr)
        return 2
    try:
        boxes, errors = boxes_for_folder(args.weights, args.images)
    except CheckpointError as exc:
        print(f"segment: {exc}", file=sys.stderr)
        return 2
    write_box_file(args.out, boxes)
    for reason in errors.values():
        print(f"segment: skipped {reason}", file=sys.stderr)
    print(f"segment: {len(boxes)} boxes -> {args.out} ({len(errors)} images skipped)")
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train on a dataset's lesion masks (masks/ beside images/)")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.safetensors)")
    train.add_argument("--fold", type=int, help="leave this fold number out (to frame that fold's crops honestly)")
    train.add_argument("--model", default="tf_efficientnet_lite0", help="the ImageNet-pretrained timm trunk")
    train.add_argument("--img-size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_train_command)
    boxes = commands.add_parser("boxes", help="write the box of each image of a folder to a box file")
    boxes.add_argument("--weights", type=Path, required=True)
    boxes.add_argument("--images", type=Path, required=True, help="a folder of images (e.g. testB/cla)")
    boxes.add_argument("--out", type=Path, required=True, help="the box file to write (CSV)")
    boxes.set_defaults(run=_boxes_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
