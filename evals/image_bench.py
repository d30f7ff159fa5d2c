"""`mma bench image`: what the poster modality can really carry, on held-out items only.

Held-out items are the items with a poster that the CLIP heads never trained on (a fixed share,
chosen by a hash of the item id; see `training.clip.heldout_items`).
- Zero-shot genre tagging (prompts over the MovieLens genres) against a genre-prior baseline that
  ignores the image: mean average precision over items, and top-3 accuracy (a true genre in the
  top 3).
- Image -> text retrieval among held-out items: Recall@10 against chance (10 / n).
- Does poster similarity track genre overlap? Spearman correlation between pair similarity and
  genre Jaccard on random pairs, and the mean Jaccard of each poster's 10 nearest posters against
  random pairs, for the CLIP embedding, the raw centred trunk features, and pixel thumbnails.
- Throughput of ``encode_image`` end to end (decode, preprocess, forward) and the catalogue pass.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mma_agent.toolkits.workspace import Workspace
from mma_agent.util import l2_normalize as _norm

GENRE_PROMPT = "a poster of a {} movie"


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: mean precision at the rank of each relevant label."""
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order].astype(float)
    if rel.sum() == 0:
        return float("nan")
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((prec * rel).sum() / rel.sum())


def _map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over items (rows with at least one label) of the AP of their label ranking."""
    rows = np.flatnonzero(labels.any(1))
    return float(np.mean([average_precision(scores[i], labels[i]) for i in rows]))


def _genre_matrix(genres: list[str], vocab: list[str]) -> np.ndarray:
    pos = {g: j for j, g in enumerate(vocab)}
    m = np.zeros((len(genres), len(vocab)), dtype=bool)
    for i, gs in enumerate(genres):
        for g in filter(None, gs.split("|")):
            if g in pos:
                m[i, pos[g]] = True
    return m


def _similarity_vs_genres(emb: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    from scipy.stats import spearmanr

    e = _norm(emb)
    a, b = rng.integers(0, len(e), 20000), rng.integers(0, len(e), 20000)
    keep = a != b
    a, b = a[keep], b[keep]
    jac = (g[a] & g[b]).sum(1) / np.maximum((g[a] | g[b]).sum(1), 1)
    rho = spearmanr((e[a] * e[b]).sum(1), jac).statistic
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argpartition(-sims, 10, axis=1)[:, :10]
    union = (g[:, None, :] | g[nn]).sum(-1)
    nn_jac = ((g[:, None, :] & g[nn]).sum(-1) / np.maximum(union, 1)).mean()
    return {
        "Spearman(sim, genre Jaccard)": float(rho),
        "genre Jaccard of 10 nearest": float(nn_jac),
        "genre Jaccard of random pairs": float(jac.mean()),
    }


def bench_image(pipeline: Workspace, folder: Path, *, n_throughput: int = 64, seed: int = 0) -> dict[str, list[dict]]:
    import torch

    from mma_agent.models.image_features import trunk_features
    from mma_agent.models.poster_clip import load_clip
    from mma_agent.training.clip import heldout_items, pooled_item_texts

    model, preprocess, tokenizer = load_clip(f"local-dir:{folder}")
    ds, split = pipeline.dataset, pipeline.split
    trunk = trunk_features(ds, model, preprocess, pipeline.root / "cache")
    has_img = ~np.isnan(trunk).any(axis=1)
    never = heldout_items(split.item_ids, json.loads((Path(folder) / "training.json").read_text())["config"]["heldout_fraction"])
    held = np.intersect1d(never, np.flatnonzero(has_img))
    train_items = np.setdiff1d(np.flatnonzero(has_img), never)
    with torch.no_grad():
        img = _norm(model.visual.head(torch.from_numpy(trunk[held])).numpy())

    # 1. zero-shot genre tagging
    genres = ds.items["genres"].tolist()
    vocab = sorted({g for gs in genres for g in gs.split("|") if g})
    g_all = _genre_matrix(genres, vocab)
    with torch.no_grad():
        prompts = _norm(model.encode_text(tokenizer([GENRE_PROMPT.format(g.lower()) for g in vocab])).numpy())
    zs = img @ prompts.T  # (n_held, n_genres)
    prior = g_all[train_items].mean(0)  # genre frequency among training items
    log_prior = np.log(np.maximum(prior, 1e-6))
    # Calibrated zero-shot: image score + lambda * log prior, lambda chosen on training items only.
    rng = np.random.default_rng(seed)
    sample = rng.choice(train_items, size=min(1500, len(train_items)), replace=False)
    with torch.no_grad():
        img_tr = _norm(model.visual.head(torch.from_numpy(trunk[sample])).numpy())
    grid = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    lam = max(grid, key=lambda lm: _map(img_tr @ prompts.T + lm * log_prior, g_all[sample]))
    g_held = g_all[held]
    ok = g_held.any(1)
    rows_tag = []
    methods = [
        ("poster CLIP zero-shot", zs),
        (f"poster CLIP zero-shot + {lam} x log genre prior (lambda from training items)", zs + lam * log_prior),
        ("genre prior (ignores the image)", np.broadcast_to(prior, zs.shape)),
    ]
    for name, scores in methods:
        top3 = np.argsort(-scores[ok], axis=1, kind="stable")[:, :3]
        acc = np.take_along_axis(g_held[ok], top3, axis=1).any(1).mean()
        rows_tag.append({"method": name, "items": int(ok.sum()), "genre mAP": _map(scores, g_held), "top-3 accuracy": float(acc)})

    # 2. image -> text retrieval among held-out items
    pooled = pooled_item_texts(pipeline, model, tokenizer)[held]  # cached when the heads were trained
    with torch.no_grad():
        txt = _norm(model.text.proj(torch.from_numpy(pooled)).numpy())
    top10 = np.argpartition(-(img @ txt.T), 10, axis=1)[:, :10]
    r10 = float((top10 == np.arange(len(held))[:, None]).any(1).mean())
    rows_ret = [
        {
            "held-out items": len(held),
            "image->text Recall@10": r10,
            "chance": 10 / len(held),
            "ratio to chance": r10 / (10 / len(held)),
        }
    ]

    # 3. similarity vs genre overlap (the same random pairs for every embedding)
    raw = trunk[held] - trunk[has_img].mean(0)
    rows_sim = []
    for name, emb in [
        ("poster CLIP embedding", img),
        ("raw trunk features, centred", raw),
        ("12x16 pixel thumbnails", pipeline.thumbnails[held]),
    ]:
        rows_sim.append({"embedding": name, **_similarity_vs_genres(np.nan_to_num(emb), g_held, np.random.default_rng(seed))})

    # 4. throughput, end to end
    from PIL import Image

    from mma_agent.data.dataset import load_rgb

    paths = [ds.image_path(ds.items.at[int(i), "image"]) for i in held[:n_throughput]]
    start = time.perf_counter()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.fromarray(load_rgb(p))) for p in paths])
        enc = model.encode_image(batch).numpy()
    secs = time.perf_counter() - start
    agree = float((_norm(enc) * img[: len(paths)]).sum(1).min())
    rows_speed = [
        {
            "posters": len(paths),
            "seconds": f"{secs:.2f}",
            "posters/s": f"{len(paths) / secs:.1f}",
            "catalogue posters": int(has_img.sum()),
            "catalogue pass at this rate (s)": f"{has_img.sum() / (len(paths) / secs):.0f}",
            "min cos(encode_image, cached trunk + head)": f"{agree:.6f}",
        }
    ]
    return {
        "Zero-shot genre tagging on held-out posters": rows_tag,
        "Image -> text retrieval": rows_ret,
        "Poster similarity vs genre overlap (held-out items)": rows_sim,
        "Throughput (encode_image, 2 CPU cores)": rows_speed,
    }
