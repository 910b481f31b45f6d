"""The episode record of an evaluation (`episodes.jsonl`) and the job layout that lets a run
resume or extend: pure Python, no Ray."""

from __future__ import annotations

import json

import pytest

from tdmpc_ray.evaluate.record import EpisodeRecord
from tdmpc_ray.evaluate.rollout import EpisodeResult, EpisodeSpec
from tdmpc_ray.evaluate.score import job_groups

IDENTITY = {"seed": 3, "planner": {"iterations": 6, "temperature": 0.5}, "max_steps": None}
TASKS = ["walker-walk", "cup-catch", "reacher-easy"]


def _result(task: str, episode: int, ret: float, attempt: int = 0) -> EpisodeResult:
    return EpisodeResult(EpisodeSpec(3, task, TASKS.index(task), episode, attempt), ret, 500)


def test_job_groups_take_episodes_episode_major() -> None:
    def groups(tasks: list[str], episodes: int) -> list[tuple]:
        specs = [EpisodeSpec(0, t, i, e) for i, t in enumerate(tasks) for e in range(episodes)]
        return [tuple((s.task, s.episode) for s in g) for g in job_groups(specs, 2)]

    assert groups(TASKS, 1) == [(("walker-walk", 0), ("cup-catch", 0)), (("reacher-easy", 0),)]
    assert groups(TASKS, 2)[1] == (("reacher-easy", 0), ("walker-walk", 1))
    assert groups(TASKS[:2], 3)[:1] == groups(TASKS[:2], 1)
    assert groups(TASKS[:1], 4) == [
        (("walker-walk", 0), ("walker-walk", 1)),
        (("walker-walk", 2), ("walker-walk", 3)),
    ]


def test_a_record_keeps_episodes_and_reads_them_back(tmp_path) -> None:
    path = tmp_path / "run" / "episodes.jsonl"
    record = EpisodeRecord(path, IDENTITY)
    record.add(_result("walker-walk", 0, 412.5), job=11)
    record.add(_result("cup-catch", 1, 980.0, attempt=1), job=12)
    again = EpisodeRecord(path, IDENTITY)
    kept = again.done(EpisodeSpec(3, "cup-catch", 1, 1), job=12)
    assert kept is not None and kept.ret == 980.0 and kept.spec.attempt == 1
    assert kept.spec.env_seed == EpisodeSpec(3, "cup-catch", 1, 1, attempt=1).env_seed
    assert again.done(EpisodeSpec(3, "cup-catch", 1, 1), job=13) is None
    assert again.done(EpisodeSpec(3, "walker-walk", 0, 1), job=11) is None
    assert len(again.results) == 2


def test_a_record_of_other_settings_is_refused_naming_the_setting(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    EpisodeRecord(path, IDENTITY)
    assert not path.exists(), "no episode yet, no record"
    EpisodeRecord(path, IDENTITY).add(_result("walker-walk", 0, 1.0), job=1)
    other = {**IDENTITY, "planner": {"iterations": 6, "temperature": 0.3}}
    with pytest.raises(ValueError, match=r"planner.temperature=0.5, this run has 0.3"):
        EpisodeRecord(path, other)
    (tmp_path / "other.jsonl").write_text('{"episode": 0}\n')
    with pytest.raises(ValueError, match="not an episode record"):
        EpisodeRecord(tmp_path / "other.jsonl", IDENTITY)


def test_a_line_cut_by_a_crash_is_dropped_and_the_record_goes_on(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    record = EpisodeRecord(path, IDENTITY)
    record.add(_result("walker-walk", 0, 1.0), job=1)
    with open(path, "a") as f:
        f.write('{"seed": 3, "task": "cup-ca')
    resumed = EpisodeRecord(path, IDENTITY)
    assert list(resumed.results) == [("walker-walk", 0)]
    resumed.add(_result("cup-catch", 0, 2.0), job=1)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert len(EpisodeRecord(path, IDENTITY).results) == 2


def test_a_broken_line_inside_the_record_fails_with_its_number(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    record = EpisodeRecord(path, IDENTITY)
    record.add(_result("walker-walk", 0, 1.0), job=1)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not an episode"):
        EpisodeRecord(path, IDENTITY)
