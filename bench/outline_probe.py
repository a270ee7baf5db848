"""Probe: can a segmenter's outlines stand in for the labelled ones under the lexicon model? One fold, one table.

Trains the lesion segmenter of project.segment (an FPN on a pretrained timm trunk) on the lesion
masks of every fold but FOLD (its run folder judges FOLD's masks each epoch; kept with --run-dir),
outlines FOLD's lesions with it (flip TTA, the largest part above 0.5), and prints how the lexicon
model (project.lexicon) grades them: fitted on the labelled outlines of the other folds, and fitted
on the predicted outlines themselves (patient-level halves of FOLD, five splits). With --report, the
averages with a classifier's predictions on FOLD. With --boxes-out, the box bounding each outline goes
to a box file, for a lesion-crop classifier (`project.report --boxes-from`, `run.py --boxes`), and the
boxes' IoU with the labelled ones is printed.

    python bench/outline_probe.py --data data/busbra --fold 1 --epochs 6 --report reports/busbra_e5_tta_les/fold0
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from project.data.imageio import read_image
from project.data.layout import load_split
from project.data.transforms import read_mask
from project.descriptors import LexiconModel, describe_labelled, descriptor_vector
from project.localise import box_from_map, box_iou, write_box_file
from project.segment import SegmenterConfig, outline, train_segmenter


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
    parser.add_argument("--run-dir", type=Path,
                        help="keep the segmenter's run folder here (default: a temporary folder, removed after)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="a classifier report's fold folder (predictions.csv) on FOLD")
    parser.add_argument("--boxes-out", type=Path, metavar="CSV", help="write the box of each outline of FOLD here")
    args = parser.parse_args(argv)
    scan, config = load_split(args.data)
    samples = [s for s in scan.samples if s.label is not None and s.mask is not None and s.fold is not None]
    held = [s for s in samples if s.fold == args.fold]
    others = [s for s in samples if s.fold != args.fold]
    labelled, _ = describe_labelled(samples)
    lexicon = LexiconModel.fit(np.stack([labelled[s.path.name] for s in others]),
                               np.array([s.label for s in others]), config.classes)
    settings = SegmenterConfig(trunk=args.model, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        model, preprocess = train_segmenter(others, held, args.run_dir or Path(scratch), settings)
    labels = np.array([s.label for s in held])
    groups = np.array([s.group or s.path.name for s in held])
    predicted, ious, boxes = [], [], {}
    for sample in held:
        image = read_image(sample.path, max_side=None)
        found = outline(model, preprocess, image)
        truth = read_mask(sample.mask, found.shape).astype(bool)
        ious.append((found & truth).sum() / max((found | truth).sum(), 1))
        predicted.append(descriptor_vector(image, found))
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
