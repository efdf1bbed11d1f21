"""The vote window keeps its counts incrementally; it must decide exactly as a full recount would."""

from __future__ import annotations

import random
from collections import Counter, deque

from teachcam.edge.daemon.smoothing import Smoother


def recount(window: int, labels: list[str]) -> list[str]:
    recent, current, shown = deque(maxlen=window), None, []
    for label in labels:
        recent.append(label)
        if current is None or window == 1:
            current = label
        else:
            winner, votes = Counter(recent).most_common(1)[0]
            if winner != current and votes > window // 2:
                current = winner
        shown.append(current)
    return shown


def test_incremental_votes_match_a_full_recount():
    rng = random.Random(0)
    for window in (1, 2, 3, 4, 5, 7):
        for trial in range(200):
            labels = [rng.choice("abc" if trial % 2 else "aab") for _ in range(50)]
            smoother = Smoother(window)
            assert [smoother.update(label) for label in labels] == recount(window, labels), (window, trial)


def test_reset_forgets_the_window():
    smoother = Smoother(3)
    for label in "aaa":
        smoother.update(label)
    smoother.reset()
    assert smoother.update("b") == "b"


def test_smoothing_needs_a_majority_to_switch():
    smoother = Smoother(5)
    shown = [smoother.update(x) for x in ["a", "a", "b", "a", "b", "b", "b", "a", "b"]]
    assert shown == ["a", "a", "a", "a", "a", "b", "b", "b", "b"]
