"""Train the poster CLIP's projection heads on cached frozen-tower features (LiT-style).

1. Image trunk features: every poster through the frozen EfficientNet-Lite2 (open_clip's own
   preprocessing), written in chunks so a killed run resumes where it stopped; an unreadable,
   truncated or grayscale poster is converted or reported by file, never a crash.
2. Text features: every item's text through the frozen MiniLM and open_clip's mean pooler.
3. Heads: ``model.visual.head`` and ``model.text.proj`` (and the logit scale) trained with
   open_clip's ``ClipLoss`` on (poster, text) pairs of catalogue items. A fixed share of items,
   chosen by a hash of the item id (never by interactions: an image space trained around the
   validation/test positives would tell a probe which items are held out), is never trained on;
   `mma bench image` measures on those. 5% of the rest are held out for early stopping on
   image->text Recall@10.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.config import ClipTrainConfig
from mma_agent.models.image_features import trunk_features
from mma_agent.toolkits.workspace import Workspace
from mma_agent.util import atomic_save_npy, digest, joined_digest

log = logging.getLogger(__name__)


def text_pooled(model, tokenizer, texts: list[str], *, batch_size: int = 64, desc: str = "text features") -> np.ndarray:
    """Mean-pooled MiniLM states before the projection, exactly as open_clip's HFTextEncoder pools."""
    import torch

    enc = model.text
    out = []
    for lo in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        x = tokenizer(texts[lo : lo + batch_size])
        attn = (x != enc.config.pad_token_id).long()
        with torch.no_grad():
            out.append(enc.pooler(enc.transformer(input_ids=x, attention_mask=attn), attn).numpy())
    return np.concatenate(out).astype(np.float32)


def train_heads(model, img: np.ndarray, txt: np.ndarray, train_idx: np.ndarray, config: ClipTrainConfig) -> dict:
    """Train visual.head, text.proj and logit_scale on cached features; keep the best epoch."""
    import torch
    from open_clip.loss import ClipLoss

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    idx = rng.permutation(train_idx)
    n_val = max(64, int(len(idx) * config.val_fraction))
    val, tr = idx[:n_val], idx[n_val:]
    heads = [model.visual.head, model.text.proj]
    params = [p for h in heads for p in h.parameters()] + [model.logit_scale]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = ClipLoss()
    img_t, txt_t = torch.from_numpy(np.nan_to_num(img)), torch.from_numpy(txt)

    def recall10(items: np.ndarray) -> float:
        with torch.no_grad():
            a = torch.nn.functional.normalize(model.visual.head(img_t[items]), dim=-1)
            b = torch.nn.functional.normalize(model.text.proj(txt_t[items]), dim=-1)
            ranks = (a @ b.T).argsort(dim=1, descending=True)[:, :10]
        return float((ranks == torch.arange(len(items))[:, None]).any(1).float().mean())

    best, best_state, bad, curve = -1.0, None, 0, []
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc="train CLIP heads", unit="epoch")
    for epoch in bar:
        for h in heads:
            h.train()
        perm, losses = rng.permutation(tr), []
        # a last batch under half the size is left out; a train set under half a batch is one batch
        for lo in range(0, max(len(perm) - config.batch_size // 2, 1), config.batch_size):
            b = perm[lo : lo + config.batch_size]
            fi = model.visual.head(img_t[b])
            ft = model.text.proj(txt_t[b])
            loss = loss_fn(
                torch.nn.functional.normalize(fi, dim=-1), torch.nn.functional.normalize(ft, dim=-1), model.logit_scale.exp()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            losses.append(loss.item())
        for h in heads:
            h.eval()
        r10 = recall10(val)
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_recall@10": r10})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_r10=f"{r10:.3f}")
        if r10 > best:
            best, bad = r10, 0
            best_state = [{k: v.clone() for k, v in h.state_dict().items()} for h in heads] + [model.logit_scale.detach().clone()]
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is not None:
        for h, s in zip(heads, best_state[:2], strict=True):
            h.load_state_dict(s)
        with torch.no_grad():
            model.logit_scale.copy_(best_state[2])
    return {
        "curve": curve,
        "best_val_recall@10": best,
        "n_train": len(tr),
        "n_val": len(val),
        "seconds": time.perf_counter() - start,
    }


def pooled_item_texts(pipeline: Workspace, model, tokenizer) -> np.ndarray:
    """(n_items, d) pooled frozen-text-tower features of every item text, cached by text content and
    context length (the tower is frozen, so training and the benchmark share one pass)."""
    from mma_agent.data.masks import ModalityView
    from mma_agent.modalities import family_mask

    texts = ModalityView(pipeline.split, family_mask("full")).item_texts()
    path = pipeline.root / "cache" / f"text-pooled-{joined_digest([*texts, str(tokenizer.context_length)], 12)}.npy"
    if path.is_file():
        return np.load(path)
    txt = text_pooled(model, tokenizer, texts)
    atomic_save_npy(path, txt)
    return txt


def heldout_items(item_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the items the heads never train on: those whose id hashes into the bottom
    `fraction` (content-free and interaction-free, stable across data set versions)."""
    h = np.array([int(digest(f"clip-heldout:{i}", 8), 16) for i in item_ids], dtype=np.float64)
    return np.flatnonzero(h / 16**8 < fraction)


def train_poster_clip(pipeline: Workspace, config: ClipTrainConfig | None = None, *, retrain: bool = False) -> Path:
    """Build, train and save the poster CLIP as an open_clip `local-dir:` folder; returns the folder.
    Skips everything when the folder already holds weights for this config (resume)."""
    import json

    import torch

    from mma_agent.models.poster_clip import build_untrained, write_folder

    config = config or ClipTrainConfig()
    folder = pipeline.root / f"poster-clip-{digest(config.model_dump_json(), 12)}"
    if (folder / "open_clip_pytorch_model.bin").is_file() and not retrain:
        return folder
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # The heads' random init comes from torch's global generator: seed it here, or the init (and
    # every figure downstream of the poster CLIP) depends on what else ran in this process first
    # (a fresh machine trains the retrievers before the CLIP in the same process).
    torch.manual_seed(config.seed)
    model, preprocess = build_untrained(
        folder, embed_dim=config.embed_dim, image_size=config.image_size, context_length=config.context_length
    )
    cache = pipeline.root / "cache"
    img = trunk_features(pipeline.dataset, model, preprocess, cache)
    import open_clip

    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    txt = pooled_item_texts(pipeline, model, tokenizer)
    has_img = ~np.isnan(img).any(axis=1)
    held = heldout_items(pipeline.split.item_ids, config.heldout_fraction)
    train_idx = np.setdiff1d(np.flatnonzero(has_img), held)
    log.info("training heads on %d items (held out by id hash: %d)", len(train_idx), len(held))
    report = train_heads(model, img, txt, train_idx, config)
    write_folder(folder, model_cfg_of(folder), model.state_dict())
    (folder / "training.json").write_text(json.dumps({"config": config.model_dump(), **report}, indent=2))
    _plot_curve(report["curve"], folder / "training-curve.png")
    return folder


def model_cfg_of(folder: Path) -> dict:
    import json

    return json.loads((Path(folder) / "open_clip_config.json").read_text())["model_cfg"]


def _plot_curve(curve: list[dict], path: Path) -> None:
    from mma_agent.plots import line_plot

    ep = [c["epoch"] for c in curve]
    line_plot(
        {"val image->text Recall@10": (ep, [c["val_recall@10"] for c in curve])},
        path,
        xlabel="epoch",
        ylabel="Recall@10",
        title="Poster CLIP heads (best epoch kept; loss in training.json)",
    )
