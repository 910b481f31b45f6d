"""The world model against TD-MPC2: sizes, parameter counts and outputs of the published student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tdmpc_ray import model as M
from tests.helpers import FIXTURES, shared_checkpoint

ATOL = 3e-5
RTOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    data = np.load(FIXTURES / "reference_mt30_1M_fp16.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def student():
    return M.load_world_model(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))


@pytest.mark.parametrize("task_set", ["mt30", "mt80", "walker-walk"])
def test_parameter_counts_match_tdmpc2_for_every_size(task_set):
    expected = json.loads((FIXTURES / "reference_param_counts.json").read_text())[task_set]
    for size, count in expected.items():
        with torch.device("meta"):
            model = M.WorldModel(M.model_config(int(size), task_set))
        assert model.total_params == count, f"{task_set} {size}M"


def test_model_config_quirks_of_tdmpc2_checkpoints():
    assert M.model_config(1, "mt30").task_dim == 96
    assert M.model_config(5, "mt30").task_dim == 64
    assert M.model_config(5, "mt80").task_dim == 96
    assert M.model_config(19, "mt30").latent_dim == 512
    assert M.model_config(19, "mt80").latent_dim == 768
    assert M.model_config(1, "walker-walk").task_dim == 0
    with pytest.raises(ValueError, match="unknown model size"):
        M.model_config(7)


def test_encode_next_reward_match_reference(student, reference):
    r = reference
    with torch.no_grad():
        z = student.encode(r["obs"], r["task"])
        torch.testing.assert_close(z, r["z"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            student.next(z, r["action"], r["task"]), r["next_z"], atol=ATOL, rtol=RTOL
        )
        logits = student.reward(z, r["action"], r["task"])
        torch.testing.assert_close(logits, r["reward_logits"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(M.two_hot_inv(logits), r["reward"], atol=ATOL, rtol=RTOL)


def test_q_heads_match_reference(student, reference):
    r = reference
    with torch.no_grad():
        z = student.encode(r["obs"], r["task"])
        a, task = r["action"], r["task"]
        torch.testing.assert_close(student.Q(z, a, task, "all"), r["q_all"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            student.Q(z, a, task, "all", target=True), r["q_target_all"], atol=ATOL, rtol=RTOL
        )
        for kind, key, target in (
            ("avg", "q_avg", False),
            ("min", "q_min", False),
            ("avg", "q_target_avg", True),
        ):
            torch.testing.assert_close(
                student.Q(z, a, task, kind, target=target), r[key], atol=2e-4, rtol=1e-6
            )


def test_policy_prior_matches_reference_for_given_noise(student, reference):
    r = reference
    with torch.no_grad():
        z = student.encode(r["obs"], r["task"])
        action, info = student.pi(z, r["task"], eps=r["pi_eps"])
    torch.testing.assert_close(info["mean"], r["pi_mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(info["log_std"], r["pi_log_std"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(action, r["pi_action"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(info["entropy"], r["pi_entropy"], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(info["scaled_entropy"], r["pi_scaled_entropy"], atol=1e-3, rtol=1e-4)


def test_task_embedding_rows_are_renormalised_like_max_norm_embedding(reference):
    model = M.load_world_model(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))
    weight = model._task_emb.weight
    torch.testing.assert_close(weight.detach(), reference["task_emb_before"], atol=0, rtol=0)
    with torch.no_grad():
        model.encode(reference["obs"], reference["task"])
    torch.testing.assert_close(weight.detach(), reference["task_emb_after"], atol=1e-7, rtol=0)
    assert weight[[16, 21]].norm(dim=-1).max() <= 1.0 + 1e-6


def test_fresh_model_predicts_zero_reward_and_value():
    model = M.WorldModel(M.model_config(1))
    z = model.encode(torch.randn(8, 24), torch.arange(8))
    a = torch.rand(8, 6) * 2 - 1
    assert torch.all(M.two_hot_inv(model.reward(z, a, torch.arange(8))).abs() < 1e-6)
    assert torch.all(model.Q(z, a, torch.arange(8), "avg").abs() < 1e-6)


def test_latents_are_simplicial_and_masked_actions_are_zero():
    model = M.WorldModel(M.model_config(1))
    task = torch.tensor([6, 16, 26])  # acrobot (1 dim), fish (5), reacher-three (3)
    z = model.encode(torch.randn(3, 24), task)
    torch.testing.assert_close(z.view(3, -1, 8).sum(-1), torch.ones(3, 16))
    action, info = model.pi(z, task)
    dims = torch.tensor([1, 5, 3])
    beyond = torch.arange(6) >= dims.unsqueeze(1)
    assert torch.all(action[beyond] == 0) and torch.all(info["mean"][beyond] == 0)
    assert torch.all(action.abs() <= 1)


def test_two_hot_round_trip_and_bins():
    x = torch.tensor([[-500.0], [-3.2], [0.0], [0.7], [42.0], [9000.0]])
    encoded = M.two_hot(x)
    torch.testing.assert_close(encoded.sum(-1), torch.ones(6))
    assert (encoded > 0).sum(-1).max() <= 2
    decoded = M.two_hot_inv(torch.log(encoded.clamp_min(1e-30)))
    torch.testing.assert_close(decoded, x, rtol=1e-4, atol=1e-4)


def test_q_dropout_only_in_training_and_target_never_trains():
    torch.manual_seed(0)
    model = M.WorldModel(M.model_config(1))
    with torch.no_grad():
        for p in model._Qs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    z, a, task = torch.rand(16, 128), torch.rand(16, 6), torch.zeros(16, dtype=torch.long)
    model.eval()
    torch.testing.assert_close(model.Q(z, a, task, "all"), model.Q(z, a, task, "all"))
    model.train()
    assert not torch.equal(model.Q(z, a, task, "all"), model.Q(z, a, task, "all"))
    assert not model._target_Qs.training
    assert all(not p.requires_grad for p in model._target_Qs.parameters())


def test_soft_update_moves_target_toward_online():
    model = M.WorldModel(M.model_config(1))
    with torch.no_grad():
        for p in model._Qs.parameters():
            p.add_(1.0)
    before = model._target_Qs.params[0].bias.clone()
    model.soft_update_target_Q(0.01)
    torch.testing.assert_close(model._target_Qs.params[0].bias, before + 0.01)


def test_detached_q_gives_values_without_weight_gradients():
    model = M.WorldModel(M.model_config(1))
    z = torch.rand(4, 128, requires_grad=True)
    model.Q(
        z, torch.rand(4, 6), torch.zeros(4, dtype=torch.long), "avg", detach=True
    ).sum().backward()
    assert z.grad is not None
    assert all(p.grad is None for p in model._Qs.parameters())
