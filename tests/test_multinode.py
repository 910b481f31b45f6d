"""Many nodes, and losing one: a head and two worker nodes of `ray.cluster_utils.Cluster` on this
machine (each its own raylet, resources and processes), work spread over them, and every long
verb losing a whole node mid-run.

A lost node is removed and, as an autoscaler replaces a preempted spot instance, a node of the
same size is added back, so each test leaves the cluster as it found it. These tests run last
in a session (conftest.py), since the cluster replaces the session's local Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.helpers import free_ports, registered_checkpoints

pytestmark = pytest.mark.slow

WORKER = {"num_cpus": 1, "resources": {"worker": 1}}
"""A worker node: one logical CPU and a `worker` resource to pin work to worker nodes."""


@dataclass
class MultiNode:
    """The test cluster: the head (the driver's node) and its worker nodes, by Ray node id."""

    cluster: object
    workers: dict[str, tuple[object, dict]] = field(default_factory=dict)
    """Worker nodes by id: the node and the arguments it was started with."""
    faults: list[dict] = field(default_factory=list)
    """One row per fault a test caused: the verb, what was lost, and the time to recover."""

    def add_worker(self, **node_args) -> str:
        """Start a worker node (`WORKER` unless `node_args` say otherwise); returns its id."""
        node_args = node_args or WORKER
        node = self.cluster.add_node(**node_args)
        self.cluster.wait_for_nodes()
        self.workers[node.node_id] = node, node_args
        return node.node_id

    def remove(self, node_id: str) -> dict:
        """Remove worker node `node_id` (its processes die at once); returns its arguments."""
        node, node_args = self.workers.pop(node_id)
        self.cluster.remove_node(node, allow_graceful=False)
        return node_args

    def lose(self, node_id: str) -> str:
        """Remove worker node `node_id` and start one like it; returns the new one's id."""
        return self.add_worker(**self.remove(node_id))

    def record(
        self, verb: str, fault: str, lost: str, seconds: float, baseline: float | None
    ) -> None:
        """A row of docs/results/faults.md: `seconds` the disturbed run took and `baseline` an
        undisturbed one; for a service, `seconds` from the loss to its next answer and no
        baseline."""
        row = {"verb": verb, "fault": fault, "lost": lost, "seconds": round(seconds, 1)}
        row["baseline_seconds"] = None if baseline is None else round(baseline, 1)
        self.faults.append(row)

    def node_ids(self, class_name: str) -> list[str]:
        """Nodes of the live actors whose class name contains `class_name`, from the GCS actor
        table (current at once, where the State API's listing may lag)."""
        from ray._private.state import actors

        return [
            a["Address"]["NodeID"]
            for a in actors().values()
            if a["State"] == "ALIVE" and class_name in a["ActorClassName"]
        ]

    def runs_on_a_worker(self, class_name: str) -> bool:
        """Whether an actor of `class_name` runs on a worker node."""
        return any(node in self.workers for node in self.node_ids(class_name))

    def lose_node_of(self, class_name: str) -> str:
        """Lose a worker node that runs an actor of `class_name`; returns its id."""
        on_workers = [n for n in self.node_ids(class_name) if n in self.workers]
        assert on_workers, f"no {class_name} runs on a worker node"
        self.lose(on_workers[0])
        return on_workers[0]


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNode]:
    """A head of 1 CPU and two worker nodes of 1 CPU each; the driver connects to the head.
    The head runs the dashboard: Ray Train's placement-group cleaner needs its State API."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    (port,) = free_ports(1)
    head = {"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": True}
    cluster = Cluster(initialize_head=True, head_node_args={**head, "dashboard_port": port})
    nodes = MultiNode(cluster)
    for _ in range(2):
        nodes.add_worker()
    ray.init(address=cluster.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    cluster.shutdown()
    out = os.environ.get("TDMPC_RAY_FAULTS_OUT")
    if out:
        from tdmpc_ray.atomic import write_json
        from tdmpc_ray.provenance import provenance

        write_json(Path(out), {"faults": nodes.faults, **provenance()})


def during(
    verb: Callable[[], object],
    condition: Callable[[], bool],
    action: Callable[[], None],
    timeout: float = 600,
) -> tuple[object, bool, float]:
    """Run `verb` in a thread and `action` here (Ray adds nodes only from the main thread) as
    soon as `condition()` holds; returns the verb's result, whether the action ran, and the
    verb's seconds. A verb still running after `timeout` seconds fails the test (its daemon
    thread is left to the cluster's shutdown)."""
    start = time.perf_counter()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = verb()
        except BaseException as err:  # re-raised in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    acted = False
    while thread.is_alive() and time.perf_counter() - start < timeout:
        if not acted and condition():
            action()
            acted = True
        time.sleep(0.05)
    thread.join(max(0.0, timeout - (time.perf_counter() - start)))
    assert not thread.is_alive(), f"still running after {timeout:.0f} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], acted, time.perf_counter() - start


def timed(verb: Callable[[], object]) -> tuple[object, float]:
    """`verb()` and its seconds."""
    start = time.perf_counter()
    return verb(), time.perf_counter() - start


def test_work_spreads_over_nodes(multinode: MultiNode) -> None:
    import ray

    @ray.remote(num_cpus=1)
    def where() -> str:
        time.sleep(1)
        return ray.get_runtime_context().get_node_id()

    nodes = set(ray.get([where.remote() for _ in range(3)]))
    assert nodes == {*multinode.workers, multinode.cluster.head_node.node_id}


def test_eval_loses_a_node_and_returns_equal_an_undisturbed_run(multinode: MultiNode) -> None:
    from tdmpc_ray.evaluate.config import EvalConfig
    from tdmpc_ray.evaluate.pool import EvalPool
    from tdmpc_ray.evaluate.score import evaluate
    from tdmpc_ray.planning import PlannerConfig
    from tests.helpers import shared_checkpoint

    checkpoint = shared_checkpoint("mt30-1M-fp16")
    tiny = PlannerConfig(iterations=1, num_samples=32, num_elites=8, num_pi_trajs=4, horizon=2)
    cfg = EvalConfig(planner=tiny, seed=5, cpus_per_actor=1, max_steps=30)
    tasks = ["cartpole-balance", "pendulum-swingup", "cup-catch", "acrobot-swingup"]
    with EvalPool(3, cpus_per_actor=1) as pool:
        undisturbed, baseline = timed(lambda: evaluate(checkpoint, tasks, 2, cfg=cfg, pool=pool))
        assert len(set(multinode.node_ids("RolloutActor"))) == 3
        start = time.perf_counter()
        # Half a second in, every actor holds a job it cannot have finished (building its model
        # and environments alone takes longer), so the lost node takes work with it.
        disturbed, lost, seconds = during(
            lambda: evaluate(checkpoint, tasks, 2, cfg=cfg, pool=pool),
            lambda: time.perf_counter() - start > 0.5,
            lambda: multinode.lose_node_of("RolloutActor"),
        )
    assert lost
    multinode.record(
        "eval",
        "a node with a rollout actor",
        "the episodes in flight on it, rerun",
        seconds,
        baseline,
    )
    assert {r["reason"] for r in disturbed["retries"]} == {"actor_died"}
    returns = {t: row["returns"] for t, row in disturbed["tasks"].items()}
    assert returns == {t: row["returns"] for t, row in undisturbed["tasks"].items()}


@pytest.fixture(scope="module")
def episodes(multinode: MultiNode, tmp_path_factory) -> Path:
    """Random-policy rollouts: 2 tasks x 3 episodes of 24 steps."""
    from tdmpc_ray.data.generate import GenerateConfig, generate

    dst = tmp_path_factory.mktemp("data") / "episodes"
    config = GenerateConfig(
        tasks="cartpole-balance,walker-walk", episodes_per_task=3, max_steps=24, seed=0
    )
    generate(config, dst, progress=False)
    return dst


def test_train_loses_a_worker_node_and_resumes_from_its_last_checkpoint(
    multinode: MultiNode, episodes: Path, tmp_path: Path
) -> None:
    from tdmpc_ray.train.config import TrainConfig
    from tdmpc_ray.train.trainer import train

    every = 20
    cfg = TrainConfig(
        data=str(episodes),
        steps=200,
        batch_size=32,
        num_workers=2,
        cpus_per_worker=1,
        checkpoint_every=every,
        log_every=every,
        out=str(tmp_path / "runs"),
        name="lost",
        max_failures=2,
    )
    run_dir = tmp_path / "runs" / "lost"
    summary, lost, seconds = during(
        lambda: train(cfg, progress=False),
        lambda: registered_checkpoints(run_dir) >= 1,
        lambda: multinode.lose_node_of("RayTrainWorker"),
    )
    assert lost, "the run ended before a node was lost"
    assert summary["metrics"]["step"] == cfg.steps
    resumed = summary["metrics"]["resumed_from"]
    assert resumed >= every
    _, baseline = timed(lambda: train(replace(cfg, name="undisturbed"), progress=False))
    multinode.record(
        "train",
        "a node with a Train worker",
        f"steps after step {resumed} (the last checkpoint), redone",
        seconds,
        baseline,
    )


def test_an_elastic_run_goes_on_with_fewer_workers_when_no_node_replaces_the_lost_one(
    multinode: MultiNode, episodes: Path, tmp_path: Path
) -> None:
    from tdmpc_ray.train.config import TrainConfig
    from tdmpc_ray.train.trainer import train

    # Workers of 1.5 CPUs fit only the two 2-CPU nodes added here: once one of those is gone,
    # the rest of the cluster (reads included) holds one worker, not two.
    big = [multinode.add_worker(num_cpus=2) for _ in range(2)]
    every = 20
    cfg = TrainConfig(
        data=str(episodes),
        steps=200,
        batch_size=32,
        num_workers=2,
        min_workers=1,
        cpus_per_worker=1.5,
        checkpoint_every=every,
        log_every=every,
        out=str(tmp_path / "runs"),
        name="elastic",
        max_failures=2,
    )
    run_dir = tmp_path / "runs" / "elastic"

    def remove_a_big_node() -> None:
        node = next(n for n in multinode.node_ids("RayTrainWorker") if n in big)
        big.remove(node)
        multinode.remove(node)

    summary, lost, seconds = during(
        lambda: train(cfg, progress=False),
        lambda: registered_checkpoints(run_dir) >= 1,
        remove_a_big_node,
        timeout=400,
    )
    for node in big:
        multinode.remove(node)
    assert lost and summary["metrics"]["step"] == cfg.steps
    assert summary["metrics"]["resumed_from"] >= every
    multinode.record(
        "train (elastic, min_workers=1)",
        "a node with a Train worker, not replaced",
        "steps after the last checkpoint, redone by the one remaining worker",
        seconds,
        None,
    )


def test_a_teacher_on_a_lost_node_comes_back_and_answers_as_the_teacher(
    multinode: MultiNode,
) -> None:
    """The teacher asks for a GPU, so it runs on the cluster's GPU node (a logical GPU here; it
    computes on the CPU); that node is lost while a client keeps querying."""
    import ray
    import torch

    from tdmpc_ray.model import load_world_model, teacher_outputs
    from tdmpc_ray.model.checkpoint import checkpoint_hash
    from tdmpc_ray.train.teacher import teacher_pool
    from tests.helpers import shared_checkpoint

    checkpoint = str(shared_checkpoint("mt30-1M-fp16"))
    gpu_node = multinode.add_worker(num_cpus=1, num_gpus=1)
    pool = teacher_pool(checkpoint, checkpoint_hash(checkpoint), num_gpus=1.0)
    gen = torch.Generator().manual_seed(0)
    obs, action = torch.randn(64, 24, generator=gen), torch.rand(64, 6, generator=gen) * 2 - 1
    task = torch.randint(0, 30, (64,), generator=gen)
    expected = teacher_outputs(load_world_model(checkpoint), obs, action, task, ("reward",))
    answered: list[tuple[float, str]] = []

    def query() -> list[dict]:
        """Ask until the teacher has answered 40 times, 5 of them from a node other than the
        lost one: the lost node's actor process may still answer for a moment after its node
        is removed, so the restarted teacher is known by the node its `info` reports."""
        replies: list[dict] = []
        while len(replies) < 40 or sum(node != gpu_node for _, node in answered) < 5:
            node = ray.get(pool.actors[0].info.remote())["node_id"]
            replies.append(ray.get(pool.outputs(obs, action, task, ("reward",))))
            answered.append((time.perf_counter(), node))
        return replies

    lost_at: list[float] = []

    def lose_teacher_node() -> None:
        assert multinode.node_ids("TeacherActor") == [gpu_node]
        node_args = multinode.remove(gpu_node)
        lost_at.append(time.perf_counter())
        multinode.add_worker(**node_args)

    replies, lost, seconds = during(query, lambda: len(answered) >= 5, lose_teacher_node)
    assert lost
    for reply in replies:
        torch.testing.assert_close(reply["reward"], expected["reward"], rtol=1e-5, atol=1e-5)
    back = min(t for t, node in answered if node != gpu_node) - lost_at[0]
    (new_node,) = multinode.node_ids("TeacherActor")
    assert new_node != gpu_node and answered[-1][1] == new_node
    ray.kill(pool.actors[0], no_restart=True)
    multinode.remove(new_node)
    multinode.record(
        "train (teacher service)",
        "the teacher's node",
        "nothing: queries in flight wait for the restarted teacher and are answered by it",
        back,
        None,
    )


def part_checksums(folder: Path) -> dict[str, str]:
    """sha256 of each part's episodes (every column, in order) and of its footer's layout keys;
    provenance (host, time) differs between any two runs and is left out."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    from tdmpc_ray.data.layout import METADATA_KEY

    sums = {}
    for path in sorted(folder.glob("part-*.parquet")):
        digest = hashlib.sha256()
        table = pq.read_table(path)
        for name in table.column_names:
            for chunk in table.column(name).chunks:
                for buffer in chunk.buffers():
                    digest.update(b"" if buffer is None else bytes(buffer))
        meta = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
        digest.update(
            json.dumps(
                {k: v for k, v in meta.items() if k != "provenance"}, sort_keys=True
            ).encode()
        )
        sums[path.name] = digest.hexdigest()
    return sums


def test_convert_loses_a_node_and_writes_the_same_parts(
    multinode: MultiNode, make_chunk, tmp_path: Path
) -> None:
    from tdmpc_ray.data.convert import convert

    chunk = make_chunk("chunk_0.pt", episodes=24, steps=101)
    undisturbed = tmp_path / "undisturbed"
    _, baseline = timed(lambda: convert([chunk], undisturbed, episodes_per_file=2, progress=False))
    disturbed = tmp_path / "disturbed"
    first, lost, seconds = during(
        lambda: convert([chunk], disturbed, episodes_per_file=2, progress=False),
        lambda: any(disturbed.glob("part-*.parquet")),
        lambda: multinode.lose(next(iter(multinode.workers))),
    )
    assert lost and first.written == 12
    again = convert([chunk], disturbed, episodes_per_file=2, progress=False)
    assert again.skipped == 12 and again.written == 0
    assert part_checksums(disturbed) == part_checksums(undisturbed)
    multinode.record(
        "data convert",
        "a node converting parts",
        "the parts in flight on it, rerun by Ray",
        seconds,
        baseline,
    )


def test_label_loses_a_node_and_writes_the_same_labels(
    multinode: MultiNode, tmp_path: Path
) -> None:
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.data.label import label
    from tests.helpers import shared_checkpoint

    teacher = shared_checkpoint("mt30-1M-fp16")
    data = tmp_path / "episodes"
    config = GenerateConfig(
        tasks="cartpole-balance,cup-catch",
        episodes_per_task=4,
        max_steps=40,
        seed=1,
        episodes_per_file=1,
    )
    generate(config, data, progress=False)
    undisturbed, disturbed = tmp_path / "undisturbed", tmp_path / "disturbed"
    _, baseline = timed(
        lambda: label(
            data, teacher, out=undisturbed, batch_episodes=1, num_actors=2, progress=False
        )
    )
    first, lost, seconds = during(
        lambda: label(data, teacher, out=disturbed, batch_episodes=1, num_actors=2, progress=False),
        lambda: multinode.runs_on_a_worker("MapWorker"),
        lambda: multinode.lose_node_of("MapWorker"),
    )
    assert lost and first.written == 8
    again = label(data, teacher, out=disturbed, num_actors=2, progress=False)
    assert again.written == 0
    assert part_checksums(disturbed) == part_checksums(undisturbed)
    multinode.record(
        "data label",
        "a node with a labelling actor",
        "the part in flight on it, relabelled",
        seconds,
        baseline,
    )


def sweep_overrides(data: Path, storage: Path) -> dict[str, str]:
    """`tune/quick.yaml` at test size: scratch and distilled, 40 steps, checkpoints every 10,
    one evaluation at the end; one trial at a time."""
    from tests.helpers import shared_checkpoint

    return {
        "data": str(data),
        "teacher": str(shared_checkpoint("mt30-1M-fp16")),
        "steps": "40",
        "batch_size": "16",
        "checkpoint_every": "10",
        "log_every": "10",
        "eval_freq": "40",
        "eval_tasks": "cartpole-balance",
        "eval_max_steps": "5",
        "eval_episodes": "2",
        "storage_path": str(storage),
        "max_concurrent_trials": "1",
    }


def sweep_outcome(summary: dict) -> dict:
    """What a sweep decides, per trial: its steps, evaluated step and score with interval."""
    keys = (
        "step",
        "eval_step",
        "normalized_score",
        "normalized_score_low",
        "normalized_score_high",
        "status",
    )
    return {t["d_coef"]: {k: t.get(k) for k in keys} for t in summary["trials"]}


@pytest.fixture(scope="module")
def undisturbed_sweep(multinode: MultiNode, episodes: Path, tmp_path_factory) -> dict:
    from tdmpc_ray.sweep.runner import run_sweep
    from tdmpc_ray.sweep.spec import load_spec
    from tests.helpers import REPO

    storage = tmp_path_factory.mktemp("undisturbed")
    spec = load_spec(REPO / "tune" / "quick.yaml", sweep_overrides(episodes, storage))
    summary, seconds = timed(lambda: run_sweep(spec, verbose=0))
    return {**summary, "seconds": seconds}


def test_sweep_loses_a_trials_node_and_retries_it(
    multinode: MultiNode, episodes: Path, undisturbed_sweep: dict, tmp_path: Path
) -> None:
    from tdmpc_ray.sweep.runner import run_sweep
    from tdmpc_ray.sweep.spec import load_spec
    from tests.helpers import REPO

    spec = load_spec(REPO / "tune" / "quick.yaml", sweep_overrides(episodes, tmp_path))
    summary, lost, seconds = during(
        lambda: run_sweep(spec, verbose=0),
        lambda: multinode.runs_on_a_worker("RayTrainWorker"),
        lambda: multinode.lose_node_of("RayTrainWorker"),
    )
    assert lost and not summary["errors"]
    assert sweep_outcome(summary) == sweep_outcome(undisturbed_sweep)
    multinode.record(
        "sweep",
        "a node with a trial's Train worker",
        "that trial's steps since its last checkpoint, redone",
        seconds,
        undisturbed_sweep["seconds"],
    )


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_a_stopped_sweep_driver_resumes_without_rerunning_finished_trials(
    multinode: MultiNode, episodes: Path, undisturbed_sweep: dict, tmp_path: Path, stop: str
) -> None:
    """The driver is killed (SIGKILL) or interrupted (Ctrl-C: Tune saves its state, the verb
    says what is unfinished and how to go on, and exits 130) once one trial has finished."""
    import json
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    args = [sys.executable, "-m", "tdmpc_ray", "sweep", str(REPO / "tune" / "quick.yaml")]
    args += [f"{k}={v}" for k, v in sweep_overrides(episodes, tmp_path).items()]
    env = {**os.environ, "RAY_ADDRESS": multinode.cluster.address}
    experiment = tmp_path / "quick"

    def finished() -> list[str]:
        """Trials the sweep's saved state holds as finished (what a restore will not rerun)."""
        states = sorted(experiment.glob("experiment_state-*.json"))
        if not states:
            return []
        try:
            trials = json.loads(states[-1].read_text())["trial_data"]
        except (ValueError, KeyError):  # caught mid-write
            return []
        states = [json.loads(state) for state, _ in trials]
        return [s["trial_id"] for s in states if s.get("status") == "TERMINATED"]

    start = time.perf_counter()
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    deadline = time.time() + 600
    while not finished() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before its driver could be stopped"
    driver.send_signal(getattr(signal, stop))
    code = driver.wait(timeout=300)
    (first,) = finished()
    if stop == "SIGINT":
        printed = (tmp_path / "driver.log").read_text()
        assert code == 130, printed[-2000:]
        line = (
            r"^tdmpc-ray sweep: interrupted, trials unfinished: 1; continue with: tdmpc-ray sweep"
        )
        assert re.search(rf"{line} \S+quick\.yaml .* --resume$", printed, re.M), printed[-2000:]
        summary = json.loads((experiment / "summary.json").read_text())
        assert summary["unfinished"] == 1
        assert sorted(t["status"] == "TERMINATED" for t in summary["trials"]) == [False, True]
    (result,) = experiment.glob(f"*{first}*/result.json")
    rows_before = result.read_text()
    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert result.read_text() == rows_before
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["unfinished"] == 0
    assert sweep_outcome(summary) == sweep_outcome(undisturbed_sweep)
    multinode.record(
        "sweep",
        f"the sweep's driver ({stop}), then `sweep --resume`",
        "the unfinished trial's steps since its last checkpoint; no finished trial reran",
        seconds,
        undisturbed_sweep["seconds"],
    )


@pytest.fixture
def private_node(multinode: MultiNode, tmp_path: Path) -> Iterator[Path]:
    """A node that sees the folder it yields empty, as a machine without the driver's disk would:
    its raylet runs in a mount namespace of its own with a tmpfs over that folder."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    import ray

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give a node a file system of its own")
    private = tmp_path / "private"
    private.mkdir()
    ray_cli = Path(sys.executable).with_name("ray")
    script = (
        f"mount --make-rprivate / && mount -t tmpfs tmpfs {private} && exec {ray_cli} start "
        f"--address={multinode.cluster.address} --num-cpus=1 --block"
    )
    before = len([n for n in ray.nodes() if n["Alive"]])
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while len([n for n in ray.nodes() if n["Alive"]]) <= before:
        assert node.poll() is None and time.time() < deadline, "the private node did not start"
        time.sleep(0.5)
    yield private
    os.killpg(node.pid, signal.SIGTERM)
    node.wait(60)
    while len([n for n in ray.nodes() if n["Alive"]]) > before and time.time() < deadline + 60:
        time.sleep(0.5)


def test_paths_a_node_cannot_see_fail_in_one_line(
    private_node: Path, episodes: Path, tmp_path: Path
) -> None:
    import shutil

    from tdmpc_ray.shared_paths import check_shared_paths
    from tdmpc_ray.train.config import TrainConfig
    from tdmpc_ray.train.trainer import train

    check_shared_paths({"data": episodes}, {"out": tmp_path / "runs"})
    local = shutil.copytree(episodes, private_node / "episodes")
    with pytest.raises(ValueError, match=r"^data \S+/private/episodes is missing on node \S+: "):
        train(TrainConfig(data=str(local), steps=2, out=str(tmp_path / "runs")), progress=False)
    with pytest.raises(ValueError, match=r"^out \S+/private/runs is missing on node \S+: "):
        train(
            TrainConfig(data=str(episodes), steps=2, out=str(private_node / "runs")), progress=False
        )
    assert not list((private_node / "runs").iterdir()), "the probe file was left behind"
