"""Pick a TFLite interpreter and make interpreters, with the Edge TPU when it is there.

Order of preference: ``ai_edge_litert`` (small, fast int8 kernels, numpy 2),
``tflite_runtime``, then ``tensorflow.lite`` (only on a laptop that has TensorFlow).
For the Edge TPU, Google's pycoral (``pycoral.utils.edgetpu``) is used when importable,
for its device selection (``usb:0``, ``pci:0``); otherwise the ``libedgetpu`` delegate
is loaded through the interpreter module. PyPI's unrelated ``pycoral`` package (a coral
reef atlas) has no ``pycoral.utils.edgetpu`` and is ignored.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import platform
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from edge.errors import ModelError, RuntimeNotFoundError
from edge.stdio import captured_stderr

log = logging.getLogger(__name__)

_CANDIDATES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow.lite", "tensorflow.lite"),
)
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}.get(
    platform.system(), "libedgetpu.so.1"
)


@dataclass(frozen=True)
class InterpreterModule:
    """The interpreter implementation in use."""

    name: str
    version: str
    module: object

    @property
    def Interpreter(self):  # noqa: N802 - mirrors the module attribute
        return self.module.Interpreter

    @property
    def load_delegate(self):
        return getattr(self.module, "load_delegate", None) or getattr(
            getattr(self.module, "experimental", None), "load_delegate", None
        )


@cache
def interpreter_module(preferred: str | None = None) -> InterpreterModule:
    """The first importable interpreter module (or ``preferred`` if given).

    Raises:
        RuntimeNotFoundError: none is installed.
    """
    candidates = [c for c in _CANDIDATES if preferred in (None, c[0])]
    for name, module_name in candidates:
        if name == "tensorflow.lite" and importlib.util.find_spec("tensorflow") is None:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        top = importlib.import_module(name.split(".")[0])
        version = getattr(top, "__version__", None)
        if version is None:
            try:
                from importlib.metadata import version as dist_version

                version = dist_version(name.split(".")[0].replace("_", "-"))
            except Exception:
                version = "unknown"
        return InterpreterModule(name, str(version), module)
    raise RuntimeNotFoundError(
        "no TFLite interpreter is installed: run `pip install ai-edge-litert` "
        "(or install teachcam without --no-deps)"
    )


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _pycoral_make_interpreter():
    try:
        from pycoral.utils.edgetpu import make_interpreter  # Google's pycoral, from Coral's apt repo
    except ImportError:
        return None
    return make_interpreter


def make_interpreter(model_path: str | Path, *, num_threads: int | None = None, edgetpu_device: str | None = None):
    """Create and allocate an interpreter for ``model_path``.

    Args:
        num_threads: CPU threads for the interpreter (default: up to 4, the core count).
        edgetpu_device: None for the CPU; ``""`` for any Edge TPU, or ``usb``, ``usb:0``,
            ``pci:0``. The model must be compiled for the Edge TPU.

    Raises:
        ModelError: the file is not a TFLite model, or the Edge TPU delegate did not load
            (callers fall back to the CPU model).
    """
    model_path = str(model_path)
    threads = num_threads or default_threads()
    runtime = interpreter_module()
    try:
        with captured_stderr():  # the runtime logs "Created TensorFlow Lite XNNPACK delegate" on fd 2
            interpreter = _new_interpreter(runtime, model_path, threads, edgetpu_device)
            interpreter.allocate_tensors()
    except ModelError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        where = " on the Edge TPU" if edgetpu_device is not None else ""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {model_path}{where}: {first_line}") from None
    return interpreter


def _new_interpreter(runtime: InterpreterModule, model_path: str, threads: int, edgetpu_device: str | None):
    if edgetpu_device is None:
        return runtime.Interpreter(model_path=model_path, num_threads=threads)
    pycoral_make = _pycoral_make_interpreter()
    if pycoral_make is not None:
        return pycoral_make(model_path, device=edgetpu_device or None)
    if runtime.load_delegate is None:
        raise ModelError(f"{runtime.name} cannot load delegates")
    options = {"device": edgetpu_device} if edgetpu_device else {}
    delegate = load_delegate_quietly(runtime, EDGETPU_LIBRARY, options)
    return runtime.Interpreter(model_path=model_path, experimental_delegates=[delegate], num_threads=threads)


def edgetpu_available() -> bool:
    """True when the Edge TPU runtime library can be loaded (not whether a device is plugged in)."""
    runtime = interpreter_module()
    if _pycoral_make_interpreter() is not None:
        return True
    if runtime.load_delegate is None:
        return False
    try:
        load_delegate_quietly(runtime, EDGETPU_LIBRARY)
    except (ValueError, RuntimeError, OSError):
        return False
    return True


def load_delegate_quietly(runtime: InterpreterModule, library: str, options: dict | None = None):
    """``load_delegate``, without the "Exception ignored in Delegate.__del__" that litert prints when the
    library is missing (its half-built Delegate object fails in ``__del__``)."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, AttributeError) and "Delegate" in repr(unraisable.object)):
            previous(unraisable)

    sys.unraisablehook = hook
    failure = None
    try:
        return runtime.load_delegate(library, options or {})
    except (ValueError, RuntimeError, OSError) as exc:
        failure = type(exc)(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    finally:
        gc.collect()  # with the failed call's traceback gone, the half-built Delegate is collected here
        sys.unraisablehook = previous
    raise failure


def warn_edgetpu_fallback(reason: str) -> None:
    log.warning("Edge TPU not used (%s); running the int8 model on the CPU", reason)
