"""The training-side episode store and its TD-MPC2 window sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tdmpc2_episodes

from tdmpc_ray.data import episode_store
from tdmpc_ray.data.episode_store import EpisodeStore
from tdmpc_ray.data.layout import EpisodeMeta, episodes_to_table, part_name, write_part
from tdmpc_ray.tasks.task_sets import MT30


def write_parts(dst: Path, episodes: int, steps: int, per_part: int, teacher: bool = False) -> Path:
    """Parquet parts of `tdmpc2_episodes`, `per_part` episodes each."""
    meta = EpisodeMeta(
        "mt30",
        MT30,
        24,
        6,
        steps,
        source="test",
        teacher_checkpoint="sha256:t" if teacher else None,
    )
    for index, first in enumerate(range(0, episodes, per_part)):
        count = min(per_part, episodes - first)
        fields = {k: v.numpy() for k, v in tdmpc2_episodes(count, steps, first=first).items()}
        table = episodes_to_table(
            meta,
            episode_id=np.arange(first, first + count),
            task=fields["task"][:, 0],
            obs=fields["obs"],
            action=fields["action"],
            reward=fields["reward"],
            teacher={"reward": -fields["reward"]} if teacher else None,
        )
        write_part(dst / part_name(index), table, meta)
    return dst


def test_windows_have_tdmpc2_shapes_and_pairing(tmp_path):
    store = EpisodeStore.load(write_parts(tmp_path, episodes=6, steps=21, per_part=4))
    H, B = 3, 256

    batch = store.sample(B, H, torch.Generator().manual_seed(0))

    assert batch.obs.shape == (H + 1, B, 24) and batch.action.shape == (H, B, 6)
    assert batch.reward.shape == (H, B, 1) and batch.task.shape == (B,)
    assert batch.task.dtype == torch.int64 and batch.teacher == {}
    tag = batch.obs[..., 0]
    episode, start = tag[0] // 1000, tag[0] % 1000
    assert torch.equal(tag, tag[0] + torch.arange(H + 1).unsqueeze(1))  # consecutive steps
    assert torch.equal(tag // 1000, episode.expand(H + 1, B))  # never crosses episodes
    assert start.min() >= 0 and start.max() <= 21 - H - 1
    # obs[t+k] pairs with the action taken from it and its reward: stored step t+k+1
    assert torch.equal(batch.action[..., 0], tag[1:]) and torch.equal(batch.reward[..., 0], tag[1:])
    assert torch.equal(batch.task, episode.long() % 30)
    assert not any(torch.isnan(x).any() for x in batch[:3])


def test_starts_are_uniform_over_all_episode_start_pairs(tmp_path):
    store = EpisodeStore.load(write_parts(tmp_path, episodes=4, steps=11, per_part=4))
    H, draws = 3, 64_000
    generator = torch.Generator().manual_seed(1)

    tags = torch.cat([store.sample(1000, H, generator).obs[0, :, 0] for _ in range(draws // 1000)])

    windows = store.num_windows(H)
    counts = np.bincount((tags // 1000 * (11 - H) + tags % 1000).long().numpy(), minlength=windows)
    expected = draws / windows
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert windows == 32 and counts.min() > 0
    assert chi2 < 61.1  # chi-square 99.9% quantile, 31 degrees of freedom


def test_teacher_reward_passes_through_with_reward(tmp_path):
    store = EpisodeStore.load(write_parts(tmp_path, 3, 9, 3, teacher=True))

    batch = store.sample(64, 2, torch.Generator().manual_seed(0))

    assert store.labelled_terms == ("reward",)
    assert torch.equal(batch.teacher["reward"], -batch.reward)


def test_rotating_store_streams_every_episode_through_bounded_slots(tmp_path):
    path = write_parts(tmp_path, episodes=40, steps=9, per_part=5)
    store = EpisodeStore.load(
        path, max_resident_episodes=10, rotate_every=2, rotate_episodes=5, seed=3
    )
    generator = torch.Generator().manual_seed(0)
    seen, sampled = set(store.fields["episode_id"].tolist()), set()

    for _ in range(2 * 8 * 2):
        sampled.update((store.sample(32, 2, generator).obs[0, :, 0] // 1000).long().tolist())
        seen.update(store.fields["episode_id"].tolist())
        assert store.num_episodes == 10
    store.close()

    assert store.rotations == 15
    assert seen == set(range(40)) and sampled <= seen
    assert len(sampled) > 30


def test_rotating_store_holds_a_small_data_set_whole(tmp_path):
    store = EpisodeStore.load(write_parts(tmp_path, 6, 9, 3), max_resident_episodes=10)

    assert store.num_episodes == 6
    with pytest.raises(ValueError, match="does not rotate"):
        store.rotate()


@pytest.mark.slow
def test_store_loads_ray_data_shards_arrow_and_pandas_batches_alike(ray_session, tmp_path):
    path = write_parts(tmp_path, episodes=7, steps=9, per_part=3)
    dataset = ray_session.data.read_parquet(str(path))
    shard = dataset.streaming_split(1)[0]
    tables = [pq.read_table(p) for p in sorted(path.glob("*.parquet"))]
    frames = [t.to_pandas() for t in tables]

    stores = [EpisodeStore.load(source) for source in (shard, dataset, frames, tables, path)]

    for store in stores:
        order = torch.argsort(store.fields["episode_id"])
        assert torch.equal(store.fields["episode_id"][order], torch.arange(7))
        assert torch.equal(store.fields["obs"][order], stores[-1].fields["obs"])
        assert torch.equal(store.fields["task"][order], torch.arange(7) % 30)


@pytest.mark.parametrize("chunk_episodes", [1, 2, 3, 7])
def test_ray_shards_load_in_chunks_into_identical_episodes(
    ray_session, tmp_path, monkeypatch, chunk_episodes
):
    """A source of unknown size is gathered in host chunks (boundaries inside, at the end of
    and across Ray blocks) and then moved into one storage: the episodes are the Parquet ones."""
    path = write_parts(tmp_path, episodes=7, steps=9, per_part=3, teacher=True)
    episode_bytes = pq.read_table(path / "part-00000.parquet").nbytes // 3
    monkeypatch.setattr(episode_store, "CHUNK_BYTES", chunk_episodes * episode_bytes)
    shard = ray_session.data.read_parquet(str(path)).streaming_split(1)[0]

    store, whole = EpisodeStore.load(shard), EpisodeStore.load(path)

    order = torch.argsort(store.fields["episode_id"])
    assert set(store.fields) == set(whole.fields)
    for name, tensor in whole.fields.items():
        torch.testing.assert_close(
            store.fields[name][order], tensor, rtol=0, atol=0, equal_nan=True, msg=name
        )
        assert store.fields[name].is_contiguous()


def test_chunks_of_different_episode_lengths_fail_with_one_line(tmp_path, monkeypatch):
    short = pq.read_table(write_parts(tmp_path / "a", 2, 9, 2) / "part-00000.parquet")
    long = pq.read_table(write_parts(tmp_path / "b", 2, 11, 2) / "part-00000.parquet")
    monkeypatch.setattr(episode_store, "CHUNK_BYTES", 1)

    with pytest.raises(ValueError, match="episodes of 11 and 9 steps in one store"):
        EpisodeStore.load([short, long])
