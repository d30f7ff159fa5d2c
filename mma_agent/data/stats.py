"""What a data set holds and lacks: counts per split, and each modality field's natural missingness."""

from __future__ import annotations

import logging

import numpy as np

from mma_agent.data.dataset import load_rgb
from mma_agent.data.schema import Dataset
from mma_agent.data.splits import Split

log = logging.getLogger(__name__)


def dataset_stats(ds: Dataset, split: Split, *, check_images: bool = False) -> dict[str, dict[str, int | float]]:
    """Counts (users, items, splits, cold targets, what the split dropped and why) and, per
    modality field, how many items and ratings lack it; `check_images` decodes every poster."""

    items = ds.items
    rated = items["item_id"].isin(set(ds.interactions["item_id"]))
    counts = {
        "users": split.stats["users"],
        "items": len(items),
        "rated items": int(rated.sum()),
        **{k: split.stats[k] for k in ("interactions", "positives", "train", "valid", "test")},
    }
    counts["cold valid targets (item not in train)"] = split.cold_targets("valid")
    counts["cold test targets (item not in train)"] = split.cold_targets("test")
    counts["users without positives (skipped)"] = split.stats["users_without_positives"]
    counts["users below min positives (train only)"] = split.stats["users_below_min_positives"]
    counts["tag applications dropped as leaks"] = split.stats["tags_dropped_as_leaks"]
    tags = np.array([bool(t) for t in split.item_tags])
    fields = {
        "no genres": items["genres"].eq(""),
        "no user tags": ~tags,
        "no overview": items["overview"].eq(""),
        "no tagline": items["tagline"].eq(""),
        "no keywords": items["keywords"].eq(""),
        "no poster": items["image"].eq(""),
    }
    if check_images:
        bad = np.zeros(len(items), dtype=bool)
        for i, img in enumerate(items["image"]):
            if img:
                try:
                    load_rgb(ds.image_path(img), (8, 8))
                except ValueError as err:
                    bad[i] = True
                    log.warning("%s", err)
        fields["unreadable poster"] = bad
    item_pos = {iid: i for i, iid in enumerate(items["item_id"])}
    item_pos = np.array([item_pos[i] for i in ds.interactions["item_id"]])
    missing = {}
    for name, m in fields.items():
        m = np.asarray(m)
        r = rated.to_numpy()
        missing[name] = {
            "all items": int(m.sum()),
            "rated items": int(m[r].sum()),
            "% of rated items": f"{100 * m[r].mean():.1f}%",
            "% of ratings": f"{100 * m[item_pos].mean():.1f}%",
        }
    return {"counts": counts, "missingness": missing}
