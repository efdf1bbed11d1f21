"""SIGKILL at random moments while enrolling: the store always loads, and every acknowledged example is there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from teachcam.edge.teaching.teacher import Teacher

WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from teachcam.edge.teaching.teacher import Teacher
    store, ack_path, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    teacher = Teacher.open(store, cap=10**6)  # no cap: every acknowledged example must stay
    snap = teacher.store.snapshot
    if not snap.fingerprint:
        snap.fingerprint, snap.embedding_size = "kill-test", 32
        snap.embeddings = np.zeros((0, 32), np.float32)
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    with open(ack_path, "a") as ack:
        print("ready", flush=True)
        for i in range(100000):
            source = f"{tag}-{i}"
            teacher.add("abc"[i % 3], rng.normal(size=32), rng.integers(0, 255, (24, 24, 3), dtype=np.uint8),
                        source=source)
            ack.write(source + "\\n")   # acknowledged only once add() has returned
            ack.flush()
            os.fsync(ack.fileno())
""")


@pytest.mark.slow
def test_sigkill_while_enrolling_never_loses_an_acknowledged_example(tmp_path):
    store, ack = tmp_path / "store", tmp_path / "acks.txt"
    rng = random.Random(1234)
    rounds, total_acked = 6, 0
    for round_ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(store), str(ack), f"p{round_}"],
                                stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acked = ack.read_text().split()
        total_acked = len(acked)
        with Teacher.open(store, cap=10**6) as teacher:  # always loads
            sources = [e.source for e in teacher.snapshot.examples]
            assert set(acked) <= set(sources), "an acknowledged example was lost"
            assert len(sources) <= len(acked) + round_ + 1, "at most the example being written may be extra"
            assert teacher.snapshot.embeddings.shape == (len(sources), 32)
            for example in teacher.snapshot.examples[-3:]:
                teacher.store.read_thumbnail(example.thumb)
    assert total_acked >= 200, f"only {total_acked} enrollments happened; the drill should run a few hundred"
