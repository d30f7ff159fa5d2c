"""The data -> retrieval -> pools pipeline: the artefacts behind `mma data stats`, `mma retrieve`,
`mma pools` and `mma relevance` (the tables those commands print are built in `cli.data`).

Artefacts go under ``<workdir>/<split fingerprint>/`` so a changed data set or split config never
reuses stale files; each step skips work whose artefact already exists (resume after a crash).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mma_agent.config import PipelineConfig
from mma_agent.data.dataset import load_dataset
from mma_agent.data.masks import ModalityView
from mma_agent.data.pools import (
    BEHAVIOUR_FEATURE,
    SOURCES,
    HistoryRetrievers,
    NoFirstStageError,
    PoolSet,
    Queries,
    heldout_queries,
    retrieve_pools,
    select_first_stage,
)
from mma_agent.data.schema import Dataset
from mma_agent.data.splits import Split, split_dataset
from mma_agent.modalities import TASK_FAMILIES, Modality, family_mask
from mma_agent.models.retrievers import Retriever, create_retriever, full_sort_metrics, load_retriever
from mma_agent.util import atomic_write_text, digest, json_digest

if TYPE_CHECKING:
    from mma_agent.models.relevance import Relevance
    from mma_agent.toolkits.base import Catalogue, Toolkit

log = logging.getLogger(__name__)
RELEVANCE_FAMILY = {Modality.TEXT: "text-only", Modality.IMAGE: "image-only", Modality.BEHAVIOUR: "behaviour-only"}
# each learned channel is chosen on the validation pools of its modality's own family


@dataclass
class Pipeline:
    """The data set, its split, and everything built from them under the workdir (retrievers,
    the poster CLIP, pools, toolkit caches), each built on first use and reused after."""

    config: PipelineConfig = field(default_factory=PipelineConfig)  # the defaults are configs/default.yaml

    @cached_property
    def dataset(self) -> Dataset:
        return load_dataset(self.config.data.path)

    @cached_property
    def split(self) -> Split:
        return split_dataset(self.dataset, self.config.data)

    @cached_property
    def root(self) -> Path:
        return self.config.workdir / f"{self.dataset.name}-{self.split.fingerprint()}"

    @cached_property
    def thumbnails(self) -> np.ndarray:
        from mma_agent.models.image_features import thumbnail_features

        c = self.config.image
        return thumbnail_features(self.dataset, self.root / "cache", width=c.width, height=c.height)

    @cached_property
    def clip_folder(self) -> Path:
        """The trained poster CLIP (an open_clip `local-dir:` folder), trained on first use."""
        from mma_agent.training.clip import train_poster_clip

        return train_poster_clip(self, self.config.image.clip)

    @cached_property
    def image_embeddings(self) -> np.ndarray:
        """(n_items, d) image embeddings of the configured kind; NaN rows for items without a poster."""
        if self.config.image.kind == "thumbnail":
            return self.thumbnails
        from mma_agent.toolkits.base import Catalogue
        from mma_agent.toolkits.image import ImageToolkit

        catalogue = ImageToolkit(f"local-dir:{self.clip_folder}").prepare(Catalogue(self.split), self.root / "cache")
        return catalogue.features["image"][1]

    def toolkits(self, *, image: bool = True, clarify: bool = True, learned: bool = True) -> tuple[Catalogue, dict[str, Toolkit]]:
        """The evidence toolkits over this catalogue, sharing the workdir's caches (built once per
        process; the embeddings once per data set): what the reranker, the evaluation and
        training run on. `image=False` leaves the image toolkit out (its tool answers Null);
        `learned=False` leaves out the learned relevance channels (zero-shot evidence only;
        with `learned=True` they are trained on first use, see `relevance`)."""
        from mma_agent.toolkits import prepare_toolkits, with_relevance

        key = (image, clarify, learned)
        if key not in self._toolkits:
            if not learned:
                model = f"local-dir:{self.clip_folder}" if image else None
                self._toolkits[key] = prepare_toolkits(self.split, self.root / "cache", image_model=model, clarify=clarify)
            else:  # the same toolkits (prepared once), over the catalogue with the learned channels' models
                catalogue, kits = self.toolkits(image=image, clarify=clarify, learned=False)
                relevance = {}
                for m in RELEVANCE_FAMILY:
                    if image or m != Modality.IMAGE:
                        try:
                            relevance[m] = self.relevance(m)[0]
                        except (
                            NoFirstStageError
                        ) as err:  # nothing to choose it on: this modality's tool keeps its zero-shot channels
                            log.warning("no learned %s channel: %s", m, err)
                self._toolkits[key] = (with_relevance(catalogue, relevance), kits)
        return self._toolkits[key]

    @cached_property
    def _toolkits(self) -> dict[tuple[bool, bool, bool], tuple[Catalogue, dict[str, Toolkit]]]:
        return {}

    # --- the trained policy ----------------------------------------------------------------
    def train_dir(self, stage: str, *, interactive: bool = False) -> Path:
        """A training stage's run folder (`sft`, `dpo`, `grpo`, `lookup`; MMA-Interactive's beside it)."""
        return self.root / "train" / (f"{stage}-interactive" if interactive else stage)

    def policy(self, stage: str = "sft", *, interactive: bool = False) -> str:
        """The trained policy's backend string, `transformers:<folder>`: the embedded default that
        `bash scripts/main.sh` trains (`mma train sft`; README, "The embedded policy"). Raises
        FileNotFoundError, naming the command that trains it, when it is not trained yet."""
        folder = self.train_dir(stage, interactive=interactive) / "policy"
        if not (folder / "config.json").is_file():
            command = f"mma train {stage}" + (" --interactive" if interactive else "")
            main = "run `bash scripts/main.sh` (it trains it) or " if (stage, interactive) == ("sft", False) else "run "
            msg = f"no trained policy at {folder}: {main}`{command}`; the zero-shot model is 'transformers:smollm2-135m'"
            raise FileNotFoundError(msg)
        return f"transformers:{folder}"

    def view(self, family: str = "full") -> ModalityView:
        mask = family_mask(family)
        return ModalityView(self.split, mask, image_embeddings=self.image_embeddings if mask.image else None)

    # --- statistics ------------------------------------------------------------------------
    def stats(self, check_images: bool = False) -> dict[str, dict[str, int | float]]:
        from mma_agent.data.stats import dataset_stats

        return dataset_stats(self.dataset, self.split, check_images=check_images)

    # --- retrievers ------------------------------------------------------------------------
    def retriever_path(self, name: str) -> Path:
        cfg = digest(self.config.retrievers.model_dump_json(), 8)
        return self.root / "retrievers" / f"{name}-{cfg}.npz"

    def retriever(self, name: str, *, retrain: bool = False) -> tuple[Retriever, float | None]:
        """A trained retriever (from disk when present) and its training time (None if loaded)."""
        path = self.retriever_path(name)
        if path.is_file() and not retrain:
            return load_retriever(path), None
        view = self.view("behaviour-only")
        start = time.perf_counter()
        r = create_retriever(name).fit(
            view, self.config.retrievers, validate=lambda m: full_sort_metrics(m, self.split, "valid")["recall@20"]
        )
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        r.save(path)
        return r, seconds

    # --- learned relevance channels -------------------------------------------------------
    def relevance_path(self, modality: Modality) -> Path:
        key = [self.config.relevance.model_dump(mode="json"), self._pool_tag]
        return self.root / "relevance" / f"{modality}-{json_digest(key, 8)}.npz"

    def relevance(self, modality: Modality | str, *, retrain: bool = False) -> tuple[Relevance, dict | None]:
        """The learned relevance channel of one modality's toolkit (from disk when present) and,
        when it was trained now, its report (validation curve, wall time). Trained on the train
        split's positives, chosen on the validation pools of the modality's own family."""
        from mma_agent.models.relevance import fit_channel, load_relevance, pool_validator

        modality = Modality(modality)
        path = self.relevance_path(modality)
        if path.is_file() and not retrain:
            return load_relevance(path), None
        family = RELEVANCE_FAMILY[modality]
        pools = self.pools(family, "valid")
        if len(pools) == 0:
            msg = f"family {family!r} has no validation pools to choose a learned channel on"
            raise NoFirstStageError(msg)
        view = self.view("full")
        validate = pool_validator(pools, [view.history(int(u)) for u in pools.users])
        if modality == Modality.BEHAVIOUR:
            inputs = {"lightgcn_item_vecs": self.retriever("lightgcn")[0].item_vecs}
        else:
            catalogue, _ = self.toolkits(image=modality == Modality.IMAGE, clarify=False, learned=False)
            inputs = {"features": catalogue.view(family_mask("full")).feature(str(modality))}
        model, report = fit_channel(modality, self.split.matrix("train"), validate, self.config.relevance, **inputs)
        report["family"] = family
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        atomic_write_text(path.with_suffix(".json"), json.dumps(report, indent=1))
        return model, report

    # --- pools (protocol v2) ---------------------------------------------------------------
    def pool_view(self, family: str) -> ModalityView:
        """The family's view with what the first-stage retrievers read: item text, the image
        embeddings and LightGCN's item vectors (behaviour), each hidden when its modality is masked."""
        mask = family_mask(family)
        features = {}
        if mask.behaviour:
            features[BEHAVIOUR_FEATURE] = (Modality.BEHAVIOUR, self.retriever("lightgcn")[0].item_vecs)
        return ModalityView(self.split, mask, image_embeddings=self.image_embeddings if mask.image else None, features=features)

    def history_retrievers(self, family: str) -> HistoryRetrievers:
        if family not in self._retrievers:
            self._retrievers[family] = HistoryRetrievers(self.pool_view(family), history_window=self.config.pools.history_window)
        return self._retrievers[family]

    @cached_property
    def _retrievers(self) -> dict[str, HistoryRetrievers]:
        return {}

    @cached_property
    def _pool_tag(self) -> str:
        """Keys pool files by everything they depend on besides the split (already in `root`)."""
        p = self.config.pools
        key = [
            p.size,
            p.history_window,
            p.rrf_k,
            self.config.image.model_dump(mode="json"),
            self.config.retrievers.model_dump(mode="json"),
        ]
        return f"n{p.size}-" + json_digest(key, 8)

    def first_stage_selection(self) -> dict:
        """Validation Recall@size of every first-stage combination, and each family's choice (the
        best its mask allows, unless `pools.first_stage` names one). Cached beside the pools."""
        path = self.root / "pools" / f"first-stage-{self._pool_tag}.json"
        if path.is_file():
            recall = json.loads(path.read_text())["recall"]
        else:
            full = self.history_retrievers("full")
            recall = select_first_stage(
                full, heldout_queries(full.view, self.split, "valid"), size=self.config.pools.size, rrf_k=self.config.pools.rrf_k
            )
            atomic_write_text(path, json.dumps({"recall": recall, "missing": self.history_retrievers("full").missing}, indent=1))
        families = {}
        for family, mask in TASK_FAMILIES.items():
            allowed = {c: r for c, r in recall.items() if all(mask.available(s) for s in c.split("+"))}
            named = self.config.pools.first_stage.get(family)
            named = (
                "+".join(sorted(set(named.split("+")), key=SOURCES.index)) if named else None
            )  # the order `recall` spells it in
            families[family] = named or (max(allowed, key=allowed.get) if allowed else None)
        return {"recall": recall, "families": families}

    def pool_path(self, family: str, target_split: str) -> Path:
        return self.root / "pools" / f"{family}-{target_split}-{self._pool_tag}.npz"

    def first_stage_of(self, family: str) -> tuple[str, ...]:
        """The sources of the family's first stage; NoFirstStageError naming why when none survives."""
        combo = self.first_stage_selection()["families"][family]
        retr = self.history_retrievers(family)
        if combo is None or any(s not in retr.sources for s in combo.split("+")):
            why = "; ".join(f"{m}: {w}" for m, w in retr.missing.items()) or "its mask hides every modality with data"
            msg = f"family {family!r} has no first-stage retriever ({why}); its pools are skipped"
            raise NoFirstStageError(msg)
        return tuple(combo.split("+"))

    def pools(self, family: str, target_split: str, *, rebuild: bool = False) -> PoolSet:
        path = self.pool_path(family, target_split)
        if path.is_file() and not rebuild:
            return PoolSet.load(path)
        retr = self.history_retrievers(family)
        queries = heldout_queries(retr.view, self.split, target_split)
        valid_recall = self.first_stage_selection()["recall"]
        combo = self.first_stage_of(family)
        meta = {
            "mask": family_mask(family).to_dict(),
            "split_fingerprint": self.split.fingerprint(),
            "valid_recall": valid_recall.get("+".join(combo), float("nan")),
        }
        pools = retrieve_pools(
            retr,
            combo,
            queries,
            family=family,
            split=target_split,
            size=self.config.pools.size,
            rrf_k=self.config.pools.rrf_k,
            meta=meta,
        )
        pools.save(path)
        return pools

    def train_pools(self, family: str, queries: Queries) -> PoolSet:
        """Pools for training episodes (train targets, the history before each), built exactly as
        the evaluation's (same retrievers and family choice); not saved."""
        combo = self.first_stage_of(family)
        return retrieve_pools(
            self.history_retrievers(family),
            combo,
            queries,
            family=family,
            split="train",
            size=self.config.pools.size,
            rrf_k=self.config.pools.rrf_k,
        )
