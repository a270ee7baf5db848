"""Probe: does a zoomed view add to flip TTA? Each fold model scored on its own validation fold, one table.

For every fold of a cross-validated run, the checkpoint predicts its validation images (the run's
`val.csv`, preprocessed as the checkpoint says) in six views: as given, mirrored, zoomed out by
0.9 (shrunk, padded with black) and zoomed in by 1.1 (centre crop), each also mirrored. The table
gives macro-F1 (argmax) and, where `val.csv` has a `pathology` column, the AUC of P(BI-RADS >= 4)
against the biopsy, for sets of views averaged in probability, as `project.report --tta` averages.

    python bench/tta_zoom.py --cv runs/busbra_l0_teacher_ka/fold{0,1,2,3} --data data/busbra
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.data.layout import Sample  # noqa: E402
from project.predict import ImageFolderDataset, collate_images, load_members  # noqa: E402
from project.report import biopsy_auc, malignancy_index  # noqa: E402
from project.runfolder import VALIDATION_FILE, read_validation_split  # noqa: E402
from project.runtime import make_loader  # noqa: E402

VIEW_SETS: dict[str, tuple[int, ...]] = {
    "as given": (0,),
    "flip (--tta)": (0, 1),
    "flip + zoom 0.9": (0, 1, 2, 3),
    "flip + zoom 1.1": (0, 1, 4, 5),
    "all six": (0, 1, 2, 3, 4, 5),
}


def zoom(images: torch.Tensor, scale: float, fill: torch.Tensor) -> torch.Tensor:
    """The batch scaled about its centre, keeping its size: cropped when enlarged, padded with `fill` when shrunk."""
    height, width = images.shape[-2:]
    scaled = F.interpolate(images, size=(round(height * scale), round(width * scale)), mode="bilinear",
                           align_corners=False, antialias=scale < 1)
    if scale >= 1:
        top, left = (scaled.shape[-2] - height) // 2, (scaled.shape[-1] - width) // 2
        return scaled[..., top:top + height, left:left + width]
    out = fill.expand_as(images).clone()
    top, left = (height - scaled.shape[-2]) // 2, (width - scaled.shape[-1]) // 2
    out[..., top:top + scaled.shape[-2], left:left + scaled.shape[-1]] = scaled
    return out


@torch.inference_mode()
def view_probabilities(fold: Path, data: Path, workers: int) -> tuple[np.ndarray, list[Sample], list[str]]:
    """[views, images, classes] probabilities of the fold's checkpoint on its validation images, those images
    (read from val.csv as the report reads them) and the checkpoint's class list."""
    member = load_members([fold / "best.safetensors"], torch.device("cpu"))[0]
    samples = read_validation_split(fold / VALIDATION_FILE, member.task, data)
    dataset = ImageFolderDataset([sample.path for sample in samples], member.preprocess)
    black = (0 - torch.tensor(member.preprocess.mean)) / torch.tensor(member.preprocess.std)
    fill = black.view(1, -1, 1, 1)
    probs = np.zeros((6, len(samples), len(member.config.labels)), dtype=np.float64)
    loader = make_loader(dataset, 32, workers, collate_fn=collate_images)
    for indices, images, bad, _ in tqdm(loader, desc=fold.name, unit="batch", leave=False):
        if bad:
            named = "; ".join(f"{dataset.paths[index]}: {reason}" for index, reason in bad)
            raise ValueError(f"{fold}: validation images it cannot score (every one counts in the figures): {named}")
        views = [images, images.flip(-1)]
        for scale in (0.9, 1.1):
            zoomed = zoom(images, scale, fill)
            views += [zoomed, zoomed.flip(-1)]
        for position, view in enumerate(views):
            probs[position, indices] = member.task.probabilities(member.model(view)).float().numpy()
    return probs, samples, list(member.config.labels)


def figures(probs: np.ndarray, samples: list[Sample], labels: list[str]) -> tuple[float, float | None]:
    """Macro-F1 of the argmax, and the report's biopsy AUC of P(BI-RADS >= 4) (None without pathology)."""
    macro_f1 = f1_score([sample.label for sample in samples], probs.argmax(1), average="macro")
    biopsy = biopsy_auc(samples, probs[:, malignancy_index(labels):].sum(axis=1))
    return macro_f1, None if biopsy is None else biopsy["auc"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", nargs="+", type=Path, required=True, help="the run's fold folders")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the run trained on")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        folds = [view_probabilities(fold, args.data, args.workers) for fold in args.cv]
    except (ValueError, OSError) as exc:  # RunFolderError is a ValueError
        print(f"tta_zoom: {exc}", file=sys.stderr)
        return 1
    fold_names = " ".join(f"{fold.name:>6s}" for fold in args.cv)
    print(f"{'views':18s} {'macro-F1':>8s}  {fold_names} {'biopsy AUC':>10s}")
    for name, views in VIEW_SETS.items():
        scored = [figures(probs[list(views)].mean(0), samples, labels) for probs, samples, labels in folds]
        f1s = [f1 for f1, _ in scored]
        aucs = [auc for _, auc in scored if auc is not None]
        auc_text = f"{np.mean(aucs):10.4f}" if aucs else f"{'n/a':>10s}"
        print(f"{name:18s} {np.mean(f1s):8.4f}  {' '.join(f'{f1:6.3f}' for f1 in f1s)} {auc_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
