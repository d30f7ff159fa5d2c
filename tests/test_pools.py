"""Protocol v2 pools: retrieved for the user under the family's mask, never reading a held-out item."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from mma_agent.data.masks import ModalityView
from mma_agent.data.pools import (
    BEHAVIOUR_FEATURE,
    HistoryRetrievers,
    PoolSet,
    Queries,
    combinations,
    heldout_queries,
    pool_metrics,
    retrieve_pools,
    rrf,
    select_first_stage,
)
from mma_agent.modalities import TASK_FAMILIES, Modality, family_mask


def _view(split, family, *, images: bool = True):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(split.n_items, 6)).astype(np.float32)
    emb[3] = np.nan  # an item whose poster could not be decoded
    if not images:
        emb[:] = np.nan  # a data set where no item has an image
    vecs = rng.normal(size=(split.n_items, 4)).astype(np.float32)
    return ModalityView(
        split, family_mask(family), image_embeddings=emb, features={BEHAVIOUR_FEATURE: (Modality.BEHAVIOUR, vecs)}
    )


def _build(split, family, name, size=10, insert_relevant=False):
    retr = HistoryRetrievers(_view(split, family))
    q = heldout_queries(retr.view, split, name)
    pools = retrieve_pools(retr, tuple(retr.sources), q, family=family, split=name, size=size, progress=False)
    if insert_relevant:  # the v1 mistake: the held-out item put into its own pool
        cands = pools.candidates.copy()
        for p in range(len(pools)):
            if not np.isin(pools.relevant(p)[0], cands[p]):
                cands[p, -1] = pools.relevant(p)[0]
        pools = dataclasses.replace(pools, candidates=cands)
    return pools


def _replace_heldout(split, name, seed=1):
    """Every user's held-out positives in `name` replaced by other items the user never met."""
    df = split.frame(name).copy()
    rng = np.random.default_rng(seed)
    known = split.matrix("train") + split.matrix("valid") + split.matrix("test")
    for row in df.index:
        u = int(df.at[row, "user"])
        free = np.setdiff1d(np.arange(split.n_items), known[u].indices)
        df.at[row, "item"] = int(rng.choice(free))
    return dataclasses.replace(split, **{name: df})


@pytest.mark.parametrize("family", list(TASK_FAMILIES))
def test_pools_are_the_users_top_items_from_the_surviving_modalities(tiny_split, family):
    pools = _build(tiny_split, family, "test")
    mask = family_mask(family)
    assert len(pools) == tiny_split.test["user"].nunique()
    assert pools.meta["first_stage"] == [m for m in ("text", "image", "behaviour") if mask.available(m)]
    view = _view(tiny_split, family)
    for p in range(len(pools)):
        row = pools.candidates[p]
        assert len(set(row.tolist())) == 10
        assert not set(view.history(int(pools.users[p]), include_valid=True).tolist()) & set(row.tolist())  # no known positive
        u = int(pools.users[p])
        assert set(pools.relevant(p).tolist()) == set(tiny_split.test.loc[tiny_split.test.user == u, "item"].tolist())
    assert (np.diff(pools.scores, axis=1) <= 0).all()  # first-stage order
    assert np.isfinite(pools.scores).all()
    assert 0.0 <= pools.recall_ceiling() <= 1.0


@pytest.mark.parametrize("name", ["valid", "test"])
@pytest.mark.parametrize("family", list(TASK_FAMILIES))
def test_leak_guard_pool_construction_never_reads_the_heldout_items(tiny_split, family, name):
    a = _build(tiny_split, family, name)
    other = _replace_heldout(tiny_split, name)
    b = _build(other, family, name)
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.rel_indices, b.rel_indices)  # only relevance changed


def test_leak_guard_can_fail(tiny_split):
    """The guard catches a construction that reads the held-out items (the v1 target insertion)."""
    a = _build(tiny_split, "text-only", "test", insert_relevant=True)
    b = _build(_replace_heldout(tiny_split, "test"), "text-only", "test", insert_relevant=True)
    assert not np.array_equal(a.candidates, b.candidates)


def test_the_pipeline_guard_holds_end_to_end(tiny_root, tmp_path):
    """Through the pipeline (first stage chosen on validation, LightGCN trained on train): test
    pools do not move when every test positive is replaced."""
    from mma_agent.cli.data import pool_table
    from mma_agent.config import PipelineConfig
    from mma_agent.pipeline import Pipeline

    cfg = PipelineConfig.model_validate(
        {
            "data": {"path": str(tiny_root)},
            "workdir": str(tmp_path),
            "pools": {"size": 10},
            "retrievers": {"epochs": 3, "eval_every": 1, "dim": 8},
            "image": {"kind": "thumbnail", "width": 4, "height": 4},
        }
    )
    p = Pipeline(cfg)
    rows = pool_table(p)
    assert {r["family"] for r in rows} == set(TASK_FAMILIES) and all(r["pools"] > 0 for r in rows)
    q = Pipeline(cfg.model_copy(update={"workdir": tmp_path / "other"}))
    q.__dict__["split"] = _replace_heldout(p.split, "test")
    q.__dict__["root"] = tmp_path / "other-root"
    q.__dict__["image_embeddings"] = p.image_embeddings
    shutil.copytree(p.root / "retrievers", q.root / "retrievers")  # LightGCN: trained on train, early-stopped on valid
    (q.root / "pools").mkdir(parents=True)
    sel = next((p.root / "pools").glob("first-stage-*.json"))
    (q.root / "pools" / sel.name).write_text(sel.read_text())  # the validation choice is validation's
    for family in TASK_FAMILIES:
        a, b = p.pools(family, "test"), q.pools(family, "test")
        np.testing.assert_array_equal(a.candidates, b.candidates)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_a_modality_missing_everywhere_and_empty_histories_are_skipped_and_counted(tiny_split, caplog):
    retr = HistoryRetrievers(_view(tiny_split, "image-only", images=False))
    assert retr.sources == [] and "no item has a usable image embedding" in retr.missing["image"]
    with pytest.raises(ValueError, match="cannot read"):
        retrieve_pools(
            retr, ("image",), heldout_queries(retr.view, tiny_split, "test"), family="image-only", split="test", size=10
        )
    full = HistoryRetrievers(_view(tiny_split, "full", images=False))
    assert full.sources == ["text", "behaviour"]
    q = heldout_queries(full.view, tiny_split, "test")
    q = Queries(q.users, [np.empty(0, dtype=np.int64), *q.histories[1:]], q.relevant)
    pools = retrieve_pools(full, ("text", "behaviour"), q, family="full", split="test", size=10, progress=False)
    assert len(pools) == len(q) - 1 and pools.meta["skipped"] == {"empty history": 1}
    assert "skipped 1 of" in caplog.text


def test_pipeline_skips_a_family_without_a_retriever(tiny_root, tmp_path):
    from mma_agent.cli.data import pool_table
    from mma_agent.config import PipelineConfig
    from mma_agent.pipeline import Pipeline

    cfg = PipelineConfig.model_validate(
        {
            "data": {"path": str(tiny_root)},
            "workdir": str(tmp_path),
            "pools": {"size": 10},
            "retrievers": {"epochs": 2, "eval_every": 1, "dim": 8},
            "image": {"kind": "thumbnail", "width": 4, "height": 4},
        }
    )
    p = Pipeline(cfg)
    p.__dict__["image_embeddings"] = np.full((p.split.n_items, 4), np.nan, dtype=np.float32)  # no poster decodes
    rows = {r["family"]: r for r in pool_table(p, splits=("test",))}
    assert rows["image-only"]["pools"] == 0 and "usable image embedding" in rows["image-only"]["first stage"]
    assert rows["full"]["pools"] > 0 and "image" not in rows["full"]["first stage"]
    assert rows["no-text"]["first stage"] == "LightGCN (behaviour)"


def test_rrf_and_selection():
    fused = rrf([np.array([3.0, 2.0, 1.0, -np.inf]), np.array([1.0, 2.0, 3.0, 0.0])], k=1)
    assert fused == pytest.approx([1 / 2 + 1 / 4, 1 / 3 + 1 / 3, 1 / 4 + 1 / 2, 1 / 5])  # item 3: ranked by the second only
    assert np.isneginf(rrf([np.array([-np.inf, 1.0])])[0])
    assert combinations(["text", "image"]) == [("text",), ("image",), ("text", "image")]


def test_selection_reports_every_combination(tiny_split):
    retr = HistoryRetrievers(_view(tiny_split, "full"))
    recall = select_first_stage(retr, heldout_queries(retr.view, tiny_split, "valid"), size=10)
    assert set(recall) == {
        "text",
        "image",
        "behaviour",
        "text+image",
        "text+behaviour",
        "image+behaviour",
        "text+image+behaviour",
    }
    assert all(0.0 <= r <= 1.0 for r in recall.values())


def test_round_trip_corruption_and_old_protocol(tiny_split, tmp_path):
    a = _build(tiny_split, "behaviour-only", "test")
    back = PoolSet.load(a.save(tmp_path / "p.npz"))
    assert back.content_hash() == a.content_hash()
    np.testing.assert_array_equal(back.candidates, a.candidates)
    tampered = dataclasses.replace(a, candidates=a.candidates[:, ::-1].copy())
    path = tampered.save(tmp_path / "t.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    np.savez(path, header=np.array(json.dumps({**header, "hash": a.content_hash()})), **arrays)
    with pytest.raises(ValueError, match="content hash mismatch"):
        PoolSet.load(path)
    np.savez(path, header=np.array(json.dumps({**header, "protocol": "family"})), **arrays)
    with pytest.raises(ValueError, match="rebuild them with `mma pools`"):
        PoolSet.load(path)


def test_pool_metrics_count_relevant_items_outside_the_pool(tiny_split):
    pools = _build(tiny_split, "text-only", "test")
    oracle = np.stack([np.isin(pools.candidates[p], pools.relevant(p)) for p in range(len(pools))]).astype(float)
    m = pool_metrics(pools, oracle)
    assert m["recall@10"] == pytest.approx(pools.recall_ceiling())
    assert pool_metrics(pools)["ndcg@10"] <= m["ndcg@10"]


def test_config_refuses_a_first_stage_the_mask_forbids():
    from mma_agent.config import PoolConfig

    assert PoolConfig(first_stage={"full": "behaviour", "cold-user": "text+image"}).first_stage["full"] == "behaviour"
    with pytest.raises(ValueError, match="behaviour is masked in family 'text-only'"):
        PoolConfig(first_stage={"text-only": "behaviour"})
    with pytest.raises(ValueError, match="unknown source 'audio'"):
        PoolConfig(first_stage={"full": "audio"})


@pytest.mark.data
def test_leak_guard_on_the_real_data_set(real_split):
    """MovieLens-posters: BM25 over the real item text and behaviour vectors from the real train
    interactions (a truncated SVD standing in for LightGCN's, which take minutes to train), fused
    by RRF as the no-image family does; every test positive replaced, the pools do not move."""
    from scipy.sparse.linalg import svds

    u, s, vt = svds(real_split.matrix("train").astype(np.float64), k=16)
    vecs = (vt.T * s).astype(np.float32)

    def build(split):
        view = ModalityView(split, family_mask("no-image"), features={BEHAVIOUR_FEATURE: (Modality.BEHAVIOUR, vecs)})
        retr = HistoryRetrievers(view)
        q = heldout_queries(view, split, "test")
        q = Queries(q.users[:150], q.histories[:150], q.relevant[:150])
        return retrieve_pools(retr, ("text", "behaviour"), q, family="no-image", split="test", size=100, progress=False)

    a, b = build(real_split), build(_replace_heldout(real_split, "test"))
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.rel_indices, b.rel_indices)
    assert 0.05 < a.recall_ceiling() < 0.9  # the user's positives are retrievable, not inserted
