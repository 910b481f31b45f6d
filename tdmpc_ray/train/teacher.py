"""The frozen teacher: one named Ray actor per teacher checkpoint, shared by every training worker
and every Tune trial, that answers distillation queries in coalesced forward passes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import ray
import torch

from tdmpc_ray.model.checkpoint import checkpoint_hash, load_world_model
from tdmpc_ray.model.world_model import teacher_outputs

NAMESPACE = "tdmpc_ray"


@dataclass
class _Request:
    obs: torch.Tensor
    action: torch.Tensor
    task: torch.Tensor
    terms: tuple[str, ...]
    done: asyncio.Future


@ray.remote
class TeacherActor:
    """A frozen world model serving `outputs(obs, action, task, terms)` to many clients.

    Requests that arrive while a forward pass runs, or within `gather_s` of the first waiting one,
    are answered together by one pass (up to `max_batch` rows), so N workers asking at once cost
    about one pass, not N.
    """

    def __init__(
        self,
        checkpoint: str,
        task_set: str = "mt30",
        max_batch: int = 65536,
        gather_s: float = 0.002,
    ):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_world_model(checkpoint, task_set=task_set, device=device).requires_grad_(
            False
        )
        self.device = torch.device(device)
        self.hash = checkpoint_hash(checkpoint)
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
        """`teacher_outputs` (by term, [N, width] on the CPU) for rows obs [N, D], action [N, A],
        task [N]."""
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
            sizes = [len(r.task) for r in requests]
            parts = {term: value.split(sizes) for term, value in out.items()}
            for i, r in enumerate(requests):
                r.done.set_result({term: parts[term][i] for term in r.terms})
        self.worker = None

    def _forward(self, requests: list[_Request]) -> dict[str, torch.Tensor]:
        """One pass over every waiting request's rows, for the union of their terms."""
        cat = lambda name: torch.cat([getattr(r, name) for r in requests]).to(self.device)  # noqa: E731
        terms = tuple(dict.fromkeys(term for r in requests for term in r.terms))
        out = teacher_outputs(self.model, cat("obs"), cat("action"), cat("task").long(), terms)
        self.passes += 1
        self.rows += sum(len(r.task) for r in requests)
        return {term: value.cpu() for term, value in out.items()}

    def info(self) -> dict:
        """Checkpoint hash, latent size, device and how many passes/rows were served (coalescing
        shows here)."""
        return {
            "hash": self.hash,
            "latent_dim": self.model.cfg.latent_dim,
            "device": str(self.device),
            "passes": self.passes,
            "rows": self.rows,
        }


def teacher_name(checkpoint: str) -> str:
    """Actor name for a teacher checkpoint: the same file gives the same actor everywhere."""
    return f"teacher-{checkpoint_hash(checkpoint)[:16]}"


def get_teacher(checkpoint: str, task_set: str = "mt30", num_gpus: float | None = None):
    """The shared teacher actor for `checkpoint`, created on first use (`get_if_exists`).

    It asks for a GPU when the cluster has one (`num_gpus` overrides). Like every non-detached
    actor it lives while a handle from its creator does: the training driver (or the sweep)
    creates it first and holds it; workers and trials then find it by name.
    """
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return TeacherActor.options(
        name=teacher_name(checkpoint),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=0,
        num_gpus=num_gpus,
        max_concurrency=64,
    ).remote(checkpoint, task_set)
