"""The lesion segmenter: trained on lesion masks, saved as a checkpoint, and its outlines' boxes for a box file.

A lesion-crop classifier (`--lesion-crop`) needs each test image's box. The segmenter (OutlineNet,
project/models/outline.py) outlines the lesion; the box bounding its outline goes to a box file that
`run.py --boxes` and `project.report --boxes-from` read. On BUS-BRA its boxes have a mean IoU of about
0.80 with the labelled ones (docs/results.md, "Lesion crops framed by a segmenter's boxes"). It trains on
the shared engine (project.engine), so its run folder is a trainer's: args.yaml, summary.csv, TensorBoard
events, learning curves, best.safetensors (the last epoch) and a resumable state.

    python -m project.segment train --data data/busbra --out runs/segmenter
    python -m project.segment boxes --weights runs/segmenter --images testB/cla --out boxes.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from timm.data import resolve_data_config
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from project.config import save_args
from project.data.imageio import ImageReadError, read_image
from project.data.layout import Box, Sample, list_images, load_split
from project.data.transforms import Preprocess, read_mask, to_tensor
from project.engine import EngineConfig, Trainer
from project.localise import box_iou, peak_region, write_box_file
from project.models.checkpoint import CheckpointConfig, CheckpointError, load_checkpoint
from project.models.outline import OutlineNet
from project.runfolder import ARGS_FILE, BEST_CHECKPOINT
from project.runtime import default_workers, resolve_device, seed_everything
from project.tasks.base import Evaluation

TASK = "outline"


def resized_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image and its lesion mask (0/1 float32), both stretched to size x size."""
    image = read_image(sample.path, max_side=None)
    mask = read_mask(sample.mask, image.shape[:2])
    return (cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32))


class MaskDataset(Dataset):
    """(normalised image 3 x S x S, its lesion mask 1 x S x S) per sample, read once into RAM; with `augment`,
    flipped, shifted, scaled, rotated and re-lit, the mask moving with the image."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, augment: bool, seed: int = 0) -> None:
        self.preprocess = preprocess
        self.pairs = [resized_pair(s, preprocess.img_size)
                      for s in tqdm(samples, desc="reading masks", unit="image", leave=False)]
        self.augment = A.Compose(
            [A.HorizontalFlip(), A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.7),
             A.RandomBrightnessContrast(0.2, 0.2, p=0.5)], seed=seed) if augment else None

    def __len__(self) -> int:
        return len(self.pairs)

    def reseed(self, seed: int) -> None:
        """Give this copy (one per DataLoader worker) its own augmentation stream."""
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pairs[index]
        if self.augment is not None:
            moved = self.augment(image=image, mask=mask)
            image, mask = moved["image"], moved["mask"]
        return to_tensor(image, self.preprocess.mean, self.preprocess.std), torch.from_numpy(mask)[None]


class DiceBCELoss(nn.Module):
    """Pixel-wise binary cross-entropy plus the soft Dice loss of each image (smoothed by 1), in float32."""

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        probs = torch.sigmoid(logits)
        overlap = (probs * masks).sum((1, 2, 3))
        dice = 1 - (2 * overlap + 1) / (probs.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()


def largest_part(probs: np.ndarray) -> np.ndarray:
    """The lesion in a map of lesion probabilities (bool): its largest part at 0.5 or more; where no pixel
    reaches 0.5, the region joined to the most probable one."""
    parts, count = ndimage.label(probs >= 0.5)
    if count == 0:
        return peak_region(probs)
    sizes = ndimage.sum(np.ones_like(probs), parts, range(1, count + 1))
    return parts == 1 + int(np.argmax(sizes))


def bounding_box(region: np.ndarray) -> Box:
    """The YOLO box, normalised to the map's frame, bounding every True pixel; the whole frame for none."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return 0.5, 0.5, 1.0, 1.0
    height, width = region.shape
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return ((left + right) / 2 / width, (top + bottom) / 2 / height, (right - left) / width, (bottom - top) / height)


def judge_outlines(logits: torch.Tensor, masks: torch.Tensor) -> Evaluation:
    """Validation of the outlines, at the training size and without flips: the Dice of the largest part and the
    IoU of its box with the box around the labelled mask (the score), on average and the share of IoU >= 0.5."""
    dice, ious = [], []
    for probs, mask in zip(torch.sigmoid(logits.float())[:, 0].numpy(), masks[:, 0].numpy() > 0.5, strict=True):
        found = largest_part(probs)
        dice.append(2 * (found & mask).sum() / max(found.sum() + mask.sum(), 1))
        ious.append(box_iou(bounding_box(found), bounding_box(mask)))
    ious = np.array(ious)
    return Evaluation(metrics={"score": float(ious.mean()), "box_iou": float(ious.mean()),
                               "box_iou_over_half": float((ious >= 0.5).mean()), "dice": float(np.mean(dice))})


@dataclass
class SegmenterConfig:
    """How the segmenter trains: its trunk (ImageNet-pretrained unless told), image side and optimisation."""

    trunk: str = "tf_efficientnet_lite0"
    img_size: int = 224
    epochs: int = 4
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.4
    seed: int = 0
    pretrained: bool = True
    device: str = "auto"


def train_segmenter(
    train: Sequence[Sample], val: Sequence[Sample], out_dir: Path, config: SegmenterConfig
) -> tuple[OutlineNet, Preprocess]:
    """OutlineNet trained on the masks of `train` by the shared engine into the run folder `out_dir` (summary.csv,
    TensorBoard, learning curves, best.safetensors holding the last epoch); each epoch judged on `val`'s masks
    when there are any. Returns the trained model and its preprocessing."""
    seed_everything(config.seed, deterministic=False)  # the new decoder's initial weights
    model = OutlineNet(config.trunk, pretrained_trunk=config.pretrained)
    data_config = resolve_data_config({}, model=model.trunk)
    preprocess = Preprocess(img_size=config.img_size, mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
                            cut_black=None)
    engine = EngineConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                          weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, select="last",
                          seed=config.seed, workers=default_workers(resolve_device(config.device)),
                          device=config.device)
    checkpoint = CheckpointConfig(task=TASK, model_name="outline_fpn",
                                  model_kwargs={"trunk": config.trunk, "width": model.lateral[0].out_channels},
                                  labels=["lesion"], preprocess=preprocess.to_dict())
    trainer = Trainer(model, DiceBCELoss(), judge_outlines, MaskDataset(train, preprocess, True, config.seed),
                      MaskDataset(val, preprocess, False) if val else None, out_dir, engine, checkpoint)
    trainer.fit()
    return trainer.eval_model.cpu().eval(), preprocess


def load_segmenter(path: Path) -> tuple[OutlineNet, Preprocess]:
    """The segmenter in a checkpoint, or in a run folder's best.safetensors; CheckpointError for any other
    checkpoint."""
    path = Path(path) / BEST_CHECKPOINT if Path(path).is_dir() else Path(path)
    model, config = load_checkpoint(path)
    if config.task != TASK:
        raise CheckpointError(f"{path}: a {config.task} checkpoint, not a lesion segmenter")
    return model, Preprocess.from_dict(config.preprocess)


@torch.inference_mode()
def outline(model: OutlineNet, preprocess: Preprocess, image: np.ndarray) -> np.ndarray:
    """The lesion in `image` (bool, the image's size): the largest part of the flip-averaged map (largest_part)."""
    size = preprocess.img_size
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    x = to_tensor(resized, preprocess.mean, preprocess.std)[None]
    probs = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1))).flip(-1))[0, 0].numpy() / 2
    return largest_part(cv2.resize(probs, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR))


def outline_box(model: OutlineNet, preprocess: Preprocess, image: np.ndarray) -> Box:
    """The YOLO box bounding the segmenter's outline of `image`."""
    return bounding_box(outline(model, preprocess, image))


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
    masked = [s for s in scan.samples if s.mask is not None]
    train = [s for s in masked if args.fold is None or s.fold != args.fold]
    val = [s for s in masked if args.fold is not None and s.fold == args.fold]
    held_out = "" if args.fold is None else f" outside fold {args.fold}"
    if not train:
        print(f"segment: no image with a mask in {args.data}{held_out}", file=sys.stderr)
        return 2
    print(f"segment: {len(train)} images with masks{held_out}, {len(val)} to validate on")
    args.out.mkdir(parents=True, exist_ok=True)
    save_args(args, args.out / ARGS_FILE)
    config = SegmenterConfig(**{field.name: getattr(args, field.name) for field in fields(SegmenterConfig)})
    train_segmenter(train, val, args.out, config)
    print(f"segment: -> {args.out / BEST_CHECKPOINT}")
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
    train.add_argument("--out", type=Path, required=True, help="the run folder to write")
    train.add_argument("--fold", type=int,
                       help="leave this fold number out of training and validate on it (to frame its crops honestly)")
    defaults = SegmenterConfig()
    train.add_argument("--trunk", default=defaults.trunk, help="the timm trunk (ImageNet-pretrained unless told)")
    train.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=defaults.pretrained)
    for name in ("img_size", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "seed", "device"):
        value = getattr(defaults, name)
        train.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    boxes = commands.add_parser("boxes", help="write the box of each image of a folder to a box file")
    boxes.add_argument("--weights", type=Path, required=True, help="a run folder of `train`, or its checkpoint")
    boxes.add_argument("--images", type=Path, required=True, help="a folder of images (e.g. testB/cla)")
    boxes.add_argument("--out", type=Path, required=True, help="the box file to write (CSV)")
    args = parser.parse_args(argv)
    return {"train": _train_command, "boxes": _boxes_command}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
