"""Balanced missingness-task episodes from the train split, and their crash-safe recording.

Episodes: for each user, the last train positive is the target and the train positives before it
are the history (validation and test stay untouched). Targets are spread uniformly over the seven
task families; each family's episodes are split 80/20 into support (policy updates) and query
(diagnostics). Pools are built exactly as the evaluation's (protocol v2, `Pipeline.train_pools`):
the family's first stage queried with the history before the target, the target never inserted,
so a policy trains on the distribution it is tested on (the target is in the pool as often as the
first stage recalls it). LightGCN's item vectors were trained on the whole train split, target
edges included: the behaviour retriever has seen each training target once, which the held-out
splits' targets never are, so training pools recall their target more often than evaluation pools.

Recording: one JSON object per line, appended and flushed (and fsynced) per episode, after a
header line holding the config and data hashes. A rerun resumes: episodes already in the file are
skipped, so nothing is lost or counted twice; a half-written last line (a crash mid-write) is cut
off and redone; any other malformed line is an error naming its line number.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.data.pools import NoFirstStageError, Queries
from mma_agent.graphs.state import Episode, rerank_request
from mma_agent.metrics import ndcg_at_k
from mma_agent.modalities import TASK_FAMILIES, family_mask
from mma_agent.toolkits.workspace import Workspace
from mma_agent.training.rewards import action_costs, episode_reward
from mma_agent.util import read_jsonl

log = logging.getLogger(__name__)


class EpisodeFileError(ValueError):
    """An episode file is malformed or belongs to another config; the message names the line."""


def train_targets(split, per_user: int = 1) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(users, targets, histories): each user's last `per_user` train positives as targets, with
    the train positives before each as its history. Users with too few train positives are skipped."""
    df = split.train.sort_values(["user", "timestamp", "item"], kind="stable")
    users, items, hists = [], [], []
    for u, g in df.groupby("user", sort=True):
        seq = g["item"].to_numpy()
        for k in range(1, per_user + 1):
            if len(seq) - k < 2:  # need at least two history items
                break
            users.append(int(u))
            items.append(int(seq[-k]))
            hists.append(seq[: len(seq) - k])
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), hists


def sample_episodes(
    pipeline: Workspace, *, per_family: int | None = None, seed: int = 0, support_fraction: float = 0.8
) -> list[Episode]:
    """Episodes spread uniformly over the seven families, each family split support/query."""
    split = pipeline.split
    users, items, hists = train_targets(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    families = list(TASK_FAMILIES)
    episodes = []
    for f_idx, family in enumerate(families):
        mine = order[f_idx :: len(families)]  # disjoint, balanced slices of the targets
        if per_family is not None:
            mine = mine[:per_family]
        queries = Queries(users[mine], [hists[i] for i in mine], [items[i : i + 1] for i in mine])
        try:
            pools = pipeline.train_pools(family, queries)
        except NoFirstStageError as err:  # no retriever survives this family's mask on this data set
            log.warning("%s", err)
            continue
        row = {int(u): j for j, u in enumerate(pools.users)}  # one target per user: skipped queries drop out
        kept = [i for i in mine if int(users[i]) in row]
        n_support = int(round(support_fraction * len(kept)))
        for j, i in enumerate(kept):
            p = row[int(users[i])]
            episodes.append(
                {
                    "id": f"{family}:{split.user_ids[users[i]]}:{split.item_ids[items[i]]}",
                    "family": family,
                    "part": "support" if j < n_support else "query",
                    "mask": family_mask(family).to_dict(),
                    "user_id": str(split.user_ids[users[i]]),
                    "target": str(split.item_ids[items[i]]),
                    "history": [str(x) for x in split.item_ids[hists[i]]],
                    "candidates": [str(x) for x in split.item_ids[pools.candidates[p]]],
                    "first_stage_scores": [float(x) for x in pools.scores[p]],
                }
            )
    return episodes


def read_episodes(path: Path, *, repair: bool = False) -> tuple[dict, list[dict]]:
    """(header, records). A half-written last line is dropped (and cut off the file if `repair`)."""
    header, records = None, []
    for n, obj in read_jsonl(path, repair=repair, error=EpisodeFileError):
        if n == 1:
            if "header" not in obj:
                msg = f"{path}: line 1 must be the header {{'header': {{...}}}}; is this an episode file?"
                raise EpisodeFileError(msg)
            header = obj["header"]
            continue
        if not isinstance(obj, dict) or "id" not in obj or "reward" not in obj:
            msg = f"{path}: line {n} is not an episode record (needs 'id' and 'reward')"
            raise EpisodeFileError(msg)
        records.append(obj)
    if header is None:
        msg = f"{path}: empty or missing header line"
        raise EpisodeFileError(msg)
    return header, records


def record_episodes(
    episodes: Iterable[dict],
    reranker,
    path: Path,
    header: dict,
    *,
    on_record: Callable[[dict], None] | None = None,
) -> dict[str, int]:
    """Run episodes through a compiled reranker and append each result to `path`; resumable."""
    path = Path(path)
    episodes = list(episodes)
    done: set[str] = set()
    if path.is_file() and path.stat().st_size:
        old_header, records = read_episodes(path, repair=True)
        if old_header != header:
            msg = f"{path} was recorded with another config or data ({old_header}); use a new file or the same settings"
            raise EpisodeFileError(msg)
        done = {r["id"] for r in records}
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            fh.write(json.dumps({"header": header}) + "\n")
    todo = [e for e in episodes if e["id"] not in done]
    stats = {"total": len(episodes), "already": len(episodes) - len(todo), "recorded": 0}
    with path.open("a") as fh:
        for ep in tqdm(todo, desc="record episodes", unit="ep", initial=stats["already"], total=len(episodes)):
            request = rerank_request(ep)
            out = reranker.invoke(request)
            record = {
                "id": ep["id"],
                "family": ep["family"],
                "part": ep["part"],
                "mask": ep["mask"],
                "target": ep["target"],
                "reward": episode_reward(out, ep["target"]),
                "ndcg@10": ndcg_at_k(out["ranking"], {ep["target"]}, 10),
                "costs": action_costs(out["trace"]),
                "fallback": out["fallback"],
                "reason": out["reason"],
                "trace": out["trace"],
                "ranking": out["ranking"][:20],
                "usage": out.get("usage", {}),
            }
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            stats["recorded"] += 1
            if on_record is not None:
                on_record(record)
    return stats
