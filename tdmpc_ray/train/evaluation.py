"""The periodic evaluation of a training run, one path for `train` and sweep trials alike: the
Train controller hands each checkpoint of an evaluation step (`PeriodicEvalConfig.due`) to a
background task that scores its student with rollout actors and keeps the whole result in the
run's `evals/step_NNNNNNNNN.json`. A sweep trial's `sweep.runner.EvaluateAndReport` also reports
each finished evaluation to Tune; `train` reads them back for its summary."""

from __future__ import annotations

import logging
from pathlib import Path

import ray
import ray.train
from ray.train import UserCallback

from tdmpc_ray.evaluate.config import PeriodicEvalConfig
from tdmpc_ray.evaluate.report import load_json, save_json, step_file, training_metrics
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.loop import STUDENT_FILE

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint: ray.train.Checkpoint, evaluation: PeriodicEvalConfig, seed: int, evals_dir: str
) -> dict:
    """Evaluate a reported checkpoint's student as `evaluation` says, for a run seeded `seed`.
    The whole result (per-episode returns, env seeds, intervals) goes to `step_file(evals_dir,
    step)` (atomically; also on storage URIs); the returned metrics are the scores with their
    intervals, per-task scores and `eval_file`, that file's path."""
    from tdmpc_ray.evaluate import evaluate
    from tdmpc_ray.model.checkpoint import read_checkpoint

    with checkpoint.as_directory() as directory:
        student = Path(directory) / STUDENT_FILE
        result = evaluate(
            str(student),
            evaluation.eval_tasks,
            evaluation.eval_episodes,
            evaluation.eval_actors,
            evaluation.eval_config(seed),
        )
        step = int(read_checkpoint(student)["metadata"]["step"])
    record = {"step": step, "checkpoint": checkpoint.path, **result}
    return {**training_metrics(result), "eval_file": save_json(step_file(evals_dir, step), record)}


def read_evaluation(evals_dir: str, step: int) -> dict | None:
    """The metrics `evaluate_checkpoint` returned for step `step` of a run, read back from its
    file (None when that step has no evaluation: none was due, or it failed)."""
    path = step_file(evals_dir, step)
    try:
        record = load_json(path)
    except FileNotFoundError:
        return None
    return {**training_metrics(record), "eval_file": path}


_evaluate_task = ray.remote(num_cpus=0, scheduling_strategy="DEFAULT")(evaluate_checkpoint)
"""`evaluate_checkpoint` as a background task: it only waits on its rollout actors (counted in the
run's resources), never inside the trial's or run's placement group."""


class PeriodicEvaluation(UserCallback):
    """Evaluates the checkpoints of evaluation steps in background tasks (`evaluate_checkpoint`)
    while training goes on; the last report waits for every evaluation. Each report, with the
    evaluations finished since the previous one, goes to `publish`. It runs in the Train
    controller."""

    def __init__(self, cfg: TrainConfig):
        self.evaluation = cfg.evaluation
        self.steps = cfg.steps
        self.seed = cfg.seed
        self.evals_dir = cfg.evals_dir()
        self.pending: dict[ray.ObjectRef, int] = {}
        self.finished: list[dict] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        step = int(metrics[0].get("step", 0))
        if checkpoint is not None and self.evaluation.due(step, self.steps):
            task = _evaluate_task.remote(checkpoint, self.evaluation, self.seed, self.evals_dir)
            self.pending[task] = step
        self.collect(timeout=None if step >= self.steps else 0)
        finished, self.finished = self.finished, []
        self.publish(run_context, metrics[0], checkpoint, finished)

    def collect(self, timeout: float | None) -> None:
        """Take in finished evaluations (waiting up to `timeout` seconds; None: all of them),
        each as its metrics with `eval_step`, or `eval_error` when it failed."""
        if not self.pending:
            return
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in sorted(ready, key=self.pending.get):
            step = self.pending.pop(ref)
            try:
                metrics = ray.get(ref)
            except ray.exceptions.RayError as err:
                first = str(err).splitlines()[0]
                log.error("evaluation of the step-%d checkpoint failed: %s", step, first)
                self.finished.append({"eval_error": f"step {step}: {first}"})
                continue
            self.finished.append({**metrics, "eval_step": step})

    def publish(self, run_context, metrics: dict, checkpoint, finished: list[dict]) -> None:
        """Hand on a report (`metrics`, `checkpoint`) and the evaluations `finished` since the
        previous one. Nothing here: a run's evaluations are kept in its `evals/` files."""
