"""A running record of an evaluation's finished episodes (`episodes.jsonl`), so a long run that
stops (a crash, a lost machine, Ctrl-C) resumes where it was, and a finished run extends to more
episodes per task or more tasks: only the missing episodes run.

The first line names what the episodes depend on (checkpoint, model, run seed, acting, planner,
episode cut); a record is only continued by a run that agrees on all of it. Every later line is
one finished episode with the job it ran in (its planner seed), appended and synced as it
arrives; a last line cut short by a crash is dropped. An episode is reused only where the new
run has the same job (`score.job_groups`), so a resumed or extended run gives exactly the
returns of one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.evaluate.rollout import EpisodeResult, EpisodeSpec

FORMAT = 1
EPISODE_KEYS = (
    "seed",
    "task",
    "task_id",
    "episode",
    "attempt",
    "return",
    "length",
    "success",
    "job",
)


class EpisodeRecord:
    """The finished episodes of one evaluation, kept in a JSON-lines file.

    `identity` is what the episodes depend on; an existing file written under another identity
    is refused with one line naming the file and the first setting that differs.
    """

    def __init__(self, path: str | os.PathLike, identity: Mapping) -> None:
        self.path = Path(path)
        self.identity = {"format": FORMAT, **json.loads(json.dumps(dict(identity)))}
        self.results: dict[tuple[str, int], tuple[EpisodeResult, int]] = {}
        self._started = self.path.is_file() and self.path.stat().st_size > 0
        if self._started:
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0])["header"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise ValueError(f"{self.path}: not an episode record (no header line)") from None
        theirs, ours = _flat(header), _flat(self.identity)
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                raise ValueError(
                    f"{self.path}: its episodes were run with {key}={theirs.get(key)!r}, this run "
                    f"has {ours.get(key)!r}; continue it with the same settings or use another "
                    "output folder"
                )
        for number, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
                result = EpisodeResult(
                    EpisodeSpec(
                        row["seed"], row["task"], row["task_id"], row["episode"], row["attempt"]
                    ),
                    float(row["return"]),
                    int(row["length"]),
                    float(row["success"]),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number < len(lines):
                    raise ValueError(f"{self.path}: line {number} is not an episode") from None
                with atomic_path(self.path) as tmp:
                    tmp.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
                break
            self.results[(result.spec.task, result.spec.episode)] = (result, int(row["job"]))

    def _write_line(self, row: dict) -> None:
        """Append `row`, after the header line when it is the first (so a run that stops
        before its first episode leaves no record)."""
        lines = [row] if self._started else [{"header": self.identity}, row]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        self._started = True

    def done(self, spec: EpisodeSpec, job: int) -> EpisodeResult | None:
        """The recorded result of `spec`'s episode if it finished, in this or an earlier run, in
        the job `job` (a planner seed; `rollout.planner_seed`)."""
        kept = self.results.get((spec.task, spec.episode))
        return kept[0] if kept is not None and kept[1] == job else None

    def add(self, result: EpisodeResult, job: int) -> None:
        """Record a finished episode of job `job` (its return, length and spec; not its
        video)."""
        spec = result.spec
        values = (
            spec.seed,
            spec.task,
            spec.task_id,
            spec.episode,
            spec.attempt,
            float(result.ret),
            result.length,
            float(result.success),
            job,
        )
        self._write_line(dict(zip(EPISODE_KEYS, values, strict=True)))
        self.results[(spec.task, spec.episode)] = (result, job)


def _flat(values: Mapping, prefix: str = "") -> dict:
    """Nested settings as dotted keys (`planner.temperature`), so a mismatch names one value."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
