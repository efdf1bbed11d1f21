"""Why it thinks so: nearest examples, near-duplicates, how varied a class is, which classes are confused.

Everything is measured in the KNN's own space (the power transform, then cosine similarity), so
what the page shows is what decides. Pure numpy; the daemon calls it on its main loop, and caches
the leave-one-out result per store generation (it is quadratic in the number of examples).
"""

from __future__ import annotations

import numpy as np

from teachcam.edge.knn import transform


def similarities(query: np.ndarray, vectors: np.ndarray, power: float) -> np.ndarray:
    """Cosine similarity of one raw embedding to each raw embedding row, in the KNN's space."""
    if len(vectors) == 0:
        return np.zeros(0, np.float32)
    return transform(vectors, power) @ transform(query, power)


def variety(vectors: np.ndarray, power: float) -> float | None:
    """1 − the mean cosine similarity between a class's examples (0: copies of one picture); None below 2."""
    if len(vectors) < 2:
        return None
    unit = transform(vectors, power)
    n = len(unit)
    total = float(np.sum(unit.sum(axis=0) ** 2))  # sum over all pairs i, j of cos(i, j), diagonal included
    mean = (total - n) / (n * (n - 1))
    return round(max(0.0, 1.0 - mean), 4)


def leave_one_out(vectors: np.ndarray, labels: list[str], power: float, k: int = 3) -> list[dict]:
    """Each example classified by its ``k`` nearest *other* examples (similarity-weighted vote).

    Returns one entry per example whose vote names another class: ``{"index", "label", "looks_like",
    "neighbor" (index of its nearest example of that class), "similarity"}``, most similar first.
    """
    n = len(vectors)
    if n < 3 or len(set(labels)) < 2:
        return []
    unit = transform(vectors, power)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    names = np.array(labels, dtype=object)
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
