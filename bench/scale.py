"""Scale run: one real-size MT30 chunk end to end, written to bench/results/scale.json.

Not CI: it writes ~13 GB twice to disk and runs for tens of minutes. Run it alone:

    nice -n 5 python bench/scale.py --work DIR [--stages ...]

Stages (each adds its own entry to scale.json, with the commit and time it ran at; `--stages`
picks some, files of earlier stages are kept in `--work` until `--clean`):
1. `chunk`: a synthetic chunk in the public layout at real size (200,000 episodes x 501 steps,
   12.8 GB; seeded, made block by block so memory stays small; bench/data.py).
2. `convert`: `data convert` on it (local Ray, 2 CPUs): MB/s, peak RSS of the driver and of the
   conversion workers. The chunk is deleted afterwards.
3. `store`: a Ray Data shard of a few GB (`--store-parts`) loaded whole into an episode store,
   streamed into storage (now) and held as Arrow then copied (before), each in a fresh process:
   peak RSS of each and a check that both stores hold the same episodes.
4. `train`: `tdmpc-ray train` for 1000 steps of the 1M student from scratch, streaming the
   Parquet data through `max_resident_episodes`: peak RSS of the driver and the Train worker,
   updates/s; then, in this process, the episode store loaded from a Ray Data shard the way a
   worker loads it, and sampling ms per batch of 256 windows (rotations included).
5. `label`: `data label` of a slice of the parts with a teacher (the published fp16 student by
   default): transitions/s, peak RSS of the driver and the labelling workers.
Every stage also extrapolates to the full public data set (4 chunks, 690,000 episodes, 44 GB):
times scale with the bytes or transitions, memories are those of one part or of the resident
episodes, which do not grow with the data.

Peak RSS is each process's VmHWM, polled every 0.5 s over the whole process tree (memory-mapped
pages a process touched count in it; Ray's object store pages count where a process maps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import stamped  # noqa: E402
from data import STEPS, write_synthetic_chunk  # noqa: E402

from tdmpc_ray.atomic import write_json  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402

RESULT = REPO / "bench" / "results" / "scale.json"
FULL_EPISODES = 690_000
FULL_TRANSITIONS = 345_690_000
STAGES = ("chunk", "convert", "store", "train", "label")
TEACHER = "mt30-1M-fp16"


def _status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in bytes (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        key: int(line.split()[1]) * 1024
        for line in lines
        for key in ("VmHWM", "VmRSS")
        if line.startswith(key + ":")
    }


def _name(pid: int) -> str:
    """A process's title: Ray workers set theirs (`ray::TeacherLabeler`, `ray::IDLE`, ...)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    if words and words[0].startswith("ray::"):
        return words[0].split(" ")[0]
    if "-c" in words:
        return "python -c"
    script = next((w for w in words[1:] if w.endswith(".py")), words[0] if words else "?")
    return script.rsplit("/", 1)[-1]


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class PeakRss:
    """Polls the peak RSS of every process under `root` until stopped; `peaks()` gives the
    highest per process title (the root is `driver`)."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.by_pid: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in _tree(self.root):
                peak = _status(pid).get("VmHWM", 0)
                name = "driver" if pid == self.root else _name(pid)
                if peak > self.by_pid.get(pid, ("", 0))[1]:
                    self.by_pid[pid] = (name, peak)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> dict[str, int]:
        """Highest VmHWM per process title, in bytes."""
        out: dict[str, int] = {}
        for name, peak in self.by_pid.values():
            out[name] = max(out.get(name, 0), peak)
        return dict(sorted(out.items(), key=lambda item: -item[1]))


def _run(argv: list[str], log: Path) -> tuple[float, dict[str, int]]:
    """Run a command (its output to `log`), watching its process tree; returns wall seconds and
    peak RSS per process title. Raises if it fails."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        with PeakRss(proc.pid) as rss:
            code = proc.wait()
    if code:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}); see {log}")
    return time.perf_counter() - started, rss.peaks()


def _cli() -> list[str]:
    return [sys.executable, "-m", "tdmpc_ray"]


def _in_child(log: Path, fn: Callable[..., dict], *args: object) -> tuple[dict, float, dict]:
    """`fn(*args)` (string arguments, a JSON result) in a fresh Python process, so that its
    memory is its own; returns the result, wall seconds and peak RSS per process title."""
    argv = [sys.executable, __file__, "--child", fn.__name__, json.dumps([str(a) for a in args])]
    seconds, peaks = _run(argv, log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("JSON ")]
    if not lines:
        raise RuntimeError(f"{log}: no result line")
    return json.loads(lines[-1][5:]), seconds, peaks


def _ray_init(attempts: int = 3) -> None:
    """A local Ray with 2 CPUs; tried again when the raylet misses Ray's fixed 30 s start-up
    wait, which happens on this shared machine under heavy load."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            return
        except Exception as err:  # Ray raises a bare Exception here
            if "timed out during startup" not in str(err) or attempt == attempts - 1:
                raise
            ray.shutdown()
            time.sleep(10)


def stage_chunk(work: Path, episodes: int) -> dict:
    """Write the synthetic chunk."""
    chunk = work / "chunk_0.pt"
    started = time.perf_counter()
    _in_child(work / "chunk.log", _write_chunk, chunk, episodes)
    seconds = time.perf_counter() - started
    return {
        "path": chunk.name,
        "episodes": episodes,
        "steps": STEPS,
        "bytes": chunk.stat().st_size,
        "seconds": round(seconds, 1),
    }


def _write_chunk(chunk: str, episodes: str) -> dict:
    write_synthetic_chunk(Path(chunk), int(episodes))
    return {}


def stage_convert(work: Path) -> dict:
    """`tdmpc-ray data convert` of the chunk; deletes the chunk afterwards."""
    chunk, dst = work / "chunk_0.pt", work / "parquet"
    if not chunk.is_file():
        raise FileNotFoundError(f"{chunk}: run the chunk stage first")
    size = chunk.stat().st_size
    summary, seconds, peaks = _in_child(work / "convert.log", _convert, chunk, dst)
    chunk.unlink()
    scale = FULL_EPISODES / summary["episodes"]
    return {
        "chunk_bytes": size,
        **summary,
        "wall_s": round(seconds, 1),
        "peak_rss_bytes": peaks,
        "full_dataset_estimate": {
            "seconds": round(summary["seconds"] * scale),
            "hours": round(summary["seconds"] * scale / 3600, 2),
            "note": "same machine, same 2 CPUs: time scales with the bytes (4 chunks, 44 GB); "
            "worker memory is one part's and the driver's does not grow with the data",
        },
    }


def _convert(chunk: str, dst: str) -> dict:
    from tdmpc_ray.data.convert import convert

    _ray_init()
    summary = convert([chunk], dst, progress=False)
    print(summary.format(), flush=True)
    return {
        "seconds": round(summary.seconds, 1),
        "megabytes_per_second": round(summary.megabytes_per_second, 1),
        "parquet_bytes": summary.dataset.num_bytes,
        "parts": len(summary.dataset.parts),
        "episodes": summary.dataset.episodes,
    }


def stage_train(work: Path, resident: int, steps: int) -> dict:
    """1000 training steps streaming the Parquet data, then store loading and sampling here."""
    dst = work / "parquet"
    argv = [
        *_cli(),
        "train",
        f"data={dst}",
        f"steps={steps}",
        f"max_resident_episodes={resident}",
        "num_workers=1",
        "cpus_per_worker=1",
        "batch_size=256",
        "log_every=100",
        f"checkpoint_every={steps}",
        f"out={work / 'runs'}",
        "name=scale",
    ]
    seconds, peaks = _run(argv, work / "train.log")
    summary = json.loads((work / "runs" / "scale" / "summary.json").read_text())
    store, _, _ = _in_child(work / "store_sampling.log", _store_sampling, dst, resident)
    return {
        "steps": steps,
        "max_resident_episodes": resident,
        "wall_s": round(seconds, 1),
        "updates_per_s_last_window": summary["metrics"].get("updates_per_s"),
        "peak_rss_bytes": peaks,
        "store": store,
        "full_dataset_estimate": {
            "note": "the worker holds max_resident_episodes whatever the data size, so its "
            "memory is the same for 44 GB; a pass over the 4 chunks at the sampling rate here "
            "is in store.seconds_per_pass_full_dataset",
            "resident_bytes": store["resident_bytes"],
        },
    }


def _store_sampling(dst: str, resident: str, batches: int = 1000) -> dict:
    """Load a rotating store from a Ray Data shard, as a Train worker does, and time batches."""
    import ray
    import torch

    from tdmpc_ray.data.convert import peak_rss_bytes
    from tdmpc_ray.data.episode_store import EpisodeStore

    _ray_init()
    try:
        shard = ray.data.read_parquet(str(dst)).streaming_split(1)[0]
        before = peak_rss_bytes()
        started = time.perf_counter()
        store = EpisodeStore.load(shard, max_resident_episodes=int(resident), rotate_every=100)
        load_s = time.perf_counter() - started
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for _ in range(batches):
            store.sample(256, 3, generator)
        sample_s = (time.perf_counter() - started) / batches
        rotations = store.rotations
        rotate_episodes = max(1, int(resident) // 20)
        store.close()
        resident_bytes = store.nbytes
        peak = peak_rss_bytes()
    finally:
        ray.shutdown()
    return {
        "load_seconds": round(load_s, 1),
        "resident_bytes": resident_bytes,
        "driver_peak_rss_bytes": peak,
        "driver_peak_rss_before_load_bytes": before,
        "ms_per_batch_256x3": round(1000 * sample_s, 3),
        "rotations": rotations,
        "episodes_per_rotation": rotate_episodes,
        "seconds_per_pass_full_dataset": round(FULL_EPISODES / rotate_episodes * 100 * sample_s, 1),
    }


def stage_store(work: Path, parts: int) -> dict:
    """Peak RSS of loading a whole Ray Data shard of `parts` parts into an episode store, as
    the store does now (streamed into storage) and as it did before (the shard held as Arrow,
    then copied), each in a fresh process; checks the two stores are equal."""
    dst = work / "parquet"
    paths = json.dumps([str(p) for p in sorted(dst.glob("part-*.parquet"))[:parts]])
    streamed, _, _ = _in_child(work / "store_streamed.log", _load_shard, paths, "")
    held, _, _ = _in_child(work / "store_held.log", _load_shard, paths, "hold")
    if streamed.pop("digest") != held.pop("digest"):
        raise RuntimeError("the two ways of loading gave different episodes")
    return {
        "parts": parts,
        "streamed": streamed,
        "held_as_arrow_then_copied": held,
        "peak_rss_ratio_held_over_streamed": round(
            held["peak_rss_bytes"] / streamed["peak_rss_bytes"], 2
        ),
        "full_dataset_estimate": {
            "note": "a worker's shard of the 4 chunks is 44 GB / workers: loaded whole it needs "
            "its size in memory (streamed) where it needed twice that (held)",
        },
    }


def _load_shard(paths: str, hold: str) -> dict:
    """Load the parts (a JSON list) through a Ray Data shard; `hold` (non-empty) first gathers
    the shard as Arrow."""
    import hashlib

    import ray

    from tdmpc_ray.data.convert import peak_rss_bytes
    from tdmpc_ray.data.episode_store import EpisodeStore

    _ray_init()
    try:
        shard = ray.data.read_parquet(json.loads(paths)).streaming_split(1)[0]
        before = peak_rss_bytes()
        started = time.perf_counter()
        if hold:
            source = list(shard.iter_batches(batch_format="pyarrow", batch_size=None))
        else:
            source = shard
        store = EpisodeStore.load(source)
        seconds = time.perf_counter() - started
        peak = peak_rss_bytes()
        order = store.fields["episode_id"].argsort()
        digest = hashlib.sha256()
        for name in sorted(store.fields):
            digest.update(store.fields[name][order].numpy().tobytes())
        nbytes = store.nbytes
    finally:
        ray.shutdown()
    return {
        "store_bytes": nbytes,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "peak_rss_before_load_bytes": before,
        "peak_rss_over_store_bytes": round((peak - before) / nbytes, 2),
        "digest": digest.hexdigest(),
    }


def stage_label(work: Path, parts: int, teacher: Path, num_actors: int) -> dict:
    """`tdmpc-ray data label` of the first `parts` parts into a new folder."""
    slice_dir, out = work / "slice", work / "labelled"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(slice_dir, ignore_errors=True)
    slice_dir.mkdir()
    for part in sorted((work / "parquet").glob("part-*.parquet"))[:parts]:
        (slice_dir / part.name).symlink_to(part)
    argv = [
        *_cli(),
        "data",
        "label",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--num-actors",
        str(num_actors),
        str(slice_dir),
    ]
    seconds, peaks = _run(argv, work / "label.log")
    transitions, labelling_s = _transitions((work / "label.log").read_text())
    rate = transitions / labelling_s
    labelled = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(slice_dir, ignore_errors=True)
    return {
        "parts": parts,
        "transitions": transitions,
        "teacher": teacher.name,
        "num_actors": num_actors,
        "wall_s": round(seconds, 1),
        "labelling_s": labelling_s,
        "transitions_per_s": round(rate),
        "labelled_bytes": labelled,
        "peak_rss_bytes": peaks,
        "full_dataset_estimate": {
            "hours": round(FULL_TRANSITIONS / rate / 3600, 1),
            "note": "same teacher, same actors: time scales with the transitions (345,690,000); "
            "a 317M teacher costs ~300x more per transition, on GPUs",
        },
    }


def _transitions(summary: str) -> tuple[int, float]:
    """Transitions labelled and seconds taken, from the summary line 'N transitions in S s'."""
    for line in summary.splitlines():
        if " transitions in " in line:
            count, rest = line.split(" transitions in ")
            return int(count.replace(",", "").split()[-1]), float(rest.split(" s ")[0])
    raise RuntimeError("the label summary has no transitions line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the big files (required)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages")
    parser.add_argument("--episodes", type=int, default=200_000)
    parser.add_argument("--store-parts", type=int, default=40, help="parts loaded whole")
    parser.add_argument("--resident", type=int, default=20_000, help="max_resident_episodes")
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--label-parts", type=int, default=6, help="parts to label")
    parser.add_argument("--label-actors", type=int, default=2)
    parser.add_argument("--teacher", type=resolve_checkpoint, default=TEACHER)
    parser.add_argument("--out", type=Path, default=RESULT, help="result file")
    parser.add_argument("--clean", action="store_true", help="delete --work at the end")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, child_args = args.child
        print("JSON " + json.dumps(globals()[name](*json.loads(child_args))), flush=True)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.work is None:
        parser.error("--work is required")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    run: dict[str, Callable[[], dict]] = {
        "chunk": lambda: stage_chunk(args.work, args.episodes),
        "convert": lambda: stage_convert(args.work),
        "store": lambda: stage_store(args.work, args.store_parts),
        "train": lambda: stage_train(args.work, args.resident, args.steps),
        "label": lambda: stage_label(args.work, args.label_parts, args.teacher, args.label_actors),
    }
    try:
        for stage in stages:
            load = os.getloadavg()[0]
            print(f"== {stage}", flush=True)
            result = stamped({**run[stage](), "load_average_1m_before": load})
            results = json.loads(args.out.read_text()) if args.out.is_file() else {}
            write_json(args.out, {**results, stage: result})
            print(json.dumps(result, indent=1)[:3000], flush=True)
    finally:
        if args.clean:
            shutil.rmtree(args.work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
