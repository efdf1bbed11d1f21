"""The ``teachcam`` command line: one entry point, one subcommand per job.

Laptop commands (``convert``) import TensorFlow lazily, inside their handler, so
``teachcam --help`` and every device command stay fast and TensorFlow-free.

Example usage::

    teachcam convert --out build/bundle
    teachcam info build/bundle
    teachcam classify --bundle build/bundle --top-k 5 photo.jpg
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# numpy's OpenBLAS worker threads spin after every matrix product and take the cores from the
# interpreter's threads; teachcam's products are small, so one BLAS thread is faster overall
# (scripts/bench/daemon.py: 255 -> 363 frames/s). Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from teachcam.edge import __version__  # noqa: E402
from teachcam.edge.cli import bundles, daemon, inbox, network, teach  # noqa: E402
from teachcam.edge.errors import TeachcamError  # noqa: E402

log = logging.getLogger("teachcam")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teachcam",
        description="Teach a camera by example on a Raspberry Pi (with or without a Coral Edge TPU).",
        epilog="Run `teachcam COMMAND --help` for a command's options. Errors print one line and exit non-zero.",
    )
    parser.add_argument("--version", action="version", version=f"teachcam {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for module in (bundles, teach, daemon, inbox, network):
        module.register(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="teachcam: %(levelname)s: %(message)s", stream=sys.stderr)


def _commands() -> dict:
    return {**bundles.COMMANDS, **teach.COMMANDS, **daemon.COMMANDS, **inbox.COMMANDS, **network.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        return _commands()[args.command](args)
    except TeachcamError as exc:
        print(f"teachcam: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("teachcam: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
