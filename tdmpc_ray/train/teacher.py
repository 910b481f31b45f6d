"""The frozen teacher as a service: named Ray actors per (teacher checkpoint, precision), one or
several replicas, shared by every training worker and every Tune trial, each answering
distillation queries in coalesced forward passes.

A teacher is named by the sha256 of its checkpoint, computed once by the driver and handed to
workers and actors (a 317M teacher is 1.3 GB: hashing it in every process cost seconds each).
Which service a run asks is one `TeacherSpec`, built once from the run's resolved config; its
actors live while `TeacherSpec.serve()`'s block runs (or a worker or trial holds a handle).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray
import torch

from tdmpc_ray.model.checkpoint import load_world_model
from tdmpc_ray.model.world_model import teacher_outputs
from tdmpc_ray.train.update import PRECISIONS, use_tf32

NAMESPACE = "tdmpc_ray"


@dataclass
class _Request:
    obs: torch.Tensor
    action: torch.Tensor
    task: torch.Tensor
    terms: tuple[str, ...]
    done: asyncio.Future


def answers(
    out: dict[str, torch.Tensor], requests: list[_Request]
) -> list[dict[str, torch.Tensor]]:
    """Each request's rows of a coalesced pass's outputs `out`, for its terms. Each part is a copy
    with its own storage: a view pickles the whole pass's storage to every client."""
    replies, start = [], 0
    for r in requests:
        rows = slice(start, start + len(r.task))
        replies.append({term: out[term][rows].clone() for term in r.terms})
        start = rows.stop
    return replies


@ray.remote
class TeacherActor:
    """A frozen world model serving `outputs(obs, action, task, terms)` to many clients.

    Requests that arrive while a forward pass runs, or within `gather_s` of the first waiting one,
    are answered together by one pass (up to `max_batch` rows), so N workers asking at once cost
    about one pass, not N. With `precision` bf16/fp16 the weights are cast once and the passes
    run under autocast (LayerNorm and softmax in fp32); answers are always float32. On a GPU,
    fp32 matmuls use TF32 (`use_tf32`).
    """

    def __init__(
        self,
        checkpoint: str,
        task_set: str = "mt30",
        digest: str = "",
        precision: str = "fp32",
        max_batch: int = 65536,
        gather_s: float = 0.002,
    ):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        use_tf32(self.device)
        self.dtype = PRECISIONS[precision]
        model = load_world_model(checkpoint, task_set=task_set, device=self.device)
        self.model = model.requires_grad_(False).to(self.dtype or torch.float32)
        self.hash = digest
        self.precision = precision
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.passes = 0
        self.rows = 0

    async def outputs(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        task: torch.Tensor,
        terms: tuple[str, ...] = ("reward",),
    ) -> dict[str, torch.Tensor]:
        """`teacher_outputs` (by term, [N, width] float32 on the CPU) for rows obs [N, D],
        action [N, A], task [N]."""
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Request(obs, action, task, tuple(terms), done))
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        return await done

    async def _serve(self) -> None:
        """Answer queued requests in coalesced passes until the queue is empty, then stop (the
        next request starts it again), so no task is left pending when the actor exits."""
        loop = asyncio.get_running_loop()
        while not self.queue.empty():
            requests = [self.queue.get_nowait()]
            rows = len(requests[0].task)
            deadline = loop.time() + self.gather_s
            while rows < self.max_batch:
                try:
                    requests.append(
                        await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                    )
                except asyncio.TimeoutError:
                    break
                rows += len(requests[-1].task)
            try:
                out = await loop.run_in_executor(None, self._forward, requests)
            except Exception as err:  # answer every waiting client with the failure
                for r in requests:
                    r.done.set_exception(err)
                continue
            for r, reply in zip(requests, answers(out, requests), strict=True):
                r.done.set_result(reply)
        self.worker = None

    def _forward(self, requests: list[_Request]) -> dict[str, torch.Tensor]:
        """One pass over every waiting request's rows, for the union of their terms."""
        cat = lambda name: torch.cat([getattr(r, name) for r in requests]).to(self.device)  # noqa: E731
        terms = tuple(dict.fromkeys(term for r in requests for term in r.terms))
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = teacher_outputs(self.model, cat("obs"), cat("action"), cat("task").long(), terms)
        self.passes += 1
        self.rows += sum(len(r.task) for r in requests)
        return {term: value.cpu() for term, value in out.items()}

    def info(self) -> dict:
        """Checkpoint hash, latent size, the node and device it runs on, precision, how many
        passes/rows were served (coalescing shows here) and memory: peak resident set of the
        process, peak device memory on a GPU."""
        return {
            "hash": self.hash,
            "node_id": ray.get_runtime_context().get_node_id(),
            "latent_dim": self.model.cfg.latent_dim,
            "device": str(self.device),
            "precision": self.precision,
            "passes": self.passes,
            "rows": self.rows,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "max_device_bytes": torch.cuda.max_memory_allocated()
            if self.device.type == "cuda"
            else 0,
        }


def teacher_name(digest: str, precision: str = "fp32", replica: int = 0) -> str:
    """Actor name of one replica of a teacher: the same file (by hash) and precision give the
    same actors everywhere."""
    return f"teacher-{digest[:16]}-{precision}-{replica}"


def get_teacher(
    checkpoint: str,
    task_set: str = "mt30",
    num_gpus: float | None = None,
    digest: str | None = None,
    precision: str = "fp32",
    replica: int = 0,
    wait: bool = False,
):
    """The actor of replica `replica` of the teacher `checkpoint`, created on first use
    (`get_if_exists`). `digest` is the file's sha256 (hashed here when not handed down).
    `wait`: return once the actor answers, never an actor that is going away (Ray may still
    hand out a named actor for a moment after its last handle was released: a run that
    follows another in the same driver would get the previous run's teacher as it dies).

    It asks for a GPU when the cluster has one (`num_gpus` overrides; a fraction shares a GPU
    with training workers). Like every non-detached actor it lives while a handle from its
    creator does: the training driver (or the sweep) creates it first and holds it; workers and
    trials then find it by name. Ray restarts it (up to 3 times) if its process or node dies, and
    queries in flight wait for the restarted actor; past that they fail, never answer stale.
    """
    if digest is None:
        from tdmpc_ray.model.checkpoint import checkpoint_hash

        digest = checkpoint_hash(checkpoint)
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    options = TeacherActor.options(
        name=teacher_name(digest, precision, replica),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=0,
        num_gpus=num_gpus,
        max_concurrency=64,
        max_restarts=3,
        # Queries are idempotent: one in flight when the actor's node is lost waits for the
        # restarted actor (a fixed count is spent in the seconds before Ray sees the loss).
        max_task_retries=-1,
    )
    actor = options.remote(checkpoint, task_set, digest, precision)
    for delay in (0.1, 0.3, 1.0, 3.0, None) if wait else ():
        try:
            ray.get(actor.info.remote())
            break
        except ray.exceptions.ActorDiedError as err:
            if err.actor_init_failed or delay is None:
                raise
        # The name still led to an actor whose last handle was just released (ray#44083).
        time.sleep(delay)
        actor = options.remote(checkpoint, task_set, digest, precision)
    return actor


@dataclass
class TeacherPool:
    """The replicas of one teacher behind one client: each query goes to the next replica,
    starting from `offset` (a worker's rank), so workers and trials spread over them."""

    actors: list
    offset: int = 0

    def outputs(self, obs, action, task, terms: tuple[str, ...]) -> ray.ObjectRef:
        """Start a query (see `TeacherActor.outputs`); returns the answer's reference."""
        actor = self.actors[self.offset % len(self.actors)]
        self.offset += 1
        return actor.outputs.remote(obs, action, task, terms)

    def info(self) -> list[dict]:
        """`TeacherActor.info` of every replica."""
        return ray.get([actor.info.remote() for actor in self.actors])


def teacher_pool(
    checkpoint: str,
    digest: str | None,
    task_set: str = "mt30",
    num_gpus: float | None = None,
    replicas: int = 1,
    precision: str = "fp32",
    offset: int = 0,
    wait: bool = False,
) -> TeacherPool:
    """The `replicas` actors of a teacher (created on first use) behind one `TeacherPool`;
    `wait` as in `get_teacher`."""
    actors = [
        get_teacher(checkpoint, task_set, num_gpus, digest, precision, replica, wait)
        for replica in range(replicas)
    ]
    return TeacherPool(actors, offset)


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher service a run asks: the checkpoint (its path and sha256), the task set it
    serves, its replicas and the precision it answers at, with the GPUs each replica asks for.
    Two specs are the same service when all but the GPUs agree (the first to start the actors
    sets those)."""

    checkpoint: str
    """Local path of the teacher checkpoint (resolved: published names fetched)."""
    digest: str | None
    """sha256 of the checkpoint (None: hashed where the actors are created)."""
    task_set: str = "mt30"
    """Task set of the teacher (and the run)."""
    num_gpus: float | None = field(default=None, compare=False)
    """GPUs per replica; None: one when the cluster has a GPU (`get_teacher`)."""
    replicas: int = 1
    """Actors answering queries, each query going to one."""
    precision: str = "fp32"
    """Precision of the teacher's forward passes (answers are float32)."""

    def pool(self, offset: int = 0, wait: bool = False) -> TeacherPool:
        """A client of the service's actors (created on first use), its queries starting at
        replica `offset` (a worker's rank); `wait` as in `get_teacher`."""
        return teacher_pool(
            self.checkpoint,
            self.digest,
            self.task_set,
            self.num_gpus,
            self.replicas,
            self.precision,
            offset,
            wait,
        )

    @contextlib.contextmanager
    def serve(self) -> Iterator[TeacherPool]:
        """The service's actors, held for the block: like every non-detached actor they live
        while their creator holds a handle, so the driver holds them while its run (or sweep)
        runs, and leaving the block lets them go once no worker or trial holds one. The block
        starts once every replica answers."""
        pool = self.pool(wait=True)
        try:
            yield pool
        finally:
            pool.actors = []
