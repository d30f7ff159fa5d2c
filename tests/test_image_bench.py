import numpy as np
import pytest

from mma_agent.evals.image_bench import _genre_matrix, _map, average_precision


def test_average_precision_hand_computed():
    # ranking by score: labels 0 (rel), 1, 2 (rel) -> precisions at relevant ranks 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.1, 0.9]), np.array([False, False])))


def test_map_skips_unlabelled_items_and_genre_matrix():
    g = _genre_matrix(["Drama|Comedy", "", "Horror"], ["Comedy", "Drama", "Horror"])
    assert g.tolist() == [[True, True, False], [False, False, False], [False, False, True]]
    scores = np.array([[1.0, 0.5, 0.0], [0.3, 0.2, 0.1], [0.9, 0.1, 0.5]])
    assert _map(scores, g) == pytest.approx((1.0 + 0.5) / 2)
