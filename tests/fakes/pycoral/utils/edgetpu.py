"""Test double for Google's pycoral.utils.edgetpu (Coral's apt repository; no Edge TPU here).

``make_interpreter`` opens the "compiled" model (the fake compiler's copy of the int8
model) on the CPU and records which model and device were asked for in $FAKE_PYCORAL_LOG.
With $FAKE_PYCORAL_SEGFAULT set it dies of SIGSEGV instead, as Coral's stock libedgetpu 16.0
is reported to do with TFLite runtimes newer than 2.11 (google-coral/edgetpu#812).
"""

import os
import signal

from ai_edge_litert.interpreter import Interpreter


def make_interpreter(model_path_or_content, device=None, delegate=None):
    if os.environ.get("FAKE_PYCORAL_SEGFAULT"):
        os.kill(os.getpid(), signal.SIGSEGV)
    log = os.environ.get("FAKE_PYCORAL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{model_path_or_content} device={device}\n")
    return Interpreter(model_path=str(model_path_or_content))


def list_edge_tpus():
    return [{"type": "usb", "path": "/sys/bus/usb/devices/2-1"}]
