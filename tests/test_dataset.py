import pandas as pd
import pytest

from mma_agent.data.dataset import DatasetError, load_dataset, save_dataset


def test_generic_format_loads(tiny_root):
    ds = load_dataset(tiny_root)
    assert len(ds.items) == 40 and ds.items["item_id"].is_unique
    assert set(ds.interactions.columns) == {"user_id", "item_id", "timestamp", "rating"}
    assert ds.interactions["timestamp"].dtype == "int64"
    assert ds.image_path("posters/0.jpg") == tiny_root / "posters/0.jpg"
    assert not ds.tags.empty


def test_round_trip_through_parquet(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    out = save_dataset(ds, tmp_path / "converted")
    back = load_dataset(out)
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert back.items["title"].tolist() == ds.items["title"].tolist()
    # image paths are absolute after conversion, so the images need not be copied
    assert back.image_path(back.items.at[0, "image"]).is_file()


def _edit(root, name, fn):
    df = pd.read_csv(root / name, dtype=str, keep_default_na=False)
    fn(df).to_csv(root / name, index=False)


def test_missing_file_names_the_file(tiny_root):
    (tiny_root / "interactions.csv").unlink()
    with pytest.raises(DatasetError, match="no interactions.csv or interactions.parquet"):
        load_dataset(tiny_root)


def test_missing_column_names_it(tiny_root):
    _edit(tiny_root, "interactions.csv", lambda d: d.drop(columns="timestamp"))
    with pytest.raises(DatasetError, match=r"interactions.csv: missing column\(s\) \['timestamp'\]"):
        load_dataset(tiny_root)


def test_duplicate_item_id_names_file_and_line(tiny_root):
    _edit(tiny_root, "items.csv", lambda d: pd.concat([d, d.iloc[[3]]], ignore_index=True))
    with pytest.raises(DatasetError, match=r"items.csv: duplicate item_id 'm3' on line\(s\) 42"):
        load_dataset(tiny_root)


def test_non_numeric_timestamp_names_line(tiny_root):
    def corrupt(d):
        d.loc[4, "timestamp"] = "yesterday"
        return d

    _edit(tiny_root, "interactions.csv", corrupt)
    with pytest.raises(DatasetError, match=r"non-numeric or empty timestamp 'yesterday' on line\(s\) 6"):
        load_dataset(tiny_root)


def test_unknown_item_is_an_error(tiny_root):
    def corrupt(d):
        d.loc[0, "item_id"] = "nope"
        return d

    _edit(tiny_root, "interactions.csv", corrupt)
    with pytest.raises(DatasetError, match="missing from the items table, first 'nope'"):
        load_dataset(tiny_root)


def test_repeated_pairs_are_merged_and_logged(tiny_root, caplog):
    _edit(tiny_root, "interactions.csv", lambda d: pd.concat([d, d.iloc[[0]].assign(timestamp="99999")], ignore_index=True))
    ds = load_dataset(tiny_root)
    assert not ds.interactions.duplicated(["user_id", "item_id"]).any()
    assert "1 repeated (user_id, item_id) rows merged" in caplog.text


def test_not_a_folder():
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset("/no/such/place")


@pytest.mark.data
def test_movielens_posters_adapter(real_root):
    ds = load_dataset(real_root)
    assert len(ds.items) == 9742
    assert len(ds.interactions) == 100836
    assert ds.interactions["user_id"].nunique() == 610
    toy = ds.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert "Animation" in toy["genres"]
    assert "Woody" in toy["overview"]  # TMDB join through links.csv
    assert toy["image"] == "posters/1.jpg"
    assert (ds.items["image"] != "").sum() == 9517
    assert len(ds.tags) == 3683


def test_poster_caches_are_keyed_by_content_not_mtime(tiny_root):
    """A data set copied or re-mounted unchanged (new mtimes) keeps its poster caches; a changed
    poster does not."""
    import os

    from mma_agent.data.dataset import load_dataset
    from mma_agent.models.image_features import poster_fingerprint

    ds = load_dataset(tiny_root)
    before = poster_fingerprint(ds)
    poster = tiny_root / "posters" / "0.jpg"
    os.utime(poster, ns=(1, 1))
    assert poster_fingerprint(ds) == before
    poster.write_bytes(poster.read_bytes() + b"\0")
    after = poster_fingerprint(ds)
    assert after[0] != before[0] and after[1:] == before[1:]
