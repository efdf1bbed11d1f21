"""A vote window with hysteresis, so LEDs and the screen do not flicker between classes."""

from __future__ import annotations

from collections import Counter, deque


class Smoother:
    """The shown label changes only when another label wins a majority of the last ``window`` frames.

    ``window = 1`` shows every raw prediction.
    """

    def __init__(self, window: int = 5):
        self.window = max(1, int(window))
        self._recent: deque[str] = deque(maxlen=self.window)
        self.current: str | None = None

    def update(self, label: str) -> str:
        self._recent.append(label)
        if self.current is None or self.window == 1:
            self.current = label
            return label
        winner, votes = Counter(self._recent).most_common(1)[0]
        if winner != self.current and votes > self.window // 2:
            self.current = winner
        return self.current

    def reset(self) -> None:
        self._recent.clear()
        self.current = None
