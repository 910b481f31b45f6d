"""Offline data: TD-MPC2 chunk files -> Parquet episodes -> training windows.

- `layout`: the Parquet episode layout of DESIGN.md (schema, footer metadata, writer, readers).
- `chunks`: memory-mapped reading and validation of TD-MPC2's public `chunk_N.pt` files.
- `convert`: `tdmpc-ray data convert`, parallel and resumable on Ray.
- `dataset_info`, `stats`: `tdmpc-ray data inspect` and per-task return statistics.
- `episode_store`: the training-side `EpisodeStore` and its TD-MPC2 window sampler.
- `commands`: the `data` verb and its sub-verbs.
"""
