"""`tdmpc-ray data generate` and `data label`: real dm_control rollouts on Ray actors, real Ray
Data labelling, read back as Parquet and through the training-side episode store.

Episodes are cut at a few dozen steps on cheap tasks, so the whole file runs in about a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from helpers import shared_checkpoint

from tdmpc_ray.cli import main
from tdmpc_ray.data.dataset_info import dataset_info
from tdmpc_ray.data.episode_store import EpisodeStore
from tdmpc_ray.data.generate import GenerateConfig, episode_specs, generate
from tdmpc_ray.data.label import MODEL_LABELS, label
from tdmpc_ray.data.layout import TEACHER_COLUMNS, table_arrays
from tdmpc_ray.model import checkpoint_hash, load_world_model, teacher_outputs
from tdmpc_ray.tasks.dmcontrol import make_env
from tdmpc_ray.tasks.task_sets import MT30, get_task_set, task_dims
from tdmpc_ray.train.teacher import get_teacher

pytestmark = pytest.mark.slow  # every test rolls out dm_control episodes on Ray actors

FP16 = "mt30_1M_steps_045dist_fp16.pt"
INT8 = "mt30_1M_steps_045dist_int8.pt"
LABELS = {t: TEACHER_COLUMNS[t] for t in MODEL_LABELS}
"""Teacher output -> label column, of the labels a plain `data label` writes."""
STEPS = 20
RANDOM = GenerateConfig(
    tasks="cartpole-balance,pendulum-swingup,cup-catch",
    episodes_per_task=2,
    seed=5,
    num_actors=2,
    envs_per_actor=2,
    max_steps=STEPS,
    episodes_per_file=4,
)


def _read(dst: Path) -> dict[str, np.ndarray]:
    """Every part of a data set, concatenated in part order."""
    arrays = [table_arrays(pq.read_table(p)) for p in sorted(dst.glob("part-*.parquet"))]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


@pytest.fixture(scope="module")
def random_data(ray_session, tmp_path_factory) -> Path:
    """RANDOM generated through the CLI."""
    dst = tmp_path_factory.mktemp("random")
    options = (
        "tasks",
        "episodes_per_task",
        "seed",
        "num_actors",
        "envs_per_actor",
        "max_steps",
        "episodes_per_file",
    )
    argv = [f"--{name.replace('_', '-')}={getattr(RANDOM, name)}" for name in options]
    assert main(["data", "generate", *argv, str(dst)]) == 0
    return dst


@pytest.fixture(scope="module")
def prior_data(ray_session, tmp_path_factory) -> Path:
    """The published student's noiseless policy prior on two tasks."""
    cfg = GenerateConfig(
        tasks="cup-catch,pendulum-swingup",
        episodes_per_task=2,
        seed=1,
        noise=0.0,
        policy=str(shared_checkpoint(FP16)),
        max_steps=30,
    )
    dst = tmp_path_factory.mktemp("prior")
    generate(cfg, dst, progress=False)
    return dst


def _check_layout(data: dict[str, np.ndarray], steps: int) -> None:
    """The public MT30 layout: T = steps + 1 rows, NaN only at step 0 of action and reward,
    zero padding past each task's dims, actions in [-1, 1]."""
    E = len(data["task"])
    assert data["obs"].shape == (E, steps + 1, 24) and data["action"].shape == (E, steps + 1, 6)
    assert data["reward"].shape == (E, steps + 1)
    assert np.isnan(data["action"][:, 0]).all() and np.isnan(data["reward"][:, 0]).all()
    assert np.isfinite(data["action"][:, 1:]).all() and np.isfinite(data["reward"][:, 1:]).all()
    assert np.isfinite(data["obs"]).all()
    assert np.abs(data["action"][:, 1:]).max() <= 1
    for episode, task in enumerate(data["task"]):
        obs_dim, action_dim = task_dims(MT30[task])
        for padding in (
            data["obs"][episode, :, obs_dim:],
            data["action"][episode, 1:, action_dim:],
        ):
            assert (padding == 0).all() and not np.signbit(padding).any()


def test_random_rollouts_are_stored_like_the_public_data(random_data, capsys) -> None:
    dst = random_data
    data = _read(dst)

    _check_layout(data, STEPS)
    np.testing.assert_array_equal(data["episode_id"], np.arange(6))
    np.testing.assert_array_equal(data["task"], [8, 8, 7, 7, 12, 12])
    info = dataset_info(dst)
    assert [p.num_episodes for p in info.parts] == [4, 2]
    assert info.meta.episode_length == STEPS + 1 and info.meta.source == "generate:random seed=5"
    assert info.parts[0].provenance["generate"]["max_steps"] == STEPS
    for task, stats in info.stats.items():
        returns = np.nansum(data["reward"][data["task"] == task], axis=1)
        assert stats.count == 2 and stats.mean == pytest.approx(returns.mean())
    assert main(["data", "inspect", str(dst)]) == 0
    assert "2 part file(s), 6 episodes" in capsys.readouterr().out


def test_action_s_led_from_obs_s_minus_1_to_obs_s_and_reward_s(random_data) -> None:
    data = _read(random_data)
    for i, spec in enumerate(episode_specs(RANDOM, get_task_set("mt30"))):
        env = make_env(spec.task, spec.env_seed)
        np.testing.assert_array_equal(env.reset(), data["obs"][i, 0])
        for s in range(1, STEPS + 1):
            obs, reward, _, _ = env.step(data["action"][i, s])
            np.testing.assert_array_equal(obs, data["obs"][i, s])
            assert reward == pytest.approx(data["reward"][i, s], rel=1e-6)


def test_same_seed_gives_the_same_episodes_whatever_the_actors(random_data, tmp_path) -> None:
    generate(dataclasses.replace(RANDOM, num_actors=1), tmp_path, progress=False)

    again, first = _read(tmp_path), _read(random_data)
    for name in ("episode_id", "task", "obs", "action", "reward"):
        np.testing.assert_array_equal(again[name], first[name])


def test_checkpoint_prior_acts_with_its_mean_action(prior_data) -> None:
    checkpoint = shared_checkpoint(FP16)
    data = _read(prior_data)
    _check_layout(data, 30)
    info = dataset_info(prior_data)
    digest = checkpoint_hash(checkpoint)
    assert info.meta.source == f"generate:prior noise=0 seed=1 checkpoint=sha256:{digest[:16]}"
    assert info.parts[0].provenance["generate"]["checkpoint_sha256"] == digest

    model = load_world_model(checkpoint)
    obs = torch.from_numpy(data["obs"][:, :-1].copy())
    task = torch.from_numpy(data["task"]).long().view(-1, 1).expand(obs.shape[:2])
    with torch.no_grad():
        mean = model.pi(model.encode(obs, task), task)[1]["mean"]
    np.testing.assert_allclose(data["action"][:, 1:], mean.numpy(), atol=1e-4)


def test_mpc_with_noise_runs_and_keeps_the_layout(ray_session, tmp_path) -> None:
    checkpoint = shared_checkpoint(FP16)
    argv = [
        "data",
        "generate",
        "--tasks",
        "reacher-easy",
        "--episodes-per-task",
        "2",
        "--policy",
        str(checkpoint),
        "--mpc",
        "--noise",
        "0.3",
        "--max-steps",
        "10",
        "--planner",
        "iterations=1",
        "--planner",
        "num_samples=32",
        "--planner",
        "num_elites=8",
        "--planner",
        "num_pi_trajs=4",
        "--planner",
        "horizon=2",
        str(tmp_path),
    ]
    assert main(argv) == 0
    _check_layout(_read(tmp_path), 10)
    assert dataset_info(tmp_path).meta.source.startswith("generate:mpc noise=0.3 seed=0 ")


def _teacher_on_rows(model, data: dict[str, np.ndarray]) -> tuple[dict, tuple]:
    """The teacher's cacheable outputs for (obs[s-1], action[s], task) of every episode, by
    label column, [E, T-1, width], and those (obs, action, task) rows."""
    E, T, _ = data["obs"].shape
    obs = torch.from_numpy(data["obs"][:, :-1].reshape(-1, 24).copy())
    action = torch.from_numpy(data["action"][:, 1:].reshape(-1, 6).copy())
    task = torch.from_numpy(data["task"]).long().repeat_interleave(T - 1)
    out = teacher_outputs(model, obs, action, task, tuple(LABELS))
    direct = {LABELS[t]: v.view(E, T - 1, -1).numpy() for t, v in out.items()}
    return direct, (obs, action, task)


def _labels(data: dict[str, np.ndarray], column: str) -> np.ndarray:
    """Steps 1.. of a label column as [E, T-1, width]."""
    E, T = data["reward"].shape
    return data[column].reshape(E, T, -1)[:, 1:]


@pytest.fixture(scope="module")
def labelled(prior_data, tmp_path_factory) -> tuple[Path, str]:
    """`prior_data` labelled by the published student through the CLI, into a new directory;
    returns it and what the command printed."""
    out = tmp_path_factory.mktemp("labelled")
    argv = [
        "data",
        "label",
        "--teacher",
        str(shared_checkpoint(FP16)),
        str(prior_data),
        "--out",
        str(out),
        "--batch-episodes",
        "3",
    ]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(argv) == 0
    return out, printed.getvalue()


def test_label_adds_the_teachers_outputs_for_obs_s_minus_1_and_action_s(prior_data, labelled):
    checkpoint = shared_checkpoint(FP16)
    out, printed = labelled
    assert "labelled 1 part(s)" in printed and f"paths: {out}" in printed
    writer = dataset_info(out).parts[0].provenance["label"]["writer"]
    assert writer["pid"] != os.getpid()  # a labelling actor wrote the part, not this driver
    data, source = _read(out), _read(prior_data)
    for name in ("episode_id", "task", "obs", "action", "reward"):
        np.testing.assert_array_equal(data[name], source[name])
    direct, rows = _teacher_on_rows(load_world_model(checkpoint), data)
    terms = tuple(LABELS)
    from_actor = ray.get(get_teacher(str(checkpoint)).outputs.remote(*rows, terms))
    assert sorted(from_actor) == sorted(terms)
    for term, column in LABELS.items():
        assert np.isnan(data[column][:, 0]).all() and np.isfinite(_labels(data, column)).all()
        np.testing.assert_allclose(_labels(data, column), direct[column], rtol=1e-5, atol=1e-5)
        answer = from_actor[term].view(direct[column].shape).numpy()
        np.testing.assert_allclose(_labels(data, column), answer, atol=1e-5)
    info = dataset_info(out)
    assert info.meta.teacher_checkpoint == checkpoint_hash(checkpoint)
    assert info.meta.source == dataset_info(prior_data).meta.source


def test_store_windows_pair_teacher_reward_like_reward(labelled) -> None:
    store = EpisodeStore.load(labelled[0])

    batch = store.sample(64, 3, torch.Generator().manual_seed(0))

    assert batch.teacher["reward"].shape == batch.reward.shape
    assert batch.teacher["policy"].shape == batch.action.shape
    model = load_world_model(shared_checkpoint(FP16))
    for k in range(3):
        want = teacher_outputs(model, batch.obs[k], batch.action[k], batch.task, tuple(LABELS))
        for term in LABELS:
            torch.testing.assert_close(batch.teacher[term][k], want[term], rtol=1e-5, atol=1e-5)


def test_relabelling_in_place_replaces_the_column(labelled, tmp_path) -> None:
    second = shared_checkpoint(INT8)
    data_dir = tmp_path / "data"
    shutil.copytree(labelled[0], data_dir)

    label(data_dir, second, progress=False)

    assert sorted(p.name for p in data_dir.iterdir()) == ["part-00000.parquet"]
    assert dataset_info(data_dir).meta.teacher_checkpoint == checkpoint_hash(second)
    data = _read(data_dir)
    direct, _ = _teacher_on_rows(load_world_model(second), data)
    for column in LABELS.values():
        np.testing.assert_allclose(_labels(data, column), direct[column], rtol=1e-5, atol=1e-5)
        assert not np.allclose(_labels(data, column), _labels(_read(labelled[0]), column))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["generate", "--tasks", "walker-fly", "--episodes-per-task", "1"],
            "task 'walker-fly' is not in task set 'mt30'",
        ),
        (
            ["generate", "--policy", "nope.pt", "--episodes-per-task", "1"],
            "nope.pt: no such checkpoint file",
        ),
        (
            ["generate", "--noise", "0.1", "--episodes-per-task", "1"],
            "--mpc and --noise need a checkpoint policy, not random",
        ),
        (
            ["generate", "--num-actors", "3", "--episodes-per-task", "1"],
            "--num-actors 3 needs as many CPUs, the Ray cluster has 2",
        ),
        (["label", "--teacher", "nope.pt"], "nope.pt: no such checkpoint file"),
    ],
)
def test_bad_input_fails_with_one_line(argv, message, random_data, tmp_path, capsys) -> None:
    target = tmp_path / "out" if argv[0] == "generate" else random_data
    before = sorted(random_data.iterdir())

    assert main(["data", *argv, str(target)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    assert sorted(random_data.iterdir()) == before


def test_label_refuses_more_actors_than_the_cluster_can_feed(random_data, capsys) -> None:
    argv = [
        "data",
        "label",
        "--teacher",
        str(shared_checkpoint(FP16)),
        "--num-actors",
        "3",
        str(random_data),
    ]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert "--num-actors 3 needs 3 CPUs (one per actor), the Ray cluster has 2" in err
    assert dataset_info(random_data).meta.teacher_checkpoint is None


def test_an_interrupted_label_run_resumes_and_skips_finished_parts(
    random_data, tmp_path, caplog
) -> None:
    """Two replicas write the two parts; a rerun after losing one part (and leaving a
    half-written temporary) writes only that part, on one actor of the two asked for, leaves the
    other untouched, and a third run writes nothing. Parts of another teacher in --out are
    refused."""
    teacher, out = shared_checkpoint(FP16), tmp_path / "labelled"
    first = label(random_data, teacher, out, num_actors=2, progress=False)
    kept, lost = out / "part-00000.parquet", out / "part-00001.parquet"
    assert first.written == 2 and first.paths == (kept, lost)
    expected = _read(out)
    stamp = (kept.stat().st_ino, kept.stat().st_mtime_ns)
    lost.unlink()
    (out / ".part-00001.parquet.x1.tmp").write_bytes(b"half")

    with caplog.at_level(logging.WARNING, logger="tdmpc_ray.data.label"):
        second = label(random_data, teacher, out, num_actors=2, progress=False)
    assert "1 part(s) to label: 1 actor(s) start, not 2" in caplog.text

    assert second.written == 1 and "1 part(s) were already labelled" in second.format()
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == stamp
    assert sorted(p.name for p in out.iterdir()) == [kept.name, lost.name]
    for name, values in _read(out).items():
        np.testing.assert_array_equal(values, expected[name])
    assert label(random_data, teacher, out, progress=False).written == 0
    with pytest.raises(ValueError, match="another teacher's labels; use an empty --out"):
        label(random_data, shared_checkpoint(INT8), out, progress=False)
