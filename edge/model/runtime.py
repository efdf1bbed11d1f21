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
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from teachcam.edge.errors import ModelError, RuntimeNotFoundError, first_line
from teachcam.edge.model.stdio import captured_stderr

PRECISIONS = ("auto", "imx500", "edgetpu", "int8", "float32")  # auto: the AI Camera, else the Edge TPU, if they load

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


@dataclass(frozen=True)
class LoadedInterpreter:
    """An allocated interpreter and the kernels it runs on: ``edgetpu``, ``xnnpack`` (LiteRT's fast CPU
    kernels) or ``reference`` (XNNPACK was not applied: on ARM, LiteRT could not read /proc/cpuinfo)."""

    interpreter: object
    kernels: str


def make_interpreter(model_path: str | Path, *, num_threads: int | None = None, edgetpu_device: str | None = None):
    """Create and allocate an interpreter for ``model_path`` (see :func:`load_interpreter`)."""
    return load_interpreter(model_path, num_threads=num_threads, edgetpu_device=edgetpu_device).interpreter


def kernels_from_log(text: str, *, edgetpu: bool = False) -> str:
    """Which kernels an interpreter got, from what the runtime printed while it was created (a fallback).

    LiteRT, tflite_runtime and tf.lite print "Created TensorFlow Lite XNNPACK delegate for CPU." when
    XNNPACK is applied — but only for the first interpreter of a process.
    """
    if edgetpu:
        return "edgetpu"
    return "xnnpack" if "XNNPACK" in text else "reference"


def kernels_of(interpreter, log_text: str = "", *, edgetpu: bool = False) -> str:
    """``edgetpu``, ``xnnpack`` or ``reference`` for an allocated interpreter.

    A delegate that took over part of the graph shows as a ``DELEGATE`` node in the execution plan;
    on the CPU that delegate is XNNPACK. On ARM, XNNPACK needs cpuinfo, which reads /proc/cpuinfo —
    hidden by systemd's ``ProcSubset=pid`` — and without it the runtime silently keeps its reference
    kernels (checked: no DELEGATE node and no log line, on x86-64 too, with /proc mounted subset=pid).
    """
    if edgetpu:
        return "edgetpu"
    try:
        ops = {detail.get("op_name") for detail in interpreter._get_ops_details()}
    except Exception:  # a runtime without the (private) op listing: fall back to what it printed
        return kernels_from_log(log_text)
    return "xnnpack" if "DELEGATE" in ops else "reference"


def load_interpreter(model_path: str | Path, *, num_threads: int | None = None,
                     edgetpu_device: str | None = None) -> LoadedInterpreter:
    """Create and allocate an interpreter for ``model_path``, noting which kernels it runs on.

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
        with captured_stderr() as chatter:  # the runtime logs "Created TensorFlow Lite XNNPACK delegate" on fd 2
            interpreter = _new_interpreter(runtime, model_path, threads, edgetpu_device)
            interpreter.allocate_tensors()
            chatter.seek(0)
            said = chatter.read()
    except ModelError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        where = " on the Edge TPU" if edgetpu_device is not None else ""
        raise ModelError(f"cannot load model {model_path}{where}: {first_line(exc)}") from None
    kernels = kernels_of(interpreter, said, edgetpu=edgetpu_device is not None)
    if kernels == "reference":
        log.warning("%s runs on the runtime's reference kernels, not XNNPACK (several times slower); on a Raspberry "
                    "Pi this means /proc/cpuinfo cannot be read (systemd ProcSubset=pid?)", Path(model_path).name)
    return LoadedInterpreter(interpreter, kernels)


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


@cache
def probe_edgetpu(model_path: str, device: str = "", timeout: float = 60.0) -> str | None:
    """Load an Edge TPU model and invoke it once **in a child process**; None if that worked, else why not.

    Coral's stock libedgetpu 16.0 is reported to segfault with TFLite runtimes newer than 2.11
    (google-coral/edgetpu#812). In the daemon's own process that would kill the service at every
    start; in a child it costs one process start-up and the daemon falls back to the CPU model.
    """
    code = f"import sys; from {__name__} import _probe_child; sys.exit(_probe_child(sys.argv[1], sys.argv[2]))"
    try:
        result = subprocess.run([sys.executable, "-c", code, str(model_path), device], capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return f"loading {Path(model_path).name} on the Edge TPU did not finish in {timeout:.0f} s"
    except OSError as exc:
        return f"cannot start the Edge TPU probe ({exc})"
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return (f"the Edge TPU runtime crashed ({name}) loading {Path(model_path).name}: libedgetpu does not match "
                f"this TFLite runtime ({interpreter_module().name} {interpreter_module().version}; "
                "see google-coral/edgetpu#812)")
    said = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return said[-1] if said else f"the Edge TPU probe exited with status {result.returncode}"


def _probe_child(model_path: str, device: str) -> int:
    import numpy as np

    try:
        interpreter = make_interpreter(model_path, num_threads=1, edgetpu_device=device)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (ModelError, ValueError, RuntimeError) as exc:
        print(first_line(exc), flush=True)
        return 3
    return 0


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
        failure = type(exc)(first_line(exc))
    finally:
        gc.collect()  # with the failed call's traceback gone, the half-built Delegate is collected here
        sys.unraisablehook = previous
    raise failure


def warn_edgetpu_fallback(reason: str) -> None:
    log.warning("Edge TPU not used (%s); running the int8 model on the CPU", reason)
