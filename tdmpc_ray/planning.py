"""TD-MPC2's MPPI planner, batched over environments that each have their own task.

All B environments plan in one pass: tensors carry a leading environment dimension, so one
matmul serves B x num_samples trajectories. Per call, the contribution of each environment's task
embedding to the first layer of every head is computed once and added as a bias, and the first
layers of the dynamics and reward heads (which read the same input) run as one matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tdmpc_ray.devices import to_device
from tdmpc_ray.model.layers import mish_fusible
from tdmpc_ray.model.world_model import WorldModel


@dataclass(frozen=True)
class PlannerConfig:
    """MPPI settings; the defaults are TD-MPC2's."""

    mpc: bool = True
    """Plan with MPPI; False acts with the policy prior."""
    iterations: int = 6
    num_samples: int = 512
    """Trajectories per environment and iteration, the policy trajectories included."""
    num_elites: int = 64
    num_pi_trajs: int = 24
    horizon: int = 3
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5
    env_block: int | None = None
    """Environments planned together in one block of matmuls; None: 2 on CPU (so activations
    stay in cache), all on GPU."""
    compile: bool = False
    """Fuse LayerNorm+Mish with torch.compile (a few seconds to compile, ~2x faster on CPU)."""

    def check(self) -> None:
        """Fail with one line on settings MPPI cannot run with: the one check of every planner
        setting, for the planner, the exported controller and evaluation alike."""
        for name in ("iterations", "num_samples", "num_elites", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"planner {name} must be at least 1, got {getattr(self, name)}")
        if self.num_pi_trajs < 0:
            raise ValueError(f"planner num_pi_trajs must be at least 0, got {self.num_pi_trajs}")
        if self.num_pi_trajs >= self.num_samples or self.num_elites > self.num_samples:
            raise ValueError(
                "planner settings need num_pi_trajs < num_samples and num_elites <= num_samples, "
                f"got {self.num_pi_trajs}, {self.num_samples} and {self.num_elites}"
            )
        if not 0 <= self.min_std <= self.max_std:
            raise ValueError(
                f"planner settings need 0 <= min_std <= max_std, got {self.min_std}, {self.max_std}"
            )
        if not self.temperature > 0:
            raise ValueError(f"planner temperature must be positive, got {self.temperature}")
        if self.env_block is not None and self.env_block < 1:
            raise ValueError(f"planner env_block must be at least 1 or None, got {self.env_block}")


def _split_first(weight: torch.Tensor, bias: torch.Tensor, emb: torch.Tensor | None, latent: int):
    """Split a first layer reading [z, task embedding, action] into the latent's weight, the
    action's weight and a per-environment bias that holds the task embedding's contribution.

    `weight` is [..., out, in] (a leading ensemble dim is allowed); the bias is [..., B, out].
    """
    task_dim = 0 if emb is None else emb.shape[-1]
    w_z, w_e, w_a = weight.split([latent, task_dim, weight.shape[-1] - latent - task_dim], -1)
    b = bias.unsqueeze(-2)
    if emb is not None:
        b = b + torch.matmul(emb, w_e.transpose(-1, -2))
    return w_z.transpose(-1, -2).contiguous(), w_a.transpose(-1, -2).contiguous(), b


def ln_mish(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Mish(LayerNorm(x) * weight + bias), the activation of every NormedLinear layer.

    `weight`/`bias` broadcast against x, so one call serves a stack of Q-ensemble members.
    """
    return F.mish(F.layer_norm(x, x.shape[-1:]) * weight + bias)


def ln_mish_fusible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`ln_mish` with `mish_fusible`: equal to float32 rounding, meant for torch.compile."""
    return mish_fusible(F.layer_norm(x, x.shape[-1:]) * weight + bias)


def _compiled_ln_mish():
    """`ln_mish_fusible` under torch.compile, allowed one graph per call-site shape and thread count."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(ln_mish_fusible, dynamic=False)


class _TaskHeads:
    """The world model's heads specialised to one task per environment, for [B, N, ...] inputs."""

    def __init__(self, model: WorldModel, task: torch.Tensor, act=ln_mish):
        cfg = model.cfg
        self.model, self.act, self.hidden = model, act, cfg.mlp_dim
        self.layers = layers = model.heads
        emb = model.task_embedding(task) if cfg.multitask else None
        latent = cfg.latent_dim
        dyn0, rew0 = layers.dynamics[0], layers.reward[0]
        pi0, q0 = layers.pi[0], layers.Qs.params[0]
        weight = torch.cat([dyn0.weight, rew0.weight])
        self.w_dr_z, self.w_dr_a, b_dr = _split_first(
            weight, torch.cat([dyn0.bias, rew0.bias]), emb, latent
        )
        self.b_dr = b_dr.unsqueeze(1)
        self.ln_dr = [
            torch.cat([dyn0.ln.weight, rew0.ln.weight]),
            torch.cat([dyn0.ln.bias, rew0.ln.bias]),
        ]
        self.w_pi, _, b_pi = _split_first(pi0.weight, pi0.bias, emb, latent)
        self.b_pi = b_pi.unsqueeze(1)
        self.w_q_z, self.w_q_a, b_q = _split_first(q0.weight, q0.bias, emb, latent)
        self.b_q = b_q.unsqueeze(2)
        self.mask = model.action_masks[task if cfg.multitask else torch.zeros_like(task)].unsqueeze(
            1
        )
        self.discount = model.discount(task).view(-1, 1, 1)

    def _hidden(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        return self.act(F.linear(x, layer.weight, layer.bias), layer.ln.weight, layer.ln.bias)

    def next_and_reward(self, z: torch.Tensor, a: torch.Tensor):
        """Next latent [B,N,L] and decoded reward [B,N,1] from one fused first layer.

        `z` may be [B,1,L] for a start state shared by all N actions: its part of the first
        layer is then computed once per environment.
        """
        base = torch.baddbmm(self.b_dr, z, self.w_dr_z.expand(z.shape[0], -1, -1))
        h = torch.baddbmm(base, a, self.w_dr_a.expand(a.shape[0], -1, -1))
        h = h.view(*h.shape[:-1], 2, self.hidden)
        h_dyn, h_rew = self.act(h, *(p.view(2, self.hidden) for p in self.ln_dr)).unbind(-2)
        dyn, rew = self.layers.dynamics, self.layers.reward
        z_next = dyn[2](self._hidden(h_dyn, dyn[1]))
        reward = self.model.two_hot_inv(rew[2](self._hidden(h_rew, rew[1])))
        return z_next, reward

    def pi(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sampled action of the policy prior for given standard-normal noise `eps`."""
        cfg, pi = self.model.cfg, self.layers.pi
        h = torch.baddbmm(self.b_pi, z, self.w_pi.expand(z.shape[0], -1, -1))
        h = self.act(h, pi[0].ln.weight, pi[0].ln.bias)
        mean, raw = pi[2](self._hidden(h, pi[1])).chunk(2, dim=-1)
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (raw.tanh() + 1)
        return torch.tanh((mean + eps * log_std.exp()) * self.mask)

    def q_avg(self, z: torch.Tensor, a: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Mean decoded value of the chosen Q members: [B,N,1]."""
        b, n = a.shape[:2]
        h = torch.matmul(z.unsqueeze(0), self.w_q_z[members].unsqueeze(1))
        h = h + torch.matmul(a.unsqueeze(0), self.w_q_a[members].unsqueeze(1)) + self.b_q[members]
        h = h.view(len(members), b * n, -1)
        for i, layer in enumerate(self.layers.Qs.params):
            w, bias = layer.weight[members], layer.bias[members].unsqueeze(1)
            if i > 0:
                h = torch.baddbmm(bias, h, w.transpose(1, 2))
            if layer.ln is not None:
                h = self.act(
                    h, layer.ln.weight[members].unsqueeze(1), layer.ln.bias[members].unsqueeze(1)
                )
        return self.model.two_hot_inv(h).mean(0).view(b, n, 1)


def refit(
    cfg: PlannerConfig, actions: torch.Tensor, value: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MPPI iteration's update, shared by `Planner` and the exported controller: the elites
    of sampled `actions` [H, B, S, A] by `value` [B, S, 1] and the plan refitted to them.

    Returns the new mean and std [H, B, A] (zero on each task's unused action dims, `mask` [B, A]),
    the elites [H, B, E, A] and their softmax weights [B, E].
    """
    H, B, _, A = actions.shape
    E = cfg.num_elites
    elite_value, elite_idx = torch.topk(value.squeeze(-1).nan_to_num(0), E, dim=1)
    elites = torch.gather(actions, 2, elite_idx.view(1, B, E, 1).expand(H, B, E, A))
    score = torch.exp(cfg.temperature * (elite_value - elite_value.max(1, keepdim=True).values))
    score = score / score.sum(1, keepdim=True)
    weight = score.view(1, B, E, 1)
    total = score.sum(1).view(1, B, 1) + 1e-9
    mean = (weight * elites).sum(2) / total
    std = ((weight * (elites - mean.unsqueeze(2)) ** 2).sum(2) / total).sqrt()
    return mean * mask, std.clamp(cfg.min_std, cfg.max_std) * mask, elites, score


class Planner:
    """MPPI over the world model for B environments at once, each with its own task.

    Keeps each environment's previous plan to warm-start the next step. All randomness comes
    from one seeded generator, so the same seed and inputs give the same actions.
    """

    def __init__(
        self,
        model: WorldModel,
        cfg: PlannerConfig = PlannerConfig(),
        num_envs: int = 1,
        seed: int = 0,
    ):
        cfg.check()
        self.model = model.eval()
        self.cfg = cfg
        self.num_envs = num_envs
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self._prev_mean = torch.zeros(
            num_envs, cfg.horizon, model.cfg.action_dim, device=self.device
        )
        self._fresh = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._last_std = torch.zeros(num_envs, model.cfg.action_dim, device=self.device)
        self._act_fn = _compiled_ln_mish() if cfg.compile else ln_mish

    def reset(self, envs: torch.Tensor | list[int] | None = None) -> None:
        """Forget the warm start of `envs` (all when None): their next step is an episode's first."""
        if envs is None:
            self._fresh.fill_(True)
        else:
            self._fresh[torch.as_tensor(envs, device=self.device, dtype=torch.long)] = True

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, task: torch.Tensor, eval_mode: bool = False) -> torch.Tensor:
        """Actions [B, action_dim] in [-1, 1] for observations [B, obs_dim] and task ids [B].

        `eval_mode` returns the chosen plan's first action; otherwise (TD-MPC2's default when
        acting) it adds Gaussian noise with the planner's final std. With `mpc=False` it is the
        policy prior's mean (eval_mode) or a sample from it.
        """
        obs = to_device(obs.float(), self.device)
        task = to_device(torch.as_tensor(task), self.device).long()
        if obs.shape[0] != self.num_envs or task.shape != (self.num_envs,):
            raise ValueError(f"expected obs [{self.num_envs}, D] and task [{self.num_envs}]")
        block = self.cfg.env_block or (2 if self.device.type == "cpu" else self.num_envs)
        actions = []
        for start in range(0, self.num_envs, block):
            envs = slice(start, min(start + block, self.num_envs))
            heads = _TaskHeads(self.model, task[envs], self._act_fn)
            z = self.model.encode(obs[envs], task[envs]).unsqueeze(1)
            if self.cfg.mpc:
                actions.append(self._plan(heads, z, envs, eval_mode))
            else:
                eps = self._randn(z.shape[0], 1, self.model.cfg.action_dim)
                actions.append(heads.pi(z, eps * (not eval_mode)).squeeze(1))
        self._fresh.fill_(False)
        return torch.cat(actions).clamp(-1, 1)

    @torch.no_grad()
    def distribution(
        self, obs: torch.Tensor, task: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [B, action_dim] of the final MPPI distribution over the first action
        (0 on each task's unused action dims): one `act` in eval mode, so warm-started unless
        `reset`. What a policy prior imitating the planner learns (`data label --mpc`)."""
        if not self.cfg.mpc:
            raise ValueError("the planner's distribution needs mpc=True")
        self.act(obs, task, eval_mode=True)
        return self._prev_mean[:, 0].clone(), self._last_std.clone()

    def _estimate_value(self, heads: _TaskHeads, z: torch.Tensor, actions: torch.Tensor):
        """Discounted predicted rewards over the horizon plus the terminal Q estimate: [B, N, 1]."""
        value, discount = 0.0, 1.0
        for a in actions.unbind(0):
            z, reward = heads.next_and_reward(z, a)
            value = value + discount * reward
            discount = discount * heads.discount
        num_q = len(heads.layers.Qs)
        members = torch.randperm(num_q, generator=self.generator, device=self.device)[:2]
        pi_action = heads.pi(z, self._randn(*z.shape[:2], self.model.cfg.action_dim))
        return value + discount * heads.q_avg(z, pi_action, members)

    def _plan(self, heads: _TaskHeads, z: torch.Tensor, envs: slice, eval_mode: bool):
        """One MPPI step for a block of environments with start latents z [B, 1, L]."""
        cfg, B, A = self.cfg, z.shape[0], self.model.cfg.action_dim
        H, S, P = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
        actions = torch.empty(H, B, S, A, device=self.device)
        zp = z
        for t in range(H if P > 0 else 0):
            actions[t, :, :P] = heads.pi(zp, self._randn(B, P, A))
            if t < H - 1:
                zp, _ = heads.next_and_reward(zp, actions[t, :, :P])
        mean = torch.zeros(H, B, A, device=self.device)
        warm = ~self._fresh[envs].view(1, B, 1)  # a mask, not an index: no wait for the GPU
        mean[:-1] = torch.where(warm, self._prev_mean[envs, 1:].transpose(0, 1), 0.0)
        std = torch.full((H, B, A), cfg.max_std, device=self.device)
        mask = heads.mask.squeeze(1)
        for _ in range(cfg.iterations):
            noise = self._randn(H, B, S - P, A)
            actions[:, :, P:] = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1, 1)
            actions.mul_(mask.unsqueeze(1))
            value = self._estimate_value(heads, z, actions)
            mean, std, elites, score = refit(cfg, actions, value, mask)
        gumbel = -torch.empty_like(score).exponential_(generator=self.generator).log()
        choice = (score.log() + gumbel).argmax(1)
        action = elites[0, torch.arange(B, device=self.device), choice]
        if not eval_mode:
            action = action + std[0] * self._randn(B, A)
        self._prev_mean[envs] = mean.transpose(0, 1)
        self._last_std[envs] = std[0]
        return action
