"""TD-MPC2's offline multi-task losses and the paper's reward distillation, as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model.math import soft_ce
from tdmpc_ray.model.world_model import WorldModel


@dataclass(frozen=True)
class LossConfig:
    """Coefficients of the world-model and policy losses (TD-MPC2 defaults) and distillation."""

    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    rho: float = 0.5
    """Weight decay of later horizon steps: step t counts rho**t."""
    entropy_coef: float = 1e-4
    d_coef: float = 0.0
    """Reward distillation coefficient (the paper's best: 0.4-0.45); 0 trains from scratch."""
    distill_all_steps: bool = False
    """Distil rewards at every horizon step (rho-weighted) instead of only the first."""


@torch.no_grad()
def td_targets(model: WorldModel, next_z: torch.Tensor, reward: torch.Tensor, task: torch.Tensor):
    """reward + discount * min of two target Qs at the next latent and a policy-prior action."""
    action, _ = model.pi(next_z, task)
    discount = model.discount(task).view(1, -1, 1)
    return reward + discount * model.Q(next_z, action, task, "min", target=True)


def _rho_weights(cfg: LossConfig, steps: int, device) -> torch.Tensor:
    return cfg.rho ** torch.arange(steps, device=device, dtype=torch.float32)


def world_model_loss(
    model: WorldModel, batch: Batch, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Total world-model loss, the rolled-out latents [H+1, B, L] (for the policy) and metrics.

    Consistency (MSE of rolled-out vs encoded next latents), reward and value (soft cross-entropy
    on two-hot targets) are averaged over the horizon with rho**t weights, as TD-MPC2; with
    d_coef > 0 the paper's reward distillation term MSE(student reward, teacher reward) is added.
    """
    H = batch.action.shape[0]
    task, num_bins, vmin, vmax = batch.task, model.cfg.num_bins, model.cfg.vmin, model.cfg.vmax
    with torch.no_grad():
        next_z = model.encode(batch.obs[1:], task)
        targets = td_targets(model, next_z, batch.reward, task)
    rho = _rho_weights(cfg, H, batch.obs.device)
    z = model.encode(batch.obs[0], task)
    zs, consistency = [z], 0.0
    for t in range(H):
        z = model.next(z, batch.action[t], task)
        consistency = consistency + F.mse_loss(z, next_z[t]) * rho[t]
        zs.append(z)
    zs = torch.stack(zs)
    qs = model.Q(zs[:-1], batch.action, task, "all")
    reward_logits = model.reward(zs[:-1], batch.action, task)
    reward_ce = soft_ce(reward_logits, batch.reward, num_bins, vmin, vmax).mean(dim=(1, 2))
    value_ce = soft_ce(
        qs, targets.unsqueeze(0).expand(qs.shape[0], -1, -1, -1), num_bins, vmin, vmax
    )
    consistency = consistency / H
    reward_loss = (reward_ce * rho).sum() / H
    value_loss = (value_ce.mean(dim=(2, 3)) * rho).sum() / (H * qs.shape[0])
    total = (
        cfg.consistency_coef * consistency
        + cfg.reward_coef * reward_loss
        + cfg.value_coef * value_loss
    )
    metrics = {
        "consistency_loss": consistency,
        "reward_loss": reward_loss,
        "value_loss": value_loss,
    }
    if cfg.d_coef > 0:
        distill = distill_loss(model.two_hot_inv(reward_logits), batch.teacher_reward, cfg)
        total = total + cfg.d_coef * distill
        metrics["distill_loss"] = distill
    metrics["total_loss"] = total
    return total, zs, metrics


def distill_loss(
    student_reward: torch.Tensor, teacher_reward: torch.Tensor | None, cfg: LossConfig
):
    """The paper's reward distillation: MSE between student and teacher scalar rewards.

    Only the first step of the window (the (obs, action) pair both models see) by default;
    with `distill_all_steps`, every step of the student's latent rollout, rho-weighted.
    """
    if teacher_reward is None:
        raise ValueError(
            "d_coef > 0 needs teacher rewards (a teacher or cached teacher_reward labels)"
        )
    if not cfg.distill_all_steps:
        return F.mse_loss(student_reward[0], teacher_reward[0])
    rho = _rho_weights(cfg, student_reward.shape[0], student_reward.device)
    per_step = ((student_reward - teacher_reward) ** 2).mean(dim=(1, 2))
    return (per_step * rho).sum() / student_reward.shape[0]


def policy_loss(model: WorldModel, zs: torch.Tensor, task: torch.Tensor, scale, cfg: LossConfig):
    """TD-MPC2's policy-prior loss on detached latents: -(entropy bonus + scaled Q), rho-weighted.

    `scale` is the running Q scale; it is updated from the first step's Q values here.
    """
    action, info = model.pi(zs, task)
    qs = model.Q(zs, action, task, "avg", detach=True)
    scale.update(qs[0])
    qs = scale(qs)
    rho = _rho_weights(cfg, zs.shape[0], zs.device)
    loss = (-(cfg.entropy_coef * info["scaled_entropy"] + qs).mean(dim=(1, 2)) * rho).mean()
    return loss, {"pi_loss": loss, "pi_entropy": info["entropy"].mean(), "pi_scale": scale.value[0]}
