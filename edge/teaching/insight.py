"""Why it thinks so: nearest examples, near-duplicates, how varied a class is, which classes are confused.

Everything is measured in the KNN's own space (the power transform, then cosine similarity), so
what the page shows is what decides. Pure numpy; the daemon calls it on its main loop and keeps one
:class:`StoreInsight` per store generation, so the transform, the varieties and the (quadratic)
leave-one-out vote are computed once per change, not once per request.
"""

from __future__ import annotations

import numpy as np

from teachcam.edge.teaching.knn import transform


class StoreInsight:
    """What one store generation says, derived once: its examples in the KNN's space, each class's variety,
    and the leave-one-out vote. The daemon keeps one per generation (a new generation, a new one)."""

    def __init__(self, snapshot, power: float):
        self.snapshot, self.power = snapshot, power
        self.labels = np.array([e.label for e in snapshot.examples], dtype=object)
        self._unit: np.ndarray | None = None
        self._variety: dict[str, float | None] = {}
        self._confused: list[dict] | None = None

    @property
    def unit(self) -> np.ndarray:
        """Every example's embedding in the KNN's space (transformed once, when first needed)."""
        if self._unit is None:
            self._unit = transform(self.snapshot.embeddings, self.power)
        return self._unit

    def rows(self, label: str) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def similarities(self, query: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of one raw embedding to every example (or to ``rows``), in the KNN's space."""
        if rows is not None and len(rows) == 0 or len(self.labels) == 0:
            return np.zeros(0, np.float32)
        if rows is not None and self._unit is None:  # a few rows: no need to transform the whole store
            vectors = transform(self.snapshot.embeddings[rows], self.power)
        else:
            vectors = self.unit if rows is None else self.unit[rows]
        return vectors @ transform(query, self.power)

    def variety(self, label: str) -> float | None:
        """1 − the mean cosine similarity between a class's examples (0: copies of one picture); None below 2."""
        if label not in self._variety:
            unit = self.unit[self.rows(label)]
            n = len(unit)
            if n < 2:
                self._variety[label] = None
            else:
                total = float(np.sum(unit.sum(axis=0) ** 2))  # the sum of cos(i, j) over all pairs, diagonal too
                self._variety[label] = round(max(0.0, 1.0 - (total - n) / (n * (n - 1))), 4)
        return self._variety[label]

    def confused(self, k: int = 3) -> list[dict]:
        """Each example classified by its ``k`` nearest *other* examples (similarity-weighted vote); the ones whose
        vote names another class: ``{"index", "label", "looks_like", "neighbor" (index of its nearest example of
        that class), "similarity"}``, most similar first. Quadratic in the examples: computed once."""
        if self._confused is None:
            self._confused = _leave_one_out(self.unit, self.labels, k)
        return self._confused


def _leave_one_out(unit: np.ndarray, names: np.ndarray, k: int) -> list[dict]:
    n = len(unit)
    if n < 3 or len(set(names)) < 2:
        return []
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, n - 1)
    neighbours = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    confused = []
    for i in range(n):
        votes: dict[str, float] = {}
        for j in neighbours[i]:
            votes[names[j]] = votes.get(names[j], 0.0) + float(sims[i, j])
        winner = max(votes, key=votes.get)
        if winner != names[i]:
            others = np.flatnonzero(names == winner)
            nearest = int(others[np.argmax(sims[i, others])])
            confused.append({"index": i, "label": str(names[i]), "looks_like": str(winner), "neighbor": nearest,
                             "similarity": round(float(sims[i, nearest]), 4)})
    confused.sort(key=lambda c: -c["similarity"])
    return confused


def confused_pairs(confused: list[dict]) -> list[dict]:
    """How many examples of class a look like class b, per (a, b), most first."""
    counts: dict[tuple[str, str], int] = {}
    for c in confused:
        key = (c["label"], c["looks_like"])
        counts[key] = counts.get(key, 0) + 1
    return [{"label": a, "looks_like": b, "count": n} for (a, b), n in sorted(counts.items(), key=lambda x: -x[1])]
