import numpy as np
import pytest

from mma_agent.config import PoolConfig, RetrieverConfig
from mma_agent.masks import TASK_FAMILIES, ModalityView, family_mask
from mma_agent.pools import PoolSet, build_family_pools, build_fixed_pools, pick_targets, pool_metrics
from mma_agent.retrievers import create_retriever


def _view(split, family, dim=6):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(split.n_items, dim)).astype(np.float32)
    emb[3] = np.nan  # an item whose poster could not be decoded
    return ModalityView(split, family_mask(family), image_embeddings=emb)


@pytest.mark.parametrize("family", list(TASK_FAMILIES))
def test_family_pools_contain_target_once_and_no_known_positive(tiny_split, family):
    cfg = PoolConfig(size=12, targets_per_user=None)
    view = _view(tiny_split, family)
    pools = build_family_pools(view, tiny_split, family, "test", cfg, RetrieverConfig())
    assert len(pools) == len(tiny_split.test)
    for p in range(len(pools)):
        row = pools.candidates[p]
        assert len(set(row.tolist())) == 12
        assert (row == pools.targets[p]).sum() == 1
        others = set(view.known_positives(int(pools.users[p])).tolist()) - {int(pools.targets[p])}
        assert not others & set(row.tolist())
    assert pools.meta["sources"] == [m for m in ("text", "image", "behaviour") if family_mask(family).available(m)]
    assert np.isfinite(pools.scores).all()


def test_pools_are_deterministic_and_round_trip(tiny_split, tmp_path):
    cfg = PoolConfig(size=10, targets_per_user=1)
    a = build_family_pools(_view(tiny_split, "text-only"), tiny_split, "text-only", "valid", cfg, RetrieverConfig())
    b = build_family_pools(_view(tiny_split, "text-only"), tiny_split, "text-only", "valid", cfg, RetrieverConfig())
    assert a.content_hash() == b.content_hash()
    c = build_family_pools(_view(tiny_split, "text-only"), tiny_split, "text-only", "valid", cfg.model_copy(update={"seed": 1}), RetrieverConfig())
    assert a.content_hash() != c.content_hash()
    path = a.save(tmp_path / "p.npz")
    back = PoolSet.load(path)
    assert back.content_hash() == a.content_hash()
    np.testing.assert_array_equal(back.candidates, a.candidates)


def test_corrupt_pool_file_is_detected(tiny_split, tmp_path):
    cfg = PoolConfig(size=10)
    a = build_family_pools(_view(tiny_split, "behaviour-only"), tiny_split, "behaviour-only", "test", cfg, RetrieverConfig())
    tampered = PoolSet(a.protocol, a.family, a.split, a.users, a.targets, a.candidates[:, ::-1].copy(), a.scores, a.n_filled, a.rel_indptr, a.rel_indices, a.meta)
    path = tampered.save(tmp_path / "p.npz")
    import json

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    header["hash"] = a.content_hash()
    np.savez(path, header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(ValueError, match="content hash mismatch"):
        PoolSet.load(path)


def test_view_must_match_family(tiny_split):
    with pytest.raises(ValueError, match="does not match family"):
        build_family_pools(_view(tiny_split, "full"), tiny_split, "text-only", "test", PoolConfig(size=5), RetrieverConfig())


def test_targets_per_user(tiny_split):
    users, items = pick_targets(tiny_split, "test", 1)
    assert len(users) == len(set(users.tolist())) == tiny_split.test["user"].nunique()
    users_all, _ = pick_targets(tiny_split, "test", None)
    assert len(users_all) == len(tiny_split.test)


def test_fixed_pools_exclude_train_and_valid(tiny_split):
    view = ModalityView(tiny_split, family_mask("behaviour-only"))
    r = create_retriever("popularity").fit(view, RetrieverConfig())
    pools = build_fixed_pools(r, "popularity", tiny_split, "test", PoolConfig(size=15))
    seen = (tiny_split.matrix("train") + tiny_split.matrix("valid")).tocsr()
    for p, u in enumerate(pools.users):
        assert not set(seen[u].indices.tolist()) & set(pools.candidates[p].tolist())
        assert set(pools.relevant(p).tolist()) == set(tiny_split.test.loc[tiny_split.test.user == u, "item"].tolist())
    assert 0.0 <= pools.recall_ceiling() <= 1.0
    # scores are sorted descending: the first-stage order
    assert (np.diff(pools.scores, axis=1) <= 0).all()


def test_pool_metrics_rank_by_scores(tiny_split):
    cfg = PoolConfig(size=10)
    pools = build_family_pools(_view(tiny_split, "text-only"), tiny_split, "text-only", "test", cfg, RetrieverConfig())
    oracle = (pools.candidates == pools.targets[:, None]).astype(float)
    assert pool_metrics(pools, oracle)["ndcg@10"] == pytest.approx(1.0)
    assert pool_metrics(pools, -oracle)["hr@10"] == pytest.approx(1.0)
    assert pool_metrics(pools, -oracle)["ndcg@10"] == pytest.approx(1 / np.log2(11))
