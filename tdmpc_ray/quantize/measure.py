"""Sizes of quantized checkpoints and the error of a quantized model's outputs."""

from __future__ import annotations

import os

import torch

from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.tasks.task_sets import get_task_set

MIB = 2**20
OUTPUTS = ("reward", "q_avg", "pi_mean")
"""What `output_errors` compares: decoded reward, decoded Q averaged over the ensemble, and the
policy prior's mean action."""


def file_mib(path: str | os.PathLike) -> float:
    """Size of a file in MiB."""
    return os.path.getsize(path) / MIB


def tensor_mib(sd: dict) -> float:
    """Bytes of the tensors of a state dict (as stored: int8/qint8 count 1 byte) in MiB."""
    return (
        sum(t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor)) / MIB
    )


def probe_batch(model: WorldModel, rows: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch over every task of the model's task set, cycling through the tasks: standard
    normal observations and uniform actions in [-1, 1], zero beyond each task's own dims."""
    tasks = get_task_set(model.cfg.task_set)
    gen = torch.Generator().manual_seed(seed)
    task = torch.arange(rows) % len(tasks.tasks)
    obs_dims = torch.tensor(tasks.obs_dims)[task].unsqueeze(1)
    obs = torch.randn(rows, model.cfg.obs_dim, generator=gen)
    obs = obs * (torch.arange(model.cfg.obs_dim) < obs_dims)
    action = torch.rand(rows, model.cfg.action_dim, generator=gen) * 2 - 1
    action = action * model.action_masks.cpu()[task if model.cfg.multitask else 0]
    return {"obs": obs, "action": action, "task": task}


@torch.no_grad()
def probe_outputs(model: WorldModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's `OUTPUTS` on `batch`, each from its own encoding of the observations.

    The Q value averages every ensemble member (TD-MPC2's `avg` for 2 Qs, deterministic for any
    number); the policy mean uses zero noise.
    """
    device = next(model.parameters()).device
    obs, action, task = (batch[k].to(device) for k in ("obs", "action", "task"))
    z = model.encode(obs, task)
    _, info = model.pi(z, task, eps=torch.zeros_like(action))
    return {
        "reward": model.two_hot_inv(model.reward(z, action, task)),
        "q_avg": model.two_hot_inv(model.Q(z, action, task, "all")).mean(0),
        "pi_mean": info["mean"],
    }


def output_errors(
    reference: WorldModel, candidate: WorldModel, rows: int = 256, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Max and mean absolute error of `candidate`'s `OUTPUTS` against `reference`'s on the same
    `probe_batch`, plus the reference's mean magnitude for scale."""
    batch = probe_batch(reference, rows, seed)
    ref, cand = probe_outputs(reference, batch), probe_outputs(candidate, batch)
    out = {}
    for name in OUTPUTS:
        err = (cand[name].float().cpu() - ref[name].float().cpu()).abs()
        out[name] = {
            "max_abs": err.max().item(),
            "mean_abs": err.mean().item(),
            "ref_mean_abs": ref[name].abs().mean().item(),
        }
    return out
