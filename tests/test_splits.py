import numpy as np
import pytest

from mma_agent.config import DataConfig
from mma_agent.data.dataset import load_dataset
from mma_agent.data.splits import split_dataset


def test_split_is_chronological_per_user(tiny_split):
    s = tiny_split
    for u in range(s.n_users):
        tr = s.train.loc[s.train.user == u, "timestamp"]
        va = s.valid.loc[s.valid.user == u, "timestamp"]
        te = s.test.loc[s.test.user == u, "timestamp"]
        if len(va):
            assert tr.max() <= va.min()
        if len(te) and len(va):
            assert va.max() <= te.min()


def test_only_positives_and_sizes(tiny_root):
    ds = load_dataset(tiny_root)
    s = split_dataset(ds, DataConfig(path=tiny_root, positive_threshold=4.0))
    n_pos = int((ds.interactions.rating >= 4.0).sum())
    assert len(s.train) + len(s.valid) + len(s.test) == n_pos
    per_user = s.train.groupby("user").size() + s.valid.groupby("user").size() + s.test.groupby("user").size()
    for u, n in per_user.items():
        assert (s.valid.user == u).sum() == max(1, round(0.1 * n))
    # a higher threshold keeps fewer positives
    s5 = split_dataset(ds, DataConfig(path=tiny_root, positive_threshold=5.0))
    assert len(s5.train) + len(s5.valid) + len(s5.test) == int((ds.interactions.rating >= 5.0).sum())


def test_bad_ratios_are_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        DataConfig(split_ratios=(0.8, 0.3, 0.1))


def test_cold_targets_are_kept_and_counted(tiny_split):
    s = tiny_split
    cold = (~s.train_items[s.test["item"].to_numpy()]).sum()
    assert s.cold_targets("test") == cold


def test_tags_on_own_held_out_items_are_dropped(tiny_root):
    ds = load_dataset(tiny_root)
    s = split_dataset(ds)
    held = set(zip(s.user_ids[s.valid.user], s.item_ids[s.valid.item])) | set(
        zip(s.user_ids[s.test.user], s.item_ids[s.test.item])
    )
    leaking = [(u, i) for u, i in zip(ds.tags.user_id, ds.tags.item_id) if (u, i) in held]
    assert s.stats["tags_dropped_as_leaks"] == len(leaking)


def test_fingerprint_changes_with_config(tiny_root):
    ds = load_dataset(tiny_root)
    assert split_dataset(ds).fingerprint() == split_dataset(ds).fingerprint()
    assert split_dataset(ds).fingerprint() != split_dataset(ds, DataConfig(path=tiny_root, positive_threshold=5.0)).fingerprint()


@pytest.mark.data
def test_real_split_figures(real_split):
    s = real_split
    assert s.stats["positives"] == 48580
    assert s.stats["users"] == 609
    assert len(s.valid) > 4000 and len(s.test) > 4000
    assert s.cold_targets("test") > 0
    assert np.isclose(len(s.train) / s.stats["positives"], 0.8, atol=0.02)
