"""One TD-MPC2 update step (world model, then policy prior, then target Qs), optionally across
data-parallel workers whose gradients are averaged so the batch size is the global batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.train.distill import LatentBridge
from tdmpc_ray.train.losses import Batch, LossConfig, policy_loss, world_model_loss
from tdmpc_ray.train.scale import RunningScale


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings (TD-MPC2 defaults)."""

    lr: float = 3e-4
    """Adam learning rate (TD-MPC2: 3e-4)."""
    enc_lr_scale: float = 0.3
    """The encoder learns at lr * enc_lr_scale."""
    grad_clip_norm: float = 20.0
    """Gradients are clipped to this global norm (TD-MPC2: 20)."""
    tau: float = 0.01
    """Polyak rate of the target Qs and of the running Q scale."""


@dataclass
class Learner:
    """The trainable state of TD-MPC2 and its update step.

    Two Adam optimisers as TD-MPC2: one for the world model (encoder at a reduced rate, and the
    latent-distillation bridge when it learns) and one for the policy prior. When torch.distributed is initialised, gradients and the Q-scale
    statistics are averaged across ranks before each step, so every rank stays identical.
    """

    model: WorldModel
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bridge: LatentBridge | None = None
    """Latent-distillation bridge (needed when `losses.latent_d_coef` > 0); trained, not saved
    with the student."""

    def __post_init__(self):
        m, o = self.model, self.optim
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
        self.world_optim = torch.optim.Adam(world, lr=o.lr)
        self.pi_optim = torch.optim.Adam(m._pi.parameters(), lr=o.lr, eps=1e-5)
        self.scale = _SyncedScale(o.tau, next(m.parameters()).device)
        self.step = 0

    def _world_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.world_optim.param_groups for p in group["params"]]

    def update(self, batch: Batch) -> dict[str, float]:
        """One update on `batch` (this rank's share of the global batch); returns scalar metrics."""
        self.model.train()
        total, zs, metrics = world_model_loss(self.model, batch, self.losses, self.bridge)
        total.backward()
        metrics["grad_norm"] = _step(
            self.world_optim, self._world_params(), self.optim.grad_clip_norm
        )
        pi_total, pi_metrics = policy_loss(self.model, zs.detach(), batch, self.scale, self.losses)
        pi_total.backward()
        pi_metrics["pi_grad_norm"] = _step(
            self.pi_optim, list(self.model._pi.parameters()), self.optim.grad_clip_norm
        )
        self.model.soft_update_target_Q(self.optim.tau)
        self.model.eval()
        self.step += 1
        return {
            k: float(v.detach()) if torch.is_tensor(v) else float(v)
            for k, v in {**metrics, **pi_metrics}.items()
        }

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: model, bridge, both optimisers, Q scale, step."""
        return {
            "model": self.model.state_dict(),
            "bridge": None if self.bridge is None else self.bridge.state_dict(),
            "world_optim": self.world_optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.bridge is not None:
            self.bridge.load_state_dict(state["bridge"])
        self.world_optim.load_state_dict(state["world_optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.scale.load_state_dict(state["scale"])
        self.step = int(state["step"])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over all ranks in one flat all-reduce (missing grads count as zero)."""
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
    average_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class _SyncedScale(RunningScale):
    """RunningScale whose percentiles are taken over the global batch when data-parallel."""

    def update(self, x: torch.Tensor) -> None:
        if _distributed():
            gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, x.detach().contiguous())
            x = torch.cat(gathered)
        super().update(x)
