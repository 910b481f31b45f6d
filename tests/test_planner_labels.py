"""Planner labels (`data label --mpc`): the teacher's cold-started MPPI distribution at every
state, seeded per episode so a resumed run writes the same labels, read back by training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import shared_checkpoint
from test_data_episode_store import write_parts

from tdmpc_ray.cli import main
from tdmpc_ray.config import build_config
from tdmpc_ray.data.dataset_info import dataset_info
from tdmpc_ray.data.episode_store import EpisodeStore
from tdmpc_ray.data.label import label, planner_labels
from tdmpc_ray.data.layout import table_arrays
from tdmpc_ray.model import load_world_model
from tdmpc_ray.planning import PlannerConfig
from tdmpc_ray.train.config import TrainConfig

FP16 = "mt30_1M_steps_045dist_fp16.pt"
TINY = PlannerConfig(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2, horizon=2)


@pytest.fixture(scope="module")
def teacher():
    return load_world_model(shared_checkpoint(FP16)).requires_grad_(False)


def _episodes(count: int, steps: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {
        "obs": gen.standard_normal((count, steps, 24), dtype=np.float32),
        "task": np.arange(count) % 30,
        "episode_id": np.arange(10, 10 + count),
    }


def test_labels_are_the_planners_distribution_per_episode_whatever_the_batch(teacher):
    data = _episodes(3)

    together = planner_labels(teacher, TINY, 0, data["obs"], data["task"], data["episode_id"])
    alone = [
        planner_labels(
            teacher,
            TINY,
            0,
            data["obs"][e : e + 1],
            data["task"][e : e + 1],
            data["episode_id"][e : e + 1],
        )
        for e in range(3)
    ]

    np.testing.assert_array_equal(together, np.concatenate(alone))
    assert together.shape == (3, 4, 12) and np.isnan(together[:, 0]).all()
    mean, std = np.split(together[:, 1:], 2, axis=-1)
    mask = teacher.action_masks[torch.as_tensor(data["task"])].numpy()[:, None].astype(bool)
    used = np.broadcast_to(mask, mean.shape)
    assert (np.abs(mean) <= 1).all() and (mean[~used] == 0).all() and (std[~used] == 0).all()
    assert ((std >= TINY.min_std) & (std <= TINY.max_std))[used].all()
    other = planner_labels(teacher, TINY, 1, data["obs"], data["task"], data["episode_id"])
    assert not np.array_equal(other, together)  # the seed matters


def _labels(directory: Path) -> dict[str, np.ndarray]:
    arrays = [table_arrays(pq.read_table(p)) for p in sorted(directory.glob("part-*.parquet"))]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


@pytest.mark.slow  # Ray Data actor pools
def test_a_resumed_run_writes_the_same_planner_labels(ray_session, tmp_path):
    data = write_parts(tmp_path / "data", episodes=4, steps=4, per_part=2)
    teacher, out = shared_checkpoint(FP16), tmp_path / "labelled"
    first = label(data, teacher, out, num_actors=2, progress=False, planner=TINY, seed=3)
    whole = _labels(out)
    lost = out / "part-00001.parquet"
    lost.unlink()

    resumed = label(data, teacher, out, progress=False, planner=TINY, seed=3)

    assert (first.written, resumed.written) == (2, 1)
    for name, values in _labels(out).items():
        np.testing.assert_array_equal(values, whole[name], err_msg=name)
    footer = dataset_info(out).parts[1].provenance["label"]["planner"]
    assert footer == {"config": dataclasses.asdict(TINY), "seed": 3}
    assert "seed 3, MPPI iterations=1 num_samples=16" in resumed.format()
    assert label(data, teacher, out, progress=False).written == 0  # the default labels are there
    other = dataclasses.replace(TINY, num_samples=32)
    assert label(data, teacher, out, progress=False, planner=other, seed=3).written == 2
    batch = EpisodeStore.load(out).sample(8, 2, torch.Generator().manual_seed(0))
    assert batch.teacher["planner"].shape == (2, 8, 12)


def test_planner_labels_are_opted_into_and_training_needs_them(capsys):
    cfg = build_config(TrainConfig, None, {"data": "d", "teacher": "t.pt", "planner_d_coef": 1})

    with pytest.raises(ValueError, match="^d: planner_d_coef needs teacher_planner labels"):
        cfg.check_labels(("reward",))
    cfg.check_labels(("planner",))
    assert main(["data", "label", "--teacher", "t.pt", "--seed", "1", "d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--planner and --seed set the planner labels" in err
