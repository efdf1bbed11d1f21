"""Keep native libraries' chatter on file descriptor 2 out of the user's terminal."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager


@contextmanager
def captured_stderr():
    """Redirect fd 2 to a temporary file for the duration; yields the file (readable afterwards)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (some service managers): nothing to hide
        with tempfile.TemporaryFile(mode="w+") as sink:
            yield sink
        return
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
