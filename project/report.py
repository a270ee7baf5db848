"""Validation report of a classification run (metrics, plots, Grad-CAM, HTML) and cross-validation tables."""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from project.data.classes import MALIGNANT_FROM, first_malignant_class
from project.data.layout import Box, LabelError, Sample, labelled_box, load_config
from project.data.submission import write_cla_csv
from project.evaluate import evaluate_folders
from project.fileio import atomic_write_csv, atomic_write_text, numeric_order_key, read_csv_rows
from project.localise import box_iou, locate_lesions, read_box_file
from project.models.checkpoint import CheckpointError
from project.models.lesion_map import WithLesionMap
from project.plots import plot_confusion_matrices, plot_learning_curves, save_figure
from project.predict import (
    ImageFolderDataset,
    Member,
    Predictions,
    average_over_lesions,
    lesion_keys,
    load_members,
    predict_folder,
)
from project.runfolder import (
    BEST_CHECKPOINT,
    SUMMARY_FILE,
    VALIDATION_FILE,
    RunFolderError,
    load_run_args,
    read_validation_split,
)
from project.runtime import resolve_device
from project.tasks import AuxiliaryColumn, ClassificationTask

CALIBRATION_BINS = 10
CV_COLUMNS = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "kappa": "quadratic kappa",
    "auc_birads": "AUC malignancy vs BI-RADS≥4",
    "auc_biopsy": "AUC malignancy vs biopsy",
    "auc_biopsy_head": "AUC pathology head vs biopsy",
}
PLOTS = {
    "learning_curves.png": "Learning curves",
    "confusion_matrix.png": "Confusion matrix (rows: truth, columns: prediction)",
    "per_class.png": "Per-class precision, recall and F1",
    "roc_malignancy.png": "ROC for malignancy from P(BI-RADS ≥ 4)",
    "reliability.png": "Reliability diagram of the top-class confidence",
    "gradcam_right.png": "Grad-CAM: most confident right predictions",
    "gradcam_wrong.png": "Grad-CAM: most confident wrong predictions",
}


class ReportError(ValueError):
    """A run folder or dataset the report cannot use; the message names the file."""


@dataclass
class Validation:
    """The run's validation images with the checkpoint's predictions for them."""

    samples: list[Sample]  # readable images only, numeric order of the file name
    probs: np.ndarray  # [N, K], the mean over the members
    classes: list[str]
    members: list[Member]  # the run's checkpoint first; Grad-CAM reads it
    skipped: dict[str, str]
    split: str
    data: Path
    aux: np.ndarray | None = None  # an auxiliary head's probabilities, the mean over the members that have it
    aux_head: AuxiliaryColumn = field(default_factory=AuxiliaryColumn)
    lesions: int | None = None  # with a lesion column: how many lesions the images show
    boxes: list[Box | None] | None = None  # the lesion boxes lesion-crop members cropped to, one per sample
    localisation: dict | None = None  # a localiser's boxes against the labelled ones


def split_description(args: argparse.Namespace, val: Sequence[Sample]) -> str:
    """Which images validate, in words, from the run's arguments and its val.csv."""
    if not args.folds:
        return f"hold-out {args.val_fraction:.0%} (seed {args.seed})"
    official = {s.fold for s in val}
    if len(official) == 1 and None not in official:
        return f"fold {args.fold} of {args.folds} (official fold {val[0].fold})"
    return f"fold {args.fold} of {args.folds} (seed {args.seed})"


def _classifiers(runs: Sequence[Path], device: torch.device) -> list[Member]:
    """RUN/best.safetensors of each run: classification checkpoints with one label list (an ensemble)."""
    checkpoints = [Path(run) / BEST_CHECKPOINT for run in runs]
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise ReportError(f"{checkpoint}: not found; has the run finished an epoch?")
    try:
        members = load_members(checkpoints, device)
    except ValueError as exc:  # the members' tasks or labels differ
        raise ReportError(str(exc)) from None
    if not isinstance(members[0].task, ClassificationTask):
        raise ReportError(f"{checkpoints[0]}: a {members[0].task.name} checkpoint; "
                          "the report covers classification runs")
    return members


def _same_validation(run: Path, other: Path, task: ClassificationTask, root: Path, names: set[str]) -> None:
    """Raise unless OTHER/val.csv lists the same images as RUN/val.csv (an ensemble must share its fold)."""
    theirs = {s.path.name for s in read_validation_split(other / VALIDATION_FILE, task, root)}
    if theirs != names:
        raise ReportError(f"{other / VALIDATION_FILE}: {len(theirs ^ names)} image(s) differ from "
                          f"{run / VALIDATION_FILE}; ensemble members must be trained on the same fold")


def lesions_from_metadata(samples: Sequence[Sample], column: str, root: Path) -> dict[str, str]:
    """{image name: lesion id} from a metadata column that val.csv kept, or from the dataset's group column."""
    group_column = load_config(root).group_column or "group"
    if column in (group_column, "group"):
        return {s.path.name: s.group for s in samples if s.group}
    if not any(column in s.extra for s in samples):
        known = sorted({key for s in samples for key in s.extra} | {group_column})
        raise ReportError(f"no metadata column {column!r} in the run's val.csv (columns: {known}); a run trained "
                          "before the column existed keeps the columns of its time")
    return {s.path.name: s.extra[column] for s in samples if s.extra.get(column, "").strip()}


def localisation_figures(found: Sequence[Box | None], labelled: Sequence[Box | None]) -> dict:
    """How well found boxes match the labelled ones: IoU mean, median and the share at 0.5 or more."""
    ious = np.array([box_iou(a, b) for a, b in zip(found, labelled) if a is not None and b is not None])
    if not len(ious):
        return {"images": 0, "mean_iou": None, "median_iou": None, "iou_at_least_0_5": None}
    return {"images": len(ious), "mean_iou": float(ious.mean()), "median_iou": float(np.median(ious)),
            "iou_at_least_0_5": float((ious >= 0.5).mean())}


def lesion_boxes(
    run: Path, val: Sequence[Sample], task: ClassificationTask, root: Path, localiser_from: Path | None,
    label_boxes: bool, device: torch.device, batch_size: int, workers: int, box_files: Sequence[Path] = (),
) -> tuple[list[Box | None] | None, dict | None]:
    """The boxes lesion-crop members crop to (None: none asked for) and, when found, how well they match.

    `label_boxes`: the labelled boxes (an upper bound: what a perfect localiser would give);
    `localiser_from`: DIR/<RUN's name>/best.safetensors locates them, and must validate on RUN's images;
    `box_files`: box files (project.localise.read_box_file) from any detector, one box per validation image.
    """
    if not label_boxes and localiser_from is None and not box_files:
        return None, None
    try:
        labelled = [labelled_box(s.path) for s in val]
    except LabelError as exc:
        raise ReportError(str(exc)) from None
    if label_boxes:
        return labelled, None
    if box_files:
        found = _boxes_from_files(box_files, [s.path.name for s in val])
        return found, {"source": ", ".join(str(f) for f in box_files), **localisation_figures(found, labelled)}
    other = Path(localiser_from) / run.name
    _same_validation(run, other, task, root, {s.path.name for s in val})
    try:
        localiser = load_members([other / BEST_CHECKPOINT], device)[0]
        found, _ = locate_lesions([s.path for s in val], localiser, device, batch_size, workers)
    except (CheckpointError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    return found, {"source": str(localiser.path), **localisation_figures(found, labelled)}


def _boxes_from_files(box_files: Sequence[Path], names: Sequence[str]) -> list[Box]:
    """The box of each of `names` from `box_files` (read together); ReportError where one is missing or twice."""
    boxes: dict[str, Box] = {}
    for path in box_files:
        try:
            found = read_box_file(path)
        except ValueError as exc:
            raise ReportError(str(exc)) from None
        repeated = sorted(set(found) & set(boxes))
        if repeated:
            raise ReportError(f"{path}: boxes given again by an earlier box file: {repeated[:10]}")
        boxes.update(found)
    missing = [name for name in names if name not in boxes]
    if missing:
        raise ReportError(f"{', '.join(str(f) for f in box_files)}: no box for {len(missing)} validation "
                          f"image(s): {missing[:10]}")
    return [boxes[name] for name in names]


def predict_validation(
    run: Path, data: Path | None = None, device: str = "auto", batch_size: int = 32, workers: int = 0,
    tta: bool = False, members_from: Sequence[Path] = (), lesion_column: str | None = None,
    localiser_from: Path | None = None, label_boxes: bool = False, box_files: Sequence[Path] = (),
) -> Validation:
    """Probabilities of RUN/best.safetensors on the images of RUN/val.csv, through project.predict.

    With `members_from`, DIR/<RUN's name>/best.safetensors of each DIR joins an ensemble (the mean
    of the probabilities, as run.py averages several weights); each must validate on RUN's images.
    With `lesion_column`, the images of one lesion are scored with the mean of their probabilities.
    Members trained on lesion crops crop to the boxes that `localiser_from`, `box_files` or `label_boxes` give.
    """
    run = Path(run)
    args = load_run_args(run)
    root = Path(data or args.data)
    torch_device = resolve_device(device)
    others = [Path(directory) / run.name for directory in members_from]
    members = _classifiers([run, *others], torch_device)
    member = members[0]
    val = read_validation_split(run / VALIDATION_FILE, member.task, root)
    names = [s.path.name for s in val]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise ReportError(f"{root}: validation file names repeat across class folders: {repeated[:10]}")
    for other in others:
        _same_validation(run, other, member.task, root, set(names))
    boxes, localisation = lesion_boxes(run, val, member.task, root, localiser_from, label_boxes, torch_device,
                                       batch_size, workers, box_files)
    try:
        predictions: Predictions = predict_folder([s.path for s in val], members, torch_device, batch_size, workers,
                                                  tta=tta, desc="report", boxes=boxes)
    except ValueError as exc:  # lesion-crop members without boxes
        raise ReportError(str(exc)) from None
    lesions = None
    if lesion_column:
        lesion_of = lesions_from_metadata(val, lesion_column, root)
        predictions = average_over_lesions(predictions, lesion_of)
        lesions = len(set(lesion_keys(predictions.names, lesion_of)))
    by_name = {s.path.name: s for s in val}
    box_of = {s.path.name: box for s, box in zip(val, boxes)} if boxes is not None else None
    order = sorted(range(len(predictions.names)), key=lambda i: numeric_order_key(predictions.names[i]))
    return Validation(
        samples=[by_name[predictions.names[i]] for i in order], probs=predictions.probs[order],
        classes=member.task.labels, members=members, skipped=predictions.errors, split=split_description(args, val),
        data=root, aux=None if predictions.aux is None else predictions.aux[order], aux_head=predictions.aux_head,
        lesions=lesions, boxes=None if box_of is None else [box_of[predictions.names[i]] for i in order],
        localisation=localisation,
    )


def malignancy_index(classes: Sequence[str]) -> int:
    """Index of the first class whose BI-RADS number is 4 or more ('4', '4A', ...)."""
    first = first_malignant_class(classes)
    if first is None:
        raise ReportError(f"no class of {list(classes)} is BI-RADS {MALIGNANT_FROM} or above")
    return first


def _auc(truth: np.ndarray, score: np.ndarray) -> dict:
    """AUC and ROC points; AUC None where the truth holds one class only."""
    result = {"n": int(len(truth)), "positives": int(truth.sum()), "auc": None, "fpr": [], "tpr": []}
    if 0 < truth.sum() < len(truth):
        fpr, tpr, _ = roc_curve(truth, score)
        result.update(auc=float(roc_auc_score(truth, score)), fpr=fpr.tolist(), tpr=tpr.tolist())
    return result


def biopsy_outcome(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Which samples have a known biopsy outcome (`extra['pathology']` benign or malignant), and which are
    malignant (1) or not (0)."""
    pathology = [s.extra.get("pathology", "").strip().lower() for s in samples]
    known = np.array([p in ("benign", "malignant") for p in pathology], dtype=bool)
    return known, np.array([p == "malignant" for p in pathology], dtype=int)


def biopsy_auc(samples: Sequence[Sample], score: np.ndarray) -> dict | None:
    """AUC of a malignancy score against biopsy over the samples whose outcome is known; None without any."""
    known, biopsy = biopsy_outcome(samples)
    return _auc(biopsy[known], score[known]) if known.any() else None


def malignancy(validation: Validation) -> dict:
    """P(BI-RADS ≥ 4) against BI-RADS ≥ 4 and, where `extra['pathology']` is known, against biopsy; with an
    auxiliary head whose classes are benign and malignant (`--aux-column pathology`), its P(malignant) too."""
    first = malignancy_index(validation.classes)
    score = validation.probs[:, first:].sum(axis=1)
    labels = np.array([s.label for s in validation.samples])
    result = {"positive_from": validation.classes[first], "birads": _auc((labels >= first).astype(int), score)}
    result["biopsy"] = biopsy_auc(validation.samples, score)
    known, biopsy = biopsy_outcome(validation.samples)
    head = [c.lower() for c in validation.aux_head.classes]
    if validation.aux is not None and head == ["benign", "malignant"] and known.any():
        result["head_biopsy"] = _auc(biopsy[known], validation.aux[known, 1])
    return result


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of the top-class confidence over equal-width bins, and the bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(inside.sum()),
               "confidence": None, "accuracy": None}
        if inside.any():
            row.update(confidence=float(confidence[inside].mean()), accuracy=float(correct[inside].mean()))
            ece += inside.mean() * abs(row["accuracy"] - row["confidence"])
        bins.append(row)
    return {"ece": float(ece), "bins": bins}


def gradcam_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads: the last stage for ConvNeXt-like models (`stages[-1]`).

    Fallbacks for other timm models: the module timm's `feature_info` names last (resnet:
    layer4, densenet: features.norm5, efficientnet: blocks.6), else the last Conv2d. Models
    whose last features are tokens (ViT, Swin) would need a reshape and are not supported. A model
    with a lesion-map head is read in its classifier (the head is not on the eval path).
    """
    if isinstance(model, WithLesionMap):
        name, layer = gradcam_target_layer(model.net)
        return f"net.{name}", layer
    if isinstance(getattr(model, "stages", None), nn.Sequential):
        return f"stages.{len(model.stages) - 1}", model.stages[-1]
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and "module" in info[-1]:
        return info[-1]["module"], model.get_submodule(info[-1]["module"])
    convs = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ReportError(f"{type(model).__name__}: no convolution to compute Grad-CAM on")
    return convs[-1]


def pick_cases(probs: np.ndarray, labels: np.ndarray, count: int) -> tuple[list[int], list[int]]:
    """Indices of the `count` most confident right and the `count` most confident wrong predictions."""
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    by_confidence = np.argsort(-confidence, kind="stable")
    right = [int(i) for i in by_confidence if predicted[i] == labels[i]][:count]
    wrong = [int(i) for i in by_confidence if predicted[i] != labels[i]][:count]
    return right, wrong


def gradcam_overlays(validation: Validation, indices: Sequence[int], device: torch.device) -> list[np.ndarray]:
    """RGB float overlays of the Grad-CAM of the predicted class on the preprocessed image."""
    member = validation.members[0]
    boxes = None if validation.boxes is None else [validation.boxes[i] for i in indices]
    dataset = ImageFolderDataset([validation.samples[i].path for i in indices], member.preprocess, boxes)
    images = torch.stack([dataset[j][1] for j in range(len(indices))]).to(device)
    targets = [ClassifierOutputTarget(int(validation.probs[i].argmax())) for i in indices]
    cam = GradCAM(model=member.model, target_layers=[gradcam_target_layer(member.model)[1]])
    try:
        maps = cam(input_tensor=images, targets=targets)
    finally:
        cam.activations_and_grads.release()
    mean = torch.tensor(member.preprocess.mean).view(3, 1, 1)
    std = torch.tensor(member.preprocess.std).view(3, 1, 1)
    pictures = (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [show_cam_on_image(picture.astype(np.float32), heat, use_rgb=True) for picture, heat in zip(pictures, maps)]


def plot_gradcam(validation: Validation, indices: Sequence[int], device: torch.device, path: Path) -> None:
    overlays = gradcam_overlays(validation, indices, device)
    figure, axes = plt.subplots(1, len(indices), figsize=(2.6 * len(indices), 3.0), squeeze=False)
    for axis, index, overlay in zip(axes[0], indices, overlays):
        sample, probs = validation.samples[index], validation.probs[index]
        axis.imshow(overlay)
        axis.set_title(f"{sample.path.name}\ntrue {validation.classes[sample.label]} · "
                       f"pred {validation.classes[int(probs.argmax())]} ({probs.max():.2f})", fontsize=7)
        axis.axis("off")
    save_figure(figure, path)


def plot_per_class(report: dict, path: Path) -> None:
    classes = report["classes"]
    x = np.arange(len(classes))
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(classes)), 3.5))
    for offset, key in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1")):
        axis.bar(x + offset, [report["per_class"][c][key] for c in classes], width=0.27, label=key)
    axis.set_xticks(x, classes)
    axis.set_ylim(0, 1)
    axis.set_xlabel("BI-RADS class")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)


def plot_roc(result: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    curves = {f"vs BI-RADS ≥ {result['positive_from']}": result["birads"], "vs biopsy": result["biopsy"]}
    for name, curve in curves.items():
        if curve and curve["auc"] is not None:
            axis.plot(curve["fpr"], curve["tpr"], label=f"{name}: AUC {curve['auc']:.3f} (n={curve['n']})")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def plot_reliability(result: dict, path: Path) -> None:
    bins = result["bins"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.0), sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    top.bar(centres, [b["accuracy"] or 0.0 for b in bins], width=width * 0.95, edgecolor="black", label="accuracy")
    top.set_ylabel("accuracy")
    top.set_title(f"ECE {result['ece']:.3f}")
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="grey")
    bottom.set_xlabel("top-class confidence")
    bottom.set_ylabel("images")
    save_figure(figure, path)


def _read_summary(run: Path) -> list[dict[str, float]]:
    path = run / SUMMARY_FILE
    if not path.is_file():
        raise ReportError(f"{path}: not found; the run has not logged an epoch")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    if not rows:
        raise ReportError(f"{path}: no epochs logged")
    return rows


def write_prediction_files(validation: Validation, out: Path) -> dict:
    """predictions.csv, pred/cla_pre.csv and gt/cla_gt.csv; returns project.evaluate's cla report of them."""
    names = [s.path.name for s in validation.samples]
    labels = [s.label for s in validation.samples]
    width = validation.probs.shape[1]
    rows = [(n, y, *(f"{p:.6f}" for p in probs)) for n, y, probs in zip(names, labels, validation.probs)]
    atomic_write_csv(out / "predictions.csv", ["img_name", "label", *(f"prob_{k}" for k in range(width))], rows)
    write_cla_csv(out / "pred" / "cla_pre.csv", dict(zip(names, validation.probs.argmax(axis=1).tolist())))
    write_cla_csv(out / "gt" / "cla_gt.csv", dict(zip(names, labels)))
    return evaluate_folders(out / "pred", out / "gt", validation.classes)["cla"]


def read_prediction_file(report_fold: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image names, labels and probabilities of a report's REPORT_FOLD/predictions.csv, in its order."""
    path = Path(report_fold) / "predictions.csv"
    try:
        rows = read_csv_rows(path, ["img_name", "label", "prob_0"], ReportError)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror})") from None
    if not rows:
        raise ReportError(f"{path}: no predictions")
    width = sum(1 for key in rows[0] if key.startswith("prob_"))
    try:
        probs = np.array([[float(row[f"prob_{k}"]) for k in range(width)] for row in rows], dtype=np.float64)
        labels = np.array([int(row["label"]) for row in rows], dtype=np.int64)
    except (TypeError, ValueError) as exc:  # an empty or non-numeric cell
        raise ReportError(f"{path}: not a report's predictions ({exc})") from None
    return [row["img_name"] for row in rows], labels, probs


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _auc_of(result: dict | None) -> float | None:
    return None if result is None else result["auc"]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _crops_sentence(metrics: dict) -> str:
    """What lesion-crop members cropped to, in words ('' where none did)."""
    if metrics["lesion_boxes"] == "labels":
        return " Lesion-crop members cropped to the labelled lesion boxes."
    found = metrics["localisation"]
    if not found:
        return ""
    return (f" Lesion-crop members cropped to the boxes of <code>{html.escape(found['source'])}</code>: IoU "
            f"with the labelled boxes {_fmt(found['mean_iou'], 3)} on average, ≥ 0.5 for "
            f"{_fmt(found['iou_at_least_0_5'], 3)} of {found['images']} images.")


def _report_html(metrics: dict, plots: Sequence[str]) -> str:
    cla, mal = metrics["cla"], metrics["malignancy"]
    summary = _html_table(["metric", "value"], [
        ("images", cla["n"]), ("skipped (unreadable)", len(metrics["skipped"])),
        ("challenge cla score (0.6·acc + 0.4·macro-F1)", _fmt(cla["score"])), ("accuracy", _fmt(cla["accuracy"])),
        ("macro-F1", _fmt(cla["macro_f1"])), ("quadratic kappa", _fmt(cla["kappa"])),
        (f"malignancy AUC vs BI-RADS ≥ {mal['positive_from']}", _fmt(_auc_of(mal["birads"]))),
        ("malignancy AUC vs biopsy", _fmt(_auc_of(mal["biopsy"])) if mal["biopsy"] else "no pathology labels"),
        *([("pathology head's AUC vs biopsy", _fmt(_auc_of(mal["head_biopsy"])))] if "head_biopsy" in mal else []),
        ("ECE (top-class confidence)", _fmt(metrics["calibration"]["ece"])),
    ])
    per_class = _html_table(["class", "precision", "recall", "F1", "support"], [
        (c, _fmt(s["precision"]), _fmt(s["recall"]), _fmt(s["f1"]), s["support"]) for c, s in cla["per_class"].items()
    ])
    ensemble = (f", averaged with {html.escape(', '.join(metrics['ensemble']))} (Grad-CAM shows the first model)"
                if metrics["ensemble"] else "")
    lesions = (f" Each image is scored with the mean over its lesion's images (column "
               f"<code>{html.escape(metrics['lesion_column'])}</code>: {metrics['lesions']} lesions)."
               if metrics["lesion_column"] else "")
    crops = _crops_sentence(metrics)
    parts = [
        f"<p>Run <code>{html.escape(metrics['run'])}</code>, checkpoint of epoch {metrics['epoch']}, data "
        f"<code>{html.escape(metrics['data'])}</code>, validation {html.escape(metrics['split'])}{ensemble}."
        f"{lesions}{crops} Predictions recomputed with project.predict; numbers from project.evaluate.</p>",
        summary, "<h2>Per-class</h2>", per_class,
    ]
    for name in plots:
        parts.append(f"<h2>{html.escape(PLOTS[name])}</h2><img src='{name}' alt='{name}'>")
    gradcam = metrics["gradcam"]
    if "not_drawn" in gradcam:
        parts.append(f"<p>No Grad-CAM: {html.escape(gradcam['not_drawn'])}.</p>")
    elif gradcam["right"] and not gradcam["wrong"]:
        parts.append("<p>No wrong predictions: no Grad-CAM of errors.</p>")
    return _html_page(f"Validation report: {Path(metrics['run']).name}", "\n".join(parts))


def build_report(
    run: Path, out: Path, data: Path | None = None, device: str = "auto", batch_size: int = 32, workers: int = 0,
    tta: bool = False, cam_cases: int = 4, members_from: Sequence[Path] = (), lesion_column: str | None = None,
    localiser_from: Path | None = None, label_boxes: bool = False, box_files: Sequence[Path] = (),
) -> dict:
    """Write OUT/index.html, its PNGs, metrics.json, predictions.csv, pred/ and gt/; returns the metrics."""
    run, out = Path(run), Path(out)
    validation = predict_validation(run, data, device, batch_size, workers, tta, members_from, lesion_column,
                                    localiser_from, label_boxes, box_files)
    if not validation.samples:
        raise ReportError(f"{run}: no readable validation image")
    labels = np.array([s.label for s in validation.samples])
    cla = write_prediction_files(validation, out)
    first = validation.members[0]
    metrics = {
        "run": str(run), "data": str(validation.data), "checkpoint": str(first.path),
        "ensemble": [str(m.path) for m in validation.members[1:]],
        "lesion_column": lesion_column, "lesions": validation.lesions,
        "lesion_boxes": "labels" if label_boxes else (validation.localisation or {}).get("source"),
        "localisation": validation.localisation,
        "epoch": first.config.epoch, "split": validation.split, "classes": validation.classes,
        "checkpoint_metrics": first.config.metrics, "skipped": validation.skipped, "cla": cla,
        "malignancy": malignancy(validation), "calibration": calibration(validation.probs, labels),
    }
    plot_learning_curves(_read_summary(run), out / "learning_curves.png")
    plot_confusion_matrices({"BI-RADS": np.asarray(cla["confusion_matrix"])}, {"BI-RADS": validation.classes},
                            out / "confusion_matrix.png")
    plot_per_class(cla, out / "per_class.png")
    plot_roc(metrics["malignancy"], out / "roc_malignancy.png")
    plot_reliability(metrics["calibration"], out / "reliability.png")
    plots = ["learning_curves.png", "confusion_matrix.png", "per_class.png", "roc_malignancy.png", "reliability.png"]
    if getattr(first.model, "views", 1) == 1:
        metrics["gradcam"] = _draw_gradcam(validation, labels, cam_cases, out, plots)
    else:
        metrics["gradcam"] = {"not_drawn": "Grad-CAM reads one image; this model sees two views of each"}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "index.html", _report_html(metrics, plots))
    return metrics


def _draw_gradcam(validation: Validation, labels: np.ndarray, cases: int, out: Path, plots: list[str]) -> dict:
    """Grad-CAM of the most confident right and wrong cases into `out` (their names added to `plots`)."""
    model = validation.members[0].model
    right, wrong = pick_cases(validation.probs, labels, cases)
    torch_device = next(model.parameters()).device
    for name, picked in (("gradcam_right.png", right), ("gradcam_wrong.png", wrong)):
        if picked:
            plot_gradcam(validation, picked, torch_device, out / name)
            plots.append(name)
    return {"target_layer": gradcam_target_layer(model)[0],
            "right": [validation.samples[i].path.name for i in right],
            "wrong": [validation.samples[i].path.name for i in wrong]}


def fold_figures(metrics: Mapping) -> dict[str, float | None]:
    """The cross-validation columns of one report's metrics.json."""
    cla, mal = metrics["cla"], metrics["malignancy"]
    return {"n": cla["n"], "macro_f1": cla["macro_f1"], "accuracy": cla["accuracy"], "kappa": cla["kappa"],
            "auc_birads": _auc_of(mal["birads"]), "auc_biopsy": _auc_of(mal["biopsy"]),
            "auc_biopsy_head": _auc_of(mal.get("head_biopsy"))}


def summarise_folds(metrics_by_fold: Mapping[str, Mapping]) -> list[dict]:
    """One row per fold, then 'mean' and 'sd' (sample sd, over the folds where a figure is defined)."""
    rows = [{"fold": name, **fold_figures(m)} for name, m in metrics_by_fold.items()]
    mean, sd = {"fold": "mean", "n": sum(r["n"] for r in rows)}, {"fold": "sd", "n": None}
    for column in CV_COLUMNS:
        values = np.array([r[column] for r in rows if r[column] is not None], dtype=float)
        mean[column] = float(values.mean()) if len(values) else None
        sd[column] = float(values.std(ddof=1)) if len(values) > 1 else None
    return rows + [mean, sd]


def baselines(metrics: Mapping) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of two label-blind predictors on one fold, from its class counts.

    'majority': always the fold's most frequent class (F1 2π/(1+π) for it, 0 for the others);
    'chance': a uniform guess among K classes, in expectation (accuracy 1/K, class F1 2π/(Kπ+1)).
    """
    support = np.array([row["support"] for row in metrics["cla"]["per_class"].values()], dtype=float)
    share, k = support / support.sum(), len(support)
    top = share.max()
    return {
        "majority": {"accuracy": float(top), "macro_f1": float(2 * top / (1 + top) / k)},
        "chance": {"accuracy": 1 / k, "macro_f1": float(np.mean(2 * share / (k * share + 1)))},
    }


def format_cv_table(rows: Sequence[Mapping], metrics_by_fold: Mapping[str, Mapping] | None = None) -> str:
    """Markdown table: the folds, then mean ± sd, then the label-blind baselines (mean over the folds)."""
    folds, mean, sd = rows[:-2], rows[-2], rows[-1]
    lines = ["| fold | images | " + " | ".join(CV_COLUMNS.values()) + " |",
             "|---|---:|" + "---:|" * len(CV_COLUMNS)]
    for row in folds:
        lines.append(f"| {row['fold']} | {row['n']} | " + " | ".join(_fmt(row[c]) for c in CV_COLUMNS) + " |")
    cells = [f"{_fmt(mean[c])} ± {_fmt(sd[c])}" if mean[c] is not None else "n/a" for c in CV_COLUMNS]
    lines.append(f"| **mean ± sd** | {mean['n']} | " + " | ".join(cells) + " |")
    blind = (("majority", "always the fold's majority class"), ("chance", "uniform guess, expected"))
    for name, what in blind if metrics_by_fold else ():
        figures = [baselines(m)[name] for m in metrics_by_fold.values()]
        values = {c: _fmt(float(np.mean([f[c] for f in figures]))) for c in ("macro_f1", "accuracy")}
        cells = [values.get(c, "0" if c == "kappa" else "0.5") for c in CV_COLUMNS]
        lines.append(f"| {what} | {mean['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cross_validation_report(runs: Sequence[Path], out: Path, data: Path | None = None, **options) -> list[dict]:
    """A report per run in OUT/<run name>/, then OUT/cv.md, cv.csv, cv.json and index.html with the table."""
    names = [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        raise ReportError(f"run folder names must differ, got {names}")
    out = Path(out)
    metrics = {name: build_report(Path(run), out / name, data, **options) for name, run in zip(names, runs)}
    return write_cv_tables(out, metrics, {name: m["split"] for name, m in metrics.items()})


def write_cv_tables(
    out: Path, metrics: Mapping[str, Mapping], splits: Mapping[str, str], fold_page: str = "index.html",
) -> list[dict]:
    """OUT/cv.md, cv.csv, cv.json and index.html (linking each fold's OUT/<fold>/FOLD_PAGE) from each fold's
    metrics (its 'cla' and 'malignancy')."""
    rows = summarise_folds(metrics)
    table = format_cv_table(rows, metrics)
    atomic_write_text(out / "cv.md", table)
    columns = ["fold", "n", *CV_COLUMNS]
    atomic_write_csv(out / "cv.csv", columns, [[r[c] for c in columns] for r in rows])
    atomic_write_text(out / "cv.json", json.dumps(rows, indent=2) + "\n")
    links = "".join(f"<li><a href='{html.escape(n)}/{fold_page}'>{html.escape(n)}</a>: "
                    f"{html.escape(split)}</li>" for n, split in splits.items())
    header = ["fold", "images", *CV_COLUMNS.values()]
    body = [[r["fold"], r["n"], *(_fmt(r[c]) for c in CV_COLUMNS)] for r in rows]
    page = _html_page("Cross-validation", _html_table(header, body) + f"<ul>{links}</ul>")
    atomic_write_text(out / "index.html", page)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.report",
        description="HTML validation report of a classification run, or a cross-validation table over runs.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="run folder (args.yaml, val.csv, summary.csv, best.safetensors)")
    which.add_argument("--cv", type=Path, nargs="+", metavar="RUN", help="one run folder per fold")
    parser.add_argument("--data", type=Path, help="dataset root (default: the run's --data in args.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--members-from", type=Path, nargs="+", default=[], metavar="DIR",
                        help="ensemble: also average DIR/<run name>/best.safetensors of each DIR, e.g. the same "
                             "fold of other recipes")
    parser.add_argument("--lesion-column", metavar="COLUMN",
                        help="metadata column naming each image's lesion: the views of one lesion are scored with "
                             "the mean of their probabilities (run.py --lesions does the same at prediction)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--localiser-from", type=Path, metavar="DIR",
                       help="for members trained with --lesion-crop: DIR/<run name>/best.safetensors (trained with "
                            "--lesion-map on the same fold) locates each lesion, as run.py --localiser does")
    boxes.add_argument("--boxes-from", type=Path, nargs="+", default=[], metavar="CSV",
                       help="for members trained with --lesion-crop: box files (img_name, x_center, y_center, "
                            "width, height as fractions of the image) from any detector, a box for every image")
    boxes.add_argument("--label-boxes", action="store_true",
                       help="crop to the labelled lesion boxes instead: the figures a perfect localiser would give")
    parser.add_argument("--cam-cases", type=int, default=4, help="Grad-CAM images of right and of wrong cases")
    args = parser.parse_args(argv)
    options = {"device": args.device, "batch_size": args.batch_size, "workers": args.workers, "tta": args.tta,
               "cam_cases": args.cam_cases, "members_from": args.members_from, "lesion_column": args.lesion_column,
               "localiser_from": args.localiser_from, "label_boxes": args.label_boxes,
               "box_files": args.boxes_from}
    try:
        if args.cv:
            cross_validation_report(args.cv, args.out, args.data, **options)
            print((args.out / "cv.md").read_text(encoding="utf-8"), end="")
        else:
            metrics = build_report(args.run, args.out, args.data, **options)
            print(f"{args.out / 'index.html'}: accuracy {metrics['cla']['accuracy']:.4f}, "
                  f"macro-F1 {metrics['cla']['macro_f1']:.4f}, kappa {_fmt(metrics['cla']['kappa'])}, "
                  f"malignancy AUC {_fmt(_auc_of(metrics['malignancy']['birads']))}")
    except (ReportError, RunFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
