"""Scaled-down trained multimodal baselines: a MARGO-style and a MAGNET-style model.

Both score a (user, item) pair from per-modality similarities between a learned projection of the
user's history mean and of the item's frozen feature (MiniLM text, the poster CLIP, LightGCN item
vectors), are trained with BPR on (user, train positive, random negative) triples with
leave-one-out history means, and use modality dropout during training so they are fitted to
every mask the evaluation uses. At test time a masked modality is absent from the input.

MARGO-style (arXiv 2504.16524): late fusion with item-specific modality weights w_i (a softmax
over the item's available modalities of an MLP on its masked features); two stages: BPR on the
equally weighted fusion, then BPR on the weighted fusion plus a calibration loss, the
cross-entropy between w_pos and the reliability vector z (z_k = 1 when modality k alone ranks the
positive above the negative), scaled by the confidence gamma = sigmoid(margin / tau) of the fused
BPR margin, with stop-gradient on z and gamma.

MAGNET-style (arXiv 2602.20723): a dual view (the interaction graph through LightGCN item vectors;
content-induced item-item edges through each content feature averaged with its 10 nearest items),
and a mixture of three modality-role experts over the modality scores, dominant (a soft maximum),
balanced (the mean) and complementary (a learned combination), with a router conditioned on the
pair's modality scores and availability; two stages triggered by the router's entropy: coverage
first (an entropy bonus) until the mean routing entropy stops rising, then specialisation (an
entropy penalty).

Simplified: frozen encoders instead of trained modality encoders, the user side is the history
mean, a few epochs on two CPU cores.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _modules(dims: dict[str, int], kind: str, hidden: int = 64):
    import torch
    from torch import nn

    k = len(dims)

    class Fusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.ModuleDict({m: nn.Linear(d, hidden, bias=False) for m, d in dims.items()})
            if kind == "margo":
                self.gate = nn.Sequential(nn.Linear(sum(dims.values()) + k, hidden), nn.ReLU(), nn.Linear(hidden, k))
            else:
                self.router = nn.Sequential(nn.Linear(2 * k, hidden), nn.ReLU(), nn.Linear(hidden, 3))
                self.comp = nn.Linear(k, 1)
            self.stage2 = False

        def modality_scores(self, user: dict, item: dict) -> torch.Tensor:
            cols = [nn.functional.cosine_similarity(self.proj[m](user[m]), self.proj[m](item[m]), dim=-1) for m in dims]
            return torch.stack(cols, dim=-1)

        def weights(self, item: dict, avail: torch.Tensor) -> torch.Tensor:  # MARGO
            x = torch.cat([item[m] * avail[:, [j]] for j, m in enumerate(dims)] + [avail], dim=-1)
            return torch.softmax(self.gate(x).masked_fill(avail == 0, -1e9), dim=-1)

        def experts(self, s: torch.Tensor, avail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # MAGNET
            s = s * avail
            n = avail.sum(1).clamp_min(1)
            dominant = (torch.softmax((s / 0.05).masked_fill(avail == 0, -1e9), dim=-1) * s).sum(1)
            balanced = s.sum(1) / n
            complementary = self.comp(s).squeeze(1)
            route = torch.softmax(self.router(torch.cat([s, avail], dim=-1)), dim=-1)
            return (route * torch.stack([dominant, balanced, complementary], dim=-1)).sum(1), route

        def score(self, user: dict, item: dict, avail: torch.Tensor) -> tuple[torch.Tensor, dict]:
            s = self.modality_scores(user, item)
            if kind == "margo":
                w = self.weights(item, avail) if self.stage2 else avail / avail.sum(1, keepdim=True)
                return (w * s).sum(1), {"s": s, "w": w}
            out, route = self.experts(s, avail)
            return out, {"s": s, "route": route}

    return Fusion()


def content_view(features: dict[str, np.ndarray], k: int = 10, chunk: int = 2048) -> dict[str, np.ndarray]:
    """MAGNET's content-induced view: each content feature averaged with its k nearest items."""
    out = {}
    for m, f in features.items():
        if m == "behaviour":
            out[m] = f
            continue
        nb = np.empty((len(f), k), dtype=np.int64)
        for s in range(0, len(f), chunk):
            sims = f[s : s + chunk] @ f.T
            sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
            nb[s : s + chunk] = np.argpartition(-sims, k, axis=1)[:, :k]
        out[m] = 0.5 * f + 0.5 * f[nb].mean(axis=1)
    return out


def train_fusion(
    kind: str,
    features: dict[str, np.ndarray],
    train_pos: list[np.ndarray],
    *,
    epochs: int = 6,
    stage1: int = 3,
    batch: int = 512,
    lr: float = 3e-3,
    lam: float = 0.5,
    tau: float = 0.1,
    beta: float = 0.05,
    drop: float = 0.3,
    seed: int = 0,
):
    """Train a 'margo' or 'magnet' model; returns it with `curve` (loss per epoch) and `stages`."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats = {m: torch.from_numpy(np.nan_to_num(f).astype(np.float32)) for m, f in features.items()}
    n_items, k = next(iter(feats.values())).shape[0], len(feats)
    users = [u for u, h in enumerate(train_pos) if len(h) >= 2]
    sums = {m: torch.stack([f[torch.from_numpy(np.array(train_pos[u]))].sum(0) for u in users]) for m, f in feats.items()}
    counts = torch.tensor([len(train_pos[u]) for u in users], dtype=torch.float32)
    pairs = np.array([(j, i) for j, u in enumerate(users) for i in train_pos[u]])
    model = _modules({m: f.shape[1] for m, f in feats.items()}, kind)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve, stages, entropies = [], [], []
    for epoch in tqdm(range(epochs), desc=f"train {kind}-style", unit="epoch"):
        if kind == "margo":
            model.stage2 = epoch >= stage1
        elif not model.stage2 and len(entropies) >= 2 and (entropies[-1] - entropies[-2] < 1e-3 or epoch >= stage1):
            model.stage2 = True  # entropy-triggered: coverage has stopped growing
        order = rng.permutation(len(pairs))
        total, ent = 0.0, []
        for s in range(0, len(order), batch):
            b = pairs[order[s : s + batch]]
            uj, pos = torch.from_numpy(b[:, 0]), torch.from_numpy(b[:, 1])
            neg = torch.from_numpy(rng.integers(0, n_items, len(b)))
            user = {m: (sums[m][uj] - feats[m][pos]) / (counts[uj, None] - 1) for m in feats}  # leave-one-out history mean
            avail = (torch.rand(len(b), k) > drop).float()
            avail[avail.sum(1) == 0, int(rng.integers(0, k))] = 1.0
            fp, aux_p = model.score(user, {m: feats[m][pos] for m in feats}, avail)
            fn, aux_n = model.score(user, {m: feats[m][neg] for m in feats}, avail)
            margin = fp - fn
            loss = -torch.nn.functional.logsigmoid(margin / tau).mean()
            if kind == "margo" and model.stage2:
                with torch.no_grad():  # stop-gradient: reliability vector and confidence
                    z = (aux_p["s"] > aux_n["s"]).float() * avail
                    z = torch.where(
                        z.sum(1, keepdim=True) > 0, z / z.sum(1, keepdim=True).clamp_min(1), avail / avail.sum(1, keepdim=True)
                    )
                    gamma = torch.sigmoid(margin / tau)
                loss = loss + lam * (gamma * -(z * torch.log(aux_p["w"].clamp_min(1e-9))).sum(1)).mean()
            if kind == "magnet":
                route = torch.cat([aux_p["route"], aux_n["route"]])
                h = -(route * torch.log(route.clamp_min(1e-9))).sum(1).mean()
                loss = loss + (beta * h if model.stage2 else -beta * h)  # specialise / cover
                ent.append(float(h.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        curve.append(total / len(pairs))
        stages.append(2 if model.stage2 else 1)
        if ent:
            entropies.append(float(np.mean(ent)))
    model.eval()
    model.curve, model.stages, model.entropies = curve, stages, entropies
    return model


def load_fusion(kind: str, dims: dict[str, int], state: dict):
    model = _modules(dims, kind)
    model.load_state_dict(state)
    model.stage2 = True
    model.eval()
    return model


def score_pool(
    model, features: dict[str, np.ndarray], mask: dict[str, bool], history: np.ndarray, candidates: np.ndarray
) -> np.ndarray | None:
    """Fused score per candidate over the visible modalities; None when nothing is visible."""
    import torch

    if not any(mask.get(m) for m in features) or len(history) == 0:
        return None
    with torch.no_grad():
        item = {
            m: torch.from_numpy(np.nan_to_num(f[candidates]).astype(np.float32))
            if mask.get(m)
            else torch.zeros(len(candidates), f.shape[1])
            for m, f in features.items()
        }
        user = {
            m: torch.from_numpy(np.nan_to_num(f[history[-100:]]).astype(np.float32))
            .mean(0, keepdim=True)
            .expand(len(candidates), -1)
            if mask.get(m)
            else torch.zeros(len(candidates), f.shape[1])
            for m, f in features.items()
        }
        avail = torch.tensor([[float(bool(mask.get(m))) for m in features]] * len(candidates))
        return model.score(user, item, avail)[0].numpy().astype(float)
