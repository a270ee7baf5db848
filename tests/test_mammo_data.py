"""Prepared mammography folders: manifest rows to samples (breast ids, groups, folds), problems, the dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from project.mammo.data import MammoDataset, NotAPreparedFolder, load_prepared
from project.mammo.preprocess import MammoPreprocess, to_tensor

GRADIENT = np.tile(np.arange(4, dtype=np.uint8) * 50, (8, 1))


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), GRADIENT)
    for name in ("b", "c"):
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((8, 4), 40, np.uint8))
    (root / "manifest.csv").write_text(
        "image,patient,laterality,view,label,png,fold\n"
        "a,7,L,CC,1,images/a.png,2\n"
        "b,7,R,MLO,,images/b.png,0\n"
        "c,9,L,CC,yes,images/c.png,1\n"
        "d,9,R,CC,0,images/d.png,1\n")
    return root


def test_manifest_rows_become_samples_and_problems(tmp_path: Path) -> None:
    scan = load_prepared(_folder(tmp_path / "data"))
    assert [s.extra["image"] for s in scan.samples] == ["a", "b"]
    assert [s.label for s in scan.samples] == [1, None]
    assert [(s.group, s.fold, s.extra["prediction_id"]) for s in scan.samples] == [("7", 2, "7_L"), ("7", 0, "7_R")]
    assert sorted(p.kind for p in scan.problems) == ["label", "missing"]
    assert all("manifest.csv:" in p.detail or p.kind == "missing" for p in scan.problems)
    with pytest.raises(NotAPreparedFolder, match="no manifest.csv"):
        load_prepared(tmp_path)


def test_dataset_yields_what_prediction_computes(tmp_path: Path) -> None:
    scan = load_prepared(_folder(tmp_path / "data"))
    pre = MammoPreprocess(size=(8, 4))
    data = MammoDataset(scan.samples, pre, lambda s: torch.tensor(float(s.label or 0)),
                        augment=lambda image: image[:, ::-1])
    image, target = data[0]
    assert image.shape == (1, 8, 4) and target.item() == 1.0
    assert torch.equal(image, to_tensor(np.ascontiguousarray(GRADIENT[:, ::-1]), pre))
    resized = MammoDataset(scan.samples, MammoPreprocess(size=(16, 8)), lambda s: torch.tensor(0.0))
    assert resized[1][0].shape == (1, 16, 8)
    assert resized[1][0].mean().item() == pytest.approx((40 / 255 - pre.mean) / pre.std, abs=1e-6)
