"""PNG plots of a run: learning curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from project.fileio import atomic_write_bytes  # noqa: E402


def save_figure(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_learning_curves(rows: Sequence[Mapping[str, float]], path: Path) -> None:
    """Losses on the left, validation scores on the right (empty without validation), against the epoch."""
    epochs = [row["epoch"] for row in rows]
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key in [k for k in ("train_loss", "val_loss") if k in rows[0]]:
        loss_axis.plot(epochs, [row[key] for row in rows], marker="o", label=key)
    score_keys = [k for k in rows[0] if k.startswith("val_") and k != "val_loss"]
    for key in score_keys:
        score_axis.plot(epochs, [row[key] for row in rows], marker="o", label=key)
    for axis, title in ((loss_axis, "loss"), (score_axis, "validation")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    save_figure(figure, path)


def plot_confusion_matrices(
    matrices: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]], path: Path
) -> None:
    """One panel per matrix (rows: truth, columns: prediction), counts written in the cells."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for axis, (title, matrix) in zip(axes[0], matrices.items()):
        matrix = np.asarray(matrix)
        axis.imshow(matrix, cmap="Blues")
        ticks = range(len(labels[title]))
        axis.set_xticks(ticks, labels[title])
        axis.set_yticks(ticks, labels[title])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    save_figure(figure, path)
