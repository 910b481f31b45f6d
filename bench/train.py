"""Training speed: updates/s of the 1M student at batch 256 and 1024 on one core, ours against a
naive eager update in the same run, and the teacher's overhead per step (cached labels vs the
shared teacher actor).

The naive update is TD-MPC2's algorithm written the plain way: the Q ensemble evaluated member by
member and the losses accumulated in Python loops over horizon steps and members, as the public
reference does (3.1 updates/s at batch 256 and 0.9 at 1024 on one core of this machine kind).

    python bench/train.py [--updates 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, write_result  # noqa: E402

from tdmpc_ray.data.episode_store import Batch  # noqa: E402
from tdmpc_ray.model import (  # noqa: E402
    WorldModel,
    model_config,
    predicted_reward,  # noqa: E402
)
from tdmpc_ray.model.math import soft_ce  # noqa: E402
from tdmpc_ray.model.published import find_published  # noqa: E402
from tdmpc_ray.train.losses import LossConfig  # noqa: E402
from tdmpc_ray.train.update import Learner  # noqa: E402

REFERENCE_UPDATES_PER_S = {256: 3.1, 1024: 0.9}


def random_batch(batch_size: int, horizon: int = 3, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(horizon + 1, batch_size, 24, generator=gen),
        action=torch.rand(horizon, batch_size, 6, generator=gen) * 2 - 1,
        reward=torch.rand(horizon, batch_size, 1, generator=gen),
        task=torch.randint(0, 30, (batch_size,), generator=gen),
        teacher={"reward": torch.rand(horizon, batch_size, 1, generator=gen)},
    )


def _member_logits(model: WorldModel, x: torch.Tensor, member: int, target: bool) -> torch.Tensor:
    """One Q member's logits through its own weights, as a per-module ensemble computes them."""
    qs = model._target_Qs if target else model._Qs
    h = x
    for i, layer in enumerate(qs.params):
        h = F.linear(h, layer.weight[member], layer.bias[member])
        if layer.ln is not None:
            if i == 0 and model.training:
                h = F.dropout(h, model.cfg.dropout)
            h = F.mish(
                F.layer_norm(h, h.shape[-1:], layer.ln.weight[member], layer.ln.bias[member])
            )
    return h


def naive_update(learner: Learner, batch: Batch) -> None:
    """The reference's update structure: loops over steps and members, one member at a time."""
    model, cfg = learner.model, learner.losses
    H = batch.action.shape[0]
    with torch.no_grad():
        next_z = model.encode(batch.obs[1:], batch.task)
        pi_a, _ = model.pi(next_z, batch.task)
        x = torch.cat([model._with_task(next_z, batch.task), pi_a], -1)
        q = (
            torch.stack([model.two_hot_inv(_member_logits(model, x, m, True)) for m in range(2)])
            .min(0)
            .values
        )
        td = batch.reward + model.discount(batch.task).view(1, -1, 1) * q
    model.train()
    z = model.encode(batch.obs[0], batch.task)
    zs, consistency = [z], 0
    for t in range(H):
        z = model.next(z, batch.action[t], batch.task)
        consistency = consistency + F.mse_loss(z, next_z[t]) * cfg.rho**t
        zs.append(z)
    zs = torch.stack(zs)
    reward_loss, value_loss = 0, 0
    for t in range(H):
        x = torch.cat([model._with_task(zs[t], batch.task), batch.action[t]], -1)
        reward_loss = (
            reward_loss
            + soft_ce(
                model.reward(zs[t], batch.action[t], batch.task), batch.reward[t], 101, -10, 10
            ).mean()
            * cfg.rho**t
        )
        for m in range(2):
            value_loss = (
                value_loss
                + soft_ce(_member_logits(model, x, m, False), td[t], 101, -10, 10).mean()
                * cfg.rho**t
            )
    total = 20 * consistency / H + 0.1 * reward_loss / H + 0.1 * value_loss / (2 * H)
    total.backward()
    params = learner._world_params()
    torch.nn.utils.clip_grad_norm_(params, 20)
    learner.world_optim.step()
    learner.world_optim.zero_grad(set_to_none=True)
    action, info = model.pi(zs.detach(), batch.task)
    x = torch.cat([model._with_task(zs.detach(), batch.task), action], -1)
    qs = torch.stack(
        [model.two_hot_inv(_member_logits(model, x, m, False)) for m in range(2)]
    ).mean(0)
    learner.scale.update(qs[0])
    rho = cfg.rho ** torch.arange(H + 1, dtype=torch.float32)
    pi_loss = (
        -(cfg.entropy_coef * info["scaled_entropy"] + learner.scale(qs)).mean(dim=(1, 2)) * rho
    ).mean()
    pi_loss.backward()
    torch.nn.utils.clip_grad_norm_(model._pi.parameters(), 20)
    learner.pi_optim.step()
    learner.pi_optim.zero_grad(set_to_none=True)
    model.soft_update_target_Q(0.01)
    model.eval()


def updates_per_s(fn, updates: int) -> float:
    return 1.0 / median_seconds(fn, updates, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch_size in (256, 1024):
        batch = random_batch(batch_size)
        torch.manual_seed(0)
        ours = Learner(WorldModel(model_config(1)), LossConfig(d_coef=0.45))
        torch.manual_seed(0)
        naive = Learner(WorldModel(model_config(1)))
        ours_ups = updates_per_s(lambda learner=ours, b=batch: learner.update(b), args.updates)
        naive_ups = updates_per_s(
            lambda learner=naive, b=batch: naive_update(learner, b), args.updates
        )
        rows.append({
            "batch_size": batch_size, "threads": 1,
            "ours_updates_per_s": round(ours_ups, 2), "naive_eager_updates_per_s": round(naive_ups, 2),
            "speedup_vs_naive": round(ours_ups / naive_ups, 2),
            "reference_updates_per_s": REFERENCE_UPDATES_PER_S[batch_size],
            "ratio_to_reference": round(ours_ups / REFERENCE_UPDATES_PER_S[batch_size], 2),
        })  # fmt: skip
        print(rows[-1], flush=True)
    teacher_path = find_published("mt30-1M-fp16")
    overhead = {}
    if teacher_path is not None:
        from tdmpc_ray.model import load_world_model

        teacher = load_world_model(teacher_path)
        batch = random_batch(256)
        step_s = 1 / rows[0]["ours_updates_per_s"]
        direct = median_seconds(
            lambda: predicted_reward(teacher, batch.obs[0], batch.action[0], batch.task),
            args.updates,
        )
        overhead = {
            "cached_labels_fraction_of_step": 0.0,
            "teacher_forward_s_batch_256": round(direct, 5),
            "teacher_forward_fraction_of_step_if_waited": round(direct / step_s, 3),
            "note": "with cached labels the teacher costs nothing per step; the actor is asked one step "
            "ahead, so its forward overlaps the update and the wait is ~0 while forward < update",
        }  # fmt: skip
    write_result("train", {
        "what": "updates/s of TD-MPC2's update for the 1M MT30 student, 1 thread, ours (d_coef 0.45) vs naive eager",
        "rows": rows, "teacher_overhead": overhead,
        "targets": "ours >= 1.5x the reference (3.1 updates/s at 256, 0.9 at 1024)",
    })  # fmt: skip


if __name__ == "__main__":
    main()
