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
"scratch", "references"}`, where `references` are the evaluations in the folder's own `evals/`
(`[{"name", "score", "low", "high", "episodes", "error"}]`), `message` explains an empty page,
`swept` are the Tune config keys that differ between trials (each gets a score panel), `varying` / `shared` split the trials' effective
configs into keys that differ and keys equal in every trial, `best` is the id of the trial with
the highest latest score and `scratch` the ids of trials without distillation. Each trial is
`{"id", "dir", "status", "params", "config", "scratch", "step", "latest_score", "latest_low",
"latest_high", "eval_episodes", "best_score", "best_step", "updates_per_s", "time_total_s",
"curve": [[step, score, low, high], ...], "tasks": {task: score}, "task_intervals": {task: [low,
high]}, "eval_step", "vs_scratch", "error", "eval_error"}`: `params` is its Tune config and
`config` the same keys as the trial ran them; `latest_*`, `tasks` and `vs_scratch` come from the
last evaluation, at `eval_step`; `losses` are the training losses the trial reported
(`{metric: [[step, value], ...]}`). Non-finite numbers become null.

Evaluations come from two places: the rows of `result.json` that report one, and the per-step
evaluation files in each trial's run folder (`<run_dir>/evals/step_NNNNNNNNN.json`), which also
hold evaluations that never reached Tune (the quickstart scores its students' final checkpoints
after the sweep and writes them there). A step both know is read from the row.

Every file may be hostile (issue 27): each path is resolved and must stay inside the results
folder (absolute paths, NUL bytes and symlinks that lead out are refused), only regular files
are read (never a FIFO or a device), at most `MAX_FILE_BYTES` of them, and each trial is read
on its own: a trial whose files are refused or malformed becomes a row with its error, and the
others still render.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdmpc_ray.evaluate.report import EVALS_DIR, interval
from tdmpc_ray.sweep.scratch import against_scratch, checked_result, is_scratch

SCORE_KEY = "normalized_score"
TASK_PREFIX = "score/"
RUN_FILE = "run.json"
RUN_SPECIFIC = ("out", "name")
"""Config keys that differ between trials by construction (each trial's own output folder)."""
_STATE_GLOB = "experiment_state-*.json"
_TRIAL_FILES = ("params.json", "result.json", "progress.csv")
_STEP_FILE = re.compile(r"step_(\d+)\.json")
LOSS_SUFFIX = "_loss"
"""Reported metrics whose names end so are drawn as loss curves."""
MAX_CURVE_POINTS = 400
"""Points per loss curve and trial; longer histories are thinned evenly (the last point kept)."""
MAX_FILE_BYTES = 32 * 2**20
"""The largest file the reader reads: a `result.json` of 10^5 MT30 reports is ~20 MiB."""


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
    evaluation, and the loss curves."""
    evaluations: dict[float, dict] = {}
    for row in rows:
        score, step = _finite(row.get(SCORE_KEY)), _finite(row.get("eval_step"))
        if score is not None and step is not None and step not in evaluations:
            evaluations[step] = row_evaluation(row)
    last = rows[-1] if rows else {}
    errors = [row["eval_error"] for row in rows if isinstance(row.get("eval_error"), str)]
    return {
        "rows": len(rows),
        "step": _finite(last.get("step", last.get("training_iteration"))),
        "updates_per_s": _finite(last.get("updates_per_s")),
        "time_total_s": _finite(last.get("time_total_s")),
        "done": bool(last.get("done")),
        "trial_id": last.get("trial_id"),
        "row_config": last.get("config"),
        "run_dir": next((r["run_dir"] for r in rows if isinstance(r.get("run_dir"), str)), None),
        "eval_error": errors[-1] if errors else None,
        "losses": loss_curves(rows),
        "evaluations": evaluations,
        **scores(evaluations),
    }


def row_evaluation(row: dict) -> dict:
    """An evaluation as a `tune.report` row carries it (`training_metrics` and `eval_file`)."""
    file = row.get("eval_file")
    return {
        "score": _finite(row.get(SCORE_KEY)),
        "low": _finite(row.get(f"{SCORE_KEY}_low")),
        "high": _finite(row.get(f"{SCORE_KEY}_high")),
        "episodes": _finite(row.get("eval_episodes")),
        "tasks": {
            k[len(TASK_PREFIX) :]: _finite(v) for k, v in row.items() if k.startswith(TASK_PREFIX)
        },
        "file": file if isinstance(file, str) else None,
    }


def file_evaluation(result: object, file: str) -> dict:
    """An evaluation as its file holds it (`evaluate`'s result); a one-line ValueError when
    the file holds no evaluation result or no score."""
    result = checked_result(result, file)
    if _finite(result.get(SCORE_KEY)) is None:
        raise ValueError(f"{file}: no {SCORE_KEY}")
    score = interval(result, SCORE_KEY)
    return {
        "score": _finite(score.value),
        "low": _finite(score.low),
        "high": _finite(score.high),
        "episodes": _finite(result.get("episodes_per_task")),
        "tasks": {task: _score(row.get("mean")) for task, row in result["tasks"].items()},
        "file": file,
    }


def scores(evaluations: dict[float, dict]) -> dict:
    """A trial's score fields from its evaluations by step: the curve with intervals, the
    latest and best scores, and the latest evaluation's episodes, per-task scores and file."""
    steps = sorted(evaluations)
    curve = [
        [s, evaluations[s]["score"], evaluations[s]["low"], evaluations[s]["high"]] for s in steps
    ]
    latest = evaluations[steps[-1]] if steps else {}
    best = max(curve, key=lambda point: point[1]) if curve else [None, None]
    return {
        "curve": curve,
        "latest_score": latest.get("score"),
        "latest_low": latest.get("low"),
        "latest_high": latest.get("high"),
        "eval_episodes": latest.get("episodes"),
        "best_score": best[1],
        "best_step": best[0],
        "tasks": latest.get("tasks", {}),
        "eval_step": steps[-1] if steps else None,
        "eval_file": latest.get("file"),
        "evals": {s: e["file"] for s, e in evaluations.items() if e["file"]},
    }


def loss_curves(rows: list[dict]) -> dict[str, list[list[float]]]:
    """Each training loss the rows report (`*_loss`) against the step, thinned evenly to at
    most MAX_CURVE_POINTS points (the last one kept)."""
    curves: dict[str, list[list[float]]] = {}
    for row in rows:
        step = _finite(row.get("step"))
        for key, value in row.items():
            if step is not None and key.endswith(LOSS_SUFFIX) and _finite(value) is not None:
                curves.setdefault(key, []).append([step, float(value)])
    for key, points in curves.items():
        stride = math.ceil(len(points) / MAX_CURVE_POINTS)
        if stride > 1:
            curves[key] = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return dict(sorted(curves.items()))


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


class RefusedFileError(ValueError):
    """A file the reader will not read (outside the folder, not a regular file, too large)."""


def read_regular(path: Path, name: str) -> str:
    """The text of `path` (undecodable bytes replaced), opened without following a symlink or
    waiting on a FIFO; a one-line ValueError naming `name` unless it is a regular file of at
    most MAX_FILE_BYTES."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        check_regular(os.fstat(fd), name)
        data = f.read(MAX_FILE_BYTES + 1)
    check_regular(None, name, len(data))
    return data.decode("utf-8", errors="replace")


def check_regular(info: os.stat_result | None, name: str, size: int | None = None) -> None:
    """Refuse (one line) anything but a regular file, and any file over
    MAX_FILE_BYTES (by `info`'s size, or `size` bytes read)."""
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise RefusedFileError(f"{name}: not a regular file; refused")
    size = info.st_size if info is not None else size
    if size is not None and size > MAX_FILE_BYTES:
        raise RefusedFileError(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB; refused")


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
            "references": [],
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
        payload["trials"], payload["references"] = trials, self._references()
        if not trials:
            payload["message"] = self._empty_message()
            return payload
        swept = [k for k in split_config([t["params"] for t in trials])[0] if k not in RUN_SPECIFIC]
        payload["swept"] = swept
        payload["varying"], payload["shared"] = split_config([t["config"] for t in trials])
        payload["scratch"] = [t["id"] for t in trials if t["scratch"]]
        records = [
            {
                "trial": t["id"],
                "config": {k: t["params"].get(k) for k in swept},
                "scratch": t["scratch"],
                "evals": t.pop("evals"),
            }
            for t in trials
        ]
        comparisons = against_scratch(records, swept, self._load, self._comparisons)
        for t in trials:
            t["vs_scratch"] = comparisons.get(t["id"])
        scored = [t for t in trials if t["latest_score"] is not None]
        if scored:
            payload["best"] = max(scored, key=lambda t: t["latest_score"])["id"]
        return payload

    def _inside(self, relative: str | os.PathLike) -> Path:
        """The real path of `relative` (a path inside the folder); `RefusedFileError` (one line)
        for an absolute path, a NUL byte, or a path or symlink that leads out of the folder."""
        text = os.fspath(relative)
        if "\0" in text:
            raise RefusedFileError(f"{text!r}: a NUL byte in a file name; refused")
        if os.path.isabs(text):
            raise RefusedFileError(
                f"{text}: an absolute path, not one inside the results folder; refused"
            )
        try:
            real = self.root.resolve()
            path = (real / text).resolve()
        except (OSError, RuntimeError) as err:  # a symlink loop
            raise RefusedFileError(f"{text}: cannot be resolved ({err}); refused") from None
        if not path.is_relative_to(real):
            raise RefusedFileError(f"{text}: leads outside the results folder; refused")
        return path

    def _load(self, relative: str) -> dict:
        """An evaluation result file of the experiment folder; FileNotFoundError while it is
        absent (a run folder may be written on another node, or be mid-sync), a one-line
        ValueError when it is refused or holds no evaluation result."""
        value = self._cached(relative, json.loads)
        if value is None and not self._inside(relative).exists():
            raise FileNotFoundError(f"{relative}: no such evaluation file")
        return checked_result(value, relative)

    def _empty_message(self) -> str:
        """Why there is nothing to show, naming experiments if `root` is their parent."""
        experiments = sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and any(p.glob(_STATE_GLOB))
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
        """Every trial with a folder or a state entry, matched by folder name or trial id; a
        trial whose files cannot be read becomes a row with its error."""
        states = self._states()
        by_dir = {s["dir"]: s for s in states.values() if s["dir"]}
        trials, seen = [], set()
        for name in self._trial_dirs():
            state = by_dir.get(name)
            try:
                summary = self._summary(Path(name) / "result.json")
                state = state or states.get(summary["trial_id"])
                trial = self._trial(name, summary, state)
            except Exception as err:  # noqa: BLE001 - one trial's files must not hide the others
                trial = unreadable_trial(name, state, err)
            seen.add(state and state["trial_id"])
            trials.append(trial)
        for trial_id, state in states.items():
            if trial_id not in seen:
                trials.append(self._trial(None, summarize_rows([]), state))
        return sorted(trials, key=lambda t: (t["id"], t["dir"] or ""))

    def _trial_dirs(self) -> list[str]:
        """Names of the subfolders (not symlinks) that hold a trial's files."""
        return sorted(
            entry.name
            for entry in os.scandir(self.root)
            if entry.is_dir(follow_symlinks=False)
            and not entry.name.startswith(".")
            and any(os.path.lexists(os.path.join(entry.path, f)) for f in _TRIAL_FILES)
        )

    def _states(self) -> dict[str, dict]:
        """Trial entries of every readable experiment_state file by trial id; newer files (by
        the timestamp in their names) win; a refused file counts as absent."""
        merged: dict[str, dict] = {}
        for path in sorted(self.root.glob(_STATE_GLOB)):
            try:
                merged.update(self._cached(path.name, parse_experiment_state) or {})
            except RefusedFileError:
                continue
        return merged

    def _cached(self, relative: str | os.PathLike, parse: Callable[[str], Any]) -> Any:
        """`parse(text)` of the file at `relative` (inside the folder), reused while its mtime
        and size stay the same; None if it is missing or does not parse (it may be mid-copy).
        `RefusedFileError` (one line) for a path that leaves the folder, or a file that is not a
        regular file or is larger than MAX_FILE_BYTES."""
        path = self._inside(relative)
        try:
            info = path.stat()
        except OSError:
            return None
        check_regular(info, os.fspath(relative))
        key = (info.st_mtime_ns, info.st_size)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            value = parse(read_regular(path, os.fspath(relative)))
        except FileNotFoundError:
            return None
        except RefusedFileError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            value = None
        self._cache[path] = (key, value)
        return value

    def _summary(self, relative: Path) -> dict:
        """`summarize_rows` of a result.json; a shorter re-read (a copy in progress) keeps the
        previous summary, since Tune only ever appends rows."""
        path = self._inside(relative)
        previous = self._cache.get(path)
        parse = lambda text: summarize_rows(parse_result_lines(text))  # noqa: E731
        summary = self._cached(relative, parse) or summarize_rows([])
        if previous and previous[1] and summary["rows"] < previous[1]["rows"]:
            self._cache[path] = (self._cache[path][0], previous[1])
            return previous[1]
        return summary

    def _trial(self, name: str | None, summary: dict, state: dict | None) -> dict:
        """One trial's row of the payload, from its folder `name` (and its results'
        `summary`), Tune's state entry, and its run folder (run.json, the per-step evaluation
        files, the last evaluation's file)."""
        params = self._cached(Path(name) / "params.json", json.loads) if name else None
        candidates = (params, (state or {}).get("config"), summary["row_config"])
        params = next((c for c in candidates if isinstance(c, dict) and c), {})
        run_dir = summary["run_dir"]
        run = self._cached(Path(run_dir) / RUN_FILE, json.loads) if run_dir else None
        run = run if isinstance(run, dict) else None
        if run_dir:
            found = self._step_files(run_dir)
            summary = {**summary, **scores({**found, **summary["evaluations"]})}
        error = self._cached(Path(name) / "error.txt", last_error_line) if name else None
        status = derive_status(state and state["status"], summary, error is not None)
        trial_id = (state and state["trial_id"]) or summary["trial_id"] or name
        return {
            "id": str(trial_id),
            "dir": name,
            "status": status,
            "params": params,
            "config": effective_config(params, run),
            "scratch": is_scratch(params, run),
            "error": error if status == "ERROR" else None,
            "task_intervals": self._task_intervals(summary["eval_file"]),
            **{k: v for k, v in summary.items() if k not in _INTERNAL},
        }

    def _step_files(self, run_dir: str) -> dict[float, dict]:
        """The evaluations of a run folder's per-step files (`evals/step_N.json`), by step."""
        folder = self._inside(Path(run_dir) / EVALS_DIR)
        if not folder.is_dir():
            return {}
        found = {}
        for entry in os.scandir(folder):
            match = _STEP_FILE.fullmatch(entry.name)
            if match:
                file = f"{run_dir}/{EVALS_DIR}/{entry.name}"
                found[float(match[1])] = file_evaluation(self._load(file), file)
        return found

    def _references(self) -> list[dict]:
        """The evaluations in the folder's own `evals/` (agents the sweep did not train), by
        name; a file that cannot be read gives its error instead of a score."""
        folder = self.root / EVALS_DIR
        if not folder.is_dir() or folder.is_symlink():
            return []
        references = []
        for name in sorted(e.name for e in os.scandir(folder) if e.name.endswith(".json")):
            file, entry = f"{EVALS_DIR}/{name}", {"name": name[: -len(".json")], "error": None}
            try:
                found = file_evaluation(self._load(file), file)
            except (OSError, ValueError) as err:
                entry["error"] = str(err)
            else:
                entry.update({k: found[k] for k in ("score", "low", "high", "episodes")})
            references.append(entry)
        return references

    def _task_intervals(self, eval_file: str | None) -> dict[str, list[float | None]]:
        """Per task, the 95% interval of the score (mean return / 10) in an evaluation file
        (none while the file is absent)."""
        try:
            tasks = self._load(eval_file)["tasks"] if eval_file else {}
        except FileNotFoundError:
            return {}
        return {
            task: [_score(row.get("mean_low")), _score(row.get("mean_high"))]
            for task, row in tasks.items()
        }


_INTERNAL = ("rows", "done", "row_config", "trial_id", "eval_file", "run_dir", "evaluations")
"""Summary fields the reader uses but the payload does not carry."""


def unreadable_trial(name: str, state: dict | None, err: BaseException) -> dict:
    """The row of a trial whose files could not be read: its status as Tune knows it (else
    ERROR) and the reason as its error; no scores."""
    summary = summarize_rows([])
    return {
        "id": str((state and state["trial_id"]) or name),
        "dir": name,
        "status": (state and state["status"]) or "ERROR",
        "params": {},
        "config": {},
        "scratch": False,
        "error": f"unreadable trial folder: {type(err).__name__}: {err}"[:300],
        "task_intervals": {},
        **{k: v for k, v in summary.items() if k not in _INTERNAL},
    }
