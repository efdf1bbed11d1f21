"""The training report written into the bundle: curves, confusion matrix, sample grid, metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for i, name in enumerate(names):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        out[name] = {"precision": round(float(tp / predicted), 4) if predicted else 0.0,
                     "recall": round(float(tp / actual), 4) if actual else 0.0, "support": int(actual)}
    return out


def _plt():
    import warnings

    import matplotlib

    # Class names in scripts the default font lacks (CJK, ...) draw as boxes; that is not worth a warning each.
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(history.get(key, []), label="train")
        ax.plot(history.get(f"val_{key}", []), label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    plt = _plt()
    size = max(4, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() or 1
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(images: list[np.ndarray], truth: list[str], predicted: list[str], path: Path, count: int = 24) -> None:
    plt = _plt()
    count = min(count, len(images))
    cols = 6
    rows = max(1, (count + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2, rows * 2.3), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        image = images[k]
        if image.ndim == 3 and image.shape[2] == 1:  # greyscale model input
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        right = truth[k] == predicted[k]
        ax.set_title(predicted[k] if right else f"{predicted[k]}\n(true: {truth[k]})", fontsize=8,
                     color="black" if right else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60] or "class"


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
