"""Planning speed: ms per action of full MPPI for B=1 and B=30 environments, 1 and all threads.

Baseline in the same run: the same MPPI written the way the public TD-MPC2 reference runs it,
one environment at a time through the world model's plain heads (concatenated task embedding,
separate dynamics and reward layers). The reference itself measured 391 ms per action on one
core of this machine kind (../shared/REFERENCE-NOTES.md).

    python bench/planning.py [--repeats 3] [--checkpoint NAME|PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak_gflops, median_seconds, write_result  # noqa: E402

from tdmpc_ray.model import WorldModel, load_world_model  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.planning import Planner, PlannerConfig  # noqa: E402

REFERENCE_MS_PER_ACTION = 391.0


def reference_style_plan(model: WorldModel, cfg: PlannerConfig, obs, task, prev_mean, gen):
    """One env's MPPI step with the world model's plain heads, as the reference computes it."""
    H, S, P, E, A = (
        cfg.horizon,
        cfg.num_samples,
        cfg.num_pi_trajs,
        cfg.num_elites,
        model.cfg.action_dim,
    )
    mask = model.action_masks[task]
    z = model.encode(obs, task)
    actions = torch.empty(H, S, A)
    zp = z.repeat(P, 1)
    for t in range(H):
        actions[t, :P] = model.pi(zp, task, eps=torch.randn(P, A, generator=gen))[0]
        if t < H - 1:
            zp = model.next(zp, actions[t, :P], task)
    z = z.repeat(S, 1)
    mean = torch.zeros(H, A)
    mean[:-1] = prev_mean[1:]
    std = torch.full((H, A), cfg.max_std)
    for _ in range(cfg.iterations):
        noise = torch.randn(H, S - P, A, generator=gen)
        actions[:, P:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
        actions = actions * mask
        value, discount, zt = 0.0, 1.0, z
        for t in range(H):
            value = value + discount * model.two_hot_inv(model.reward(zt, actions[t], task))
            zt = model.next(zt, actions[t], task)
            discount = discount * model.discount(task)
        pi_action = model.pi(zt, task, eps=torch.randn(S, A, generator=gen))[0]
        value = (value + discount * model.Q(zt, pi_action, task, "avg")).squeeze(1).nan_to_num(0)
        elite_value, idx = torch.topk(value, E)
        elites = actions[:, idx]
        score = torch.exp(cfg.temperature * (elite_value - elite_value.max()))
        score = score / score.sum()
        mean = (score.view(1, -1, 1) * elites).sum(1) / (score.sum() + 1e-9)
        std = (
            (score.view(1, -1, 1) * (elites - mean.unsqueeze(1)) ** 2).sum(1) / (score.sum() + 1e-9)
        ).sqrt()
        mean, std = mean * mask, std.clamp(cfg.min_std, cfg.max_std) * mask
    choice = torch.multinomial(score, 1, generator=gen)
    return elites[0, choice].squeeze(0), mean


def flops_per_action(model: WorldModel, cfg: PlannerConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one MPPI step of the reference algorithm, per env."""
    m = model.cfg
    L, A, T, h, bins = m.latent_dim, m.action_dim, m.task_dim, m.mlp_dim, m.num_bins
    dynamics = (L + T + A) * h + h * h + h * L
    reward = (L + T + A) * h + h * h + h * bins
    pi = (L + T) * h + h * h + h * 2 * A
    q_two = 2 * ((L + T + A) * h + h * h + h * bins)
    encode = (m.obs_dim + T) * m.enc_dim + m.enc_dim * L
    pi_trajs = cfg.num_pi_trajs * (cfg.horizon * pi + (cfg.horizon - 1) * dynamics)
    per_sample = cfg.horizon * (dynamics + reward) + pi + q_two
    return 2 * (encode + pi_trajs + cfg.iterations * cfg.num_samples * per_sample)


def ours_ms(model, cfg: PlannerConfig, envs: int, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    planner = Planner(model, cfg, num_envs=envs, seed=0)
    obs, task = torch.randn(envs, model.cfg.obs_dim), torch.arange(envs) % len(model.cfg.tasks)
    planner.act(obs, task)
    return 1000 * median_seconds(lambda: planner.act(obs, task), repeats) / envs


def baseline_ms(model, cfg: PlannerConfig, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    obs, prev = torch.randn(1, model.cfg.obs_dim), torch.zeros(cfg.horizon, model.cfg.action_dim)
    task = torch.tensor([1])
    with torch.no_grad():
        return 1000 * median_seconds(
            lambda: reference_style_plan(model, cfg, obs, task, prev, gen), repeats
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=resolve_checkpoint, default="mt30-1M-fp16"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_world_model(args.checkpoint)
    all_threads = torch.get_num_threads()
    flops = flops_per_action(model, PlannerConfig())
    rows = []
    for threads in sorted({1, all_threads}):
        peak = matmul_peak_gflops(threads)
        base = baseline_ms(model, PlannerConfig(), threads, args.repeats)
        for envs in (1, 30):
            for compiled in (False, True):
                ms = ours_ms(model, PlannerConfig(compile=compiled), envs, threads, args.repeats)
                gflops = flops / (ms / 1000) / 1e9
                rows.append({
                    "envs": envs, "threads": threads, "compile": compiled,
                    "ms_per_action": round(ms, 1),
                    "baseline_ms_per_action": round(base, 1),
                    "speedup_vs_baseline": round(base / ms, 2),
                    "ratio_to_reference_391ms": round(ms / REFERENCE_MS_PER_ACTION, 3),
                    "achieved_gflops": round(gflops, 1),
                    "gemm_peak_gflops": round(peak, 1),
                    "fraction_of_gemm_peak": round(gflops / peak, 3),
                })  # fmt: skip
                print(rows[-1], flush=True)
    write_result("planning", {
        "what": "ms per action of full MPPI (TD-MPC2 defaults), 1M MT30 student cast to fp32",
        "checkpoint": args.checkpoint.name,
        "planner": PlannerConfig().__dict__,
        "flops_per_action": flops,
        "reference_ms_per_action_one_core": REFERENCE_MS_PER_ACTION,
        "targets": {"B=30": "<= 0.5x reference", "B=1": "<= 0.8x reference"},
        "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
