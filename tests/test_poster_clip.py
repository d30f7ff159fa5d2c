"""The poster CLIP: built from the installed weights, saved and reloaded through open_clip's own
`local-dir:` path, robust to bad posters, resumable."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from mma_agent.data.dataset import load_dataset  # noqa: E402
from mma_agent.models.image_features import trunk_features  # noqa: E402
from mma_agent.models.poster_clip import build_untrained, load_clip, write_folder  # noqa: E402
from mma_agent.training.clip import ClipTrainConfig, train_heads  # noqa: E402


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    model, preprocess = build_untrained(folder, embed_dim=32, image_size=64, context_length=32)
    return folder, model, preprocess


def test_trunk_is_the_imagenet_effnet(untrained):
    _, model, _ = untrained
    from mma_agent.models.poster_clip import trunk_weights_path

    src = torch.load(trunk_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.visual.trunk.conv_stem.weight, src["_conv_stem.weight"])
    assert model.text.transformer.config.hidden_size == 384  # MiniLM


def test_save_and_reload_through_open_clip(untrained, tiny_root, tmp_path):
    folder, model, preprocess = untrained
    from PIL import Image

    out = write_folder(tmp_path / "saved", json_cfg(folder), model.state_dict())
    loaded, pp, tok = load_clip(f"local-dir:{out}")
    x = preprocess(Image.open(tiny_root / "posters" / "0.jpg").convert("RGB"))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x))
        torch.testing.assert_close(loaded.encode_text(tok(["a horror movie"])), model.encode_text(tok(["a horror movie"])))
    assert list(pp.transforms[-1].mean) == [0.5, 0.5, 0.5]  # x / 127.5 - 1, the weights' TF convention


def json_cfg(folder):
    from mma_agent.training.clip import model_cfg_of

    return model_cfg_of(folder)


def test_bad_posters_are_converted_or_reported_and_work_resumes(untrained, tiny_root, tmp_path, caplog):
    from PIL import Image

    _, model, preprocess = untrained
    Image.new("L", (16, 24), 128).save(tiny_root / "posters" / "1.jpg")  # grayscale: converted
    (tiny_root / "posters" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # corrupt: reported
    ds = load_dataset(tiny_root)
    feats = trunk_features(ds, model, preprocess, tmp_path, chunk=16)
    assert feats.shape == (40, 1280)
    assert np.isfinite(feats[1]).all()
    assert np.isnan(feats[2]).all() and "posters/2.jpg" in caplog.text
    assert np.isnan(feats[7]).all()  # no poster at all
    # a crash after some chunks: the final file is gone but chunk files remain; nothing is recomputed
    final = next(tmp_path.glob("trunk-*.npy"))
    final.unlink()
    calls = []
    orig = model.visual.trunk.forward
    model.visual.trunk.forward = lambda x: calls.append(1) or orig(x)
    try:
        again = trunk_features(ds, model, preprocess, tmp_path, chunk=16)
    finally:
        model.visual.trunk.forward = orig
    assert calls == []
    np.testing.assert_array_equal(np.isnan(again), np.isnan(feats))
    np.testing.assert_allclose(np.nan_to_num(again), np.nan_to_num(feats))


def test_head_training_aligns_paired_features(untrained):
    _, model, _ = untrained
    rng = np.random.default_rng(0)
    n = 600
    img = rng.normal(size=(n, 1280)).astype(np.float32)
    mix = rng.normal(size=(1280, 384)).astype(np.float32) / 30
    txt = (img @ mix + 0.1 * rng.normal(size=(n, 384))).astype(np.float32)
    report = train_heads(model, img, txt, np.arange(n), ClipTrainConfig(epochs=40, batch_size=64, patience=40, val_fraction=0.2))
    assert report["best_val_recall@10"] > 0.3  # chance is 10/120
    assert report["curve"][-1]["loss"] < report["curve"][0]["loss"]


def test_a_train_set_under_half_a_batch_still_trains(untrained):
    """A small catalogue (here 30 training pairs, batch 256) trains on one short batch per epoch
    instead of none (which left the heads untrained and the loss NaN)."""
    _, model, _ = untrained
    rng = np.random.default_rng(1)
    img = rng.normal(size=(94, 1280)).astype(np.float32)
    txt = rng.normal(size=(94, 384)).astype(np.float32)
    report = train_heads(model, img, txt, np.arange(94), ClipTrainConfig(epochs=3, batch_size=256, patience=3))
    assert all(np.isfinite(c["loss"]) for c in report["curve"])


def test_heads_hold_out_items_by_id_alone():
    """The held-out items depend on the ids only (never on who liked what), about `fraction` of them."""
    from mma_agent.training.clip import heldout_items

    ids = np.array([str(i) for i in range(5000)])
    held = heldout_items(ids, 0.2)
    assert 0.17 < len(held) / len(ids) < 0.23
    np.testing.assert_array_equal(held, heldout_items(ids, 0.2))  # deterministic
    assert set(ids[heldout_items(ids[:100], 0.2)]) == set(ids[held]) & set(ids[:100])  # each id decides for itself
    assert len(heldout_items(ids, 0.0)) == 0


def test_clip_training_does_not_depend_on_what_ran_before_in_the_process(tiny_root, tmp_path):
    """A fresh machine trains the retrievers before the poster CLIP in one process; the heads'
    random init must not depend on that (it did: image-only figures moved between machines)."""
    from mma_agent.config import PipelineConfig
    from mma_agent.pipeline import Pipeline
    from mma_agent.training.clip import train_poster_clip

    config = ClipTrainConfig(embed_dim=16, image_size=64, context_length=32, epochs=2, batch_size=16)
    weights = []
    for run, noise in (("a", 0), ("b", 10_000)):
        torch.randn(noise)  # what other training in the same process would have drawn
        p = Pipeline(PipelineConfig.model_validate({"data": {"path": str(tiny_root)}, "workdir": str(tmp_path / run)}))
        folder = train_poster_clip(p, config)
        weights.append(torch.load(folder / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True))
    heads = [k for k in weights[0] if k.startswith(("visual.head", "text.proj", "logit_scale"))]
    assert heads and all(torch.equal(weights[0][k], weights[1][k]) for k in heads)
