"""One TD-MPC2 update step (world model, then policy prior, then target Qs), optionally across
data-parallel workers whose gradients are averaged so the batch size is the global batch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.train.distill import LatentBridge
from tdmpc_ray.train.losses import LossConfig, policy_loss, world_model_loss
from tdmpc_ray.train.scale import RunningScale

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Numeric precision of the update's forward passes -> the autocast dtype (None: plain fp32)."""


@dataclass(frozen=True)
class OptimConfig:
    """How the update steps: TD-MPC2's optimiser settings, and compilation and precision (speed
    only; the default, eager fp32, is TD-MPC2's update op for op)."""

    lr: float = 3e-4
    """Adam learning rate (TD-MPC2: 3e-4)."""
    enc_lr_scale: float = 0.3
    """The encoder learns at lr * enc_lr_scale."""
    grad_clip_norm: float = 20.0
    """Gradients are clipped to this global norm (TD-MPC2: 20)."""
    tau: float = 0.01
    """Polyak rate of the target Qs and of the running Q scale."""
    compile: bool = False
    """Compile the whole update with torch.compile (as TD-MPC2's `compile=true`): losses, their
    backward, the optimiser steps and the target update. Random draws (dropout, policy noise)
    then come from Inductor's generator, so runs differ from eager ones in their noise."""
    compile_mode: str | None = None
    """torch.compile mode; None: `reduce-overhead` (CUDA graphs) on CUDA, Inductor's default on
    CPU (see `compile_options`)."""
    precision: str = "fp32"
    """`fp32`, or `bf16` / `fp16`: forward passes under autocast with fp32 master weights and
    optimiser state (`fp16` with a gradient scaler, eager only). For GPUs; CPUs without bf16
    units are slower with it."""

    def check(self) -> None:
        """Fail with one line on settings that cannot run."""
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {tuple(PRECISIONS)}, not {self.precision!r}"
            )
        if self.compile and self.precision == "fp16":
            raise ValueError(
                "precision=fp16 runs eager only (its gradient scaler syncs and breaks a compiled "
                "update): use precision=bf16 with compile=true"
            )


def compile_options(cfg: OptimConfig, device: torch.device) -> dict:
    """torch.compile's arguments for the update on `device`: `compile_mode` when given, else
    `reduce-overhead` (CUDA graphs) on CUDA, and on CPU Inductor's default with its random draws
    falling back to torch's (faster than Inductor's on CPU, and the same noise as eager). Shapes
    are static: a run has one batch size, and a second size gets its own graph instead of a
    dynamic-shape recompile of the first."""
    if cfg.compile_mode is not None:
        return {"mode": cfg.compile_mode, "dynamic": False}
    if device.type == "cuda":
        return {"mode": "reduce-overhead", "dynamic": False}
    return {"options": {"fallback_random": True}, "dynamic": False}


def uses_cuda_graphs(options: dict, device: torch.device) -> bool:
    """Whether torch.compile with `options` runs the update as CUDA graphs on `device`: its mode
    turns Inductor's `triton.cudagraphs` on (`reduce-overhead`, `max-autotune`) or its options
    do."""
    if device.type != "cuda":
        return False
    mode = torch._inductor.list_mode_options(options.get("mode") or "default")
    return bool({**mode, **options.get("options", {})}.get("triton.cudagraphs", False))


def use_tf32(device: torch.device | str) -> None:
    """Let float32 matmuls use TF32 tensor cores on a CUDA `device`, as TD-MPC2's training
    script does (several times faster on Ampere and later GPUs). No effect on CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"


@dataclass
class Learner:
    """The trainable state of TD-MPC2 and its update step.

    Two Adam optimisers as TD-MPC2: one for the world model (encoder at a reduced rate, and the
    latent-distillation bridge when it learns) and one for the policy prior; capturable on CUDA
    (so a compiled update can run as CUDA graphs). When torch.distributed is initialised,
    gradients and the Q-scale statistics are averaged across ranks before each step, so every
    rank stays identical.
    """

    model: WorldModel
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bridge: LatentBridge | None = None
    """Latent-distillation bridge (needed when `losses.latent_d_coef` > 0); trained, not saved
    with the student."""

    def __post_init__(self):
        m, o = self.model, self.optim
        o.check()
        world = [
            {"params": m._encoder.parameters(), "lr": o.lr * o.enc_lr_scale},
            {"params": m._dynamics.parameters()},
            {"params": m._reward.parameters()},
            {"params": m._Qs.parameters()},
        ]
        if m.cfg.multitask:
            world.append({"params": m._task_emb.parameters()})
        if self.bridge is not None and any(True for _ in self.bridge.parameters()):
            world.append({"params": self.bridge.parameters()})
        self.device = next(m.parameters()).device
        capturable = self.device.type == "cuda"
        self.world_optim = torch.optim.Adam(world, lr=o.lr, capturable=capturable)
        self.pi_optim = torch.optim.Adam(
            m._pi.parameters(), lr=o.lr, eps=1e-5, capturable=capturable
        )
        self.scale = _SyncedScale(o.tau, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if o.precision == "fp16" else None
        self.step = 0
        options = compile_options(o, self.device)
        self._cuda_graphs = o.compile and uses_cuda_graphs(options, self.device)
        if self._cuda_graphs:  # CUDA graphs must see one address, not copy them in per replay
            torch._dynamo.mark_static_address(self.scale.value)
            torch._dynamo.mark_static_address(self.scale.levels)
        self._update = (
            torch.compile(self._update_step, **options) if o.compile else self._update_step
        )

    def _world_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.world_optim.param_groups for p in group["params"]]

    def _autocast(self):
        dtype = PRECISIONS[self.optim.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One update on `batch` (this rank's share of the global batch). Returns its metrics as
        0-d tensors on the device without waiting for them: read them with `read_metrics` only
        when they are logged, so the device never waits for the host in between."""
        self.model.train()
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        metrics = self._update(batch)
        if self._cuda_graphs:
            self._keep_surviving_grads()
        self.model.eval()
        self.step += 1
        values = torch.stack([v.detach().float() for v in metrics.values()])
        return dict(zip(metrics, values.unbind(), strict=True))

    def _surviving_grads(self) -> list[torch.nn.Parameter]:
        """World-model parameters whose gradient outlives an update: the policy loss sends one
        into the task embedding that only the next world-model step consumes (TD-MPC2's
        semantics, kept)."""
        return [p for p in self._world_params() if p.grad is not None]

    def _keep_surviving_grads(self) -> None:
        """Copy the surviving gradients out of the CUDA graphs' memory pool: left there, the
        next replay overwrites them while the next backward accumulates into them."""
        for param in self._surviving_grads():
            param.grad = param.grad.clone()

    def _update_grad_scale(self) -> None:
        """The fp16 loss scale of the next step, with the surviving gradients rescaled from this
        step's scale to it, so the next world-model step unscales them right."""
        old = self.scaler._get_scale_async().clone()
        self.scaler.update()
        ratio = self.scaler._get_scale_async() / old
        for param in self._surviving_grads():
            param.grad.mul_(ratio)

    def _update_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """World model, then policy prior, then target Qs (what `compile` compiles)."""
        with self._autocast():
            total, zs, metrics = world_model_loss(self.model, batch, self.losses, self.bridge)
        metrics["grad_norm"] = self._backward_step(total, self.world_optim, self._world_params())
        with self._autocast():
            pi_total, pi_metrics = policy_loss(
                self.model, zs.detach(), batch, self.scale, self.losses
            )
        pi_metrics["pi_grad_norm"] = self._backward_step(
            pi_total, self.pi_optim, list(self.model._pi.parameters())
        )
        if self.scaler is not None:
            self._update_grad_scale()
        self.model.soft_update_target_Q(self.optim.tau)
        return {**metrics, **pi_metrics}

    def _backward_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list
    ) -> torch.Tensor:
        """Backward, average over ranks, clip, step; returns the gradient norm before clipping."""
        clip = self.optim.grad_clip_norm
        if self.scaler is None:
            loss.backward()
            return _step(optimizer, params, clip)
        self.scaler.scale(loss).backward()
        if _distributed():
            average_gradients(params)
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: model, bridge, both optimisers, Q scale, step
        (and the gradient scaler's state with fp16)."""
        return {
            "model": self.model.state_dict(),
            "bridge": None if self.bridge is None else self.bridge.state_dict(),
            "world_optim": self.world_optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "step": self.step,
            **({} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`'s output, wherever it was saved (GPU or CPU): every tensor is
        moved to this learner's device, and the optimisers keep this device's settings."""
        self.model.load_state_dict(state["model"])
        if self.bridge is not None:
            self.bridge.load_state_dict(state["bridge"])
        for name in ("world_optim", "pi_optim"):
            optimizer = getattr(self, name)
            optimizer.load_state_dict(_for_this_device(state[name], optimizer))
        self.scale.load_state_dict(state["scale"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])


def _for_this_device(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Optimiser state `saved` on another device made fit for `optimizer`: its `capturable`
    flag (which `load_state_dict` would restore from the file) and its step counters on the
    host, from where `load_state_dict` moves them to the parameters' device when capturable."""
    capturable = optimizer.param_groups[0]["capturable"]
    state = {
        index: {k: v.cpu() if k == "step" else v for k, v in entry.items()}
        for index, entry in saved["state"].items()
    }
    groups = [{**group, "capturable": capturable} for group in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def read_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metrics of `Learner.update` as floats, in one transfer from the device (one wait)."""
    if not metrics:
        return {}
    values = torch.stack([v.float() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.compiler.disable
def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over all ranks in one flat all-reduce (missing grads count as zero);
    eager inside a compiled update (a graph break, only when data-parallel)."""
    if not _distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def _step(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], clip: float
) -> torch.Tensor:
    if _distributed():
        average_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class _SyncedScale(RunningScale):
    """RunningScale whose percentiles are taken over the global batch when data-parallel."""

    def update(self, x: torch.Tensor) -> None:
        if _distributed():
            x = _all_gather(x)
        super().update(x)


@torch.compiler.disable
def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` concatenated (eager inside a compiled update)."""
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.detach().contiguous())
    return torch.cat(gathered)
