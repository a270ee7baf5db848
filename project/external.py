"""External validation: BI-RADS checkpoints on every image of another labelled dataset, classes mapped by category.

``python -m project.external --weights A.safetensors [B ...] --data DATA --out DIR``

A model trained on one dataset (BUS-BRA: 2, 3, 4, 5) meets another with finer classes (BrEaST:
2, 3, 4A, 4B, 4C, 5): each of the dataset's classes is scored as the model class of the same
BI-RADS category (4A, 4B and 4C as 4). Every checkpoint is scored alone, then their ensemble (the
run.py path: same preprocessing, probabilities averaged; `--tta` adds run.py's mirrored view).
Figures: the challenge cla score, macro-F1, accuracy, quadratic κ, and the malignancy AUC of
P(BI-RADS ≥ 4) against BI-RADS ≥ 4 and against the dataset's `pathology` metadata (biopsy or
follow-up); then the ensemble's recall and F1 per class. The ensemble's probabilities go to
DIR/cla_prob.csv. With `--lexicon FILE` (project.lexicon), its grade of each image's labelled
outline (the dataset's masks) is scored alone and averaged with the ensemble's, after the ensemble.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from project.data.classes import birads_number, first_malignant_class, normalise_class_name
from project.data.imageio import ImageReadError
from project.data.layout import Sample
from project.data.submission import write_probability_csv
from project.descriptors import LexiconModel, describe_file
from project.fileio import atomic_write_text
from project.metrics import classification_report
from project.predict import Member, load_members, predict_folder
from project.report import biopsy_outcome
from project.runtime import resolve_device

COLUMNS = ("score", "macro_f1", "accuracy", "kappa", "auc_birads", "auc_pathology")


class ClassMappingError(ValueError):
    """A dataset class that no model class covers."""


def map_classes(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> list[int]:
    """For each dataset class, the model class of the same name, else of the same BI-RADS category."""
    names = [normalise_class_name(c) for c in model_classes]
    mapping = []
    for name in dataset_classes:
        key = normalise_class_name(name)
        coarse = [i for i, model in enumerate(names) if model.isdigit() and int(model) == birads_number(name)]
        if key in names:
            mapping.append(names.index(key))
        elif coarse:
            mapping.append(coarse[0])
        else:
            raise ClassMappingError(f"dataset class {name!r} matches none of the model classes {list(model_classes)}")
    return mapping


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None


def figures(samples: Sequence[Sample], truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """The COLUMNS of one model's probabilities against the mapped truth."""
    report = classification_report(truth, probs.argmax(axis=1), classes)
    first = first_malignant_class(classes)
    malignancy = probs[:, first:].sum(axis=1)
    known, malignant = biopsy_outcome(samples)
    return {
        "score": report["score"], "macro_f1": report["macro_f1"], "accuracy": report["accuracy"],
        "kappa": report["kappa"], "auc_birads": _auc((truth >= first).astype(int), malignancy),
        "auc_pathology": _auc(malignant[known], malignancy[known]),
    }


def evaluate(
    samples: Sequence[Sample], dataset_classes: Sequence[str], members: Sequence[Member], device, tta: bool = False
) -> dict:
    """{checkpoint name or 'ensemble': figures}, plus the ensemble's probabilities and image names; with `tta`
    each checkpoint's probabilities are the mean over the image and its horizontal flip."""
    classes = members[0].config.labels
    mapping = np.array(map_classes(dataset_classes, classes))
    truth = mapping[[s.label for s in samples]]
    paths = [s.path for s in samples]
    predictions = predict_folder(paths, members, device, workers=0, tta=tta, desc="external")
    if predictions.errors:
        raise ValueError(f"unreadable images: {predictions.errors}")
    results = {str(member.path): figures(samples, truth, probs, classes)
               for member, probs in zip(members, predictions.member_probs, strict=True)}
    results["ensemble"] = figures(samples, truth, predictions.probs, classes)
    return {"figures": results, "probs": predictions.probs, "names": [p.name for p in paths], "classes": classes,
            "truth": truth}


def lexicon_figures(samples: Sequence[Sample], result: dict, model: LexiconModel) -> dict[str, dict]:
    """The lexicon model on each sample's labelled outline, alone and averaged with the ensemble's probabilities.

    Raises ValueError naming the image without an outline, or the outline that cannot be read.
    """
    model.require_classes(result["classes"], "the models'")
    missing = [str(s.path) for s in samples if s.mask is None]
    if missing:
        raise ValueError(f"{len(missing)} image(s) without a labelled outline (masks/), e.g. {missing[0]}")
    try:
        outlines = tqdm(samples, desc="describing outlines", unit="image", leave=False)
        probs = model.predict_proba(np.stack([describe_file(s.path, s.mask) for s in outlines]))
    except ImageReadError as exc:
        raise ValueError(str(exc)) from None
    truth, classes = result["truth"], result["classes"]
    return {"lexicon model (labelled outlines)": figures(samples, truth, probs, classes),
            "ensemble + lexicon model": figures(samples, truth, (result["probs"] + probs) / 2, classes)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(results: dict[str, dict], after: dict[str, dict] | None = None) -> str:
    """One row per checkpoint, mean ± sd of the single checkpoints, the ensemble, then the rows `after` it."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    singles = {name: row for name, row in results.items() if name != "ensemble"}
    for name, row in singles.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    if len(singles) > 1:
        cells = []
        for column in COLUMNS:
            values = np.array([row[column] for row in singles.values() if row[column] is not None])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else "n/a")
        lines.append("| mean ± sd of the single models | " + " | ".join(cells) + " |")
    lines.append("| **ensemble** | " + " | ".join(_fmt(results["ensemble"][c]) for c in COLUMNS) + " |")
    for name, row in (after or {}).items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def per_class_markdown(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> str:
    """The ensemble's recall and F1 per model class, with how many images are of it and how many it was given."""
    predicted = probs.argmax(axis=1)
    report = classification_report(truth, predicted, classes)
    counts = np.bincount(predicted, minlength=len(classes))
    lines = ["| the ensemble, per class | images | predicted | recall | F1 |", "|---|---:|---:|---:|---:|"]
    for index, name in enumerate(classes):
        row = report["per_class"][name]
        lines.append(f"| {name} | {row['support']} | {counts[index]} | {row['recall']:.3f} | {row['f1']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.external", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="classifier checkpoints")
    parser.add_argument("--data", type=Path, required=True, help="dataset in the challenge layout (train/cla)")
    parser.add_argument("--out", type=Path, required=True, help="folder for external.md and cla_prob.csv")
    parser.add_argument("--lexicon", type=Path, metavar="JSON",
                        help="also score this lexicon model (python -m project.lexicon fit) on the labelled outlines")
    parser.add_argument("--tta", action="store_true",
                        help="average each image with its horizontal flip, as run.py --tta")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    members = load_members(args.weights, device)
    scan, dataset_classes = members[0].task.load(args.data)
    try:
        result = evaluate(scan.samples, dataset_classes, members, device, tta=args.tta)
        after = lexicon_figures(scan.samples, result, LexiconModel.load(args.lexicon)) if args.lexicon else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(result["figures"], after) + "\n" + per_class_markdown(
        result["truth"], result["probs"], result["classes"])
    atomic_write_text(args.out / "external.md", table)
    columns = members[0].task.probability_columns(result["probs"])
    write_probability_csv(args.out / "cla_prob.csv", result["names"], columns)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
