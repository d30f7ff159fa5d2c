"""Data: what the reranker ranks, and the protocol that keeps evaluation honest.

A data set in the generic format (`schema`, `dataset`; MovieLens-posters through `movielens`) is
split chronologically per user (`splits`). `masks` is the one place an availability mask
(`mma_agent.modalities`) is enforced, through a `ModalityView` that reads a masked modality as
``None`` everywhere at once.
`pools` builds protocol v2's candidate pools: each user's top-100 from a first stage that sees
only the family's surviving modalities and never reads a held-out item.
"""
