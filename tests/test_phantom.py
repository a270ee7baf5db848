"""The synthetic phantom: determinism, exact challenge layout, feature appearance, class rule."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS
from project.phantom import (
    LesionFeatures,
    birads_class,
    class_folder,
    generate_phantom,
    main,
    render_image,
    sample_case,
)

SIZE, N_TRAIN, N_TEST, SEED = 96, 48, 24, 3
LABEL_LINE = re.compile(r"^(\d) (\d\.\d{6}) (\d\.\d{6}) (\d\.\d{6}) (\d\.\d{6})\n$")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "data"
    generate_phantom(out, N_TRAIN, N_TEST, SIZE, SEED)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def read_grey(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", path
        return np.asarray(image, dtype=np.float64)


def read_label(path: Path) -> tuple[int, tuple[float, ...]]:
    text = path.read_text()
    match = LABEL_LINE.match(text)
    assert match, f"{path}: {text!r}"
    value, *box = match.groups()
    return int(value), tuple(float(c) for c in box)


def box_slices(box: tuple[float, ...], size: int) -> tuple[slice, slice]:
    cx, cy, w, h = (c * size for c in box)
    rows = slice(max(0, round(cy - h / 2)), round(cy + h / 2))
    return rows, slice(max(0, round(cx - w / 2)), round(cx + w / 2))


def feature_images(root: Path) -> list[tuple[np.ndarray, dict[str, int], tuple[float, ...]]]:
    fea = root / "train" / "fea"
    cases = []
    for image_path in sorted((fea / "images").iterdir()):
        labels = {t: read_label(fea / f"{t}_labels" / f"{image_path.stem}.txt") for t in FEATURE_TASKS}
        boxes = {box for _, box in labels.values()}
        assert len(boxes) == 1, f"{image_path}: feature files disagree on the box"
        cases.append((read_grey(image_path), {t: v for t, (v, _) in labels.items()}, boxes.pop()))
    return cases


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(
    phantom: Path, tmp_path: Path
) -> None:
    args = ["--n-train", str(N_TRAIN), "--n-test", str(N_TEST), "--size", str(SIZE)]
    main(["--out", str(tmp_path / "same"), *args, "--seed", str(SEED)])
    main(["--out", str(tmp_path / "other"), *args, "--seed", str(SEED + 1)])
    reference = tree_bytes(phantom)
    assert tree_bytes(tmp_path / "same") == reference
    other = tree_bytes(tmp_path / "other")
    shared_images = [name for name in reference.keys() & other.keys() if name.endswith(".jpg")]
    assert len(shared_images) >= N_TRAIN // 2 + N_TEST
    assert all(other[name] != reference[name] for name in shared_images)


def test_refuses_a_non_empty_output_folder(phantom: Path) -> None:
    with pytest.raises(FileExistsError, match=str(phantom)):
        generate_phantom(phantom, 6, 2, SIZE, 0)
    with pytest.raises(SystemExit):
        main(["--out", str(phantom)])


def test_layout_is_the_challenge_one(phantom: Path) -> None:
    assert sorted(p.name for p in phantom.iterdir()) == ["testB", "testB_gt", "train"]
    cla = phantom / "train" / "cla"
    assert sorted(p.name for p in cla.iterdir()) == sorted(class_folder(i) for i in range(6))
    assert class_folder(2) == "4A类"
    train_stems: list[str] = []
    for index, name in enumerate(BIRADS_CLASSES):
        folder = cla / f"{name}类"
        images = sorted(p.stem for p in (folder / "images").iterdir())
        assert [p.suffix for p in (folder / "images").iterdir()] == [".jpg"] * len(images)
        assert len(images) == N_TRAIN // 2 // len(BIRADS_CLASSES)
        assert sorted(p.stem for p in (folder / "labels").iterdir()) == images
        for stem in images:
            class_id, box = read_label(folder / "labels" / f"{stem}.txt")
            assert class_id == index + 1
        train_stems += images
    fea = phantom / "train" / "fea"
    assert sorted(p.name for p in fea.iterdir()) == sorted(
        ["images", *(f"{t}_labels" for t in FEATURE_TASKS)]
    )
    fea_stems = sorted(p.stem for p in (fea / "images").iterdir())
    assert len(fea_stems) == N_TRAIN // 2
    for task in FEATURE_TASKS:
        assert sorted(p.stem for p in (fea / f"{task}_labels").iterdir()) == fea_stems
    all_stems = train_stems + fea_stems
    assert len(set(all_stems)) == N_TRAIN and all(s.isdigit() for s in all_stems)
    for task_dir in ("cla", "fea"):
        names = {p.name for p in (phantom / "testB" / task_dir).iterdir()}
        assert names == {f"{i}.jpg" for i in range(1, N_TEST // 2 + 1)}
    assert sorted(p.name for p in (phantom / "testB_gt").iterdir()) == ["cla_gt.csv", "fea_gt.csv"]


def test_every_image_is_a_grey_jpeg_of_the_requested_size(phantom: Path) -> None:
    images = list(phantom.rglob("*.jpg"))
    assert len(images) == N_TRAIN + N_TEST
    for path in images:
        assert path.read_bytes()[:2] == b"\xff\xd8"
        assert read_grey(path).shape == (SIZE, SIZE)


def test_boxes_lie_in_the_image_and_around_a_dark_lesion(phantom: Path) -> None:
    labelled = [(p, p.parent.parent / "images" / f"{p.stem}.jpg")
                for p in (phantom / "train" / "cla").glob("*/labels/*.txt")]
    labelled += [(p, phantom / "train" / "fea" / "images" / f"{p.stem}.jpg")
                 for p in (phantom / "train" / "fea" / "shape_labels").iterdir()]
    assert len(labelled) == N_TRAIN
    darkness = []
    for label_path, image_path in labelled:
        _, (cx, cy, w, h) = read_label(label_path)
        assert 0 < w and 0 < h and 0 <= cx - w / 2 and cx + w / 2 <= 1
        assert 0 <= cy - h / 2 and cy + h / 2 <= 1
        pixels = read_grey(image_path)
        rows, cols = box_slices((cx, cy, w, h), SIZE)
        inside = np.zeros_like(pixels, dtype=bool)
        inside[rows, cols] = True
        around = np.zeros_like(inside)
        around[box_slices((cx, cy, 2 * w, 2 * h), SIZE)] = True
        tissue = pixels[around & ~inside & (pixels > 20)].mean()  # > 20: not the black border
        darkness.append(pixels[inside].mean() / tissue)
        assert darkness[-1] < 1, image_path
    assert np.mean(darkness) < 0.7


def test_box_is_the_tight_box_of_the_dark_lesion_mask() -> None:
    for seed in range(16):
        features = LesionFeatures(*(int(bit) for bit in f"{seed:04b}"))
        image = render_image(features, 128, np.random.default_rng(seed))
        rows = np.flatnonzero(image.lesion_mask.any(axis=1))
        cols = np.flatnonzero(image.lesion_mask.any(axis=0))
        expected = ((cols[0] + cols[-1] + 1) / 256, (rows[0] + rows[-1] + 1) / 256,
                    (cols[-1] + 1 - cols[0]) / 128, (rows[-1] + 1 - rows[0]) / 128)
        assert np.allclose(image.box, expected)
        top, bottom, left, right = image.field_of_view
        in_view = np.zeros_like(image.lesion_mask)
        in_view[top:bottom, left:right] = True
        near = cv2.dilate(image.lesion_mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        pixels = image.pixels.astype(np.float64)
        assert pixels[image.lesion_mask].mean() < 0.7 * pixels[in_view & ~near].mean()


def test_direction_sets_the_box_aspect(phantom: Path) -> None:
    cases = feature_images(phantom)
    assert {labels["direction"] for _, labels, _ in cases} == {0, 1}
    for _, labels, (_, _, w, h) in cases:
        assert (h > w) if labels["direction"] else (w > h)


def test_calcifications_are_bright_specks_in_the_box(phantom: Path) -> None:
    bright: dict[int, list[int]] = {0: [], 1: []}
    for pixels, labels, box in feature_images(phantom):
        bright[labels["calcification"]].append(int((pixels[box_slices(box, SIZE)] >= 235).sum()))
    assert len(bright[0]) >= 5 and len(bright[1]) >= 5
    assert np.mean(bright[1]) > 4 * np.mean(bright[0]) + 1
    assert min(bright[1]) >= 1


def solidity(mask: np.ndarray) -> float:
    points = cv2.findNonZero(mask.astype(np.uint8))
    hull = np.zeros(mask.shape, dtype=np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    return mask.sum() / hull.sum()


def test_irregular_shape_is_less_convex_than_oval() -> None:
    def solidities(shape: int) -> list[float]:
        return [solidity(render_image(LesionFeatures(0, 0, s % 2, shape), SIZE,
                                      np.random.default_rng(s)).lesion_mask) for s in range(8)]

    oval, irregular = solidities(0), solidities(1)
    assert min(oval) > 0.93
    assert np.mean(irregular) < np.mean(oval) - 0.07


def edge_contrast(features: LesionFeatures, seed: int) -> float:
    """Step across the outline's first 2 px relative to the step between inside and tissue."""
    image = render_image(features, SIZE, np.random.default_rng(seed))
    mask = image.lesion_mask.astype(np.uint8)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    pixels = image.pixels.astype(np.float64)
    near = pixels[(outside > 0) & (outside <= 2)].mean() - pixels[(inside > 0) & (inside <= 2)].mean()
    far = pixels[(outside >= 5) & (outside <= 10)].mean() - pixels[inside >= 3].mean()
    return near / far


def test_not_circumscribed_margin_is_blurred() -> None:
    sharp = [edge_contrast(LesionFeatures(0, 0, s % 2, 0), s) for s in range(8)]
    blurred = [edge_contrast(LesionFeatures(1, 0, s % 2, 0), s) for s in range(8)]
    assert np.mean(blurred) < 0.8 * np.mean(sharp)


def test_posterior_rating_brightens_or_shadows_below_the_lesion() -> None:
    features = LesionFeatures(0, 0, 0, 0)
    enhanced = render_image(features, SIZE, np.random.default_rng(0), posterior=0.0)
    shadowed = render_image(features, SIZE, np.random.default_rng(0), posterior=0.99)
    _, cols = box_slices(enhanced.box, SIZE)
    bottom = round((enhanced.box[1] + enhanced.box[3] / 2) * SIZE) + 2
    below = (slice(bottom, enhanced.field_of_view[1]), cols)
    assert enhanced.pixels[below].mean() > 1.5 * shadowed.pixels[below].mean()
    assert np.array_equal(enhanced.lesion_mask, shadowed.lesion_mask)


def test_black_border_surrounds_the_field_of_view_with_burnt_in_marks() -> None:
    image = render_image(LesionFeatures(1, 1, 1, 1), 128, np.random.default_rng(5))
    top, bottom, left, right = image.field_of_view
    pixels = image.pixels
    assert 0 < top and bottom < 128 and 0 < left and right < 128
    assert pixels[bottom:].max() == 0 and pixels[:, :left].max() == 0
    assert (pixels[:top] >= 150).sum() >= 10, "no text strip above the field of view"
    assert pixels[top:bottom, right:].max() == 200, "no depth ticks beside the field of view"
    assert pixels[top:bottom, left:right].mean() > 40


def test_class_rule_boundaries() -> None:
    assert [birads_class(0, 0.0), birads_class(0, 0.83), birads_class(0, 0.84)] == [0, 0, 1]
    assert [birads_class(2, 0.49), birads_class(2, 0.5)] == [2, 3]
    assert [birads_class(4, 0.16), birads_class(4, 0.17), birads_class(4, 0.999)] == [4, 5, 5]
    assert LesionFeatures._fields == FEATURE_TASKS


def test_sampled_cases_follow_the_rule_and_suspicion_grows_with_class() -> None:
    rng = np.random.default_rng(0)
    mean_sums = []
    for class_index in range(len(BIRADS_CLASSES)):
        cases = [sample_case(class_index, rng) for _ in range(200)]
        for case in cases:
            assert case.class_index == class_index
            assert 0 <= case.posterior < 1
            assert birads_class(sum(case.features), case.posterior) == class_index
        mean_sums.append(np.mean([sum(case.features) for case in cases]))
    assert all(a < b for a, b in zip(mean_sums, mean_sums[1:])), mean_sums
    with pytest.raises(ValueError, match="class_index"):
        sample_case(6, rng)


def test_ground_truth_lists_every_testb_image_once_in_numeric_order(phantom: Path) -> None:
    expected = [f"{i}.jpg" for i in range(1, N_TEST // 2 + 1)]
    for task_dir, header in (("cla", ["img_name", "label"]),
                             ("fea", ["img_name", *FEATURE_TASKS])):
        with (phantom / "testB_gt" / f"{task_dir}_gt.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == header
        assert [row[0] for row in rows[1:]] == expected
        assert {p.name for p in (phantom / "testB" / task_dir).iterdir()} == set(expected)
        values = {int(v) for row in rows[1:] for v in row[1:]}
        assert values <= (set(range(len(BIRADS_CLASSES))) if task_dir == "cla" else {0, 1})
