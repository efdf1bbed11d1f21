"""All teachcam exceptions, in one place.

One root (:class:`TeachcamError`), one base per subsystem, leaves that also inherit
the matching builtin. Every message is written for the person at the keyboard: what
was wrong and what to do. The CLI prints ``str(error)`` on one line and exits non-zero.
"""


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (its first), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TeachcamError(Exception):
    """Root of every error teachcam reports to a user."""

    exit_code = 2


class BundleError(TeachcamError):
    """A model bundle is missing, damaged, or of a format this version cannot read."""


class BundleIntegrityError(BundleError, ValueError):
    """A bundle file does not match the sha256 its manifest records."""


class BundleVersionError(BundleError, ValueError):
    """A bundle manifest has a format version this version does not know."""


class ModelError(TeachcamError):
    """A model file cannot be loaded or run by the interpreter."""


class RuntimeNotFoundError(ModelError, ImportError):
    """No TFLite interpreter (ai-edge-litert, tflite-runtime, tensorflow) is installed."""


class ImageError(TeachcamError, ValueError):
    """An image file is missing, unreadable, or too large."""


class StoreError(TeachcamError):
    """The enrollment store cannot be read or written."""


class StoreVersionError(StoreError, ValueError):
    """The enrollment store was written by a newer teachcam."""


class StoreFullError(StoreError, OSError):
    """The disk under the enrollment store is full."""


class ClassNameError(StoreError, ValueError):
    """A class name breaks the naming rules."""


class ConfigError(TeachcamError, ValueError):
    """A configuration file or flag is wrong."""


class ControlError(TeachcamError, ValueError):
    """A control-socket request is malformed, or no daemon answers on the socket."""


class ControlAccessError(ControlError, PermissionError):
    """A daemon runs, but this user may not use its control socket (not in its group)."""


class ScreenError(TeachcamError):
    """No screen to draw on, or it cannot be opened."""


class FleetError(TeachcamError, ValueError):
    """A fleet message that cannot be used (one line: what is wrong)."""


class CameraError(TeachcamError):
    """A camera source cannot be opened or stopped delivering frames."""


class DatasetError(TeachcamError, ValueError):
    """A training dataset is empty, unreadable, or unusable."""


# -- the laptop: conversion and training (teachcam.convert) ----------------------------------------


class ConvertError(TeachcamError):
    """Building a bundle or training a head failed."""


class ExportError(ConvertError):
    """The TFLite converter failed."""


class BackboneError(ConvertError, ValueError):
    """A backbone cannot be built with the requested weights."""


class CheckpointError(ConvertError, ValueError):
    """A weights file is not a state dict this reader accepts."""


class QuantizationDropError(ConvertError):
    """int8 cost more accuracy than --max-int8-drop allows (the bundle is written and marked)."""

    exit_code = 3
