import numpy as np
import pytest

from mma_agent.config import RetrieverConfig
from mma_agent.data.masks import ModalityView
from mma_agent.modalities import family_mask
from mma_agent.models.retrievers import RETRIEVERS, create_retriever, full_sort_metrics, load_retriever


def test_popularity_counts_train(tiny_split):
    view = ModalityView(tiny_split, family_mask("full"))
    r = create_retriever("popularity").fit(view, RetrieverConfig())
    counts = np.bincount(tiny_split.train["item"], minlength=tiny_split.n_items)
    np.testing.assert_array_equal(r.score(np.array([0, 1]))[1], counts)


def test_retrievers_need_behaviour(tiny_split):
    view = ModalityView(tiny_split, family_mask("text-only"))
    with pytest.raises(ValueError, match="needs the behaviour modality"):
        create_retriever("itemknn").fit(view, RetrieverConfig())


def test_unknown_retriever_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        create_retriever("svd")


@pytest.mark.parametrize("name", list(RETRIEVERS))
def test_fit_save_load_round_trip(tiny_split, tmp_path, name):
    view = ModalityView(tiny_split, family_mask("behaviour-only"))
    cfg = RetrieverConfig(epochs=5, eval_every=1, dim=8, batch_size=64)
    r = create_retriever(name).fit(view, cfg, validate=lambda m: full_sort_metrics(m, tiny_split, "valid")["recall@20"])
    users = np.arange(tiny_split.n_users)
    r.save(tmp_path / "r.npz")
    np.testing.assert_allclose(load_retriever(tmp_path / "r.npz").score(users), r.score(users), rtol=1e-6)


def test_itemknn_scores_by_co_interaction(tiny_split):
    view = ModalityView(tiny_split, family_mask("full"))
    r = create_retriever("itemknn").fit(view, RetrieverConfig(knn_shrink=0.0))
    m = tiny_split.matrix("train").toarray()
    co = m.T @ m
    np.fill_diagonal(co, 0)
    n = np.sqrt(m.sum(0))
    sim = co / np.maximum(np.outer(n, n), 1e-12)
    np.testing.assert_allclose(r.score(np.array([0]))[0], m[0] @ sim.T, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.data
def test_lightgcn_beats_popularity_on_real_data(real_split):
    view = ModalityView(real_split, family_mask("behaviour-only"))
    cfg = RetrieverConfig(epochs=60, eval_every=10)
    pop = full_sort_metrics(create_retriever("popularity").fit(view, cfg), real_split, "valid")
    gcn = full_sort_metrics(create_retriever("lightgcn").fit(view, cfg), real_split, "valid")
    assert gcn["recall@20"] > pop["recall@20"] * 1.2
    assert gcn["ndcg@20"] > pop["ndcg@20"]
