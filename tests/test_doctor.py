"""The dataset doctor's exit codes and the files it names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import write_image, write_label

from project.doctor import main


def test_clean_dataset_exits_zero(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "No problems found." in out and "4A" in out and "calcification" in out


def test_corrupt_label_is_named(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    label = tiny_dataset / "train" / "cla" / "2类" / "labels" / "2.txt"
    label.write_text("garbage\n")
    assert main([str(tiny_dataset)]) == 1
    assert f"{label}: bad label file" in capsys.readouterr().out


def test_corrupt_image_is_named(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    image = tiny_dataset / "train" / "fea" / "images" / "11.png"
    image.write_bytes(image.read_bytes()[:40])
    assert main([str(tiny_dataset)]) == 1
    assert f"{image}: unreadable image" in capsys.readouterr().out


def test_duplicates_within_train_and_across_test(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    cla = tiny_dataset / "train" / "cla" / "2类" / "images"
    shutil.copy(cla / "1.jpg", tiny_dataset / "testB" / "cla" / "50.jpg")
    shutil.copy(cla / "2.jpg", tiny_dataset / "train" / "cla" / "4类a" / "images" / "2.jpg")
    (tiny_dataset / "train" / "cla" / "4类a" / "labels" / "2.txt").write_text("3 0.5 0.5 0.2 0.3\n")
    assert main([str(tiny_dataset)]) == 1
    out = capsys.readouterr().out
    assert "duplicate across train and test" in out and "50.jpg" in out
    assert "duplicate within train" in out and "4类a/images/2.jpg" in out


def test_one_image_labelled_for_both_tasks_is_clean(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    cla = tiny_dataset / "train" / "cla" / "2类"
    fea = tiny_dataset / "train" / "fea"
    shutil.copy(cla / "images" / "2.jpg", fea / "images" / "2.jpg")
    shutil.copy(fea / "shape_labels" / "10.txt", fea / "shape_labels" / "2.txt")
    assert main([str(tiny_dataset)]) == 0
    assert "No problems found." in capsys.readouterr().out


def test_not_a_dataset_exits_two(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 2
    assert main([str(tmp_path / "absent")]) == 2


def test_coarse_label_folder_is_counted(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tiny_dataset / "train" / "cla" / "4类"
    write_image(folder / "images" / "30.jpg", 30)
    write_label(folder / "labels" / "30.txt", "3 0.5 0.5 0.2 0.3")
    (tiny_dataset / "dataset.yaml").write_text("coarse_labels: {'4': [4A, 4B, 4C]}\n")
    assert main([str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^4A\s+1\s*$", out, re.M) and re.search(r"^4\s+1\s*$", out, re.M)
