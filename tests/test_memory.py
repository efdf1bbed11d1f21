"""daemon.memory: glibc's allocator is told to map large blocks and to give back what a store change freed.

The effect itself is measured by scripts/bench/soak.py (resident memory per example of a real daemon taught one
example at a time); a synthetic allocation pattern here did not reproduce the daemon's fragmentation, so this test
only checks that the knobs reach glibc.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(not platform.libc_ver()[0] == "glibc", reason="the knobs are glibc's")
def test_the_allocator_knobs_reach_glibc():
    program = ("from teachcam.edge.daemon import memory\n"
               "assert memory.fix_mmap_threshold()\n"
               "memory.give_back()\n"
               "print('ok')")
    assert subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout == "ok\n"
