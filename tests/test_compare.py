"""Paired comparisons: pairing checks, pooling over seeds, and `tdmpc-ray compare` on two
quantizations of the published student (real quantization, dm_control, Ray) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdmpc_ray import cli
from tdmpc_ray.evaluate.compare import (
    check_paired,
    compare_results,
    format_comparison,
    load_result,
    pool_pairs,
)
from tests.helpers import FP16_STUDENT, shared_checkpoint

TASKS = "cartpole-balance,pendulum-swingup"
EPISODES = 6
TINY_EVAL = [
    "--tasks",
    TASKS,
    "--episodes",
    str(EPISODES),
    "--max-steps",
    "30",
    "--num-actors",
    "1",
    "--envs-per-actor",
    "6",
    "--cpus-per-actor",
    "0.5",
    "--iterations",
    "1",
    "--num-samples",
    "32",
    "--num-elites",
    "8",
    "--num-pi-trajs",
    "4",
    "--horizon",
    "2",
    "--no-compile",
]


def result(returns: dict[str, list[float]], seed: int = 0, length: int = 500) -> dict:
    """An evaluation result as `evaluate` writes it, with env seeds that depend on the run
    seed, task and episode, as real ones do."""
    return {
        "tasks": {
            task: {
                "returns": rs,
                "env_seeds": [hash((seed, task, e)) % 2**31 for e in range(len(rs))],
                "lengths": [length] * len(rs),
            }
            for task, rs in returns.items()
        },
        "config": {"seed": seed},
    }


A = {
    "walker-walk": [500.0, 600.0, 550.0, 520.0, 580.0, 560.0],
    "cup-catch": [0.0, 950.0, 0.0, 0.0, 950.0, 0.0],
}
B = {"walker-walk": [r - 100 for r in A["walker-walk"]], "cup-catch": A["cup-catch"]}


@pytest.mark.parametrize(
    "b, message",
    [
        (result({"walker-walk": B["walker-walk"]}), "task 'cup-catch' is only in A"),
        (result({**B, "cup-catch": [0.0, 950.0]}), "'cup-catch' has 6 episodes in A and 2 in B"),
        (result(B, seed=1), "episode 0 ran on env seed"),
        (result(B, length=30), "episode 0 lasted 500 in A and 30 in B"),
    ],
)
def test_unpaired_results_are_refused_with_one_line(b: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        check_paired(result(A), b)
    assert "A and B are not paired" in str(err.value) and "\n" not in str(err.value)


def test_a_paired_comparison_sees_a_shift_that_the_unpaired_scores_blur() -> None:
    report = compare_results([(result(A), result(B))], ("fp16", "int8"))
    assert report["difference"]["value"] == pytest.approx(5.0)
    assert report["difference"]["low"] == pytest.approx(5.0)  # cup-catch pairs exactly
    assert report["a"]["low"] < report["b"]["high"]  # the scores alone overlap
    assert report["verdict"] == "fp16 scores higher"
    assert report["pairing"] == {
        "pairs": 1,
        "tasks": 2,
        "episodes_per_task": 6,
        "unit": "episode",
        "env_seeds": "identical per episode",
    }
    assert compare_results([(result(A), result(B))], ("fp16", "int8")) == report


def test_p_of_improvement_beside_a_negative_difference_says_how_ties_count() -> None:
    """The issue's case: most episodes tie at 0, A wins a few by a little and loses one by a
    lot, so P(A > B) > 0.5 while A - B < 0; the report says ties count half and wins count,
    not their size."""
    a = {f"t{i}": [0.0, 0.0, 0.0, 0.0, 20.0, 20.0] for i in range(5)}
    b = {f"t{i}": [0.0, 0.0, 0.0, 0.0, 0.0, 200.0] for i in range(5)}
    report = compare_results([(result(a), result(b))])
    assert report["difference"]["value"] < 0 < report["probability_of_improvement"]["value"] - 0.5
    assert report["ties"] == pytest.approx(20 / 36)
    assert "56% of episode pairs tie and count half" in format_comparison(report)
    distinct = {"t0": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    shifted = {"t0": [r + 0.5 for r in distinct["t0"]]}
    assert "tie" not in format_comparison(compare_results([(result(distinct), result(shifted))]))


def test_seeds_pool_as_runs_each_its_mean_per_task() -> None:
    pairs = [(result(A, seed), result(B, seed)) for seed in (1, 2)]
    a, b = pool_pairs(pairs)
    assert a["cup-catch"] == [950.0 / 3] * 2 and b["walker-walk"] == [pytest.approx(451.6667)] * 2
    report = compare_results(pairs)
    assert report["pairing"]["pairs"] == 2 and report["episodes_per_task"] == 6
    assert report["pairing"]["unit"].startswith("run")
    assert report["difference"]["value"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="env seed"):
        pool_pairs([(result(A, 1), result(B, 1)), (result(A, 2), result(B, 3))])


def test_load_result_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such evaluation result"):
        load_result(tmp_path)
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval.json: not a JSON evaluation result"):
        load_result(tmp_path)
    (tmp_path / "eval.json").write_text('{"tasks": {"cup-catch": {"returns": [1.0]}}}')
    with pytest.raises(ValueError, match="'cup-catch' has no per-episode returns and env seeds"):
        load_result(tmp_path / "eval.json")


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The published fp16 student written as fp16 and as per-channel int8 by `tdmpc-ray
    quantize`."""
    source = shared_checkpoint(FP16_STUDENT)
    out = tmp_path_factory.mktemp("students")
    paths = {}
    for mode in ("fp16", "int8"):
        paths[mode] = out / f"student_{mode}.pt"
        assert cli.main(["quantize", str(source), "--mode", mode, "--out", str(paths[mode])]) == 0
    return paths


@pytest.mark.slow
def test_compare_cli_evaluates_two_checkpoints_on_the_same_env_seeds(
    ray_session, students: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(students["fp16"]), str(students["int8"]), *TINY_EVAL, "--out", str(out)]
    assert cli.main(argv) == 0
    printed, bars = capsys.readouterr()
    assert "A = student_fp16:" in bars and "B = student_int8:" in bars  # which agent runs
    report = json.loads((out / "compare.json").read_text())
    a, b = load_result(out / "a"), load_result(out / "b")
    for task in TASKS.split(","):
        assert a["tasks"][task]["env_seeds"] == b["tasks"][task]["env_seeds"]
        assert len(a["tasks"][task]["returns"]) == EPISODES
    diff = report["difference"]
    assert diff["value"] == pytest.approx(a["normalized_score"] - b["normalized_score"])
    assert diff["low"] <= diff["value"] <= diff["high"]
    assert report["names"] == {"a": "student_fp16", "b": "student_int8"}
    assert report["sources"]["b"]["checkpoint"] == str(students["int8"])
    assert report["intervals"]["samples"] == 5000 and report["provenance"]["versions"]
    assert (
        f"A - B score       {diff['value']:.2f} [{diff['low']:.2f}, {diff['high']:.2f}]" in printed
    )
    assert "P(A > B)" in printed and report["verdict"] in printed
    assert str(out / "compare.json") in printed

    again = tmp_path / "again"
    renamed = tmp_path / "int8_eval.json"
    renamed.write_text((out / "b" / "eval.json").read_text())
    assert cli.main(["compare", str(out / "a"), str(renamed), "--out", str(again)]) == 0
    rereport = json.loads((again / "compare.json").read_text())
    assert rereport["difference"] == diff
    assert rereport["names"] == {"a": "a", "b": "int8_eval"}
    assert not (again / "a").exists()


@pytest.mark.slow
def test_compare_cli_refuses_results_on_other_env_seeds(
    ray_session, students: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name, seed in (("seed0", "0"), ("seed7", "7")):
        argv = [
            "eval",
            "--checkpoint",
            str(students["int8"]),
            *TINY_EVAL,
            "--seed",
            seed,
            "--out",
            str(tmp_path / name),
        ]
        assert cli.main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert (
        cli.main(["compare", str(tmp_path / "seed0"), str(tmp_path / "seed7"), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("tdmpc-ray compare: error: seed0 and seed7 are not paired: ")
    assert "ran on env seed" in err and "--seed" in err and err.count("\n") == 1
    assert not out.exists()
