"""The batched MPPI planner: its fused heads equal the world model's, and it plans like TD-MPC2."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from tdmpc_ray.evaluate.config import EvalConfig
from tdmpc_ray.model import WorldModel, load_world_model, model_config
from tdmpc_ray.planning import Planner, PlannerConfig, _TaskHeads, ln_mish, ln_mish_fusible
from tests.helpers import shared_checkpoint

SMALL = PlannerConfig(iterations=2, num_samples=64, num_elites=8, num_pi_trajs=4)


@pytest.fixture(scope="module")
def student() -> WorldModel:
    return load_world_model(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))


def _perturbed(task_set: str) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(model_config(1, task_set))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("task_set", ["mt30", "walker-walk"])
@pytest.mark.parametrize("act", [ln_mish, ln_mish_fusible])
def test_task_heads_equal_world_model_heads(task_set, act):
    model = _perturbed(task_set)
    B, N = 3, 5
    task = torch.tensor([0, 16, 29]) if model.cfg.multitask else torch.zeros(B, dtype=torch.long)
    z = model.encode(torch.randn(B, 24), task).unsqueeze(1).expand(B, N, -1)
    a = (torch.rand(B, N, 6) * 2 - 1) * model.action_masks[task if model.cfg.multitask else 0].view(
        -1, 1, 6
    )
    eps = torch.randn(B, N, 6)
    rows = task.view(B, 1).expand(B, N)
    with torch.no_grad():
        heads = _TaskHeads(model, task, act)
        z_next, reward = heads.next_and_reward(z, a)
        torch.testing.assert_close(z_next, model.next(z, a, rows), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            reward, model.two_hot_inv(model.reward(z, a, rows)), atol=1e-5, rtol=1e-5
        )
        shared_start, _ = heads.next_and_reward(z[:, :1], a)
        torch.testing.assert_close(shared_start, z_next, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            heads.pi(z, eps), model.pi(z, rows, eps=eps)[0], atol=1e-5, rtol=1e-5
        )
        members = torch.tensor([1, 0])
        torch.testing.assert_close(
            heads.q_avg(z, a, members), model.Q(z, a, rows, "avg"), atol=1e-4, rtol=1e-5
        )


def test_actions_are_bounded_masked_and_batched(student):
    task = torch.tensor([6, 16, 26, 0])
    planner = Planner(student, SMALL, num_envs=4, seed=0)
    for eval_mode in (True, False):
        action = planner.act(torch.randn(4, 24), task, eval_mode=eval_mode)
        assert action.shape == (4, 6) and torch.all(action.abs() <= 1)
        beyond = torch.arange(6) >= torch.tensor([1, 5, 3, 6]).unsqueeze(1)
        assert torch.all(action[beyond] == 0)


@pytest.mark.slow
def test_same_seed_same_actions_other_seed_other_actions(student):
    obs, task = torch.randn(2, 24), torch.tensor([1, 3])

    def rollout(seed: int) -> torch.Tensor:
        planner = Planner(student, SMALL, num_envs=2, seed=seed)
        return torch.stack([planner.act(obs, task) for _ in range(3)])

    torch.testing.assert_close(rollout(7), rollout(7), atol=0, rtol=0)
    assert not torch.equal(rollout(7), rollout(8))


def test_warm_start_is_kept_between_steps_and_dropped_on_reset(student):
    obs, task = torch.randn(2, 24), torch.tensor([1, 3])
    cfg = PlannerConfig(iterations=1, num_samples=32, num_elites=4, num_pi_trajs=0, min_std=0.05)
    fresh = Planner(student, cfg, num_envs=2, seed=0).act(obs, task, eval_mode=True)
    planner = Planner(student, cfg, num_envs=2, seed=0)
    planner.act(obs, task, eval_mode=True)
    assert planner._prev_mean.abs().sum() > 0
    planner.reset([0, 1])
    planner.generator.manual_seed(0)
    torch.testing.assert_close(planner.act(obs, task, eval_mode=True), fresh, atol=0, rtol=0)


def test_policy_prior_mode_returns_the_prior_mean(student):
    obs, task = torch.randn(3, 24), torch.tensor([2, 12, 25])
    planner = Planner(student, PlannerConfig(mpc=False), num_envs=3)
    expected = student.pi(student.encode(obs, task), task)[1]["mean"]
    torch.testing.assert_close(
        planner.act(obs, task, eval_mode=True), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.slow
def test_planned_trajectory_beats_random_trajectories_on_the_planning_objective(student):
    torch.manual_seed(0)
    task, obs = torch.tensor([0, 3, 13]), torch.randn(3, 24) * 0.3
    planner = Planner(student, PlannerConfig(), num_envs=3, seed=0)
    planner.act(obs, task, eval_mode=True)
    with torch.no_grad():
        heads = _TaskHeads(student, task)
        z = student.encode(obs, task).unsqueeze(1)
        planned = planner._prev_mean.transpose(0, 1).unsqueeze(2).expand(-1, -1, 256, -1)
        random = (torch.rand(3, 3, 256, 6) * 2 - 1) * heads.mask.unsqueeze(0)
        planned_value = planner._estimate_value(heads, z, planned).mean(1)
        random_value = planner._estimate_value(heads, z, random).mean(1)
    assert torch.all(planned_value > random_value)


def test_bad_batch_shape_is_rejected(student):
    planner = Planner(student, SMALL, num_envs=2)
    with pytest.raises(ValueError, match="expected obs"):
        planner.act(torch.randn(3, 24), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iterations": 0}, "planner iterations must be at least 1, got 0"),
        ({"num_pi_trajs": 64}, "need num_pi_trajs < num_samples and num_elites <= num_samples"),
        ({"min_std": 3.0}, "need 0 <= min_std <= max_std, got 3.0, 2.0"),
        ({"env_block": 0}, "planner env_block must be at least 1 or None, got 0"),
    ],
)
def test_bad_settings_fail_in_one_line_wherever_they_are_used(student, change, message):
    """`PlannerConfig.check` refuses them (iterations=0 once left MPPI without a plan to act
    on), and so do the planner and an evaluation's settings, before any planning."""
    cfg = dataclasses.replace(SMALL, **change)
    for use in (cfg.check, lambda: Planner(student, cfg), EvalConfig(planner=cfg).check):
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            use()
        assert "\n" not in str(err.value)
