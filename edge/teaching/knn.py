"""Few-shot classification over enrolled embeddings: numpy only, no state but the arrays.

Embeddings first go through a power transform (signed square root, for post-ReLU
features) and L2 normalization. Each class is then scored by the mean cosine similarity of its own ``k`` nearest examples
(fewer if it has fewer), blended with the similarity to the class prototype (the mean of
its examples). Judging every class by its own neighbours — instead of a majority vote
over the global top k — keeps a class with many examples from winning only because it
is big. A best score under ``threshold`` is reported as unknown.

On top of that, a linear classifier is fitted to the enrolled examples in closed form
(class-balanced ridge regression onto one-hot targets, in the dual when there are fewer
examples than dimensions) and its outputs are added to the class scores with a small
weight. With few shots it separates classes that share a lot of background better than
similarity alone (Fashion-MNIST, 20 shots, int8: 0.783 → 0.814; scripts/bench/fewshot.py).
It only decides *which* class; the unknown test still uses the cosine score of that class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from teachcam.edge.teaching.names import UNKNOWN  # noqa: F401 (the answer when nothing is recognised)

EXACT_LIMIT = 512  # above this many examples, a coarse pass picks the candidates to score exactly (see KNNIndex)
COARSE_DIM = 64
CANDIDATES_PER_K = 2
RIDGE_LIMIT = 512  # the ridge is fitted on at most this many examples (the newest of each class): ~20 ms here


@dataclass(frozen=True)
class KNNConfig:
    """How predictions are made.

    Attributes:
        k: neighbours per class.
        threshold: best class score (cosine, -1..1) below which the answer is unknown.
        prototype_weight: 0 = pure per-class KNN, 1 = pure nearest prototype.
        temperature: softness of the per-class confidences (softmax over scores / T).
        power: each feature becomes sign(x)·|x|^power before cosine (0.5: the power
            transform that makes post-ReLU features closer to Gaussian; 1.0: off).
        ridge_weight: weight of the ridge classifier's outputs added to the class scores (0: off).
        ridge_alpha: its regularization.
    """

    k: int = 5
    # Measured (scripts/bench/fewshot.py and tests/test_teach.py): taught sample-photo objects score
    # >= 0.92 and never-taught ones <= 0.82; on Fashion-MNIST, where unknowns come from the same
    # domain, 0.86 is near the equal-error point (false accepts ~0.2, false rejects ~0.13).
    threshold: float = 0.86
    prototype_weight: float = 0.5
    # Softmax temperature over the combined scores; 0.05 minimised the test log-loss on Fashion-MNIST
    # (5 and 20 shots, int8, ridge on; 0.02 gave 2x the log-loss: overconfident).
    temperature: float = 0.05
    power: float = 0.5
    # Fashion-MNIST 20 shots int8 (3 draws): alpha 0.03/0.1/0.3/1.0 -> 0.804/0.814/0.808/0.795;
    # weight 0.25..2 all within 0.4 points of each other (the ridge dominates the choice).
    ridge_weight: float = 0.25
    ridge_alpha: float = 0.1

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not 0.0 <= self.prototype_weight <= 1.0:
            raise ValueError("prototype_weight must be between 0 and 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0.0 < self.power <= 1.0:
            raise ValueError("power must be in (0, 1]")
        if self.ridge_weight < 0:
            raise ValueError("ridge_weight must not be negative")
        if self.ridge_alpha <= 0:
            raise ValueError("ridge_alpha must be positive")


def transform(vectors: np.ndarray, power: float) -> np.ndarray:
    """Power transform then L2 normalization, row-wise (or for one vector)."""
    vectors = np.asarray(vectors, np.float32)
    if power == 0.5:  # the default: sqrt is several times faster than a general power
        vectors = np.copysign(np.sqrt(np.abs(vectors)), vectors)
    elif power != 1.0:
        vectors = np.copysign(np.abs(vectors) ** np.float32(power), vectors)
    if vectors.ndim == 1:  # one query per frame: no reductions over an axis, no temporaries
        return vectors / max(float(np.sqrt(vectors @ vectors)), 1e-12)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Prediction:
    """What the classifier says about one embedding."""

    label: str  # a class name, or "unknown"
    score: float  # the best class score (cosine similarity)
    confidence: float  # softmax confidence of the best class
    confidences: dict[str, float]
    nearest: str | None  # the best class even when the answer is unknown

    @property
    def is_unknown(self) -> bool:
        return self.label == UNKNOWN

    def as_json(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "confidence": round(self.confidence, 4),
                "nearest": self.nearest, "confidences": {k: round(v, 4) for k, v in self.confidences.items()}}


def fit_projection(matrix: np.ndarray, dim: int, sample: int = 2048, seed: int = 0) -> np.ndarray:
    """Top ``dim`` principal directions (D × dim) of ``matrix`` by randomized SVD on a row sample."""
    rng = np.random.default_rng(seed)
    rows = matrix[rng.choice(len(matrix), min(sample, len(matrix)), replace=False)]
    rows = rows - rows.mean(axis=0)
    sketch = rows.T @ (rows @ rng.standard_normal((rows.shape[1], dim + 16)).astype(np.float32))
    basis = np.linalg.qr(sketch)[0]  # D × (dim+16), spans the dominant directions
    _, _, vt = np.linalg.svd(rows @ basis, full_matrices=False)
    return np.ascontiguousarray((basis @ vt.T)[:, :dim], dtype=np.float32)


def fit_ridge(matrix: np.ndarray, ids: np.ndarray, n_classes: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced ridge regression of one-hot (±1) targets on the rows: weights D × C, bias C.

    Every class carries the same total weight, so a class with many examples gets no larger
    intercept than one with two. Solved in the dual (an n × n system) when n < D, else in the primal.
    """
    counts = np.bincount(ids, minlength=n_classes).astype(np.float64)
    weights = (len(ids) / (n_classes * counts))[ids]  # mean 1
    targets = np.where(np.arange(n_classes)[None, :] == ids[:, None], 1.0, -1.0)
    mean_x = (weights @ matrix / weights.sum()).astype(np.float32)
    mean_y = weights @ targets / weights.sum()
    root = np.sqrt(weights)[:, None]
    a_c = ((matrix - mean_x) * root.astype(np.float32)).astype(np.float32)  # products in float32, solve in float64
    y_c = (targets - mean_y) * root
    n, d = a_c.shape
    if n < d:
        gram = (a_c @ a_c.T).astype(np.float64)
        w = a_c.T.astype(np.float64) @ np.linalg.solve(gram + alpha * np.eye(n), y_c)
    else:
        gram = (a_c.T @ a_c).astype(np.float64)
        w = np.linalg.solve(gram + alpha * np.eye(d), a_c.T.astype(np.float64) @ y_c)
    return w.astype(np.float32), (mean_y - mean_x.astype(np.float64) @ w).astype(np.float32)


_buffers = threading.local()  # per-thread buffers of KNNIndex.class_scores


class KNNIndex:
    """Embeddings grouped by class, ready to score. Rebuild it when the examples change.

    Above ``EXACT_LIMIT`` examples, a coarse pass in the top 64 principal directions picks
    2k candidates per class, which are then scored exactly. 512: in the daemon the
    interpreter evicts the caches between frames, and at 1,000 examples the exact pass (a
    5 MB matrix read cold) cost 0.30-0.35 ms a frame against 0.17 ms for the two-stage one
    (scripts/bench/daemon.py). On Fashion-MNIST features (scripts/bench/knn_speed.py) the
    two-stage answers agree with exact scoring on 100 % of queries at 1,000, 5,000 and 10,000
    examples with 2k candidates as with 4k (0.843 / 0.870 / 0.840 accuracy both ways); 2k
    halves the rows copied per frame (a fleet's 2,000-example store: 0.48 -> 0.37 ms a
    prediction inside the daemon). Fewer (k + 2) or a narrower coarse pass (48) lose agreement
    (99.7 % at 5,000). Inside the daemon most of what is left is the cost of each numpy call and
    each pass over memory on caches the interpreter has just evicted — hence one product for the
    coarse query, prototypes and ridge together, and candidates by threshold rather than argpartition.
    """

    def __init__(self, embeddings: np.ndarray, labels: list[str], classes: list[str] | None = None,
                 power: float = KNNConfig.power, projection: np.ndarray | None = None,
                 ridge_alpha: float = KNNConfig.ridge_alpha):
        self.power = power
        self.ridge_alpha = ridge_alpha
        embeddings = transform(embeddings, power) if len(labels) else np.asarray(embeddings, np.float32)
        order = list(dict.fromkeys(classes or [])) + [c for c in dict.fromkeys(labels) if c not in (classes or [])]
        self.classes = [c for c in order if c in set(labels)]
        label_ids = {c: i for i, c in enumerate(self.classes)}
        ids = np.array([label_ids[label] for label in labels], np.int64)
        sort = np.argsort(ids, kind="stable")
        # Contiguous per class: one matrix-vector product, then per-class slices.
        self.matrix = np.ascontiguousarray(embeddings[sort]) if len(labels) else np.zeros((0, 0), np.float32)
        counts = np.bincount(ids, minlength=len(self.classes)) if len(labels) else np.zeros(0, np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.prototypes = np.stack([self._normalized_mean(self.matrix[a:b]) for a, b in self._slices()]) \
            if self.classes else np.zeros((0, 0), np.float32)
        self.counts = counts.astype(np.int64)
        self.min_count = int(counts.min()) if len(counts) else 0
        # Every class as large as the others (a fleet's store, capped per class): the score vector, reshaped, is the
        # class grid itself (the matrix is sorted by class) — no gather, no padding.
        self.uniform = bool(len(counts)) and self.min_count == int(counts.max())
        # grid[c, j] = row of the j-th example of class c; shorter classes are padded with len(self).
        self.grid = np.full((len(self.classes), int(counts.max()) if len(counts) else 0), len(labels), np.int64)
        for c, (a, b) in enumerate(self._slices()):
            self.grid[c, : b - a] = np.arange(a, b)
        self.ridge = None
        if len(self.classes) >= 2:
            keep = np.concatenate([np.arange(max(a, b - RIDGE_LIMIT // len(self.classes)), b) for a, b in self._slices()])
            self.ridge = fit_ridge(self.matrix[keep], ids[sort][keep], len(self.classes), ridge_alpha)
        self.projection = self.coarse = None
        if len(self) > EXACT_LIMIT:
            # The coarse pass runs in the top principal directions of the enrolled embeddings: a 64-wide
            # copy of the matrix is a twentieth of the memory traffic of the full one.
            self.projection = projection if projection is not None else fit_projection(self.matrix, COARSE_DIM)
            self.coarse = np.ascontiguousarray(self.matrix @ self.projection)
        # Everything a query meets besides the examples, side by side (D × (coarse + prototypes + ridge)): one product
        # a frame instead of three. Each frame starts with caches the interpreter has evicted, so every pass over
        # memory and every numpy call costs several times what it costs in a loop.
        parts = [p for p in (self.projection, self.prototypes.T if self.classes else None,
                             self.ridge[0] if self.ridge is not None else None) if p is not None]
        self.side = np.ascontiguousarray(np.concatenate(parts, axis=1)) if parts else None
        self._coarse_end = self.projection.shape[1] if self.projection is not None else 0

    @staticmethod
    def _normalized_mean(rows: np.ndarray) -> np.ndarray:
        mean = rows.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def _scratch(self, rows: int) -> np.ndarray:
        """A (rows × D) float32 buffer owned by the calling thread, reused from frame to frame."""
        buffer = getattr(_buffers, "rows", None)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] != self.matrix.shape[1]:
            buffer = _buffers.rows = np.empty((rows, self.matrix.shape[1]), np.float32)
        return buffer[:rows]

    def _slices(self):
        return zip(self.bounds[:-1], self.bounds[1:], strict=True)

    def __len__(self) -> int:
        return int(self.bounds[-1]) if len(self.bounds) else 0

    def _grid_of(self, scores: np.ndarray) -> np.ndarray:
        """Per-example scores as the class grid: a view when uniform, else gathered (``scores[len(self)]`` pads)."""
        return scores.reshape(len(self.classes), -1) if self.uniform else scores[self.grid]

    def _top_k_means(self, grid: np.ndarray, k: int) -> np.ndarray:
        """Mean of each row's k largest values (fewer for classes with fewer examples); pads are -inf."""
        width = grid.shape[1]
        m = min(k, width)
        if m == k and self.min_count >= k:  # every class has k examples: one partition and a mean
            return (np.partition(grid, width - k, axis=1)[:, width - k :] if k < width else grid).sum(axis=1) / k
        top = np.partition(grid, width - m, axis=1)[:, width - m :] if m < width else grid
        top = -np.sort(-top, axis=1)
        per_class_k = np.minimum(k, self.counts)
        sums = np.cumsum(top, axis=1)[np.arange(len(self.classes)), per_class_k - 1]
        return (sums / per_class_k).astype(np.float32)

    def _side(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The query's coarse coordinates, its similarity to each prototype, and the ridge outputs per class
        (≈ +1 for its class, -1 for the others; None without a ridge)."""
        side = query @ self.side
        c, n = self._coarse_end, len(self.classes)
        ridge = side[c + n :] + self.ridge[1] if self.ridge is not None else None
        return side[:c], side[c : c + n], ridge

    def _candidates(self, grid: np.ndarray, m: int) -> np.ndarray:
        """Positions in the flattened class grid of each class's ``m`` best coarse scores (C × m)."""
        width = grid.shape[1]
        # The m-th best score of each class and every score at least as good: with no tie at that value
        # (the usual case), exactly m a class, in row order — half the time of an argpartition of the grid.
        kth = np.partition(grid, width - m, axis=1)[:, width - m]
        chosen = np.flatnonzero(grid >= kth[:, None])
        if chosen.size == grid.size // width * m:
            return chosen.reshape(-1, m)
        positions = np.argpartition(grid, width - m, axis=1)[:, width - m :]  # ties (duplicates), padding
        return positions + np.arange(0, grid.size, width)[:, None]

    def class_scores(self, query: np.ndarray, config: KNNConfig, side=None) -> np.ndarray:
        """Per-class score for one transformed query (``side``: what :meth:`_side` gave for it, if at hand)."""
        coarse_query, prototype_scores, _ = side if side is not None else self._side(query)
        n = len(self)
        examples, vector = (self.matrix, query) if self.coarse is None else (self.coarse, coarse_query)
        if self.uniform:  # no padding slot: the product is the grid
            scores = examples @ vector
        else:
            scores = np.empty(n + 1, np.float32)
            scores[n] = -np.inf  # the padding slot of the class grid
            np.matmul(examples, vector, out=scores[:n])
        if self.coarse is None:
            knn = self._top_k_means(self._grid_of(scores), config.k)
        else:
            grid = self._grid_of(scores)
            positions = self._candidates(grid, min(CANDIDATES_PER_K * config.k, grid.shape[1]))
            if self.uniform:  # the grid is the score vector: a position is a row
                candidates, padding = positions, None
            else:
                candidates = self.grid.ravel()[positions]
                padding = candidates == n
            # The candidates' rows are copied into a buffer this thread keeps: a fresh 0.5-1 MB array every frame
            # cost ~250 page faults a frame in the daemon (glibc hands the memory back in between), 0.6 ms here.
            rows = self._scratch(candidates.size)
            np.take(self.matrix, candidates.ravel(), axis=0, out=rows, mode="clip")  # "clip": padding -> last row
            exact = (rows @ query).reshape(candidates.shape)
            if padding is not None:
                exact[padding] = -np.inf
            knn = self._top_k_means(exact, config.k)
        if config.prototype_weight == 0.0:
            return knn
        return (1.0 - config.prototype_weight) * knn + config.prototype_weight * prototype_scores

    def predict(self, embedding: np.ndarray, config: KNNConfig) -> Prediction:
        if config.power != self.power or (config.ridge_weight and config.ridge_alpha != self.ridge_alpha):
            raise ValueError("the index was built with another power transform or ridge than the config asks for")
        if not self.classes:
            return Prediction(UNKNOWN, 0.0, 0.0, {}, None)
        query = transform(embedding, self.power)
        side = self._side(query)
        scores = self.class_scores(query, config, side)
        combined = scores + config.ridge_weight * side[2] if config.ridge_weight and side[2] is not None else scores
        best = int(np.argmax(combined))
        confidences = np.exp((combined - combined[best]) * (1.0 / config.temperature))
        confidences /= confidences.sum()
        label = self.classes[best] if scores[best] >= config.threshold else UNKNOWN
        shares = confidences.tolist()
        return Prediction(label, float(scores[best]), shares[best], dict(zip(self.classes, shares, strict=True)),
                          self.classes[best])
