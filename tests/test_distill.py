"""Distillation terms (reward, next-state latent through a linear or PCA bridge, value, policy,
planner imitation): zero when the student is the teacher (or its prior equals the planner
labels), falling on a fixed batch, and out of the graph at coefficient 0."""

from __future__ import annotations

import math

import pytest
import torch

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model import (
    TEACHER_TERMS,
    WorldModel,
    load_world_model,
    model_config,
    teacher_outputs,
)
from tdmpc_ray.train.distill import LatentBridge, fit_pca
from tdmpc_ray.train.losses import (
    DISTILL_TERMS,
    LossConfig,
    action_log_std,
    policy_loss,
    world_model_loss,
)
from tdmpc_ray.train.scale import RunningScale
from tdmpc_ray.train.update import Learner
from tests.helpers import run_with_one_file_changed, shared_checkpoint

FP16 = "mt30_1M_steps_045dist_fp16.pt"
COEF = {
    "reward": "d_coef",
    "latent": "latent_d_coef",
    "value": "value_d_coef",
    "policy": "policy_d_coef",
    "planner": "planner_d_coef",
}
METRIC = {
    "reward": "distill_loss",
    "latent": "latent_distill_loss",
    "value": "value_distill_loss",
    "policy": "policy_distill_loss",
    "planner": "planner_distill_loss",
}


@pytest.fixture(scope="module")
def teacher() -> WorldModel:
    return load_world_model(shared_checkpoint(FP16)).requires_grad_(False)


def _batch(teacher: WorldModel | None, size: int = 64, horizon: int = 3, seed: int = 0) -> Batch:
    """Random windows (real task ids, masked action dims zero) with the teacher's outputs for
    every step, or NaN in their shapes without a teacher."""
    gen = torch.Generator().manual_seed(seed)
    task = torch.randint(0, 30, (size,), generator=gen)
    cfg = model_config(1, "mt30")
    mask = WorldModel(cfg)._action_masks[task]
    batch = Batch(
        obs=torch.randn(horizon + 1, size, 24, generator=gen),
        action=(torch.rand(horizon, size, 6, generator=gen) * 2 - 1) * mask,
        reward=torch.rand(horizon, size, 1, generator=gen),
        task=task,
        teacher={},
    )
    if teacher is None:
        widths = {"reward": 1, "latent": cfg.latent_dim, "value": 1, "policy": 6}
        nan = {t: torch.full((horizon, size, w), math.nan) for t, w in widths.items()}
        return batch._replace(teacher=nan)
    steps = [
        teacher_outputs(teacher, batch.obs[k], batch.action[k], task, TEACHER_TERMS)
        for k in range(horizon)
    ]
    return batch._replace(teacher={t: torch.stack([s[t] for s in steps]) for t in TEACHER_TERMS})


def _metrics(model: WorldModel, batch: Batch, cfg: LossConfig, bridge=None) -> dict:
    total, zs, metrics = world_model_loss(model, batch, cfg, bridge)
    pi_total, pi_metrics = policy_loss(model, zs.detach(), batch, RunningScale(0.01), cfg)
    return {**metrics, **pi_metrics, "total": total, "pi_total": pi_total}


def _identity_bridge(dim: int) -> LatentBridge:
    bridge = LatentBridge("linear", dim, dim)
    with torch.no_grad():
        bridge.project.weight.copy_(torch.eye(dim))
        bridge.project.bias.zero_()
    return bridge


@pytest.mark.parametrize("term", TEACHER_TERMS)
def test_each_term_is_zero_when_the_student_is_the_teacher(teacher, term):
    student = load_world_model(shared_checkpoint(FP16))
    bridge = _identity_bridge(student.cfg.latent_dim) if term == "latent" else None

    metrics = _metrics(student, _batch(teacher), LossConfig(**{COEF[term]: 1.0}), bridge)

    assert metrics[METRIC[term]].item() < 1e-10
    assert [m for m in METRIC.values() if m in metrics] == [METRIC[term]]


@pytest.mark.parametrize(
    ("term", "bridge"),
    [("reward", None), ("latent", "linear"), ("latent", "pca"), ("value", None), ("policy", None)],
)
@pytest.mark.slow
def test_each_term_falls_on_a_fixed_batch(teacher, term, bridge):
    batch = _batch(teacher)
    torch.manual_seed(0)
    student = WorldModel(model_config(1, "mt30", enc_dim=128, mlp_dim=160, latent_dim=64))
    latent_bridge = None
    if bridge == "linear":
        latent_bridge = LatentBridge("linear", 64, teacher.cfg.latent_dim)
    elif bridge == "pca":
        pca = fit_pca(batch.teacher["latent"].flatten(0, 1), 64)
        latent_bridge = LatentBridge("pca", 64, teacher.cfg.latent_dim, pca)
    learner = Learner(student, LossConfig(**{COEF[term]: 1.0}), bridge=latent_bridge)

    first = learner.update(batch)[METRIC[term]]
    for _ in range(30):
        last = learner.update(batch)[METRIC[term]]

    assert last < 0.9 * first, (first, last)


def test_a_zero_coefficient_leaves_its_term_out_of_the_graph():
    torch.manual_seed(0)
    student = WorldModel(model_config(1, "mt30"))
    bridge = LatentBridge("linear", 128, 128)
    nan_teacher = _batch(None)

    off = _metrics(student, nan_teacher, LossConfig(), bridge)
    off["total"].backward()

    assert math.isfinite(off["total"].item()) and math.isfinite(off["pi_total"].item())
    assert not set(METRIC.values()) & set(off)
    assert all(p.grad is None for p in bridge.parameters())
    for term in TEACHER_TERMS:  # the same NaN targets poison the loss once the term is on
        on = _metrics(student, nan_teacher, LossConfig(**{COEF[term]: 1.0}), bridge)
        assert math.isnan(on["pi_total" if term == "policy" else "total"].item()), term


def test_missing_teacher_outputs_and_bridges_fail_with_one_line(teacher):
    student = WorldModel(model_config(1, "mt30"))
    batch = _batch(teacher)
    with pytest.raises(ValueError, match="distils the teacher's value"):
        world_model_loss(student, batch._replace(teacher={}), LossConfig(value_d_coef=1.0))
    with pytest.raises(ValueError, match="needs a LatentBridge"):
        world_model_loss(student, batch, LossConfig(latent_d_coef=1.0))
    with pytest.raises(ValueError, match="pca bridge needs"):
        LatentBridge("pca", 64, 128)
    with pytest.raises(ValueError, match="do not map"):
        LatentBridge("pca", 64, 128, fit_pca(torch.randn(200, 128), 32))


def test_pca_bridge_keeps_the_teachers_main_directions():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(128, 8, generator=gen))[0]
    latents = torch.randn(500, 8, generator=gen) @ basis.T + 3.0

    mean, components = fit_pca(latents, 8)

    torch.testing.assert_close(components.T @ components, torch.eye(8), atol=1e-5, rtol=0)
    reconstructed = (latents - mean) @ components @ components.T + mean
    torch.testing.assert_close(reconstructed, latents, atol=1e-4, rtol=0)


def test_every_place_reads_the_one_registry_of_terms():
    from tdmpc_ray.config import build_config
    from tdmpc_ray.data.layout import TEACHER_COLUMNS
    from tdmpc_ray.model import TEACHER_OUTPUTS
    from tdmpc_ray.sweep.summary import CURVE_METRICS
    from tdmpc_ray.train.config import TrainConfig

    assert list(DISTILL_TERMS) == list(COEF) and {t.coef for t in DISTILL_TERMS.values()} == set(
        COEF.values()
    )
    assert {t.name: t.metric for t in DISTILL_TERMS.values()} == METRIC
    assert {t.metric for t in DISTILL_TERMS.values()} <= set(CURVE_METRICS)
    assert TEACHER_COLUMNS == {t.teacher: t.column for t in DISTILL_TERMS.values() if t.cached}
    assert all(t.teacher in TEACHER_OUTPUTS for t in DISTILL_TERMS.values())
    assert not DISTILL_TERMS["latent"].cached and DISTILL_TERMS["latent"].column is None
    assert {t.attach for t in DISTILL_TERMS.values()} == {"world", "policy"}
    every = {t.coef: 0.5 for t in DISTILL_TERMS.values()}
    cfg = build_config(TrainConfig, None, {"data": "d", "teacher": "t.pt", **every})
    assert cfg.losses().teacher_terms() == tuple(DISTILL_TERMS)
    assert cfg.recipe() == "distill-d0.5-latent-linear0.5-value0.5-policy0.5-planner0.5"
    assert [t.name for t in DISTILL_TERMS.values() if t.labels_only] == ["planner"]
    assert build_config(TrainConfig, None, {"data": "d", **every}).losses().terms() == ()
    for term in DISTILL_TERMS.values():
        with pytest.raises(ValueError, match=f"^{term.coef} must be non-negative"):
            build_config(TrainConfig, None, {"data": "d", term.coef: -1}).check()


def test_the_value_term_compares_values_in_symlog_space(teacher):
    from tdmpc_ray.model.math import symlog

    batch = _batch(teacher)
    student = WorldModel(model_config(1, "mt30", enc_dim=128, mlp_dim=160, latent_dim=64)).eval()
    cfg = LossConfig(value_d_coef=1.0)
    _, zs, metrics = world_model_loss(student, batch, cfg)
    values = student.two_hot_inv(student.Q(zs[:-1], batch.action, batch.task, "all")).mean(0)
    want = ((symlog(values[:1]) - symlog(batch.teacher["value"][:1])) ** 2).mean()
    torch.testing.assert_close(metrics["value_distill_loss"], want)
    assert batch.teacher["value"].abs().max() > 5, "the teacher's values are on the return scale"


def _prior_and_labels(seed: int = 0) -> tuple[WorldModel, torch.Tensor, Batch]:
    """A small random student, its rolled-out latents and a batch whose planner labels are the
    student's own prior in action space: (squashed mean, std; 0 on unused action dims)."""
    torch.manual_seed(seed)
    student = WorldModel(model_config(1, "mt30", enc_dim=64, mlp_dim=64, latent_dim=32))
    batch = _batch(None, size=16, seed=seed)
    _, zs, _ = world_model_loss(student, batch, LossConfig())
    with torch.no_grad():
        info = student.pi(zs[:-1], batch.task)[1]
    std = action_log_std(info["mean"], info["log_std"]).exp() * student._action_masks[batch.task]
    labels = torch.cat([info["mean"], std], -1)
    return student, zs.detach(), batch._replace(teacher={"planner": labels})


def _planner_term(student: WorldModel, zs: torch.Tensor, batch: Batch, **cfg) -> torch.Tensor:
    losses = LossConfig(planner_d_coef=1.0, **cfg)
    _, metrics = policy_loss(student, zs, batch, RunningScale(0.01), losses)
    return metrics["planner_distill_loss"]


@pytest.mark.parametrize("all_steps", [False, True])
def test_the_planner_term_is_zero_when_the_prior_equals_the_labels(all_steps):
    student, zs, batch = _prior_and_labels()

    assert _planner_term(student, zs, batch, distill_all_steps=all_steps).item() < 1e-10
    mean, std = batch.teacher["planner"].chunk(2, -1)
    for labels in (torch.cat([mean + 0.1 * (std > 0), std], -1), torch.cat([mean, 2 * std], -1)):
        moved = batch._replace(teacher={"planner": labels})
        assert _planner_term(student, zs, moved, distill_all_steps=all_steps).item() > 1e-4


def test_the_planner_term_trains_only_what_the_policy_loss_trains():
    """Its gradient reaches the prior and the task embedding it reads (whose gradient TD-MPC2's
    policy loss also leaves for the next world-model step), nothing else: the registry attaches
    it to the policy loss, whose optimiser steps the prior."""
    student, zs, batch = _prior_and_labels()
    gen = torch.Generator().manual_seed(1)
    mask = student._action_masks[batch.task]
    mean = (torch.rand(3, 16, 6, generator=gen) * 2 - 1) * mask
    std = (0.05 + torch.rand(3, 16, 6, generator=gen)) * mask
    batch = batch._replace(teacher={"planner": torch.cat([mean, std], -1)})

    _planner_term(student, zs, batch).backward()

    trained = {
        name.split(".")[0]
        for name, p in student.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert trained == {"_pi", "_task_emb"}
    assert DISTILL_TERMS["planner"].attach == "policy"


TOY_TERM = '''    toy_d_coef: float = distill_term(
        "toy", "world", "toy_distill_loss", reward_distill, teacher="reward", recipe="toy{coef}"
    )
    """A throwaway term: the reward term again, under another name."""
'''
TOY_SCRIPT = """
import torch
from tdmpc_ray.config import build_config, config_dict, format_fields
from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.data.layout import terms_labelled_in
from tdmpc_ray.model import WorldModel, model_config
from tdmpc_ray.sweep.scratch import DISTILL_KEYS
from tdmpc_ray.sweep.summary import CURVE_METRICS
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.losses import DISTILL_TERMS
from tdmpc_ray.train.update import Learner

cfg = build_config(TrainConfig, None, ["data=d", "teacher=t.pt", "d_coef=0", "toy_d_coef=0.5"])
assert cfg.recipe() == "distill-toy0.5", cfg.recipe()
assert cfg.losses().teacher_terms() == ("reward",)
assert build_config(TrainConfig, None, config_dict(cfg, flat=False)) == cfg
assert "toy_d_coef: float = 0.0" in format_fields(TrainConfig)
assert "toy_d_coef" in DISTILL_KEYS and "toy_distill_loss" in CURVE_METRICS
term = DISTILL_TERMS["toy"]
assert term.cached and term.column == "teacher_reward"
assert terms_labelled_in(["obs", term.column]) == ("reward",)
cfg.check_labels(("reward",))
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
batch = Batch(
    obs=torch.randn(4, 8, 24, generator=gen),
    action=torch.rand(3, 8, 6, generator=gen) * 2 - 1,
    reward=torch.rand(3, 8, 1, generator=gen),
    task=torch.randint(0, 30, (8,), generator=gen),
    teacher={"reward": torch.rand(3, 8, 1, generator=gen)},
)
metrics = Learner(WorldModel(model_config(1, "mt30")), cfg.losses()).update(batch)
assert float(metrics["toy_distill_loss"]) > 0 and "distill_loss" not in metrics
"""


def test_a_term_added_to_the_registry_alone_reaches_config_recipe_labels_and_loss(tmp_path):
    """A copy of the package whose only change is one more `distill_term` in `losses.py`: the
    term has its key, help line, recipe name, label column, curve and loss, with no other file
    touched."""
    after = 'needs planner labels (`data label --mpc`)."""'
    run_with_one_file_changed(tmp_path, "train/losses.py", after, TOY_TERM, TOY_SCRIPT)
