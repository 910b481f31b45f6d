"""The TD-MPC2 implicit world model: encoder, latent dynamics, reward, policy prior and Q ensemble."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from tdmpc_ray.model import math
from tdmpc_ray.model.config import ModelConfig
from tdmpc_ray.model.layers import QEnsemble, SimNorm, init_weights, mlp
from tdmpc_ray.tasks.task_sets import get_task_set

TaskLike = torch.Tensor | int | None


class Heads(NamedTuple):
    """The world model's encoder and heads as layers, for code that lays their weights out anew
    (the planner's fused heads, the exported controller). Each is an `nn.Sequential` of
    NormedLinear layers (`.weight`, `.bias`, `.ln`) ending in a linear one; `Qs.params[k]` is the
    Q ensemble's k-th layer stacked over members (`.weight` [num_q, out, in]). A first layer reads
    [x, task embedding, action] (no action for the encoder and the policy prior)."""

    encoder: nn.Sequential
    dynamics: nn.Sequential
    reward: nn.Sequential
    pi: nn.Sequential
    Qs: QEnsemble


class WorldModel(nn.Module):
    """TD-MPC2's world model with its exact semantics, named after its methods.

    Every head conditions on a learned task embedding (rows renormalised to norm <= 1 on lookup, as
    `nn.Embedding(max_norm=1)` does) concatenated right after the observation or latent, so the
    input of the action-conditioned heads is [z, task embedding, action], as in TD-MPC2. `task` arguments are an int or a
    LongTensor of task ids broadcastable to the batch; single-task models ignore them.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tasks = get_task_set(cfg.task_set)
        if cfg.multitask:
            self._task_emb = nn.Embedding(len(tasks.tasks), cfg.task_dim, max_norm=1)
            masks = torch.zeros(len(tasks.tasks), cfg.action_dim)
            for i, dim in enumerate(tasks.action_dims):
                masks[i, :dim] = 1.0
            self.register_buffer("_action_masks", masks)
        self.register_buffer(
            "_discount",
            torch.tensor([math.discount_for(n) for n in tasks.episode_lengths]),
            persistent=False,
        )
        z, a, e, h = cfg.latent_dim, cfg.action_dim, cfg.task_dim, cfg.mlp_dim
        simnorm = SimNorm(cfg.simnorm_dim)
        enc_hidden = max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim]
        self._encoder = nn.ModuleDict({"state": mlp(cfg.obs_dim + e, enc_hidden, z, act=simnorm)})
        self._dynamics = mlp(z + a + e, [h, h], z, act=simnorm)
        self._reward = mlp(z + a + e, [h, h], cfg.num_bins)
        self._pi = mlp(z + e, [h, h], 2 * a)
        self._Qs = QEnsemble(cfg.num_q, z + a + e, [h, h], cfg.num_bins, dropout=cfg.dropout)
        self._target_Qs = QEnsemble(cfg.num_q, z + a + e, [h, h], cfg.num_bins, requires_grad=False)
        self.apply(init_weights)
        with torch.no_grad():
            self._reward[-1].weight.zero_()
            self._Qs.params[-1].weight.zero_()
        self._target_Qs.copy_from(self._Qs)
        self._target_Qs.train(False)

    def train(self, mode: bool = True) -> WorldModel:
        """Switch train/eval mode; the target Qs always stay in eval mode."""
        super().train(mode)
        self._target_Qs.train(False)
        return self

    @property
    def total_params(self) -> int:
        """Learnable parameters (TD-MPC2's reported model size; excludes target Qs)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def action_masks(self) -> torch.Tensor:
        """[num_tasks, action_dim] with 1 on each task's real action dims."""
        if self.cfg.multitask:
            return self._action_masks
        return torch.ones(1, self.cfg.action_dim, device=self._discount.device)

    @property
    def heads(self) -> Heads:
        """The encoder and heads themselves (not copies), the online Qs among them."""
        return Heads(self._encoder["state"], self._dynamics, self._reward, self._pi, self._Qs)

    def discount(self, task: TaskLike) -> torch.Tensor:
        """Per-task discount from episode length (TD-MPC2's heuristic)."""
        return self._discount[self._task_ids(task)]

    def _task_ids(self, task: TaskLike) -> torch.Tensor:
        device = self._discount.device
        if task is None or not self.cfg.multitask:
            return torch.zeros((), dtype=torch.long, device=device)
        return torch.as_tensor(task, device=device).long()

    def task_embedding(self, task: TaskLike) -> torch.Tensor:
        """Embedding rows for `task` (renormalised in place to norm <= 1, like TD-MPC2)."""
        return self._task_emb(self._task_ids(task))

    def _with_task(self, x: torch.Tensor, task: TaskLike) -> torch.Tensor:
        if not self.cfg.multitask:
            return x
        emb = self.task_embedding(task)
        return torch.cat([x, emb.expand(*x.shape[:-1], emb.shape[-1])], dim=-1)

    def encode(self, obs: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Latent state of an observation."""
        return self._encoder["state"](self._with_task(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Next latent state after taking action `a` in latent state `z`."""
        return self._dynamics(torch.cat([self._with_task(z, task), a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Logits [..., num_bins] of the one-step reward (decode with `two_hot_inv`)."""
        return self._reward(torch.cat([self._with_task(z, task), a], dim=-1))

    def pi(self, z: torch.Tensor, task: TaskLike, eps: torch.Tensor | None = None):
        """Sample from the tanh-squashed Gaussian policy prior.

        Returns (action, info) where info holds `mean` (the squashed mean action), `log_std`,
        `log_prob`, `entropy` and `scaled_entropy` (entropy scaled by the task's action dims).
        `eps` fixes the standard-normal noise (drawn when None).
        """
        mean, raw_log_std = self._pi(self._with_task(z, task)).chunk(2, dim=-1)
        log_std = math.scaled_log_std(raw_log_std, self.cfg.log_std_min, self.cfg.log_std_max)
        if eps is None:
            eps = torch.randn_like(mean)
        if self.cfg.multitask:
            mask = self._action_masks[self._task_ids(task)]
            mean, log_std, eps = mean * mask, log_std * mask, eps * mask
            action_dims = mask.sum(-1, keepdim=True)
        else:
            action_dims = mean.shape[-1]
        log_prob = math.gaussian_log_prob(eps, log_std)
        scaled_log_prob = log_prob * action_dims
        mean, action, log_prob = math.squash(mean, mean + eps * log_std.exp(), log_prob)
        entropy_scale = scaled_log_prob / (log_prob + 1e-8)
        info = {
            "mean": mean,
            "log_std": log_std,
            "log_prob": log_prob,
            "entropy": -log_prob,
            "scaled_entropy": -log_prob * entropy_scale,
        }
        return action, info

    def Q(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        task: TaskLike,
        return_type: str = "min",
        target: bool = False,
        detach: bool = False,
    ) -> torch.Tensor:
        """State-action value.

        `return_type`: `all` gives every member's logits [Q, ..., num_bins]; `min` / `avg` give the
        min / mean of two randomly chosen members as scalars [..., 1]. `target` uses the target
        Qs; `detach` uses the online Qs without gradient to their weights.
        """
        if return_type not in ("min", "avg", "all"):
            raise ValueError(f"return_type must be min, avg or all, not {return_type!r}")
        x = torch.cat([self._with_task(z, task), a], dim=-1)
        qnet = self._target_Qs if target else self._Qs
        logits = qnet(x, detach=detach)
        if return_type == "all":
            return logits
        idx = torch.randperm(len(qnet), device=logits.device)[:2]
        pair = logits.gather(
            0, idx.view(-1, *[1] * (logits.dim() - 1)).expand(2, *logits.shape[1:])
        )
        values = self.two_hot_inv(pair)
        return values.min(0).values if return_type == "min" else values.sum(0) / 2

    def two_hot_inv(self, logits: torch.Tensor) -> torch.Tensor:
        """Decode regression logits to scalars with this model's bins."""
        return math.two_hot_inv(logits, self.cfg.num_bins, self.cfg.vmin, self.cfg.vmax)

    def soft_update_target_Q(self, tau: float) -> None:
        """Polyak-average the target Qs toward the online Qs."""
        self._target_Qs.lerp_from(self._Qs, tau)


def _teacher_reward(model: WorldModel, z, action, task) -> torch.Tensor:
    return model.two_hot_inv(model.reward(z, action, task))


def _teacher_latent(model: WorldModel, z, action, task) -> torch.Tensor:
    return model.next(z, action, task)


def _teacher_value(model: WorldModel, z, action, task) -> torch.Tensor:
    return model.two_hot_inv(model.Q(z, action, task, "all")).mean(0)


def _teacher_policy(model: WorldModel, z, action, task) -> torch.Tensor:
    return model.pi(z, task, eps=torch.zeros_like(action))[1]["mean"]


@dataclass(frozen=True)
class TeacherOutput:
    """Something a teacher computes per (obs, action) row for distillation; deterministic."""

    compute: Callable[[WorldModel, torch.Tensor, torch.Tensor, TaskLike], torch.Tensor] | None
    """(model, z = encode(obs), action, task) -> [N, width]; None for an output that is not one
    forward pass (the planner's): only `data label` computes it, training reads it from labels."""
    cached: bool
    """Small enough to store: `data label` writes it to the label column `teacher_<name>`."""
    name: str = ""

    @property
    def column(self) -> str | None:
        """Its label column in the episode layout; None when it is never stored."""
        return f"teacher_{self.name}" if self.cached else None


TEACHER_OUTPUTS: dict[str, TeacherOutput] = {
    name: dataclasses.replace(output, name=name)
    for name, output in {
        "reward": TeacherOutput(_teacher_reward, cached=True),
        "latent": TeacherOutput(_teacher_latent, cached=False),
        "value": TeacherOutput(_teacher_value, cached=True),
        "policy": TeacherOutput(_teacher_policy, cached=True),
        "planner": TeacherOutput(None, cached=True),
    }.items()
}
"""What a teacher serves by name. `reward` [N, 1]: decoded reward of (obs, action); `latent`
[N, L]: next latent after `action` (20-57x an observation, so never stored); `value` [N, 1]: mean
of every Q member's decoded value; `policy` [N, A]: the policy prior's squashed mean action at obs
(0 on padded action dims); `planner` [N, 2A]: mean and std of the teacher's MPPI distribution
over the first action at obs, cold-started (`data label --mpc`; 0 on padded action dims)."""
TEACHER_TERMS = tuple(name for name, output in TEACHER_OUTPUTS.items() if output.compute)
"""The names of the `TEACHER_OUTPUTS` a teacher computes per row (`teacher_outputs`)."""


@torch.no_grad()
def teacher_outputs(
    model: WorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    task: TaskLike,
    terms: tuple[str, ...] = ("reward",),
) -> dict[str, torch.Tensor]:
    """`TEACHER_OUTPUTS` named in `terms` for rows obs [N, D], action [N, A], task [N], from one
    encoding, in float32 (also under autocast)."""
    unknown = set(terms) - set(TEACHER_TERMS)
    if unknown & set(TEACHER_OUTPUTS):
        raise ValueError(f"teacher outputs {sorted(unknown)} come only from labels (data label)")
    if unknown:
        raise ValueError(f"unknown teacher terms {sorted(unknown)}; known: {TEACHER_TERMS}")
    z = model.encode(obs, task)
    return {t: TEACHER_OUTPUTS[t].compute(model, z, action, task).float() for t in terms}


def predicted_reward(model: WorldModel, obs: torch.Tensor, action: torch.Tensor, task: TaskLike):
    """The model's decoded reward for taking `action` from observation `obs`: [N, 1]."""
    return teacher_outputs(model, obs, action, task)["reward"]
