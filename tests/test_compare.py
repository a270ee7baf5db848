"""Paired comparison of cross-validation tables: differences by fold, wins, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from project.compare import CompareError, main, paired_differences, read_folds


def _cv(path: Path, macro_f1: list[float], biopsy: list[float | None], n: list[int] | None = None) -> Path:
    path.mkdir(parents=True)
    n = n or [100] * len(macro_f1)
    rows = [{"fold": f"fold{k}", "n": n[k], "macro_f1": m, "accuracy": 0.5, "kappa": 0.4, "auc_birads": 0.8,
             "auc_biopsy": b} for k, (m, b) in enumerate(zip(macro_f1, biopsy))]
    rows += [{"fold": "mean", "n": sum(n)}, {"fold": "sd", "n": None}]
    (path / "cv.json").write_text(json.dumps(rows))
    return path


def test_paired_differences_by_fold(tmp_path: Path) -> None:
    base = read_folds(_cv(tmp_path / "a", [0.50, 0.40, 0.60], [0.80, None, 0.90]))
    other = read_folds(_cv(tmp_path / "b", [0.55, 0.38, 0.66], [0.85, 0.70, 0.88]))
    result = paired_differences(base, other)
    f1 = result["macro_f1"]
    assert f1["difference"] == pytest.approx((0.05 - 0.02 + 0.06) / 3)
    assert f1["sd"] == pytest.approx(0.04358898943540674)
    assert (f1["better"], f1["folds"]) == (2, 3)
    assert f1["other"] == pytest.approx(1.59 / 3) and f1["baseline"] == pytest.approx(0.5)
    # A fold where either side has no figure is left out of the pairing.
    assert (result["auc_biopsy"]["folds"], result["auc_biopsy"]["better"]) == (2, 1)
    assert result["auc_biopsy"]["difference"] == pytest.approx(0.015)
    assert result["kappa"]["better"] == 0 and result["kappa"]["difference"] == 0


def test_refuses_unpaired_folds(tmp_path: Path) -> None:
    base = read_folds(_cv(tmp_path / "a", [0.5, 0.4], [0.8, 0.8]))
    with pytest.raises(CompareError, match="folds differ"):
        paired_differences(base, read_folds(_cv(tmp_path / "b", [0.5, 0.4, 0.3], [0.8, 0.8, 0.8])))
    with pytest.raises(CompareError, match="different image counts"):
        paired_differences(base, read_folds(_cv(tmp_path / "c", [0.5, 0.4], [0.8, 0.8], n=[100, 99])))


def test_command_line_table_and_errors(tmp_path: Path, capsys) -> None:
    a = _cv(tmp_path / "a", [0.50, 0.40], [0.80, 0.90])
    b = _cv(tmp_path / "b", [0.60, 0.45], [0.78, 0.91])
    assert main([str(a), str(b / "cv.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| report | macro-F1 |") and len(lines) == 3
    assert "0.525 (+0.075 ± 0.035, 2/2)" in lines[2]
    assert "0.845 (-0.005 ± 0.021, 1/2)" in lines[2]
    assert main([str(a), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
