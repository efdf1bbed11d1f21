"""Read IDX files (the MNIST / Fashion-MNIST format), gzipped or not. numpy only."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from teachcam.edge.errors import DatasetError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file.

    Raises:
        DatasetError: missing, truncated or not an IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DatasetError(f"IDX file not found: {path}") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DatasetError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DatasetError(f"{path} is truncated ({len(body)} of {expected} bytes)")
    return np.frombuffer(body, dtype).reshape(shape)


def load_fashion_mnist(split: str = "train", folder: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels) from Debian's dataset-fashion-mnist package."""
    prefix = "train" if split == "train" else "t10k"
    images = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise DatasetError(f"Fashion-MNIST not found under {folder}: apt-get install dataset-fashion-mnist")
    return read_idx(images), read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
