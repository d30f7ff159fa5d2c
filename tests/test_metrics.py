import numpy as np
import pytest

from mma_agent.metrics import batch_metrics, hr_at_k, mrr, ndcg_at_k, recall_at_k, topk_indices


def test_hand_computed_cases():
    ranking = ["a", "b", "c", "d", "e"]
    # one relevant item at rank 3: DCG = 1/log2(4) = 0.5, IDCG = 1
    assert ndcg_at_k(ranking, {"c"}, 5) == pytest.approx(0.5)
    assert ndcg_at_k(ranking, {"c"}, 2) == 0.0
    assert hr_at_k(ranking, {"c"}, 3) == 1.0
    assert hr_at_k(ranking, {"c"}, 2) == 0.0
    assert mrr(ranking, {"c", "e"}) == pytest.approx(1 / 3)
    assert mrr(ranking, {"z"}) == 0.0
    # relevant at ranks 1 and 4 of 2 relevant: DCG = 1 + 1/log2(5); IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(ranking, {"a", "d"}, 5) == pytest.approx((1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    assert recall_at_k(ranking, {"a", "d", "z"}, 4) == pytest.approx(2 / 3)
    # IDCG is capped at k relevant items
    assert ndcg_at_k(["x", "y"], {"x", "y", "z"}, 2) == pytest.approx(1.0)


def test_empty_relevant_and_bad_k_are_errors():
    with pytest.raises(ValueError, match="relevant is empty"):
        ndcg_at_k(["a"], set(), 10)
    with pytest.raises(ValueError, match="k must be"):
        hr_at_k(["a"], {"a"}, 0)


def test_batch_metrics_match_per_list_functions():
    rng = np.random.default_rng(1)
    n_items, k = 60, 20
    rankings, rels, hits = [], [], []
    for _ in range(200):
        ranking = rng.permutation(n_items)
        rel = set(rng.choice(n_items, size=rng.integers(1, 6), replace=False).tolist())
        rankings.append(ranking)
        rels.append(rel)
        hits.append(np.isin(ranking[:k], list(rel)))
    out = batch_metrics(np.array(hits), np.array([len(r) for r in rels]), ks=(10, 20))
    for kk in (10, 20):
        assert out[f"ndcg@{kk}"] == pytest.approx(np.mean([ndcg_at_k(r, s, kk) for r, s in zip(rankings, rels)]))
        assert out[f"recall@{kk}"] == pytest.approx(np.mean([recall_at_k(r, s, kk) for r, s in zip(rankings, rels)]))
        assert out[f"hr@{kk}"] == pytest.approx(np.mean([hr_at_k(r, s, kk) for r, s in zip(rankings, rels)]))
    assert out["mrr@20"] == pytest.approx(np.mean([mrr(r, s, 20) for r, s in zip(rankings, rels)]))


def test_cross_check_against_ranx_on_random_rankings():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    qrels, run, ours = {}, {}, {"ndcg@10": [], "hit_rate@10": [], "recall@20": [], "mrr": []}
    for q in range(300):
        n = int(rng.integers(5, 80))
        ranking = [f"d{i}" for i in rng.permutation(n)]
        rel = set(rng.choice(ranking, size=int(rng.integers(1, min(n, 8))), replace=False).tolist())
        qrels[f"q{q:04d}"] = {d: 1 for d in rel}
        run[f"q{q:04d}"] = {d: float(n - i) for i, d in enumerate(ranking)}  # distinct scores: no tie ambiguity
        ours["ndcg@10"].append(ndcg_at_k(ranking, rel, 10))
        ours["hit_rate@10"].append(hr_at_k(ranking, rel, 10))
        ours["recall@20"].append(recall_at_k(ranking, rel, 20))
        ours["mrr"].append(mrr(ranking, rel))
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), list(ours), return_mean=False)
    for metric, values in ours.items():
        np.testing.assert_allclose(values, theirs[metric], rtol=1e-9, atol=1e-12, err_msg=metric)


def test_topk_indices_orders_and_breaks_ties_by_index():
    s = np.array([[0.1, 0.9, 0.5, 0.9, -np.inf]])
    assert topk_indices(s, 3).tolist() == [[1, 3, 2]]
    assert topk_indices(s, 10).shape == (1, 5)


def test_ndcg_of_scores_ranks_by_score_and_keeps_pool_order_on_ties():
    from mma_agent.metrics import ndcg_of_scores

    cands = ["a", "b", "c", "d"]
    # b scores highest; a and c tie and keep pool order (a before c)
    scores = np.array([1.0, 2.0, 1.0, 0.0])
    assert ndcg_of_scores(scores, cands, {"b"}) == pytest.approx(1.0)
    assert ndcg_of_scores(scores, cands, {"c"}) == pytest.approx(ndcg_at_k(["b", "a", "c", "d"], {"c"}, 10))
    assert ndcg_of_scores(scores, cands, {"c"}) == pytest.approx(1 / np.log2(4))
    assert ndcg_of_scores(scores, cands, {"d"}, k=3) == 0.0
