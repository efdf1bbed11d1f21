"""The training report written into the bundle: curves, confusion matrix, sample grid, metrics.json."""

from __future__ import annotations

import functools
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


# Fonts for scripts DejaVu Sans lacks (CJK, Arabic, Hebrew, Indic, Thai ...), used as per-glyph fallbacks
# when installed (Debian: fonts-noto-cjk, fonts-droid-fallback, fonts-wqy-microhei, fonts-noto-core).
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
    "Droid Sans Fallback", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "IPAexGothic", "IPAGothic", "TakaoPGothic",
    "Hiragino Sans", "PingFang SC", "Apple SD Gothic Neo", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic",
    "Arial Unicode MS", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari",
    "Noto Sans Thai",
)


@functools.cache
def _refresh_fonts() -> None:
    """Add fonts installed after matplotlib cached its font list (once per process)."""
    from matplotlib import font_manager

    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known and path.lower().endswith((".ttf", ".otf", ".ttc")):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                pass


def _fonts() -> list:
    """(name, path) of DejaVu Sans and the installed fallback fonts, in order of preference."""
    from matplotlib import font_manager

    by_name: dict = {}
    for entry in font_manager.fontManager.ttflist:
        by_name.setdefault(entry.name, entry.fname)
    return [(name, by_name[name]) for name in ("DejaVu Sans", *FALLBACK_FONTS) if name in by_name]


def _plt():
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Missing glyphs are reported once, by missing_glyphs(), not once per character drawn.
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
    plt.rcParams["font.family"] = [name for name, _ in _fonts()] or ["sans-serif"]
    return plt


def missing_glyphs(names: list[str]) -> str:
    """The characters of ``names`` that no installed font can draw (they would show as boxes), or ""."""
    from matplotlib.ft2font import FT2Font

    wanted = {c for name in names for c in name if not c.isspace()}
    if any(ord(c) > 0x24F for c in wanted):  # beyond Latin: perhaps a font matplotlib has not seen yet
        _refresh_fonts()
    for _, path in _fonts():
        if not wanted:
            break
        covered = set(FT2Font(path).get_charmap())
        wanted = {c for c in wanted if ord(c) not in covered}
    return "".join(sorted(wanted))


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
