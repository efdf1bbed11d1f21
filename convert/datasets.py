"""Training data in the layouts people have: a folder per class, a CSV, IDX (MNIST) files, a teachcam export.

Every loader returns a :class:`Dataset`: class names and, per example, a way to get its
RGB uint8 pixels. Unreadable images are skipped with a count and a warning; the load fails
(one clear :class:`DatasetError`) only when nothing usable is left: an empty source, a single
class, or a class whose images are all unreadable.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.convert.idx import read_idx
from teachcam.edge.errors import DatasetError
from teachcam.edge.model.images import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Examples with integer labels into ``classes``; ``images`` holds paths or arrays."""

    classes: list[str]
    images: list  # Path or np.ndarray (H, W) / (H, W, 3) uint8
    labels: np.ndarray
    source: str
    skipped: list[str] = field(default_factory=list)
    _tmp: object = None  # keeps an extracted archive alive

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        counter = Counter(self.labels.tolist())
        return {name: counter.get(i, 0) for i, name in enumerate(self.classes)}

    def pixels(self, i: int, min_side: int = 0) -> np.ndarray:
        """RGB uint8 pixels of example ``i``, as the device reads the same image from a file."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            return np.repeat(item[:, :, None], 3, axis=2) if item.ndim == 2 else item
        return read_image(item, min_side=min_side)

    def subset(self, indices) -> Dataset:
        indices = list(indices)
        return Dataset(self.classes, [self.images[i] for i in indices], self.labels[indices], self.source,
                       self.skipped, self._tmp)


def _build(pairs: list[tuple[object, str]], source: str, skipped: list[str], tmp=None) -> Dataset:
    if not pairs:
        raise DatasetError(f"{source}: no images found (expected a folder per class, a CSV of path,label, "
                           "IDX files, or a teachcam export zip)")
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise DatasetError(f"{source}: only one class ({classes[0]!r}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(classes)}
    dataset = Dataset(classes, [p for p, _ in pairs], np.array([index[label] for _, label in pairs], np.int64),
                      source, skipped, tmp)
    counts = dataset.counts()
    most, least = max(counts.values()), min(counts.values())
    if least * 50 <= most:
        log.warning("%s: class sizes are very unequal (%d to %d examples); training balances them", source, least,
                    most)
    return dataset


def _check_readable(pairs: list[tuple[Path, str]], source: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """Drop unreadable images (counted, warned); fail if a class has none left."""
    good, skipped = [], []
    for path, label in pairs:
        try:
            with Image.open(path) as image:
                image.verify()
            good.append((path, label))
        except Exception as exc:  # anything Pillow cannot verify is skipped, not fatal
            skipped.append(f"{path}: {exc.__class__.__name__}")
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", source, len(skipped), skipped[0])
    before = Counter(label for _, label in pairs)
    after = Counter(label for _, label in good)
    empty = [label for label in before if after.get(label, 0) == 0]
    if empty:
        raise DatasetError(f"{source}: class {empty[0]!r} has no readable images")
    return good, skipped


def load_folder(folder: Path) -> Dataset:
    """One sub-folder per class (names may hold spaces or any language)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs = [(f, c.name) for c in classes for f in sorted(c.rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    empty = [c.name for c in classes if not any(label == c.name for _, label in pairs)]
    if pairs and empty:
        raise DatasetError(f"{folder}: class folder {empty[0]!r} has no images")
    good, skipped = _check_readable(pairs, str(folder))
    return _build(good, str(folder), skipped)


def load_csv(path: Path) -> Dataset:
    """Rows of ``path,label`` (paths relative to the CSV; a header row is allowed)."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} ({exc})") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "label"], ["file", "label"], ["image", "label"]):
        rows = rows[1:]
    pairs, missing = [], []
    for number, row in enumerate(rows, 1):
        if len(row) < 2 or not row[1].strip():
            raise DatasetError(f"{path}: row {number} is not `path,label`: {','.join(row)!r}")
        image = (path.parent / row[0].strip()).resolve()
        if not image.is_file():
            missing.append(row[0])
            continue
        pairs.append((image, row[1].strip()))
    if missing:
        log.warning("%s: %d row(s) point to missing files (skipped), e.g. %s", path, len(missing), missing[0])
    good, skipped = _check_readable(pairs, str(path))
    return _build(good, str(path), skipped + [f"missing: {m}" for m in missing])


def load_idx(images_path: Path, class_names: tuple[str, ...] | None = None) -> Dataset:
    """An IDX image file and its labels file (``*-images-idx3-ubyte[.gz]`` + ``*-labels-idx1-ubyte[.gz]``)."""
    labels_path = Path(str(images_path).replace("images-idx3", "labels-idx1"))
    if labels_path == images_path or not labels_path.exists():
        raise DatasetError(f"no labels file next to {images_path} (expected {labels_path.name})")
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    count = int(labels.max()) + 1
    names = list(class_names) if class_names and len(class_names) == count else [str(i) for i in range(count)]
    return _build([(images[i], names[labels[i]]) for i in range(len(images))], str(images_path), [])


def load_dataset(data: str | Path) -> Dataset:
    """Load ``data`` in whichever layout it is.

    Raises:
        DatasetError: missing, empty, a single class, or a class with nothing readable.
    """
    path = Path(data)
    if not path.exists():
        raise DatasetError(f"training data not found: {path}")
    if path.is_dir():
        idx = sorted(path.glob("*images-idx3-ubyte*"))
        if idx and not any(p.is_dir() for p in path.iterdir()):
            train = [p for p in idx if p.name.startswith("train")] or idx
            return load_idx(train[0])
        return load_folder(path)
    if "images-idx3" in path.name:
        from teachcam.convert.idx import FASHION_MNIST_CLASSES

        names = FASHION_MNIST_CLASSES if "fashion" in str(path).lower() else None
        return load_idx(path, names)
    if path.suffix.lower() == ".csv":
        return load_csv(path)
    if zipfile.is_zipfile(path):
        tmp = tempfile.TemporaryDirectory(prefix="teachcam-data-")
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                target = (Path(tmp.name) / member.filename).resolve()
                if not str(target).startswith(str(Path(tmp.name).resolve())):
                    raise DatasetError(f"{path}: refusing an archive member outside the archive ({member.filename})")
            archive.extractall(tmp.name)
        dataset = load_folder(Path(tmp.name))
        dataset.source, dataset._tmp = str(path), tmp
        return dataset
    raise DatasetError(f"{path}: not a folder, CSV, IDX file or zip archive")


def stratified_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, validation) with ``fraction`` of every class (at least one example) held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(len(dataset.classes)):
        members = rng.permutation(np.flatnonzero(dataset.labels == c))
        if len(members) < 2:
            raise DatasetError(f"class {dataset.classes[c]!r} has {len(members)} example(s); need 2 or more to validate")
        k = max(1, int(round(len(members) * fraction)))
        val += members[:k].tolist()
        train += members[k:].tolist()
    return dataset.subset(sorted(train)), dataset.subset(sorted(val))


def limit_per_class(dataset: Dataset, total: int, seed: int = 0) -> Dataset:
    """At most ``total`` examples, spread evenly over classes (for quick runs and benchmarks)."""
    rng = np.random.default_rng(seed)
    per_class = max(1, total // len(dataset.classes))
    keep = []
    for c in range(len(dataset.classes)):
        members = np.flatnonzero(dataset.labels == c)
        keep += rng.choice(members, min(per_class, len(members)), replace=False).tolist()
    return dataset.subset(sorted(keep))

