"""`tdmpc-ray data convert` and `data inspect` on chunk files in TD-MPC2's public layout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tdmpc_ray.cli import main
from tdmpc_ray.data.layout import read_part_info, table_arrays
from tdmpc_ray.tasks.task_sets import MT30


def _read_back(dst: Path) -> dict[str, np.ndarray]:
    tables = [pq.read_table(p) for p in sorted(dst.glob("part-*.parquet"))]
    arrays = [table_arrays(t) for t in tables]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def _convert(capsys, *argv: object) -> tuple[int, str, str]:
    rc = main(["data", "convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_convert_reads_back_identical_numbers(ray_session, make_chunk, tmp_path, capsys):
    first = make_chunk("chunk_0.pt", 5, legacy=True)
    second = make_chunk("chunk_1.pt", 4, first=5)
    dst = tmp_path / "mt30"

    rc, out, err = _convert(capsys, first, second, dst, "--episodes-per-file", 2)

    assert rc == 0, err
    assert [p.name for p in sorted(dst.iterdir())] == [f"part-0000{i}.parquet" for i in range(5)]
    got = _read_back(dst)
    source = [torch.load(p, weights_only=False) for p in (first, second)]
    for name in ("obs", "action", "reward"):
        want = np.concatenate([td[name].numpy() for td in source])
        np.testing.assert_array_equal(got[name], want)
    np.testing.assert_array_equal(got["episode_id"], np.arange(9))
    np.testing.assert_array_equal(got["task"], np.arange(9) % 30)
    meta = read_part_info(dst / "part-00004.parquet").meta
    assert (meta.task_set, meta.tasks, meta.obs_dim, meta.action_dim) == ("mt30", MT30, 24, 6)
    assert (meta.episode_length, meta.source) == (501, "chunk_1.pt[2:4]")
    assert "5 written, 0 already there" in out and "paths:" in out
    assert f"{'total':<25} {9:>10,} {9 * 501:>13,} {9 * 500:>13,}" in out


def test_inspect_reports_tasks_returns_schema_and_metadata(
    ray_session, make_chunk, tmp_path, capsys
):
    dst = tmp_path / "mt30"
    assert _convert(capsys, make_chunk("chunk_0.pt", 3), dst)[0] == 0

    assert main(["data", "inspect", str(dst)]) == 0
    out = capsys.readouterr().out

    episode_return = lambda e: 500 * 1000 * e + sum(range(1, 501))  # noqa: E731
    assert (
        f"  1 {'walker-walk':<25} {1:>10,} {501:>13,} {500:>13,} {episode_return(1):>11.1f}" in out
    )
    assert "obs: fixed_size_list<element: float>[12024]" in out
    assert '"task_set": "mt30"' in out and '"episode_length": 501' in out
    assert "1 part file(s), 3 episodes" in out


def _set(name: str, index: tuple, value: float):
    def edit(fields: dict) -> None:
        fields[name][index] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("obs", (5, 7, 2), float("nan")), "episode 5: NaN or inf in obs at step 7"),
        (_set("task", (4, slice(None)), 30), "episode 4: task id 30 is outside [0, 30) at step 0"),
        (
            _set("task", (5, slice(100, None)), 7),
            "episode 5: task id changes within the episode (to 7) at step 100",
        ),
        (_set("action", (4, 0), 0.0), "episode 4: action is not NaN"),
        (_set("reward", (5, 9), float("inf")), "episode 5: NaN or inf in reward at step 9"),
        (
            lambda f: f.update(obs=f["obs"][..., :17].contiguous()),
            "obs has shape [6, 501, 17], expected [6, 501, 24] for task set mt30",
        ),
        (lambda f: f.update(reward=f["reward"].double()), "reward has dtype torch.float64"),
        (lambda f: f.pop("task"), "missing field(s) task"),
    ],
    ids=[
        "nan-obs",
        "task-range",
        "task-changes",
        "action-step0",
        "inf-reward",
        "shape",
        "dtype",
        "missing",
    ],
)
def test_bad_chunk_fails_with_one_line_and_leaves_no_output(
    ray_session, make_chunk, tmp_path, capsys, edit, message
):
    good = make_chunk("chunk_0.pt", 4)
    bad = make_chunk("chunk_1.pt", 6, first=4, edit=edit)
    dst = tmp_path / "out"

    rc, _, err = _convert(capsys, good, bad, dst, "--episodes-per-file", 2)

    assert rc == 2
    assert err.count("\n") == 1 and f"{bad}: " in err and message in err, err
    sources = [read_part_info(p).meta.source for p in dst.glob("part-*.parquet")]
    assert not any(s.startswith("chunk_1.pt") for s in sources)
    assert not list(dst.glob(".*"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
            "truncated or corrupted",
        ),
        (lambda p: p.write_bytes(os.urandom(4096)), "truncated or corrupted"),
        (lambda p: torch.save({"obs": np.zeros(3)}, p), "outside the TensorDict allow-list"),
    ],
    ids=["truncated", "garbage", "foreign-pickle"],
)
def test_unreadable_chunk_fails_with_one_line(make_chunk, tmp_path, capsys, damage, message):
    bad = make_chunk("chunk_0.pt", 2)
    damage(bad)

    rc, _, err = _convert(capsys, bad, tmp_path / "out")

    assert rc == 2
    assert err.count("\n") == 1 and f"{bad}: " in err and message in err, err
    assert not list((tmp_path / "out").glob("*"))


def test_interrupted_conversion_resumes_without_redoing_parts(
    ray_session, make_chunk, tmp_path, capsys
):
    source = make_chunk("chunk_0.pt", 6)
    dst = tmp_path / "out"
    assert _convert(capsys, source, dst, "--episodes-per-file", 2)[0] == 0
    parts = sorted(dst.glob("part-*.parquet"))
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (parts[0], parts[2])}
    before = _read_back(dst)
    parts[1].unlink()
    (dst / ".part-00001.parquet.x1y2.tmp").write_bytes(b"half a part")

    rc, out, err = _convert(capsys, source, dst, "--episodes-per-file", 2)

    assert rc == 0, err
    assert "1 written, 2 already there" in out
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept
    assert sorted(p.name for p in dst.iterdir()) == [p.name for p in parts]
    after = _read_back(dst)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values)


def test_resume_refuses_parts_of_another_plan(ray_session, make_chunk, tmp_path, capsys):
    source = make_chunk("chunk_0.pt", 4)
    dst = tmp_path / "out"
    assert _convert(capsys, source, dst, "--episodes-per-file", 2)[0] == 0

    rc, _, err = _convert(capsys, source, dst, "--episodes-per-file", 3)

    assert rc == 2
    assert "part-00000.parquet: holds mt30 chunk_0.pt[0:2]" in err and "empty directory" in err


@pytest.mark.slow
def test_both_pickle_formats_load_without_tensordict(make_chunk):
    """The default install has no tensordict: the allow-list's stand-ins alone read both."""
    paths = [make_chunk("new.pt", 2, steps=3), make_chunk("old.pt", 2, steps=3, legacy=True)]
    script = textwrap.dedent(
        f"""
        import pickle, sys
        sys.modules["tensordict"] = None  # as on the default install: importing it fails
        import torch
        from tdmpc_ray.data.chunks import load_chunk
        for path in {[str(p) for p in paths]!r}:
            try:
                torch.load(path, weights_only=True, mmap=True)
                sys.exit("loaded without the allow-list")
            except pickle.UnpicklingError:
                pass
            assert load_chunk(path)["obs"].shape == (2, 3, 24)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])
