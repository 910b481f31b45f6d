"""The Parquet episode layout: write, read back, zero-copy views, footer statistics."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tdmpc2_episodes

from tdmpc_ray.data.layout import (
    EpisodeMeta,
    episodes_to_table,
    read_part_info,
    table_arrays,
    write_part,
)
from tdmpc_ray.data.stats import ReturnStats, merge_by_task, stats_by_task
from tdmpc_ray.tasks.task_sets import MT30

META = EpisodeMeta("mt30", MT30, obs_dim=24, action_dim=6, episode_length=7, source="test")


def _table(episodes: int = 5, teacher: bool = False):
    fields = {k: v.numpy() for k, v in tdmpc2_episodes(episodes, steps=7).items()}
    return episodes_to_table(
        META,
        episode_id=np.arange(episodes),
        task=fields["task"][:, 0],
        obs=fields["obs"],
        action=fields["action"],
        reward=fields["reward"],
        teacher={"reward": 2 * fields["reward"]} if teacher else None,
    ), fields


def test_part_round_trip_keeps_numbers_metadata_and_return_stats(tmp_path):
    table, fields = _table(teacher=True)
    meta = EpisodeMeta(**{**META.to_dict(), "tasks": MT30, "teacher_checkpoint": "sha256:ab"})
    path = tmp_path / "part-00000.parquet"

    write_part(path, table, meta, provenance={"host": "test"})

    arrays = table_arrays(pq.read_table(path))
    for name in ("obs", "action", "reward"):
        np.testing.assert_array_equal(arrays[name], fields[name])
    np.testing.assert_array_equal(arrays["teacher_reward"], 2 * fields["reward"])
    info = read_part_info(path)
    assert info.meta == meta and info.num_episodes == 5 and info.provenance == {"host": "test"}
    returns = np.nansum(fields["reward"], axis=1)
    assert info.stats[3] == ReturnStats.of(returns[3:4])


@pytest.mark.parametrize(
    ("footer", "problem"),
    [
        (b"[]", "a JSON list, not an object"),
        (b'{"format": 1}', "missing key 'tasks'"),
        (b'{"format": 1, "tasks": 5}', "'int' object is not iterable"),
        (b'{"format": 1, "tasks": []}', "missing 5 required positional arguments"),
        (b"{not json", "Expecting property name"),
        (b'{"format": 99}', "episode layout format 99 is not supported"),
    ],
)
def test_a_malformed_footer_fails_with_one_line(tmp_path, footer, problem):
    table, _ = _table()
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table.replace_schema_metadata({"tdmpc_ray": footer}), path)
    with pytest.raises(ValueError) as err:
        read_part_info(path)
    message = str(err.value)
    assert message.startswith(f"{path}: bad tdmpc_ray metadata: ") and "\n" not in message
    assert problem in message


def test_table_arrays_are_views_of_arrow_memory():
    table, _ = _table()

    arrays = table_arrays(table)

    obs_values = table.column("obs").chunk(0).values
    assert arrays["obs"].shape == (5, 7, 24)
    assert arrays["obs"].ctypes.data == obs_values.buffers()[1].address
    assert arrays["reward"].shape == (5, 7) and arrays["action"].shape == (5, 7, 6)


def test_teacher_reward_needs_the_teacher_checkpoint_hash(tmp_path):
    table, _ = _table(teacher=True)

    with pytest.raises(ValueError, match="teacher checkpoint hash"):
        write_part(tmp_path / "part-00000.parquet", table, META)
    assert not list(tmp_path.iterdir())


def test_return_stats_merge_like_one_pass():
    rng = np.random.default_rng(0)
    task, returns = rng.integers(0, 3, 100), rng.uniform(0, 1000, 100)

    merged = merge_by_task(
        [stats_by_task(task[:37], returns[:37]), stats_by_task(task[37:], returns[37:])]
    )

    for t, whole in stats_by_task(task, returns).items():
        assert merged[t].count == whole.count
        np.testing.assert_allclose(
            [merged[t].mean, merged[t].std, merged[t].min, merged[t].max],
            [whole.mean, whole.std, whole.min, whole.max],
        )
