"""Read a Ray Tune experiment folder into the dashboard's JSON payload, while the sweep runs.

Ray Tune 2.60 stages each trial's `params.json` / `result.json` / `error.txt` and the experiment's
`experiment_state-*.json` on the driver and copies them into the results folder at every
experiment snapshot (every >= 10 s; `TUNE_GLOBAL_CHECKPOINT_S` sets it). A copy can be caught
half-written, so every file is parsed defensively: an incomplete last line of `result.json` waits
for the next poll, an unparsable JSON file counts as absent, and a trial's history never shrinks.
Files are parsed again only when their (mtime, size) changes.

Trial status comes from the newest `experiment_state-*.json` listing the trial (Tune saves it in
the same snapshot as the trial files, so it is as fresh as they are), with PENDING raised to
RUNNING once the trial has results. Without it: `error.txt` -> ERROR, a last result with
`done` -> TERMINATED, any result -> RUNNING, none -> PENDING.

Scores come only from rows that report an evaluation (`eval_step` and `normalized_score`, as
the sweep runner reports them); a score is drawn at the step it evaluated, with its 95% interval
(`normalized_score_low` / `_high`, absent with 1 episode per task). Each trial's run folder
(`run_dir`, relative to the experiment folder) holds `run.json` (the trial's effective training
config: a trial without distillation has no teacher) and the evaluation files (`eval_file`:
per-episode returns and env seeds), from which the per-task intervals and the paired comparison
with the sweep's scratch trial (`tdmpc_ray.sweep.scratch`) are computed.

Payload: `{"root", "name", "message", "read_at", "trials", "swept", "varying", "shared", "best",
"scratch"}`, where `message` explains an empty page, `swept` are the Tune config keys that differ
between trials (each gets a score panel), `varying` / `shared` split the trials' effective
configs into keys that differ and keys equal in every trial, `best` is the id of the trial with
the highest latest score and `scratch` the ids of trials without distillation. Each trial is
`{"id", "dir", "status", "params", "config", "scratch", "step", "latest_score", "latest_low",
"latest_high", "eval_episodes", "best_score", "best_step", "updates_per_s", "time_total_s",
"curve": [[step, score, low, high], ...], "tasks": {task: score}, "task_intervals": {task: [low,
high]}, "eval_step", "vs_scratch", "error", "eval_error"}`: `params` is its Tune config and
`config` the same keys as the trial ran them; `latest_*`, `tasks` and `vs_scratch` come from the
last evaluation, at `eval_step`. Non-finite numbers become null.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdmpc_ray.sweep.scratch import against_scratch, is_scratch

SCORE_KEY = "normalized_score"
TASK_PREFIX = "score/"
RUN_FILE = "run.json"
RUN_SPECIFIC = ("out", "name")
"""Config keys that differ between trials by construction (each trial's own output folder)."""
_STATE_GLOB = "experiment_state-*.json"
_TRIAL_FILES = ("params.json", "result.json", "progress.csv")


def _finite(value: Any) -> float | None:
    """`value` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _score(mean_return: Any) -> float | None:
    """A task's score (mean return / 10), None when not a finite number."""
    value = _finite(mean_return)
    return None if value is None else value / 10


def _json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None, so it serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def parse_result_lines(text: str) -> list[dict]:
    """The JSON objects of a `result.json`, skipping blank, unfinished or unparsable lines."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def summarize_rows(rows: list[dict]) -> dict:
    """What the dashboard shows of one trial's `tune.report` rows (oldest first): a curve point
    per evaluated step (the first row reporting it), never one for a row without an
    evaluation."""
    curve: list[list[float | None]] = []
    evaluated: dict[float, dict] = {}
    for row in rows:
        score, step = _finite(row.get(SCORE_KEY)), _finite(row.get("eval_step"))
        if score is None or step is None or step in evaluated:
            continue
        evaluated[step] = row
        curve.append([step, score, _finite(row.get(f"{SCORE_KEY}_low")),
                      _finite(row.get(f"{SCORE_KEY}_high"))])  # fmt: skip
    latest = evaluated[curve[-1][0]] if curve else {}
    last = rows[-1] if rows else {}
    best = max(curve, key=lambda point: point[1]) if curve else [None, None]
    errors = [row["eval_error"] for row in rows if isinstance(row.get("eval_error"), str)]
    return {
        "rows": len(rows),
        "step": _finite(last.get("step", last.get("training_iteration"))),
        "latest_score": curve[-1][1] if curve else None,
        "latest_low": curve[-1][2] if curve else None,
        "latest_high": curve[-1][3] if curve else None,
        "eval_episodes": _finite(latest.get("eval_episodes")),
        "best_score": best[1],
        "best_step": best[0],
        "updates_per_s": _finite(last.get("updates_per_s")),
        "time_total_s": _finite(last.get("time_total_s")),
        "done": bool(last.get("done")),
        "trial_id": last.get("trial_id"),
        "row_config": last.get("config"),
        "curve": curve,
        "tasks": {
            k[len(TASK_PREFIX) :]: _finite(v)
            for k, v in latest.items()
            if k.startswith(TASK_PREFIX)
        },
        "eval_step": curve[-1][0] if curve else None,
        "eval_file": latest.get("eval_file") if isinstance(latest.get("eval_file"), str) else None,
        "evals": {
            step: row["eval_file"]
            for step, row in evaluated.items()
            if isinstance(row.get("eval_file"), str)
        },  # fmt: skip
        "run_dir": next((r["run_dir"] for r in rows if isinstance(r.get("run_dir"), str)), None),
        "eval_error": errors[-1] if errors else None,
    }


def parse_experiment_state(text: str) -> dict[str, dict]:
    """Trials of an `experiment_state-*.json` by trial id, with their folder name (None until
    Tune schedules the trial), status and config."""
    trials = {}
    for entry in json.loads(text)["trial_data"]:
        trial = json.loads(entry[0])
        trials[trial["trial_id"]] = {
            "trial_id": trial["trial_id"],
            "dir": trial.get("relative_logdir"),
            "status": trial["status"],
            "config": trial.get("config"),
        }
    return trials


def last_error_line(text: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error"


def derive_status(state: str | None, summary: dict, has_error_file: bool) -> str:
    """A trial's status: Tune's own (PENDING raised to RUNNING once it reports), else inferred."""
    if state is not None:
        return "RUNNING" if state == "PENDING" and summary["rows"] else state
    if has_error_file:
        return "ERROR"
    if summary["done"]:
        return "TERMINATED"
    return "RUNNING" if summary["rows"] else "PENDING"


def split_config(configs: list[dict]) -> tuple[list[str], dict]:
    """Config keys whose values differ between trials, and the rest: keys equal in every trial
    (a key some trials lack differs)."""
    keys = sorted({k for c in configs for k in c})
    varying, shared = [], {}
    for key in keys:
        values = {json.dumps(c.get(key, "<absent>"), sort_keys=True) for c in configs}
        if len(values) > 1:
            varying.append(key)
        else:
            shared[key] = configs[0][key]
    return varying, shared


def effective_config(params: dict, run: dict | None) -> dict:
    """A trial's Tune config with each key's value as the trial really ran it (from its
    run.json: e.g. no teacher without distillation); the trial's own folders excepted."""
    ran = (run or {}).get("config") or {}
    return {k: ran.get(k, v) if k not in RUN_SPECIFIC else v for k, v in params.items()}


class ResultsReader:
    """Reads one experiment folder on demand, re-parsing only files that changed since last time.

    Safe to share between the HTTP server's threads.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], Any]] = {}
        self._comparisons: dict = {}

    def read(self) -> dict:
        """The payload for the folder as it is now (see the module docstring)."""
        with self._lock:
            return _json_safe(self._read())

    def _read(self) -> dict:
        payload: dict[str, Any] = {
            "root": str(self.root),
            "name": self.root.name,
            "message": None,
            "read_at": time.time(),
            "trials": [],
            "swept": [],
            "varying": [],
            "shared": {},
            "best": None,
            "scratch": [],
        }
        if self.root.exists() and not self.root.is_dir():
            payload["message"] = f"{self.root} is a file, not a Ray Tune results folder."
            return payload
        if not self.root.is_dir():
            payload["message"] = (
                f"No results folder at {self.root} yet: start the sweep or check the path. "
                "This page keeps checking."
            )
            return payload
        trials = self._trials()
        payload["trials"] = trials
        if not trials:
            payload["message"] = self._empty_message()
            return payload
        swept = [k for k in split_config([t["params"] for t in trials])[0] if k not in RUN_SPECIFIC]
        payload["swept"] = swept
        payload["varying"], payload["shared"] = split_config([t["config"] for t in trials])
        payload["scratch"] = [t["id"] for t in trials if t["scratch"]]
        records = [
            {"trial": t["id"], "config": {k: t["params"].get(k) for k in swept},
             "scratch": t["scratch"], "evals": t.pop("evals")}
            for t in trials
        ]  # fmt: skip
        comparisons = against_scratch(records, swept, self._load, self._comparisons)
        for t in trials:
            t["vs_scratch"] = comparisons.get(t["id"])
        scored = [t for t in trials if t["latest_score"] is not None]
        if scored:
            payload["best"] = max(scored, key=lambda t: t["latest_score"])["id"]
        return payload

    def _load(self, relative: str) -> dict:
        """A JSON file of the experiment folder (an evaluation result)."""
        value = self._cached(self.root / relative, json.loads)
        if not isinstance(value, dict):
            raise FileNotFoundError(f"{relative}: missing or unreadable")
        return value

    def _empty_message(self) -> str:
        """Why there is nothing to show, naming experiments if `root` is their parent."""
        experiments = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob(_STATE_GLOB))
        )
        if experiments:
            return (
                f"{self.root} holds experiments, not trials: open one of "
                f"{', '.join(experiments)} (e.g. tdmpc-ray dashboard {self.root / experiments[0]})."
            )
        return (
            f"No trials in {self.root} yet: Ray Tune copies results here at each experiment "
            "snapshot (every 10 s or more). This page keeps checking."
        )

    def _trials(self) -> list[dict]:
        """Every trial with a folder or a state entry, matched by folder name or trial id."""
        states = self._states()
        by_dir = {s["dir"]: s for s in states.values() if s["dir"]}
        trials, seen = [], set()
        for name, folder in self._trial_dirs().items():
            summary = self._summary(folder / "result.json")
            state = by_dir.get(name) or states.get(summary["trial_id"])
            seen.add(state and state["trial_id"])
            trials.append(self._trial(folder, summary, state))
        for trial_id, state in states.items():
            if trial_id not in seen:
                trials.append(self._trial(None, summarize_rows([]), state))
        return sorted(trials, key=lambda t: (t["id"], t["dir"] or ""))

    def _trial_dirs(self) -> dict[str, Path]:
        """Subfolders that hold a trial's files, by folder name."""
        found = {}
        for entry in os.scandir(self.root):
            if entry.is_dir() and not entry.name.startswith("."):
                path = Path(entry.path)
                if any((path / name).is_file() for name in _TRIAL_FILES):
                    found[entry.name] = path
        return found

    def _states(self) -> dict[str, dict]:
        """Trial entries of every readable experiment_state file by trial id; newer files (by
        the timestamp in their names) win."""
        merged: dict[str, dict] = {}
        for path in sorted(self.root.glob(_STATE_GLOB)):
            merged.update(self._cached(path, parse_experiment_state) or {})
        return merged

    def _cached(self, path: Path, parse: Callable[[str], Any]) -> Any:
        """`parse(text of path)`, reused while the file's mtime and size stay the same; None if
        the file is missing or does not parse (it may be mid-copy)."""
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            value = parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            value = None
        self._cache[path] = (key, value)
        return value

    def _summary(self, path: Path) -> dict:
        """`summarize_rows` of a result.json; a shorter re-read (a copy in progress) keeps the
        previous summary, since Tune only ever appends rows."""
        previous = self._cache.get(path)
        parse = lambda text: summarize_rows(parse_result_lines(text))  # noqa: E731
        summary = self._cached(path, parse) or summarize_rows([])
        if previous and previous[1] and summary["rows"] < previous[1]["rows"]:
            self._cache[path] = (self._cache[path][0], previous[1])
            return previous[1]
        return summary

    def _trial(self, folder: Path | None, summary: dict, state: dict | None) -> dict:
        """One trial's row of the payload, from its folder (and its results' `summary`), Tune's
        state entry, and its run folder (run.json, the last evaluation's file)."""
        params = self._cached(folder / "params.json", json.loads) if folder else None
        candidates = (params, (state or {}).get("config"), summary["row_config"])
        params = next((c for c in candidates if isinstance(c, dict) and c), {})
        run_dir = summary["run_dir"]
        run = self._cached(self.root / run_dir / RUN_FILE, json.loads) if run_dir else None
        run = run if isinstance(run, dict) else None
        error = self._cached(folder / "error.txt", last_error_line) if folder else None
        status = derive_status(state and state["status"], summary, error is not None)
        trial_id = (state and state["trial_id"]) or summary["trial_id"] or folder.name
        return {
            "id": str(trial_id),
            "dir": folder.name if folder else None,
            "status": status,
            "params": params,
            "config": effective_config(params, run),
            "scratch": is_scratch(params, run),
            "error": error if status == "ERROR" else None,
            "task_intervals": self._task_intervals(summary["eval_file"]),
            **{
                k: v
                for k, v in summary.items()
                if k not in ("rows", "done", "row_config", "trial_id", "eval_file", "run_dir")
            },
        }

    def _task_intervals(self, eval_file: str | None) -> dict[str, list[float | None]]:
        """Per task, the 95% interval of the score (mean return / 10) in an evaluation file."""
        try:
            tasks = self._load(eval_file)["tasks"] if eval_file else {}
        except (OSError, KeyError):
            return {}
        return {
            task: [_score(row.get("mean_low")), _score(row.get("mean_high"))]
            for task, row in tasks.items()
            if isinstance(row, dict)
        }
