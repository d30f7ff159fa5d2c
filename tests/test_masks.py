"""The masks are enforced in one place: with a modality masked, changing that modality's data
changes no output of the view, nor of anything built on it (pools)."""

import numpy as np
import pandas as pd
import pytest

from mma_agent.data.dataset import load_dataset
from mma_agent.data.masks import ModalityView
from mma_agent.data.pools import BEHAVIOUR_FEATURE, HistoryRetrievers, heldout_queries, retrieve_pools
from mma_agent.data.splits import split_dataset
from mma_agent.modalities import OOMA_FAMILIES, TASK_FAMILIES, Mask, Modality, assign_families, family_mask
from mma_agent.models.image_features import thumbnail_features


def test_families():
    assert len(TASK_FAMILIES) == 7
    assert family_mask("text-only") == Mask(text=True, image=False, behaviour=False)
    assert family_mask("cold-user") == Mask(text=True, image=True, behaviour=False)
    assert str(family_mask("no-image")) == "T-B"
    assert all(sum(family_mask(f).to_dict().values()) == 1 for f in OOMA_FAMILIES)
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        family_mask("nope")


def test_assign_families_balanced_and_deterministic():
    a = assign_families(700, seed=3)
    assert a == assign_families(700, seed=3)
    assert a != assign_families(700, seed=4)
    assert set(pd.Series(a).value_counts()) == {100}


def test_masked_modalities_read_as_none(tiny_split):
    v = ModalityView(tiny_split, family_mask("behaviour-only"), image_embeddings=np.zeros((tiny_split.n_items, 3)))
    assert v.item_text(0) is None and v.item_texts() is None and v.item_field(0, "title") is None
    assert v.image_path(0) is None and v.image_embeddings() is None and v.has_image() is None
    assert v.interactions() is not None
    v = ModalityView(tiny_split, family_mask("text-only"))
    assert v.interactions() is None and v.popularity() is None
    assert "film" in v.item_text(0)
    assert len(v.history(0)) > 0  # the user's own history is the request: always visible


def _mutate(root, modality):
    """Change one modality's data on disk: every text field, every poster, or other users'
    interactions (the collaborative signal)."""
    from PIL import Image

    if modality == "text":
        items = pd.read_csv(root / "items.csv", dtype=str, keep_default_na=False)
        for col in ("title", "genres", "overview", "keywords"):
            items[col] = items[col].str[::-1] + " zebra"
        items.to_csv(root / "items.csv", index=False)
        tags = pd.read_csv(root / "tags.csv", dtype=str)
        tags["tag"] = "unicorn"
        tags.to_csv(root / "tags.csv", index=False)
    elif modality == "image":
        for p in (root / "posters").glob("*.jpg"):
            Image.new("RGB", (16, 24), (int(p.stem) * 5 % 255, 128, 255 - int(p.stem) * 5 % 255)).save(p)
    else:
        # The behaviour modality is the visible collaborative signal: other users' *train*
        # interactions. Re-point the earliest half of every other user's positives (certainly train)
        # to items that user never met; held-out rows (ground truth) and split sizes stay the same.
        inter = pd.read_csv(root / "interactions.csv", dtype=str)
        rng = np.random.default_rng(1)
        for _, g in inter[inter["user_id"] != "u0"].groupby("user_id"):
            pos = g[g["rating"].astype(float) >= 4].sort_values("timestamp")
            early = pos.index[: len(pos) // 2]
            free = sorted(set(f"m{i}" for i in range(40)) - set(g["item_id"]))
            new = rng.choice(free, size=min(len(early), len(free)), replace=False)
            inter.loc[early[: len(new)], "item_id"] = new
        inter.to_csv(root / "interactions.csv", index=False)


def _outputs(root, family, tmp):
    ds = load_dataset(root)
    split = split_dataset(ds)
    mask = family_mask(family)
    emb = thumbnail_features(ds, tmp, width=4, height=4)
    # the behaviour retriever's item vectors, from every user's train interactions (a small SVD)
    u_, s_, vt = np.linalg.svd(split.matrix("train").toarray(), full_matrices=False)
    vecs = (vt[:4].T * s_[:4]).astype(np.float32)
    view = ModalityView(split, mask, image_embeddings=emb, features={BEHAVIOUR_FEATURE: (Modality.BEHAVIOUR, vecs)})
    retr = HistoryRetrievers(view)
    pools = retrieve_pools(
        retr, tuple(retr.sources), heldout_queries(view, split, "test"), family=family, split="test", size=10, progress=False
    )
    u0 = int(np.flatnonzero(split.user_ids == "u0")[0])
    keep = pools.users == u0  # user u0's episodes: their own history is untouched by every mutation
    return {
        "texts": view.item_texts(),
        "paths": [view.image_path(i) for i in range(view.n_items)],
        "emb": None if view.image_embeddings() is None else view.image_embeddings().tobytes(),
        "pop": None if view.popularity() is None else view.popularity().tobytes(),
        "cands": pools.candidates[keep].tobytes(),
        "scores": pools.scores[keep].tobytes(),
    }


@pytest.mark.parametrize("family", list(TASK_FAMILIES))
def test_masked_modality_changes_no_output(family, tmp_path):
    from tests.conftest import write_tiny_dataset

    mask = family_mask(family)
    for modality in ("text", "image", "behaviour"):
        if mask.available(modality):
            continue
        a = write_tiny_dataset(tmp_path / f"a-{modality}")
        b = write_tiny_dataset(tmp_path / f"b-{modality}")
        _mutate(b, modality)
        out_a = _outputs(a, family, tmp_path / f"ca-{modality}")
        out_b = _outputs(b, family, tmp_path / f"cb-{modality}")
        for key in out_a:
            if key == "paths":  # paths differ by folder name only
                assert [p is None for p in out_a[key]] == [p is None for p in out_b[key]]
                continue
            assert out_a[key] == out_b[key], f"{family}: changing {modality} changed {key}"


@pytest.mark.parametrize("modality", ["text", "image", "behaviour"])
def test_leak_test_can_fail_when_modality_visible(modality, tmp_path):
    """The same mutation does change outputs when the modality is visible, so the test above is not vacuous."""
    family = {"text": "text-only", "image": "image-only", "behaviour": "behaviour-only"}[modality]
    from tests.conftest import write_tiny_dataset

    a = write_tiny_dataset(tmp_path / "a")
    b = write_tiny_dataset(tmp_path / "b")
    _mutate(b, modality)
    out_a, out_b = _outputs(a, family, tmp_path / "ca"), _outputs(b, family, tmp_path / "cb")
    assert any(out_a[k] != out_b[k] for k in ("texts", "emb", "pop", "cands", "scores"))
