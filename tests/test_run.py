"""run.py: exact CSV bytes, numeric order, a corpus of bad files, exit codes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.submission import write_cla_csv, write_fea_csv
from project.data.transforms import Preprocess
from project.descriptors import DESCRIPTORS, LexiconModel, descriptor_vector
from project.models.checkpoint import CheckpointConfig, save_checkpoint
from project.models.factory import create_model
from project.predict import Predictions, average_over_lesions
from project.testb import main

ROOT = Path(__file__).resolve().parents[1]
TINY_DENSENET = {"growth_rate": 8, "block_config": [2, 2, 2, 2]}


def test_csv_bytes_are_exact(tmp_path: Path) -> None:
    write_cla_csv(tmp_path / "cla.csv", {"10.jpg": 5, "2.jpg": 0, "1.png": 3, "b.jpg": 1, "a.jpg": 2})
    assert (tmp_path / "cla.csv").read_bytes() == (
        b"img_name,label\n1.png,3\n2.jpg,0\n10.jpg,5\na.jpg,2\nb.jpg,1\n"
    )
    write_fea_csv(tmp_path / "fea.csv", {"3.jpg": [1, 0, 1, 1], "1.jpg": [0, 0, 0, 1]}, id_style="index")
    assert (tmp_path / "fea.csv").read_bytes() == (
        b"id,boundary,calcification,direction,shape\n1,0,0,0,1\n2,1,0,1,1\n"
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained but valid checkpoints of both kinds (prediction plumbing needs no skill)."""
    folder = tmp_path_factory.mktemp("weights")
    preprocess = Preprocess(img_size=32).to_dict()
    cls_kwargs = {"backbone": "convnext_atto", "num_classes": 6}
    save_checkpoint(folder / "cls.safetensors", create_model("my_convnext", **cls_kwargs),
                    CheckpointConfig("cla", "my_convnext", cls_kwargs, ["2", "3", "4A", "4B", "4C", "5"], preprocess))
    fea_kwargs = {"backbone": "densenet121", **TINY_DENSENET}
    tasks = ["boundary", "calcification", "direction", "shape"]
    save_checkpoint(folder / "fea.safetensors", create_model("my_densenet", **fea_kwargs),
                    CheckpointConfig("fea", "my_densenet", fea_kwargs, tasks, preprocess,
                                     thresholds={"boundary": 0.2, "shape": 0.9}))
    return folder


def _grey(size: tuple[int, int] = (40, 48), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)


def _good_files(folder: Path) -> set[str]:
    """Readable images, some of them odd (16-bit, RGBA, CMYK, palette, a 20,000-px-wide strip, PNG named .jpg)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grey()).save(folder / "1.jpg")
    Image.fromarray(_grey(seed=2)).save(folder / "2.png")
    Image.fromarray(_grey().astype(np.uint16) * 200).save(folder / "3.png")
    Image.fromarray(np.dstack([_grey()] * 4), "RGBA").save(folder / "4.png")
    Image.fromarray(np.dstack([_grey()] * 3)).convert("CMYK").save(folder / "5.jpg")
    Image.fromarray(_grey()).convert("P").save(folder / "6.bmp")
    Image.fromarray(_grey((16, 20_000))).save(folder / "7.png")
    Image.fromarray(_grey(seed=8)).save(folder / "8.jpg", format="PNG")
    Image.fromarray(_grey(seed=9)).save(folder / "10.tif")
    return {"1.jpg", "2.png", "3.png", "4.png", "5.jpg", "6.bmp", "7.png", "8.jpg", "10.tif"}


def _bad_files(folder: Path) -> set[str]:
    """Eleven kinds of file that cannot be read as an image."""
    jpeg = (folder / "1.jpg").read_bytes()
    png = (folder / "2.png").read_bytes()
    (folder / "101.jpg").write_bytes(b"")
    (folder / "102.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "103.png").write_bytes(png[:60])
    (folder / "104.jpg").write_text("<html>not found</html>")
    (folder / "105.png").write_bytes(png[:33] + bytes(len(png) - 33))
    (folder / "106.jpg").mkdir()
    (folder / "107.tif").write_bytes(b"II*\x00" + bytes(20))
    (folder / "108.bmp").write_bytes(b"BM" + bytes(10))
    (folder / "109.dcm").write_bytes(b"this is not DICOM")
    (folder / "110.jpeg").write_bytes(jpeg[:2])
    (folder / "111.png").write_bytes(bytes(range(256)) * 4)
    return {"101.jpg", "102.jpg", "103.png", "104.jpg", "105.png", "106.jpg", "107.tif", "108.bmp",
            "109.dcm", "110.jpeg", "111.png"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_bad_files_are_listed_and_good_rows_kept(tmp_path: Path, weights: Path) -> None:
    test_dir = tmp_path / "testB"
    good = _good_files(test_dir / "cla")
    bad = _bad_files(test_dir / "cla")
    _good_files(test_dir / "fea")
    out = tmp_path / "out"
    argv = ["--data", str(test_dir), "--weights-dir", str(weights), "--out-dir", str(out), "--workers", "0"]
    assert main(argv) == 0
    cla = _rows(out / "cla_pre.csv")
    assert [r["img_name"] for r in cla] == ["1.jpg", "2.png", "3.png", "4.png", "5.jpg", "6.bmp", "7.png",
                                            "8.jpg", "10.tif"]
    assert {r["img_name"] for r in cla} == good and all(r["label"] in "012345" for r in cla)
    assert len(_rows(out / "fea_pre.csv")) == len(good)
    errors = {r["img_name"]: r["reason"] for r in _rows(out / "run_errors.csv")}
    assert set(errors) == bad
    assert all(errors.values())
    assert "empty" in errors["101.jpg"] and "directory" in errors["106.jpg"]
    assert main([*argv, "--strict"]) == 1


def test_thresholds_from_the_checkpoint_decide_features(tmp_path: Path, weights: Path) -> None:
    test_dir = tmp_path / "testB"
    _good_files(test_dir / "fea")
    main(["--data", str(test_dir), "--weights-dir", str(weights), "--out-dir", str(tmp_path), "--workers", "0"])
    from project.models.checkpoint import load_checkpoint
    from project.predict import Member, predict_folder

    model, config = load_checkpoint(weights / "fea.safetensors")
    member = Member(model, config, Preprocess.from_dict(config.preprocess), weights / "fea.safetensors")
    paths = sorted((test_dir / "fea").iterdir(), key=lambda p: (len(p.stem), p.stem))
    probs = predict_folder(paths, [member], torch.device("cpu"), workers=0).probs
    expected = (probs >= np.array([0.2, 0.5, 0.5, 0.9])).astype(int)
    written = np.array([[int(r[t]) for t in config.labels] for r in _rows(tmp_path / "fea_pre.csv")])
    assert np.array_equal(written, expected)


def test_missing_folder_or_checkpoint_exits_two(tmp_path: Path, weights: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "absent"), "--weights-dir", str(weights)]) == 2
    (tmp_path / "testB" / "cla").mkdir(parents=True)
    assert main(["--data", str(tmp_path / "testB"), "--weights-dir", str(tmp_path / "none")]) == 2
    assert main(["--data", str(tmp_path / "testB"), "--cls-weights", str(tmp_path / "x.safetensors")]) == 2
    messages = capsys.readouterr().err.strip().splitlines()
    assert len(messages) == 3 and all(m.startswith("run.py: ") for m in messages)


def test_run_py_defaults_from_the_working_directory(tmp_path: Path, weights: Path) -> None:
    _good_files(tmp_path / "testB" / "cla")
    (tmp_path / "weights").symlink_to(weights)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--workers", "0"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout
    assert len(_rows(tmp_path / "cla_pre.csv")) == 9 and _rows(tmp_path / "run_errors.csv") == []


def test_probabilities_files_follow_the_label_files_row_for_row(tmp_path: Path, weights: Path) -> None:
    test_dir = tmp_path / "testB"
    _good_files(test_dir / "cla")
    _bad_files(test_dir / "cla")
    _good_files(test_dir / "fea")
    out = tmp_path / "out"
    main(["--data", str(test_dir), "--weights-dir", str(weights), "--out-dir", str(out), "--workers", "0",
          "--probabilities"])

    labels, probs = _rows(out / "cla_pre.csv"), _rows(out / "cla_prob.csv")
    classes = ["2", "3", "4A", "4B", "4C", "5"]
    assert list(probs[0]) == ["img_name", *classes, "malignancy"]
    assert [r["img_name"] for r in probs] == [r["img_name"] for r in labels]
    table = np.array([[float(r[c]) for c in classes] for r in probs])
    np.testing.assert_allclose(table.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose([float(r["malignancy"]) for r in probs], table[:, 2:].sum(axis=1), atol=1e-5)
    assert table.argmax(axis=1).tolist() == [int(r["label"]) for r in labels]
    features = _rows(out / "fea_prob.csv")
    decided = [[int(float(r[t]) >= limit) for t, limit in (("boundary", 0.2), ("shape", 0.9))] for r in features]
    assert decided == [[int(r["boundary"]), int(r["shape"])] for r in _rows(out / "fea_pre.csv")]


def test_each_members_probabilities_are_its_own_across_preprocessing_groups(tmp_path: Path) -> None:
    from project.predict import Member, predict_folder

    _good_files(tmp_path / "images")
    paths = sorted((tmp_path / "images").iterdir())
    members = []
    for seed, size in ((0, 32), (1, 48), (2, 32)):
        torch.manual_seed(seed)
        kwargs = {"num_classes": 4}
        config = CheckpointConfig("cla", "resnet10t", kwargs, ["2", "3", "4", "5"], Preprocess(size).to_dict())
        model = create_model("resnet10t", **kwargs).eval()
        members.append(Member(model, config, Preprocess(size), tmp_path / f"m{seed}.safetensors"))

    together = predict_folder(paths, members, torch.device("cpu"), workers=0, tta=True)

    assert together.member_probs.shape == (3, len(paths), 4)
    for member, probs in zip(members, together.member_probs, strict=True):
        alone = predict_folder(paths, [member], torch.device("cpu"), workers=0, tta=True).probs
        np.testing.assert_allclose(probs, alone, atol=1e-6)
    np.testing.assert_allclose(together.probs, together.member_probs.mean(axis=0), atol=1e-6)
    assert not np.allclose(together.member_probs[0], together.member_probs[2])


def test_average_over_lesions_replaces_each_view_by_its_lesions_mean() -> None:
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    aux = np.array([[1.0], [0.0], [0.5], [0.25]], dtype=np.float32)
    before = Predictions(names=["a.png", "b.png", "c.png", "d.png"], probs=probs, aux=aux, errors={"e.png": "empty"},
                         member_probs=np.stack([probs, probs[::-1]]))
    after = average_over_lesions(before, {"a.png": "L1", "c.png": "L1", "b.png": "L2", "gone.png": "L1"})
    np.testing.assert_allclose(after.probs, [[0.75, 0.25], [0.1, 0.9], [0.75, 0.25], [0.3, 0.7]])
    np.testing.assert_allclose(after.member_probs[0], after.probs)
    np.testing.assert_allclose(after.member_probs[1], [[0.2, 0.8], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_allclose(after.aux, [[0.75], [0.0], [0.75], [0.25]])
    assert (after.names, after.errors) == (before.names, before.errors)
    assert after.probs.dtype == np.float32
    np.testing.assert_array_equal(before.probs, probs)  # the input is left as it was
    empty = average_over_lesions(Predictions(probs=np.zeros((0, 2), dtype=np.float32)), {"a.png": "L1"})
    assert empty.probs.shape == (0, 2) and empty.aux is None


def test_lesions_option_gives_the_views_of_a_lesion_one_grade(tmp_path: Path, weights: Path, capsys) -> None:
    test_dir = tmp_path / "testB"
    _good_files(test_dir / "cla")
    lesions = tmp_path / "lesions.csv"
    lesions.write_text("image,lesion\n1.jpg,7\n2.png,7\n3.png,\n10.tif,8\n4.png,8\n", encoding="utf-8")
    argv = ["--data", str(test_dir), "--cls-weights", str(weights / "cls.safetensors"), "--workers", "0",
            "--probabilities"]
    main([*argv, "--out-dir", str(tmp_path / "alone")])
    main([*argv, "--out-dir", str(tmp_path / "lesions"), "--lesions", str(lesions)])
    assert f"cla: 4 of 9 images named in {lesions}, averaged over 2 lesions" in capsys.readouterr().out

    def table(folder: str) -> dict[str, np.ndarray]:
        return {r["img_name"]: np.array([float(r[c]) for c in ("2", "3", "4A", "4B", "4C", "5")])
                for r in _rows(tmp_path / folder / "cla_prob.csv")}

    alone, together = table("alone"), table("lesions")
    for pair in (("1.jpg", "2.png"), ("4.png", "10.tif")):
        expected = (alone[pair[0]] + alone[pair[1]]) / 2
        for name in pair:
            np.testing.assert_allclose(together[name], expected, atol=2e-6)
    assert not np.allclose(alone["1.jpg"], alone["2.png"], atol=1e-4)  # the views did differ
    for name in ("3.png", "5.jpg", "6.bmp", "7.png", "8.jpg"):
        np.testing.assert_allclose(together[name], alone[name], atol=2e-6)
    labels = {r["img_name"]: r["label"] for r in _rows(tmp_path / "lesions" / "cla_pre.csv")}
    assert labels["1.jpg"] == labels["2.png"] and labels["4.png"] == labels["10.tif"]

    (tmp_path / "bad.csv").write_text("image,case\n1.jpg,7\n", encoding="utf-8")
    assert main([*argv, "--out-dir", str(tmp_path / "bad"), "--lesions", str(tmp_path / "bad.csv")]) == 2
    message = capsys.readouterr().err
    assert str(tmp_path / "bad.csv") in message and "lesion" in message
    (tmp_path / "twice.csv").write_text("image,lesion\n1.jpg,7\n1.jpg,8\n", encoding="utf-8")
    assert main([*argv, "--out-dir", str(tmp_path / "bad"), "--lesions", str(tmp_path / "twice.csv")]) == 2
    assert f"{tmp_path / 'twice.csv'}: line 3: 1.jpg" in capsys.readouterr().err


def test_an_outlined_lesion_gets_the_lexicon_models_grade_averaged_in(tmp_path: Path, weights: Path, capsys) -> None:
    test_dir = tmp_path / "testB"
    _good_files(test_dir / "cla")
    masks = tmp_path / "masks"
    masks.mkdir()
    outline = np.zeros((40, 48), np.uint8)
    outline[10:25, 12:30] = 255
    Image.fromarray(outline).save(masks / "1.png")
    Image.fromarray(outline).save(masks / "2.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks / "8.png")  # empty: not used, and said so
    Image.fromarray(outline[:30]).save(masks / "10.png")  # the wrong size: not used, and said so
    classes = ["2", "3", "4A", "4B", "4C", "5"]
    rng = np.random.default_rng(0)
    lexicon = LexiconModel.fit(rng.normal(size=(60, len(DESCRIPTORS))), np.arange(60) % 6, classes)
    lexicon.save(tmp_path / "lexicon.json")
    argv = ["--data", str(test_dir), "--cls-weights", str(weights / "cls.safetensors"), "--workers", "0",
            "--probabilities"]
    main([*argv, "--out-dir", str(tmp_path / "alone")])
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(tmp_path / "both"), "--lexicon", str(tmp_path / "lexicon.json"),
                 "--masks", str(masks)]) == 0
    printed = capsys.readouterr()
    assert f"cla: the lexicon model averaged in for 2 of 9 images (outlines in {masks})" in printed.out
    assert f"{masks / '8.png'}: the lesion mask is empty" in printed.err
    assert f"{masks / '10.png'}: mask is 48x30 px, its image 48x40" in printed.err

    def table(folder: str) -> dict[str, np.ndarray]:
        rows = _rows(tmp_path / folder / "cla_prob.csv")
        return {r["img_name"]: np.array([float(r[c]) for c in classes]) for r in rows}

    alone, both = table("alone"), table("both")
    for name in ("1.jpg", "2.png"):
        image = np.asarray(Image.open(test_dir / "cla" / name).convert("RGB"))
        own = lexicon.predict_proba(descriptor_vector(image, outline > 0)[None])[0]
        np.testing.assert_allclose(both[name], (alone[name] + own) / 2, atol=2e-6)
    for name in ("3.png", "4.png", "5.jpg", "6.bmp", "7.png", "8.jpg", "10.tif"):
        np.testing.assert_array_equal(both[name], alone[name])
    assert main([*argv, "--out-dir", str(tmp_path / "bad"), "--lexicon", str(tmp_path / "lexicon.json")]) == 2
    assert "--lexicon and --masks go together" in capsys.readouterr().err
