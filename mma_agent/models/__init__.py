"""Models that are not the policy: first-stage retrievers and the evidence's learned parts.

`retrievers` are the behaviour first stages (Popularity, ItemKNN, BPR-MF, LightGCN) trained on
the train split. `relevance` fits the learned per-modality relevance channels that each toolkit
reports beside its zero-shot ones. `poster_clip` is the poster CLIP (a frozen EfficientNet-Lite2
trunk and MiniLM with trained projection heads), and `image_features` computes and caches poster
features from it. Torch loads inside the functions that train or encode.
"""
