"""Test double for Google's pycoral.utils.edgetpu (Coral's apt repository; no Edge TPU here).

``make_interpreter`` opens the "compiled" model (the fake compiler's copy of the int8
model) on the CPU and records which model and device were asked for in $FAKE_PYCORAL_LOG.
"""

import os

from ai_edge_litert.interpreter import Interpreter


def make_interpreter(model_path_or_content, device=None, delegate=None):
    log = os.environ.get("FAKE_PYCORAL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{model_path_or_content} device={device}\n")
    return Interpreter(model_path=str(model_path_or_content))


def list_edge_tpus():
    return [{"type": "usb", "path": "/sys/bus/usb/devices/2-1"}]
