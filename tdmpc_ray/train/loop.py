"""The Ray Train worker loop: sample windows from this worker's episode shard, ask the teacher
for the outputs the recipe's terms need (those not cached as labels in the data) one step ahead,
update, report metrics, and checkpoint (every `checkpoint_every` steps, and at each step the
periodic evaluation is due: the Train controller's `train.evaluation.PeriodicEvaluation` scores
those)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from tdmpc_ray.config import config_dict
from tdmpc_ray.data.episode_store import Batch, EpisodeStore
from tdmpc_ray.devices import to_device
from tdmpc_ray.model.checkpoint import save_checkpoint
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.teacher import TeacherSpec
from tdmpc_ray.train.update import Learner, read_metrics, use_tf32

STATE_FILE = "learner.pt"
STUDENT_FILE = "student.pt"

NOISE_SEED_STRIDE = 7919
"""Each rank's torch stream (the update's random draws) is seeded `seed * stride + rank`, after
the model is built from `seed` alone so that every rank starts from the same weights: each
(seed, rank) pair gets a stream of its own while there are fewer ranks than the stride."""
SAMPLER_SEED_STRIDE = 104729
"""The same for each rank's window sampler (`seed * stride + rank`), a different prime so a run's
sampler seeds differ from its noise seeds for every seed but 0. Fixed: changing either changes
every run's batches."""


class TeacherTargets:
    """Teacher outputs for sampled windows: the data's cached labels for the outputs it holds,
    the teacher service for the others, asked when a batch is sampled so the answer is ready by
    the next update. On a GPU the query's rows go to the host by an asynchronous copy and a
    sender thread asks once the copy is done, so the training loop never waits for the GPU."""

    def __init__(
        self,
        cfg: TrainConfig,
        cached_terms: tuple[str, ...],
        teacher: TeacherSpec | None,
        rank: int = 0,
    ):
        terms = cfg.losses().teacher_terms()
        self.cached = tuple(t for t in terms if t in cached_terms)
        self.asked = tuple(t for t in terms if t not in cached_terms)
        self.all_steps = cfg.loss.distill_all_steps
        self.pool = None
        self.sender = None
        if self.asked:
            self.pool = teacher.pool(offset=rank)
            self.sender = ThreadPoolExecutor(1, thread_name_prefix="teacher-query")
        self.wait_s = 0.0

    def request(self, batch: Batch) -> Future | None:
        """Start the teacher query for `batch` (None when nothing is asked of the teacher)."""
        if self.pool is None:
            return None
        steps = batch.action.shape[0] if self.all_steps else 1
        rows = (
            batch.obs[:steps].flatten(0, 1),
            batch.action[:steps].flatten(0, 1),
            batch.task.repeat(steps),
        )
        copied = None
        if rows[0].is_cuda:
            rows = tuple(_to_pinned_host(x) for x in rows)
            copied = torch.cuda.Event()
            copied.record()
        return self.sender.submit(self._ask, rows, copied)

    def _ask(self, rows: tuple[torch.Tensor, ...], copied) -> ray.ObjectRef:
        if copied is not None:
            copied.synchronize()
        return self.pool.outputs(*rows, self.asked)

    def attach(self, batch: Batch, pending: Future | None) -> Batch:
        """`batch` with exactly the recipe's teacher outputs: labels, and the answer to
        `pending`."""
        teacher = {term: batch.teacher[term] for term in self.cached}
        if pending is not None:
            start = time.perf_counter()
            answer = ray.get(pending.result())
            self.wait_s += time.perf_counter() - start
            size = batch.task.shape[0]
            for term, value in answer.items():
                teacher[term] = to_device(
                    value.view(-1, size, value.shape[-1]), batch.reward.device
                )
        return batch._replace(teacher=teacher)


def _to_pinned_host(x: torch.Tensor) -> torch.Tensor:
    """An asynchronous copy of device tensor `x` into pinned host memory (valid once the stream
    has reached it)."""
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)


def updates(
    learner: Learner,
    store: EpisodeStore,
    teacher: TeacherTargets,
    batch_size: int,
    horizon: int,
    generator: torch.Generator,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless updates on windows sampled from `store`, yielding each update's metrics
    (unread tensors). The teacher is asked for a batch when it is sampled, one update ahead,
    so its answer is usually ready when the batch is used."""
    batch = store.sample(batch_size, horizon, generator)
    pending = teacher.request(batch)
    while True:
        next_batch = store.sample(batch_size, horizon, generator)
        next_pending = teacher.request(next_batch)
        yield learner.update(teacher.attach(batch, pending))
        batch, pending = next_batch, next_pending


def _save(learner: Learner, generators: list, directory: Path, cfg: TrainConfig) -> None:
    torch.save(
        {"learner": learner.state_dict(), "generators": generators, "config": config_dict(cfg)},
        directory / STATE_FILE,
    )
    save_checkpoint(
        learner.model,
        directory / STUDENT_FILE,
        metadata={"step": learner.step, "train_config": config_dict(cfg)},
    )


def resume(learner: Learner, generator: torch.Generator, directory: Path, rank: int) -> None:
    """Restore `learner` and rank `rank`'s sampling `generator` from a checkpoint folder (a rank
    the checkpointed run did not have, after an elastic resize, keeps its freshly seeded one).
    The file is read onto the host: the generator's state must stay a CPU byte tensor (read onto
    a GPU, `set_state` fails), and `Learner.load_state_dict` moves the rest to the learner's
    device."""
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    learner.load_state_dict(state["learner"])
    if rank < len(state["generators"]):
        generator.set_state(state["generators"][rank])


def _all_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's sampling-generator state (gathered so rank 0 can checkpoint them all)."""
    state = generator.get_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config` holds `train` (the resolved TrainConfig), `cached_terms`
    (teacher outputs read from the data's labels), `teacher` (the run's `TeacherSpec`, None when
    nothing is asked of a teacher) and `bridge_inputs` (what the driver fitted for the recipe's
    bridge, `LossConfig.bridge_inputs`)."""
    cfg: TrainConfig = config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_tf32(device)
    torch.manual_seed(cfg.seed)
    model = WorldModel(cfg.model())
    bridge = cfg.losses().bridge(model.cfg.latent_dim, config["bridge_inputs"])
    model = model.to(device)
    learner = Learner(model, cfg.losses(), cfg.optim, None if bridge is None else bridge.to(device))
    torch.manual_seed(cfg.seed * NOISE_SEED_STRIDE + rank)
    generator = torch.Generator().manual_seed(cfg.seed * SAMPLER_SEED_STRIDE + rank)
    checkpoint = ray.train.get_checkpoint()
    resumed_from = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume(learner, generator, Path(directory), rank)
        resumed_from = learner.step
    store = EpisodeStore.load(
        ray.train.get_dataset_shard("train"),
        device=device,
        max_resident_episodes=cfg.max_resident_episodes,
        seed=cfg.seed + rank,
    )
    teacher = TeacherTargets(cfg, tuple(config["cached_terms"]), config["teacher"], rank)
    wandb_run = _start_wandb(cfg) if cfg.wandb and rank == 0 else None
    steps = updates(learner, store, teacher, cfg.batch_size // world, cfg.horizon, generator)
    window_start, window_steps = time.perf_counter(), 0
    for step, metrics in zip(range(learner.step, cfg.steps), steps, strict=False):
        window_steps += 1
        done = step + 1
        save = done % cfg.checkpoint_every == 0 or done == cfg.steps
        evaluate = cfg.evaluation.due(done, cfg.steps)
        if not (save or evaluate or done % cfg.log_every == 0):
            continue
        metrics = read_metrics(metrics)
        elapsed = time.perf_counter() - window_start
        metrics.update(
            step=done,
            updates_per_s=window_steps / elapsed,
            teacher_wait_s=teacher.wait_s / window_steps,
            episodes_resident=store.num_episodes,
            resumed_from=resumed_from,
        )
        window_start, window_steps, teacher.wait_s = time.perf_counter(), 0, 0.0
        if wandb_run is not None:
            wandb_run.log(metrics, step=done)
        if not (save or evaluate):
            ray.train.report(metrics)
            continue
        generators = _all_generator_states(generator)
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                _save(learner, generators, Path(directory), cfg)
            ckpt = ray.train.Checkpoint.from_directory(directory) if rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{done:09d}")
    store.close()
    if wandb_run is not None:
        wandb_run.finish()


def _start_wandb(cfg: TrainConfig):
    import os

    import wandb

    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    # A URI `out` has no local folder: wandb gets a private new one (mode 700, unpredictable name;
    # wandb prints it), never a shared path in the system temp folder.
    local = tempfile.mkdtemp(prefix="tdmpc-ray-wandb-") if "://" in cfg.out else cfg.out
    return wandb.init(
        project="tdmpc-ray", name=cfg.run_name(), config=config_dict(cfg), mode=mode, dir=local
    )
