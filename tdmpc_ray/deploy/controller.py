"""The controllers that `tdmpc-ray export` writes: one MPPI step and the policy prior of a world
model, as pure functions of their inputs (no state, no random generator inside).

The MPPI step takes the previous plan (the warm start) and every random draw as inputs and
returns the action and the next plan, so a robot's loop is `action, plan = step(obs, task, plan,
noise...)`. Weights are laid out for export: 2-D matmuls against constant weights (what ONNX,
TensorRT and int8 quantizers expect), the task embedding's share of each first layer precomputed
per task as a bias table, and the first layers of the dynamics and reward heads (and of the Q
members) fused into one matmul each. Given the same draws it acts as
`tdmpc_ray.planning.Planner` does (tests/test_export.py), except for models with more than 2 Q
functions: their terminal value averages all members instead of a random pair.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tdmpc_ray.model import math
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.planning import PlannerConfig, ln_mish, refit

PRECISIONS = ("fp32", "bf16")
"""Matmul precisions of the torch graph; int8 is ONNX Runtime's quantization of the fp32 graph."""
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class NoiseShapes:
    """Shapes of the random inputs of one MPPI step for B environments, all standard normal but
    `gumbel`; `pi_noise` is None without policy trajectories."""

    sample_noise: tuple[int, ...]
    """[I, H, B, S-P, A]: each iteration's Gaussian action samples."""
    value_noise: tuple[int, ...]
    """[I, B, S, A]: the prior's action at the end of the horizon (terminal Q), per iteration."""
    gumbel: tuple[int, ...]
    """[B, E]: standard Gumbel noise of the final choice among the elites."""
    action_noise: tuple[int, ...]
    """[B, A]: added to the action times the plan's std; zeros act like TD-MPC2's eval_mode."""
    pi_noise: tuple[int, ...] | None
    """[H, B, P, A]: the policy prior's samples along its P trajectories."""

    @classmethod
    def of(cls, cfg: PlannerConfig, num_envs: int, action_dim: int) -> NoiseShapes:
        H, B, A = cfg.horizon, num_envs, action_dim
        S, P, E = cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites
        return cls(
            sample_noise=(cfg.iterations, H, B, S - P, A),
            value_noise=(cfg.iterations, B, S, A),
            gumbel=(B, E),
            action_noise=(B, A),
            pi_noise=(H, B, P, A) if P > 0 else None,
        )

    def items(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each present input, in the program's argument order."""
        names = ("sample_noise", "value_noise", "gumbel", "action_noise", "pi_noise")
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]


def _const(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A contiguous copy owning its storage (a view would save its whole base tensor)."""
    return t.detach().to(dtype).clone(memory_format=torch.contiguous_format)


def _matmul(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """x @ weight_t in fp32 out, at the weight's dtype: pre-transposed [in, out] weights export to
    ONNX as MatMul against a constant, the form int8 quantizers rewrite."""
    if weight_t.dtype == torch.float32:
        return torch.matmul(x, weight_t)
    return torch.matmul(x.to(weight_t.dtype), weight_t).float()


class _Dense(nn.Module):
    """A linear layer with constant weights and its activation: `mish` (LayerNorm + Mish, TD-MPC2's
    NormedLinear), `simnorm` (LayerNorm + SimNorm) or none. The matmul runs at `dtype`, the
    rest in fp32."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype, act: str | None, simnorm_dim: int):
        super().__init__()
        self.register_buffer("weight_t", _const(layer.weight.T, dtype))
        self.register_buffer("bias", _const(layer.bias))
        self.act, self.simnorm_dim = act, simnorm_dim
        if act is not None:
            self.register_buffer("ln_weight", _const(layer.ln.weight))
            self.register_buffer("ln_bias", _const(layer.ln.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _matmul(x, self.weight_t) + self.bias
        if self.act == "mish":
            return ln_mish(y, self.ln_weight, self.ln_bias)
        if self.act == "simnorm":
            y = F.layer_norm(y, y.shape[-1:], self.ln_weight, self.ln_bias)
            return F.softmax(y.view(*y.shape[:-1], -1, self.simnorm_dim), -1).view(y.shape)
        return y


class _FirstLayer(nn.Module):
    """First layers of one or more heads that read [x, task embedding, action], stacked on their
    outputs: x and action matmuls plus a per-task bias table (bias + the embedding's share), then
    each head's LayerNorm + Mish."""

    def __init__(self, weight, bias, ln_weight, ln_bias, emb, x_dim: int, dtype: torch.dtype):
        super().__init__()
        task_dim = 0 if emb is None else emb.shape[-1]
        w_x, w_e, w_a = weight.split([x_dim, task_dim, weight.shape[-1] - x_dim - task_dim], -1)
        table = bias.unsqueeze(0) if emb is None else bias + emb @ w_e.T
        self.heads = ln_weight.shape[0]
        self.register_buffer("w_x", _const(w_x.T, dtype))
        self.register_buffer("w_a", _const(w_a.T, dtype) if w_a.numel() else None)
        self.register_buffer("table", _const(table))
        self.register_buffer("ln_weight", _const(ln_weight))
        self.register_buffer("ln_bias", _const(ln_bias))

    def task_bias(self, row: torch.Tensor) -> torch.Tensor:
        """[B, 1, out]: each environment's bias, computed once per step."""
        return self.table[row].unsqueeze(1)

    def forward(self, x, task_bias, a=None) -> torch.Tensor:
        """[B, N, heads, hidden] for x [B, 1 or N, D] (a start shared by all N) and a [B, N, A]."""
        h = _matmul(x, self.w_x) + task_bias
        if a is not None:
            h = h + _matmul(a, self.w_a)
        h = h.view(*h.shape[:-1], self.heads, -1)
        return ln_mish(h, self.ln_weight, self.ln_bias)


def _first(layers, emb, x_dim, dtype, members: bool = False) -> _FirstLayer:
    """Stack first layers (modules, or ensemble members of one stacked layer) into a _FirstLayer."""
    if members:
        (layer,) = layers
        w, b = layer.weight.flatten(0, 1), layer.bias.flatten()
        return _FirstLayer(w, b, layer.ln.weight, layer.ln.bias, emb, x_dim, dtype)
    return _FirstLayer(
        torch.cat([layer.weight for layer in layers]),
        torch.cat([layer.bias for layer in layers]),
        torch.stack([layer.ln.weight for layer in layers]),
        torch.stack([layer.ln.bias for layer in layers]),
        emb,
        x_dim,
        dtype,
    )


class ExportHeads(nn.Module):
    """The world model's heads, frozen and laid out for export at a matmul precision; without
    `planning`, only the encoder and the policy prior (what the prior controller holds)."""

    def __init__(self, model: WorldModel, precision: str = "fp32", planning: bool = True):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        dtype = _DTYPES[precision]
        model = copy.deepcopy(model).float().cpu().eval()
        cfg = self.cfg = model.cfg
        emb = None
        if cfg.multitask:
            with torch.no_grad():  # renormalises rows to norm <= 1 once, as the first lookup does
                emb = model.task_embedding(torch.arange(len(cfg.tasks)))
        self.register_buffer("masks", _const(model.action_masks))
        discounts = model.discount(torch.arange(len(cfg.tasks))).float().reshape(-1)
        self.register_buffer("discounts", discounts.clone())

        def dense(layer, act=None):
            return _Dense(layer, dtype, act, cfg.simnorm_dim)

        enc, dyn, rew, pi, qs = model.heads
        self.enc_first = _first([enc[0]], emb, cfg.obs_dim, dtype)
        self.enc = nn.ModuleList(
            dense(layer, "simnorm" if i == len(enc) - 2 else "mish")
            for i, layer in enumerate(list(enc)[1:])
        )
        self.pi_first = _first([pi[0]], emb, cfg.latent_dim, dtype)
        self.pi_rest = nn.ModuleList([dense(pi[1], "mish"), dense(pi[2])])
        if not planning:
            return
        self.dr_first = _first([dyn[0], rew[0]], emb, cfg.latent_dim, dtype)
        self.dyn = nn.ModuleList([dense(dyn[1], "mish"), dense(dyn[2], "simnorm")])
        self.rew = nn.ModuleList([dense(rew[1], "mish"), dense(rew[2])])
        self.q_first = _first([qs.params[0]], emb, cfg.latent_dim, dtype, members=True)
        self.q_rest = nn.ModuleList(
            nn.ModuleList(
                [dense(_member(qs.params[1], k), "mish"), dense(_member(qs.params[2], k))]
            )
            for k in range(len(qs))
        )

    def rows(self, task: torch.Tensor) -> torch.Tensor:
        """Rows of the per-task tables for task ids [B] (all 0 for a single-task model)."""
        return task.long() if self.cfg.multitask else torch.zeros_like(task, dtype=torch.long)

    def encode(self, obs: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """Latent [B, 1, L] of observations [B, O]."""
        h = self.enc_first(obs.unsqueeze(1), self.enc_first.task_bias(row)).flatten(-2)
        for layer in self.enc:
            h = layer(h)
        return h

    def next_and_reward(self, z, a, dr_bias):
        """Next latent [B, N, L] and decoded reward [B, N, 1]; z may be [B, 1, L]."""
        h_dyn, h_rew = self.dr_first(z, dr_bias, a).unbind(-2)
        z_next = self.dyn[1](self.dyn[0](h_dyn))
        return z_next, self._decode(self.rew[1](self.rew[0](h_rew)))

    def pi(self, z, eps, pi_bias, mask):
        """The prior's tanh-squashed action for standard-normal `eps` (zeros: its mean)."""
        cfg = self.cfg
        h = self.pi_first(z, pi_bias).flatten(-2)
        mean, raw = self.pi_rest[1](self.pi_rest[0](h)).chunk(2, dim=-1)
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (raw.tanh() + 1)
        return torch.tanh((mean + eps * log_std.exp()) * mask)

    def q_mean(self, z, a, q_bias):
        """Mean decoded value over every Q member: [B, N, 1]."""
        h = self.q_first(z, q_bias, a)
        values = [
            self._decode(rest[1](rest[0](h[..., k, :]))) for k, rest in enumerate(self.q_rest)
        ]
        return torch.stack(values).mean(0)

    def _decode(self, logits: torch.Tensor) -> torch.Tensor:
        return math.two_hot_inv(logits, self.cfg.num_bins, self.cfg.vmin, self.cfg.vmax)


def _member(layer: nn.Module, k: int) -> nn.Module:
    """Ensemble member k of a stacked Q layer, as a module with weight, bias and optional ln."""
    out = nn.Module()
    out.weight, out.bias = layer.weight[k], layer.bias[k]
    if layer.ln is not None:
        out.ln = nn.Module()
        out.ln.weight, out.ln.bias = layer.ln.weight[k], layer.ln.bias[k]
    return out


class MPPIStep(nn.Module):
    """One MPPI step of TD-MPC2 for `num_envs` environments, a pure function of its inputs.

    forward(obs [B, O], task [B] int64, plan [B, H, A], sample_noise, value_noise, gumbel,
    action_noise, pi_noise) -> (action [B, A] in [-1, 1], plan [B, H, A]). `plan` is the previous
    step's returned plan (zeros at an episode's start); the step shifts it by one as its warm
    start. Noise shapes: `NoiseShapes`.
    """

    def __init__(self, model: WorldModel, cfg: PlannerConfig, num_envs: int, precision="fp32"):
        super().__init__()
        cfg.check()
        if not cfg.mpc:
            raise ValueError("MPPIStep needs mpc=True; the policy prior is PriorStep")
        self.heads = ExportHeads(model, precision)
        self.cfg, self.num_envs = cfg, num_envs
        self.noise = NoiseShapes.of(cfg, num_envs, model.cfg.action_dim)

    def forward(
        self, obs, task, plan, sample_noise, value_noise, gumbel, action_noise, pi_noise=None
    ):
        cfg, heads = self.cfg, self.heads
        B, H, A = plan.shape
        P = cfg.num_pi_trajs
        row = heads.rows(task)
        mask = heads.masks[row]
        discount = heads.discounts[row].view(B, 1, 1)
        dr_bias, pi_bias = heads.dr_first.task_bias(row), heads.pi_first.task_bias(row)
        q_bias = heads.q_first.task_bias(row)
        z = heads.encode(obs, row)
        pi_actions = []
        zp = z
        for t in range(H if P > 0 else 0):
            pi_actions.append(heads.pi(zp, pi_noise[t], pi_bias, mask.unsqueeze(1)))
            if t < H - 1:
                zp, _ = heads.next_and_reward(zp, pi_actions[t], dr_bias)
        mean = torch.cat([plan[:, 1:], torch.zeros_like(plan[:, :1])], 1).transpose(0, 1)
        std = torch.full_like(mean, cfg.max_std)
        keep = mask.view(1, B, 1, A)
        for i in range(cfg.iterations):
            actions = (mean.unsqueeze(2) + std.unsqueeze(2) * sample_noise[i]).clamp(-1, 1)
            if P > 0:
                actions = torch.cat([torch.stack(pi_actions), actions], 2)
            actions = actions * keep
            value, scale, zt = 0.0, 1.0, z
            for t in range(H):
                zt, reward = heads.next_and_reward(zt, actions[t], dr_bias)
                value = value + scale * reward
                scale = scale * discount
            pi_action = heads.pi(zt, value_noise[i], pi_bias, mask.unsqueeze(1))
            value = value + scale * heads.q_mean(zt, pi_action, q_bias)
            mean, std, elites, score = refit(cfg, actions, value, mask)
        choice = (score.log() + gumbel).argmax(1)
        action = torch.gather(elites[0], 1, choice.view(B, 1, 1).expand(B, 1, A)).squeeze(1)
        action = (action + std[0] * action_noise).clamp(-1, 1)
        return action, mean.transpose(0, 1)


class PriorStep(nn.Module):
    """The policy prior as a controller: forward(obs [B, O], task [B] int64, eps [B, A]) ->
    action [B, A]; eps zeros give the prior's mean action (TD-MPC2's eval_mode)."""

    def __init__(self, model: WorldModel, num_envs: int, precision: str = "fp32"):
        super().__init__()
        self.heads = ExportHeads(model, precision, planning=False)
        self.num_envs = num_envs

    def forward(self, obs: torch.Tensor, task: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        heads = self.heads
        row = heads.rows(task)
        z = heads.encode(obs, row)
        action = heads.pi(
            z, eps.unsqueeze(1), heads.pi_first.task_bias(row), heads.masks[row].unsqueeze(1)
        )
        return action.squeeze(1).clamp(-1, 1)
