"""TD-MPC2's offline multi-task losses and the distillation terms (the paper's reward term, and
next-state latent, value and policy terms), as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model.math import soft_ce
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.train.distill import LatentBridge


@dataclass(frozen=True)
class LossConfig:
    """Coefficients of the world-model and policy losses (TD-MPC2 defaults) and distillation."""

    consistency_coef: float = 20.0
    """Weight of the latent consistency loss (TD-MPC2: 20)."""
    reward_coef: float = 0.1
    """Weight of the reward prediction loss (TD-MPC2: 0.1)."""
    value_coef: float = 0.1
    """Weight of the Q (value) loss (TD-MPC2: 0.1)."""
    rho: float = 0.5
    """Weight decay of later horizon steps: step t counts rho**t."""
    entropy_coef: float = 1e-4
    """Entropy bonus of the policy prior's loss (TD-MPC2: 1e-4)."""
    d_coef: float = 0.0
    """Reward distillation coefficient (the paper's best: 0.4-0.45); 0 trains from scratch."""
    latent_d_coef: float = 0.0
    """Next-state latent distillation through `latent_bridge` (the paper's latent variants)."""
    latent_bridge: str = "linear"
    """`linear` (learned student -> teacher projection) or `pca` (fixed teacher -> student)."""
    value_d_coef: float = 0.0
    """Value distillation: the student's mean Q vs the teacher's mean Q (decoded), MSE."""
    policy_d_coef: float = 0.0
    """Policy distillation: MSE of the student's and the teacher's squashed mean actions."""
    distill_all_steps: bool = False
    """Distil at every horizon step (rho-weighted) instead of only the first."""

    def teacher_terms(self) -> tuple[str, ...]:
        """The teacher outputs these coefficients need (`model.TEACHER_TERMS` order)."""
        coefs = {"reward": self.d_coef, "latent": self.latent_d_coef,
                 "value": self.value_d_coef, "policy": self.policy_d_coef}  # fmt: skip
        return tuple(term for term, coef in coefs.items() if coef > 0)


@torch.no_grad()
def td_targets(model: WorldModel, next_z: torch.Tensor, reward: torch.Tensor, task: torch.Tensor):
    """reward + discount * min of two target Qs at the next latent and a policy-prior action."""
    action, _ = model.pi(next_z, task)
    discount = model.discount(task).view(1, -1, 1)
    return reward + discount * model.Q(next_z, action, task, "min", target=True)


def _rho_weights(cfg: LossConfig, steps: int, device) -> torch.Tensor:
    return cfg.rho ** torch.arange(steps, device=device, dtype=torch.float32)


def world_model_loss(
    model: WorldModel, batch: Batch, cfg: LossConfig, bridge: LatentBridge | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Total world-model loss, the rolled-out latents [H+1, B, L] (for the policy) and metrics.

    Consistency (MSE of rolled-out vs encoded next latents), reward and value (soft cross-entropy
    on two-hot targets) are averaged over the horizon with rho**t weights, as TD-MPC2. Each
    distillation term with a positive coefficient is added: reward (the paper's MSE of decoded
    rewards), latent (rolled-out next latent vs the teacher's through `bridge`) and value (mean
    of the Q members' decoded values vs the teacher's); a zero coefficient leaves it out entirely.
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
    metrics = {
        "consistency_loss": consistency,
        "reward_loss": reward_loss,
        "value_loss": value_loss,
    }
    total = (
        cfg.consistency_coef * consistency
        + cfg.reward_coef * reward_loss
        + cfg.value_coef * value_loss
    )
    terms = {}
    if cfg.d_coef > 0:
        terms["distill_loss"] = (
            cfg.d_coef,
            distill_loss(model.two_hot_inv(reward_logits), _teacher(batch, "reward"), cfg),
        )
    if cfg.latent_d_coef > 0:
        if bridge is None:
            raise ValueError("latent_d_coef > 0 needs a LatentBridge")
        student, teacher = bridge(zs[1:], _teacher(batch, "latent"))
        terms["latent_distill_loss"] = (cfg.latent_d_coef, distill_loss(student, teacher, cfg))
    if cfg.value_d_coef > 0:
        student = model.two_hot_inv(qs).mean(0)
        terms["value_distill_loss"] = (
            cfg.value_d_coef,
            distill_loss(student, _teacher(batch, "value"), cfg),
        )
    for name, (coef, loss) in terms.items():
        total = total + coef * loss
        metrics[name] = loss
    metrics["total_loss"] = total
    return total, zs, metrics


def _teacher(batch: Batch, term: str) -> torch.Tensor:
    if term not in batch.teacher:
        raise ValueError(
            f"this recipe distils the teacher's {term} but the batch has none "
            "(a teacher actor, or data labelled for this term, is needed)"
        )
    return batch.teacher[term]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """MSE between student and teacher outputs [S, B, width] (S steps of the window).

    Only the first step (the (obs, action) pair both models see) by default, as the paper;
    with `distill_all_steps`, every step of the student's latent rollout, rho-weighted.
    """
    steps = student.shape[0] if cfg.distill_all_steps else 1
    if teacher.shape[0] < steps:
        raise ValueError(f"distilling {steps} steps needs as many teacher steps, got {teacher.shape[0]}")
    per_step = ((student[:steps] - teacher[:steps]) ** 2).mean(dim=(1, 2))
    return (per_step * _rho_weights(cfg, steps, student.device)).sum() / steps


def policy_loss(
    model: WorldModel,
    zs: torch.Tensor,
    batch: Batch,
    scale,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict]:
    """TD-MPC2's policy-prior loss on detached latents: -(entropy bonus + scaled Q), rho-weighted,
    plus the policy distillation term (student vs teacher mean action) when `policy_d_coef` > 0.

    `scale` is the running Q scale; it is updated from the first step's Q values here.
    """
    action, info = model.pi(zs, batch.task)
    qs = model.Q(zs, action, batch.task, "avg", detach=True)
    scale.update(qs[0])
    qs = scale(qs)
    rho = _rho_weights(cfg, zs.shape[0], zs.device)
    loss = (-(cfg.entropy_coef * info["scaled_entropy"] + qs).mean(dim=(1, 2)) * rho).mean()
    metrics = {"pi_entropy": info["entropy"].mean(), "pi_scale": scale.value[0]}
    if cfg.policy_d_coef > 0:
        distill = distill_loss(info["mean"][:-1], _teacher(batch, "policy"), cfg)
        loss = loss + cfg.policy_d_coef * distill
        metrics["policy_distill_loss"] = distill
    return loss, {"pi_loss": loss, **metrics}
