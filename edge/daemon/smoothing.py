"""A vote window with hysteresis, so LEDs and the screen do not flicker between classes."""

from __future__ import annotations

from collections import deque


class Smoother:
    """The shown label changes only when another label wins a majority of the last ``window`` frames.

    ``window = 1`` shows every raw prediction.
    """

    def __init__(self, window: int = 5):
        self.window = max(1, int(window))
        self._recent: deque[str] = deque()
        self._votes: dict[str, int] = {}  # label -> votes in the window, kept as frames come and go
        self.current: str | None = None

    def update(self, label: str) -> str:
        recent, votes = self._recent, self._votes
        recent.append(label)
        votes[label] = votes.get(label, 0) + 1
        if len(recent) > self.window:
            gone = recent.popleft()
            votes[gone] -= 1
            if not votes[gone]:
                del votes[gone]
        if self.current is None or self.window == 1:
            self.current = label
            return label
        # Only the newest label can have just reached a majority.
        if label != self.current and votes[label] > self.window // 2:
            self.current = label
        return self.current

    def reset(self) -> None:
        self._recent.clear()
        self._votes.clear()
        self.current = None
