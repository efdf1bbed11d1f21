"""What the command modules share: the default bundle, the bundle flags, and the image loop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from teachcam.edge import config
from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.runtime import PRECISIONS

DEFAULT_BUNDLE = Path(config.DEFAULT_BUNDLE)
DEFAULT_STORE = Path(config.DEFAULT_STORE)


def add_bundle_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-b", "--bundle", type=Path, default=DEFAULT_BUNDLE,
                        help="bundle folder from `teachcam convert` (default: %(default)s, or $TEACHCAM_BUNDLE)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="which embedder to run: auto = Edge TPU if compiled and present, else int8 (default)")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: cores, at most 4)")


def each_image(paths, preprocess, failures: list[str]):
    """Yield ``(path, model-ready pixels)`` for every readable image; report each bad one on one line
    (appended to ``failures``) and carry on with the rest."""
    from teachcam.edge.model.images import read_image

    for path in paths:
        try:
            yield path, preprocess(read_image(path, min_side=preprocess.shorter_side))
        except TeachcamError as exc:
            failures.append(str(exc))
            print(f"teachcam: error: {exc}", file=sys.stderr)
