"""The learned relevance channels: the scorers' arithmetic, EASE's closed form, BPR training that
learns, the pipeline step that caches them, and the toolkits that add them under the mask."""

import numpy as np
import pytest
import scipy.sparse as sp

from mma_agent.models.relevance import (
    ItemItem,
    TwoTower,
    fit_ease,
    load_relevance,
    train_two_tower,
)


def test_two_tower_scores_the_pool_against_the_history_items_that_have_the_feature(tmp_path):
    hv = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    iv = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    m = TwoTower(hv, iv)
    u = np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0])  # the mean of rows 0 and 2; row 1 has no feature
    np.testing.assert_allclose(m.score(np.array([0, 1, 2]), np.array([3, 1, 0])), iv[[3, 1, 0]] @ u, rtol=1e-6)
    assert m.score(np.array([1]), np.array([0, 2])) is None  # nothing to go on: no evidence, not zeros
    assert m.covered(np.array([0, 1, 2])).tolist() == [True, False, True]
    m.save(tmp_path / "m.npz")
    back = load_relevance(tmp_path / "m.npz")
    assert isinstance(back, TwoTower) and np.array_equal(back.item_vecs, iv)


def test_ease_is_the_closed_form_and_the_validator_picks_lambda(tmp_path):
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 12)) < 0.3).astype(np.float32)
    dense[:, 11] = 0  # an item nobody interacted with
    x = sp.csr_matrix(dense)
    seen = []
    model, curve = fit_ease(x, lambda m: seen.append(m) or -len(seen), lambdas=(5.0, 50.0), topk=100)
    assert [lam for lam, _ in curve] == [5.0, 50.0] and model is seen[0]  # the first lambda validated best
    idx = np.arange(11)
    g = (x[:, idx].T @ x[:, idx]).toarray()
    p = np.linalg.inv(g + 5.0 * np.eye(11))
    b = p / -np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    hist, cands = np.array([0, 3, 11]), np.array([1, 2, 11, 5])
    want = b[[0, 3]][:, [1, 2, 5]].sum(axis=0)  # item 11 is unknown: out of the history, zero as a candidate
    np.testing.assert_allclose(model.score(hist, cands), [want[0], want[1], 0.0, want[2]], rtol=1e-4, atol=1e-6)
    assert model.score(np.array([11]), cands) is None
    model.save(tmp_path / "e.npz")
    back = load_relevance(tmp_path / "e.npz")
    assert isinstance(back, ItemItem) and np.allclose(back.score(hist, cands), model.score(hist, cands))


def test_two_tower_training_learns_what_users_like_from_frozen_features():
    """Users like one of four clusters of items; the frozen features place the clusters in a
    random rotation that cosine to the history mean partly blurs. Held-out AUC must rise above
    what the epoch-1 model had, and well above chance."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n_items, n_users, d = 200, 120, 16
    cluster = rng.integers(0, 4, n_items)
    centres = rng.normal(size=(4, d))
    feats = (centres[cluster] + 1.5 * rng.normal(size=(n_items, d))).astype(np.float32)
    feats[::17] = np.nan  # items without the feature
    taste = rng.integers(0, 4, n_users)
    liked = [rng.choice(np.flatnonzero(cluster == taste[u]), 12, replace=False) for u in range(n_users)]
    train = sp.csr_matrix(
        (np.ones(n_users * 10), (np.repeat(np.arange(n_users), 10), np.concatenate([lk[:10] for lk in liked]))),
        shape=(n_users, n_items),
    )

    def auc(model) -> float:
        wins = []
        for u in range(n_users):
            neg = np.flatnonzero(cluster != taste[u])[:20]
            s = model.score(liked[u][:10], np.concatenate([liked[u][10:], neg]))
            wins.append((s[:2, None] > s[None, 2:]).mean())
        return float(np.mean(wins))

    model, curve = train_two_tower(feats, train, auc, dim=8, epochs=8, batch=256, lr=1e-2, patience=8)
    assert len(curve) == 8 and max(v for *_, v in curve) == auc(model)
    assert auc(model) > max(0.75, curve[0][2] + 0.02)
    assert np.isnan(model.history_vecs[::17]).all() and not model.item_vecs[::17].any()  # no feature: no evidence either way


def test_the_pipeline_step_trains_once_and_the_toolkits_add_the_channel_under_the_mask(tiny_root, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    from mma_agent.cli.data import relevance_table
    from mma_agent.config import PipelineConfig
    from mma_agent.modalities import family_mask
    from mma_agent.pipeline import Pipeline
    from mma_agent.toolkits.base import EpisodeContext

    cfg = PipelineConfig.model_validate(
        {
            "data": {"path": str(tiny_root)},
            "workdir": str(tmp_path),
            "pools": {"size": 10},
            "retrievers": {"epochs": 3, "eval_every": 1, "dim": 8},
            "relevance": {"epochs": 3, "dim": 8},
            "image": {"kind": "thumbnail", "width": 4, "height": 4},
        }
    )
    p = Pipeline(cfg)
    rows = relevance_table(p, ["text", "behaviour"])
    assert [r["modality"] for r in rows] == ["text", "behaviour"] and all(r["train s"] != "cached" for r in rows)
    try:
        import matplotlib  # noqa: F401  (optional: the plot is skipped without it)

        assert (p.root / "relevance" / "validation-curves.png").is_file()
    except ImportError:
        pass
    again = relevance_table(Pipeline(cfg), ["text", "behaviour"])
    assert all(r["train s"] == "cached" for r in again) and [r["valid NDCG@10 (channel alone)"] for r in again] == [
        r["valid NDCG@10 (channel alone)"] for r in rows
    ]

    from mma_agent.toolkits import prepare_toolkits

    relevance = {m: p.relevance(m)[0] for m in ("text", "behaviour")}
    catalogue, kits = prepare_toolkits(p.split, p.root / "cache", image_model=None, clarify=False, relevance=relevance)
    u = 0
    cands = np.arange(0, 40, 3)
    for family, tool, kit in (("text-only", "analyze_text", "text"), ("behaviour-only", "retrieve_graph", "graph")):
        view = catalogue.view(family_mask(family))
        ctx = EpisodeContext(view, view.history(u), cands, u, first_stage=-np.arange(len(cands), dtype=float))
        ev = kits[kit].call(tool, ctx)
        name = f"{kits[kit].spec(tool).group}_learned"
        np.testing.assert_allclose(ev.channels[name], relevance[str(kits[kit].modality)].score(view.history(u), cands))
        assert "Strength:" in ev.observation and "in first stage's top 10" in ev.observation
    view = catalogue.view(family_mask("behaviour-only"))  # text masked: its learned channel is hidden with the rest of it
    assert view.feature("text_relevance") is None and view.feature("behaviour_relevance") is not None
