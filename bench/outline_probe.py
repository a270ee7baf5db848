"""Probe: can a segmenter's outlines stand in for the labelled ones under the lexicon model? One fold, one table.

Trains a small FPN-style segmenter (lateral 1x1 convolutions on a pretrained timm trunk's levels,
summed top-down, as in T.-Y. Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017)
on the lesion masks of every fold but FOLD, outlines FOLD's lesions with it (flip TTA, the largest
part above 0.5), and prints how the lexicon model (project.lexicon) grades them: fitted on the
labelled outlines of the other folds, and fitted on the predicted outlines themselves (patient-level
halves of FOLD, five splits). With --report, the averages with a classifier's predictions on FOLD. With
--boxes-out, the box bounding each outline goes to a box file, for a lesion-crop classifier
(`project.report --boxes-from`, `run.py --boxes`), and the boxes' IoU with the labelled ones is printed.

    python bench/outline_probe.py --data data/busbra --fold 1 --epochs 6 --report reports/busbra_e5_tta_les/fold0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import f1_score
from timm.data import resolve_data_config
from torch import nn

from project.data.imageio import read_image
from project.data.layout import Sample, load_split
from project.data.transforms import read_mask
from project.descriptors import LexiconModel, describe_labelled, descriptor_vector
from project.localise import box_from_map, box_iou, peak_region, write_box_file
from project.models.factory import create_model


class OutlineNet(nn.Module):
    """A lesion-probability logit per pixel from a timm trunk's stride-4 to stride-32 features."""

    def __init__(self, trunk: str, width: int = 64) -> None:
        super().__init__()
        self.trunk = create_model(trunk, num_classes=1, pretrained=True)
        levels = self.trunk.feature_info[1:]
        self.levels = [i + 1 for i in range(len(levels))]
        self.lateral = nn.ModuleList(nn.Conv2d(level["num_chs"], width, 1) for level in levels)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk.forward_intermediates(x, indices=self.levels, intermediates_only=True)
        merged = self.lateral[-1](features[-1])
        for lateral, finer in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            merged = F.interpolate(merged, size=finer.shape[-2:], mode="bilinear", align_corners=False) + lateral(finer)
        return F.interpolate(self.head(merged), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _resized(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(sample.path, max_side=None)
    mask = read_mask(sample.mask, image.shape[:2])
    return (cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32))


def train_outliner(train: Sequence[Sample], args: argparse.Namespace) -> tuple[OutlineNet, tuple, tuple]:
    model = OutlineNet(args.model)
    config = resolve_data_config({}, model=model.trunk)
    mean, std = torch.tensor(config["mean"]).view(3, 1, 1), torch.tensor(config["std"]).view(3, 1, 1)
    cached = [_resized(s, args.img_size) for s in train]
    augment = A.Compose([A.HorizontalFlip(), A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08),
                                                      rotate=(-10, 10), p=0.7),
                         A.RandomBrightnessContrast(0.2, 0.2, p=0.5)], seed=args.seed)
    steps = max(1, len(cached) // args.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=args.epochs * steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order, total, started = rng.permutation(len(cached)), 0.0, time.perf_counter()
        for step in range(steps):
            batch = [augment(image=cached[i][0], mask=cached[i][1])
                     for i in order[step * args.batch_size:(step + 1) * args.batch_size]]
            images = torch.stack([(torch.from_numpy(b["image"]).permute(2, 0, 1) / 255 - mean) / std for b in batch])
            masks = torch.stack([torch.from_numpy(b["mask"]) for b in batch]).unsqueeze(1)
            logits = model(images)
            probs = torch.sigmoid(logits)
            dice = 1 - (2 * (probs * masks).sum((1, 2, 3)) + 1) / (probs.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        print(f"epoch {epoch}: loss {total / steps:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval(), mean, std


@torch.inference_mode()
def outline(model: OutlineNet, mean: torch.Tensor, std: torch.Tensor, sample: Sample, size: int) -> np.ndarray:
    """The predicted lesion (bool, the file's size): the largest part at probability 0.5 or more."""
    image = read_image(sample.path, max_side=None)
    x = ((torch.from_numpy(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)).permute(2, 0, 1) / 255
          - mean) / std)[None]
    probs = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1))).flip(-1))[0, 0].numpy() / 2
    probs = cv2.resize(probs, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    parts, count = ndimage.label(probs >= 0.5)
    if count == 0:
        return peak_region(probs)
    sizes = ndimage.sum(np.ones_like(probs), parts, range(1, count + 1))
    return parts == 1 + int(np.argmax(sizes))


def _macro_f1(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(f1_score(labels, probs.argmax(axis=1), average="macro"))


def _fitted_within(vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray, classes: list[str]) -> str:
    """Mean ± sd macro-F1 over five random patient-level halvings of the fold, each half scored by the other."""
    scores = []
    for seed in range(5):
        patients = np.unique(groups)
        np.random.default_rng(seed).shuffle(patients)
        first = np.isin(groups, patients[: len(patients) // 2])
        for fit, score in ((first, ~first), (~first, first)):
            model = LexiconModel.fit(vectors[fit], labels[fit], classes)
            scores.append(_macro_f1(labels[score], model.predict_proba(vectors[score])))
    return f"{np.mean(scores):.3f} ± {np.std(scores):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset with masks/ folders and a fold column")
    parser.add_argument("--fold", type=int, required=True, help="the fold number to outline (the others train)")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="a classifier report's fold folder (predictions.csv) on FOLD")
    parser.add_argument("--boxes-out", type=Path, metavar="CSV", help="write the box of each outline of FOLD here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    scan, config = load_split(args.data)
    samples = [s for s in scan.samples if s.label is not None and s.mask is not None and s.fold is not None]
    held = [s for s in samples if s.fold == args.fold]
    others = [s for s in samples if s.fold != args.fold]
    labelled, _ = describe_labelled(samples)
    lexicon = LexiconModel.fit(np.stack([labelled[s.path.name] for s in others]),
                               np.array([s.label for s in others]), config.classes)
    model, mean, std = train_outliner(others, args)
    labels = np.array([s.label for s in held])
    groups = np.array([s.group or s.path.name for s in held])
    predicted, ious, boxes = [], [], {}
    for sample in held:
        found = outline(model, mean, std, sample, args.img_size)
        truth = read_mask(sample.mask, found.shape).astype(bool)
        ious.append((found & truth).sum() / max((found | truth).sum(), 1))
        predicted.append(descriptor_vector(read_image(sample.path, max_side=None), found))
        boxes[sample.path.name] = box_from_map(found.astype(np.float32))
    if args.boxes_out is not None:
        write_box_file(args.boxes_out, boxes)
        box_ious = np.array([box_iou(boxes[s.path.name], s.box) for s in held if s.box is not None])
        print(f"boxes -> {args.boxes_out}: IoU with the labelled boxes {box_ious.mean():.3f} on average, "
              f"median {np.median(box_ious):.3f}, >= 0.5 for {(box_ious >= 0.5).mean():.3f} of {len(box_ious)}")
    rows = {"labelled outlines": (np.stack([labelled[s.path.name] for s in held]), 1.0),
            "segmenter's outlines": (np.stack(predicted), float(np.mean(ious)))}
    network = None
    if args.report is not None:
        table = pd.read_csv(args.report / "predictions.csv").set_index("img_name")
        network = table.loc[[s.path.name for s in held], [f"prob_{k}" for k in range(len(config.classes))]].values
        print(f"the report alone: macro-F1 {_macro_f1(labels, network):.3f}")
    print(f"fold {args.fold}, {len(held)} images; segmenter {args.model} at {args.img_size} px, {args.epochs} epochs")
    print("| outlines | mean IoU with the labelled mask | lexicon fitted on the other folds' labelled outlines "
          "| fitted on this fold's own outlines | averaged with the report |")
    print("|---|---:|---:|---:|---:|")
    for name, (vectors, iou) in rows.items():
        probs = lexicon.predict_proba(vectors)
        with_report = f"{_macro_f1(labels, (probs + network) / 2):.3f}" if network is not None else "—"
        print(f"| {name} | {iou:.3f} | {_macro_f1(labels, probs):.3f} | "
              f"{_fitted_within(vectors, labels, groups, config.classes)} | {with_report} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
