"""The run.py job: a testB folder and checkpoints in, cla_pre.csv / fea_pre.csv (+ run_errors.csv) out."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from project.data.layout import Box, list_images
from project.data.submission import ID_STYLES
from project.descriptors import LexiconModel
from project.lexicon import average_in, describe_outlined
from project.localise import locate_lesions, read_box_file
from project.models.checkpoint import CheckpointError
from project.predict import (
    ERRORS_FILE,
    Member,
    Predictions,
    average_over_lesions,
    load_members,
    predict_folder,
    read_lesions,
    write_errors,
    write_predictions,
    write_probabilities,
)
from project.runtime import resolve_device

# The challenge's testB folders, each predicted by the task of the same name, and their checkpoints' file prefix.
FOLDERS = {"cla": "cls", "fea": "fea"}


class UsageError(Exception):
    """A missing folder or checkpoint: one line to stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Predict a testB folder (testB/cla, testB/fea) into cla_pre.csv and fea_pre.csv. "
        "Exit 0: done; 1: bad images with --strict; 2: missing folder or checkpoint."
    )
    parser.add_argument("--data", type=Path, help="test folder (default ./testB, then ../testB)")
    parser.add_argument("--cls-weights", type=Path, nargs="+",
                        help="classifier checkpoint(s), averaged (default weights/cls*.safetensors)")
    parser.add_argument("--fea-weights", type=Path, nargs="+",
                        help="feature checkpoint(s), averaged (default weights/fea*.safetensors)")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"), help="where the default checkpoints are")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads on CPU (default: the cores left over by the loader workers)")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--localiser", type=Path, metavar="CKPT",
                       help="a checkpoint trained with --lesion-map: locates each lesion for weights trained with "
                            "--lesion-crop")
    boxes.add_argument("--boxes", type=Path, metavar="CSV",
                       help="each lesion's box for weights trained with --lesion-crop, from any detector: img_name, "
                            "x_center, y_center, width, height (fractions of the image); images without a row "
                            "are listed as bad")
    parser.add_argument("--lesions", type=Path, metavar="CSV",
                        help="CSV with image and lesion columns: the images (views) of one lesion get the mean of "
                             "their probabilities, so one lesion gets one grade")
    parser.add_argument("--lexicon", type=Path, metavar="JSON",
                        help="a lexicon model (python -m project.lexicon fit): with --masks, its BI-RADS probabilities "
                             "from each outlined lesion's shape, margin and echo are averaged in")
    parser.add_argument("--masks", type=Path, metavar="DIR",
                        help="lesion outlines for --lexicon: DIR/<image stem>.png, lesion bright; images without one "
                             "keep the network's probabilities")
    parser.add_argument("--id-style", choices=ID_STYLES, default="name", help="img_name column, or id 1..N")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any image could not be read")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write cla_prob.csv (one column per class, then malignancy = P(BI-RADS >= 4)) "
                             "and fea_prob.csv (the probability of each feature), rows as in the label files")
    return parser


def find_test_folder(given: Path | None) -> Path:
    candidates = [given] if given else [Path("testB"), Path("..") / "testB"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise UsageError(f"test folder not found: {' or '.join(str(c) for c in candidates)}")


def checkpoints_for(folder: str, given: Sequence[Path] | None, weights_dir: Path) -> list[Path]:
    prefix = FOLDERS[folder]
    paths = list(given) if given else sorted(weights_dir.glob(f"{prefix}*.safetensors"))
    if not paths:
        raise UsageError(f"no {folder} checkpoint: pass --{prefix}-weights or put {prefix}*.safetensors "
                         f"in {weights_dir}/")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"checkpoint not found: {', '.join(missing)}")
    return paths


def lesion_boxes_for(
    paths: Sequence[Path], members: Sequence[Member], args: argparse.Namespace, device: torch.device,
    given: Mapping[str, Box] | None,
) -> list[Box | None] | None:
    """Each image's lesion box where a member crops to the lesion, from the --boxes file (`given`) or from
    --localiser; else None."""
    if not any(member.preprocess.lesion_crop for member in members):
        return None
    if given is not None:
        return [given.get(path.name) for path in paths]
    if args.localiser is None:
        return None
    localiser = load_members([args.localiser], device)[0]
    return locate_lesions(paths, localiser, device, args.batch_size, args.workers)[0]


def read_given_boxes(path: Path | None) -> dict[str, Box] | None:
    """The --boxes file's boxes by image name, or None without one; UsageError where it cannot be used."""
    if path is None:
        return None
    try:
        return read_box_file(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_lexicon(args: argparse.Namespace) -> LexiconModel | None:
    """The --lexicon model, or None; each of --lexicon and --masks needs the other."""
    if (args.lexicon is None) != (args.masks is None):
        raise ValueError("--lexicon and --masks go together: the model reads the outlines")
    if args.masks is not None and not args.masks.is_dir():
        raise ValueError(f"{args.masks}: the --masks folder does not exist")
    return LexiconModel.load(args.lexicon) if args.lexicon else None


def outlines_averaged_in(
    predictions: Predictions, paths: Sequence[Path], members: Sequence[Member], lexicon: LexiconModel, masks: Path,
) -> Predictions:
    """The classifier's predictions with the lexicon model's averaged in where an outline is given."""
    try:
        lexicon.require_classes(members[0].task.labels, "the classifier's")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    described, problems = describe_outlined([p for p in paths if p.name not in predictions.errors], masks)
    for problem in problems.values():
        print(f"cla: outline not used: {problem}", file=sys.stderr)
    print(f"cla: the lexicon model averaged in for {len(described)} of {len(predictions.names)} images "
          f"(outlines in {masks})")
    return average_in(predictions, described, lexicon)


def run(args: argparse.Namespace) -> int:
    test_dir = find_test_folder(args.data)
    folders = {name: test_dir / name for name in FOLDERS if (test_dir / name).is_dir()}
    if not folders:
        raise UsageError(f"{test_dir}: holds neither cla/ nor fea/")
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.workers))
    weights = {
        name: checkpoints_for(name, getattr(args, f"{FOLDERS[name]}_weights"), args.weights_dir) for name in folders
    }
    try:
        lesion_of = read_lesions(args.lesions) if args.lesions else {}
        lexicon = load_lexicon(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    given_boxes = read_given_boxes(args.boxes)
    errors, total_images, total_seconds = {}, 0, 0.0
    for name, folder in folders.items():
        try:
            members = load_members(weights[name], device)
        except (CheckpointError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if members[0].task.name != name:
            raise UsageError(f"{members[0].path}: a {members[0].task.name} checkpoint given for {name}")
        paths = list_images(folder)
        try:
            boxes = lesion_boxes_for(paths, members, args, device, given_boxes)
            predictions = predict_folder(paths, members, device, args.batch_size, args.workers, args.tta, desc=name,
                                         boxes=boxes)
        except (CheckpointError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if name == "cla" and lexicon is not None:
            predictions = outlines_averaged_in(predictions, paths, members, lexicon, args.masks)
        if lesion_of:
            predictions = average_over_lesions(predictions, lesion_of)
            named = sum(n in lesion_of for n in predictions.names)
            print(f"{name}: {named} of {len(predictions.names)} images named in {args.lesions}, averaged over "
                  f"{len({lesion_of[n] for n in predictions.names if n in lesion_of})} lesions",
                  file=sys.stderr if named == 0 else sys.stdout)
        path = write_predictions(args.out_dir, predictions, members, args.id_style)
        if args.probabilities:
            write_probabilities(args.out_dir, predictions, members, args.id_style)
        errors[name] = predictions.errors
        total_images += len(predictions.names)
        total_seconds += predictions.seconds
        print(f"{name}: {len(predictions.names)} images -> {path} ({len(predictions.errors)} skipped)")
    write_errors(args.out_dir, errors)
    bad = sum(len(v) for v in errors.values())
    rate = total_images / max(total_seconds, 1e-9)
    note = f"; {bad} bad file(s) listed in {args.out_dir / ERRORS_FILE}" if bad else ""
    print(f"run: {total_images} images in {total_seconds:.1f} s ({rate:.1f} images/s){note}")
    return 1 if bad and args.strict else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
