"""KNN scoring rules, on small hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from teachcam.edge.teaching import knn
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex


def clusters(n_per_class: dict[str, int], d: int = 32, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = {c: np.abs(rng.normal(size=d)) for c in n_per_class}
    rows, labels = [], []
    for c, n in n_per_class.items():
        rows.append(np.abs(centres[c] + rng.normal(scale=spread, size=(n, d))))
        labels += [c] * n
    return np.concatenate(rows).astype(np.float32), labels, centres


def test_classes_with_fewer_than_k_examples_are_scored_on_what_they_have():
    x, labels, centres = clusters({"a": 2, "b": 40})
    index = KNNIndex(x, labels)
    prediction = index.predict(centres["a"], KNNConfig(k=5, threshold=0.0))
    assert prediction.label == "a"
    assert set(prediction.confidences) == {"a", "b"}
    assert sum(prediction.confidences.values()) == pytest.approx(1.0)


def test_unknown_below_the_threshold_but_nearest_is_still_reported():
    x, labels, centres = clusters({"a": 5, "b": 5})
    far = np.zeros(32, np.float32)
    far[0] = 1.0
    prediction = KNNIndex(x, labels).predict(far, KNNConfig(threshold=0.99))
    assert prediction.is_unknown and prediction.nearest in ("a", "b")


def test_empty_index_says_unknown():
    assert KNNIndex(np.zeros((0, 4), np.float32), []).predict(np.ones(4), KNNConfig()).is_unknown


def test_config_is_validated():
    with pytest.raises(ValueError):
        KNNConfig(k=0)
    with pytest.raises(ValueError):
        KNNConfig(prototype_weight=2.0)


def test_two_stage_search_agrees_with_exact_scoring(monkeypatch):
    x, labels, _ = clusters({f"c{i}": 400 for i in range(8)}, d=128, spread=1.0, seed=1)
    queries, truth, _ = clusters({f"c{i}": 10 for i in range(8)}, d=128, spread=1.0, seed=1)
    fast = KNNIndex(x, labels)
    assert fast.coarse is not None, "3,200 examples should use the two-stage search"
    monkeypatch.setattr(knn, "EXACT_LIMIT", 10**9)
    exact = KNNIndex(x, labels)
    assert exact.coarse is None
    config = KNNConfig()
    agree = [fast.predict(q, config).nearest == exact.predict(q, config).nearest for q in queries]
    assert np.mean(agree) >= 0.95


def test_two_stage_buffers_are_per_thread_and_follow_the_index():
    """The candidates' rows go through a buffer each thread keeps: threads predicting at once, and indexes of
    another width or with unequal classes one after the other, give exactly what one fresh thread gives."""
    import threading

    wide, wide_labels, _ = clusters({f"c{i}": 120 + 30 * i for i in range(6)}, d=96, spread=1.0, seed=2)
    narrow, narrow_labels, _ = clusters({f"c{i}": 300 for i in range(3)}, d=40, spread=1.0, seed=3)
    indexes = [KNNIndex(wide, wide_labels), KNNIndex(narrow, narrow_labels)]
    assert all(index.coarse is not None for index in indexes)
    rng = np.random.default_rng(5)
    queries = [[np.abs(rng.normal(size=index.matrix.shape[1])) for _ in range(20)] for index in indexes]
    config = KNNConfig(threshold=-1)

    def answers():
        return [[index.predict(q, config).confidences for q in qs] for index, qs in zip(indexes, queries, strict=True)]

    expected, results = answers(), []
    threads = [threading.Thread(target=lambda: results.append(answers())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == expected for r in results)


def test_ridge_gives_a_big_class_no_head_start():
    x, labels, _ = clusters({"small": 3, "big": 300}, spread=0.6, seed=4)
    queries, truth, _ = clusters({"small": 100, "big": 100}, spread=0.6, seed=4)
    index = KNNIndex(x, labels)
    config = KNNConfig(threshold=-1)
    predicted = np.array([index.predict(q, config).label for q in queries])
    truth = np.array(truth)
    # Balanced: the small class is recognised about as often as the big one (0.98 / 1.0 here;
    # the similarity blend alone gets 0.86 / 1.0).
    assert (predicted[truth == "small"] == "small").mean() >= 0.9
    assert (predicted[truth == "big"] == "big").mean() >= 0.9


def test_ridge_dual_and_primal_solutions_agree():
    x, labels, _ = clusters({"a": 30, "b": 30, "c": 30}, d=16, seed=5)
    ids = np.array([{"a": 0, "b": 1, "c": 2}[label] for label in labels])
    primal = knn.fit_ridge(x, ids, 3, 0.5)  # 90 rows > 16 dimensions
    padded = np.concatenate([x, np.zeros((90, 100), np.float32)], axis=1)  # 116 dimensions > 90 rows
    dual = knn.fit_ridge(padded, ids, 3, 0.5)
    np.testing.assert_allclose(dual[0][:16], primal[0], atol=1e-4)
    np.testing.assert_allclose(dual[1], primal[1], atol=1e-4)


def test_one_class_has_no_ridge_and_predicts_by_similarity():
    x, labels, centres = clusters({"only": 5})
    index = KNNIndex(x, labels)
    assert index.ridge is None
    assert index.predict(centres["only"], KNNConfig(threshold=0.5)).label == "only"


@pytest.mark.parametrize("per_class", [300, 20])  # two-stage (1,200 examples) and exact (80)
def test_equal_classes_read_the_grid_in_place_with_the_same_scores(per_class):
    """Classes of equal size (a fleet's capped store) take the grid as a view of the scores: the same class scores as
    the general gather-and-pad path, to the last bit."""
    rng = np.random.default_rng(7)
    embeddings = rng.standard_normal((4 * per_class, 64)).astype(np.float32)
    labels = [f"c{i % 4}" for i in range(4 * per_class)]
    index = KNNIndex(embeddings, labels)
    assert index.uniform
    general = KNNIndex(embeddings, labels)
    general.uniform = False
    config = KNNConfig()
    for query in rng.standard_normal((20, 64)).astype(np.float32):
        q = knn.transform(query, index.power)
        np.testing.assert_array_equal(index.class_scores(q, config), general.class_scores(q, config))
    assert not KNNIndex(embeddings[:-1], labels[:-1]).uniform


def test_candidates_are_each_class_best_even_with_ties():
    """The candidates of the two-stage search are each class's m best coarse scores: ties (duplicate examples, a
    class smaller than m) give the same m values as a full sort."""
    rng = np.random.default_rng(11)
    grid = rng.standard_normal((6, 40)).astype(np.float32)
    grid[1, :12] = grid[1, 0]  # a tie across the m-th place
    grid[2, 5:] = -np.inf  # a class of 5 examples, padded
    index = KNNIndex(np.zeros((0, 4), np.float32), [])
    for m in (1, 7, 10, 40):
        positions = index._candidates(grid, m)
        assert positions.shape == (6, m)
        assert (positions // 40 == np.arange(6)[:, None]).all()  # each class's own
        chosen = np.sort(grid.ravel()[positions], axis=1)
        np.testing.assert_array_equal(chosen, np.sort(grid, axis=1)[:, 40 - m :])
