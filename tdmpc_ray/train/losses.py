"""TD-MPC2's offline multi-task losses and the distillation terms, as plain functions.

The distillation terms are registered in one place: each is a coefficient field of `LossConfig`
declared with `distill_term(...)`, whose metadata is the term's registry entry (`DistillTerm`:
the teacher output it compares with, whether its loss joins the world-model or the policy loss,
its metric, its loss function, how recipe names show it, and, for a term that compares through
a module of its own such as the latent bridge, how the driver prepares it and each worker builds
it). `DISTILL_TERMS` collects them; the losses, the teacher service, cached labels, recipe names,
curves and the training loop's bridge all read it, so a new term is written here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from tdmpc_ray.model.math import soft_ce, symlog
from tdmpc_ray.model.world_model import TEACHER_OUTPUTS, WorldModel
from tdmpc_ray.train.distill import BRIDGES, LatentBridge, fit_pca

if TYPE_CHECKING:
    from tdmpc_ray.data.episode_store import Batch


class Predictions(NamedTuple):
    """What the student predicted on a batch of windows, for distillation terms to compare."""

    model: WorldModel
    zs: torch.Tensor
    """Rolled-out latents [H+1, B, L]."""
    reward_logits: torch.Tensor | None
    """[H, B, bins] at zs[:-1] and the window's actions."""
    qs: torch.Tensor | None
    """Every Q member's logits [Q, H, B, bins] at zs[:-1] and the window's actions."""
    bridge: LatentBridge | None = None
    pi_mean: torch.Tensor | None = None
    """The policy prior's squashed mean action [H+1, B, A] at zs (in the policy loss only)."""
    pi_log_std: torch.Tensor | None = None
    """The policy prior's log std before squashing [H+1, B, A] at zs (in the policy loss only)."""


TermLoss = Callable[[Predictions, torch.Tensor, "LossConfig"], torch.Tensor]


class TeacherProbe(Protocol):
    """What the driver offers a term that prepares its bridge before training: the teacher and
    a seeded sample of the run's data."""

    student_latent_dim: int
    """The student's latent size."""

    def latent_dim(self) -> int:
        """The teacher's latent size."""
        ...

    def sample(self, rows: int, term: str) -> torch.Tensor:
        """The teacher's output `term` [rows, width] on `rows` (obs, action) pairs drawn from
        the data (the same pairs for the same run seed)."""
        ...


TermPrepare = Callable[["LossConfig", TeacherProbe], dict]
"""(config, teacher probe) -> the picklable inputs of the term's bridge (driver side)."""
TermBridge = Callable[["LossConfig", int, dict], LatentBridge]
"""(config, student latent size, prepared inputs) -> the term's bridge (worker side)."""


@dataclass(frozen=True)
class DistillTerm:
    """One distillation term: the registry entry behind a `LossConfig` coefficient."""

    name: str
    """The term's name (recipes, `run.json`, errors)."""
    teacher: str
    """The teacher output it compares with (`model.TEACHER_OUTPUTS`)."""
    attach: str
    """`world` (added to the world-model loss) or `policy` (to the policy-prior loss)."""
    metric: str
    """Name of its loss in the training metrics and curves."""
    loss: TermLoss
    """(student predictions, teacher output [S, B, width], config) -> scalar loss."""
    recipe: str = "{name}{coef}"
    """How recipe names show the term: a format of its `name`, its `coef`ficient's value and
    the `LossConfig` fields."""
    prepare: TermPrepare | None = None
    """Fits what its bridge needs on the driver (None: nothing to fit)."""
    bridge: TermBridge | None = None
    """Builds the module it compares through (`Predictions.bridge`; None: it needs none)."""
    coef: str = ""
    """Its `LossConfig` coefficient field (filled in by the registry)."""

    def recipe_part(self, cfg: LossConfig) -> str:
        """The term in a recipe name, with its coefficient in `cfg` (`d0.45`)."""
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        return self.recipe.format(**{**fields, "name": self.name, "coef": f"{fields[self.coef]:g}"})

    @property
    def cached(self) -> bool:
        """Whether `data label` can store its teacher output, so training reads it from data."""
        return TEACHER_OUTPUTS[self.teacher].cached

    @property
    def labels_only(self) -> bool:
        """Whether only `data label` computes its teacher output (no teacher actor serves it)."""
        return TEACHER_OUTPUTS[self.teacher].compute is None

    @property
    def column(self) -> str | None:
        """The label column holding its teacher output (None: always asked of the teacher)."""
        return TEACHER_OUTPUTS[self.teacher].column


def distill_term(
    name: str, attach: str, metric: str, loss: TermLoss, teacher: str = "", **hooks: Any
) -> Any:
    """A `LossConfig` coefficient field (default 0: the term is off) registering its term;
    `hooks` are its optional `DistillTerm` fields (`recipe`, `prepare`, `bridge`)."""
    entry = DistillTerm(name, teacher or name, attach, metric, loss, **hooks)
    return dataclasses.field(default=0.0, metadata={"distill": entry})


def distill_setting(default: Any) -> Any:
    """A `LossConfig` field that only distillation terms read (a scratch run ignores it)."""
    return dataclasses.field(default=default, metadata={"distill_setting": True})


def _rho_weights(cfg: LossConfig, steps: int, device) -> torch.Tensor:
    return cfg.rho ** torch.arange(steps, device=device, dtype=torch.float32)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """MSE between student and teacher outputs [S, B, width] (S steps of the window).

    Only the first step (the (obs, action) pair both models see) by default, as the paper;
    with `distill_all_steps`, every step of the student's latent rollout, rho-weighted.
    """
    steps = student.shape[0] if cfg.distill_all_steps else 1
    if teacher.shape[0] < steps:
        raise ValueError(
            f"distilling {steps} steps needs as many teacher steps, got {teacher.shape[0]}"
        )
    per_step = ((student[:steps] - teacher[:steps]) ** 2).mean(dim=(1, 2))
    return (per_step * _rho_weights(cfg, steps, student.device)).sum() / steps


def reward_distill(pred: Predictions, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The paper's term: MSE of the student's and the teacher's decoded rewards."""
    return distill_loss(pred.model.two_hot_inv(pred.reward_logits), teacher, cfg)


def latent_distill(pred: Predictions, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The student's rolled-out next latent vs the teacher's, compared through the bridge."""
    if pred.bridge is None:
        raise ValueError("latent_d_coef > 0 needs a LatentBridge")
    return distill_loss(*pred.bridge(pred.zs[1:], teacher), cfg)


def latent_inputs(cfg: LossConfig, teacher: TeacherProbe) -> dict:
    """The teacher's latent size and, for the `pca` bridge, the projection fitted on teacher
    latents of `pca_samples` (obs, action) pairs of the data."""
    out = {"teacher_latent_dim": teacher.latent_dim()}
    if cfg.latent_bridge == "pca":
        latents = teacher.sample(cfg.pca_samples, "latent")
        out["pca"] = fit_pca(latents, teacher.student_latent_dim)
    return out


def latent_bridge(cfg: LossConfig, student_dim: int, inputs: dict) -> LatentBridge:
    """The `latent_bridge` between the student's latents and the teacher's."""
    return LatentBridge(
        cfg.latent_bridge, student_dim, inputs["teacher_latent_dim"], inputs.get("pca")
    )


def value_distill(pred: Predictions, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Mean of the student's Q members' decoded values vs the teacher's, compared in symlog
    space: the space the values are regressed in, so the term's scale does not grow with the
    returns (raw values reach ~10^2-10^3, their squared errors would swamp the other losses)."""
    student = pred.model.two_hot_inv(pred.qs).mean(0)
    return distill_loss(symlog(student), symlog(teacher), cfg)


def policy_distill(pred: Predictions, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """MSE of the student's and the teacher's squashed mean actions of the policy prior."""
    return distill_loss(pred.pi_mean[:-1], teacher, cfg)


def action_log_std(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log std in action space of a tanh-squashed Gaussian with squashed mean `mean` and
    pre-squash `log_std`, to first order (std * tanh'): the scale the planner's std is on. The
    derivative is TD-MPC2's squash correction, 1 - mean^2 kept above 1e-6."""
    return log_std + torch.log(F.relu(1 - mean.pow(2)) + 1e-6)


def planner_distill(pred: Predictions, teacher: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Planner imitation: MSE of the student prior's (squashed mean, action-space log std) and
    the teacher planner's (mean, log std), labels [S, B, 2A] = (mean, std). A task's unused
    action dims (std 0 in the labels) count as equal, as in the policy term."""
    mean, std = teacher.chunk(2, dim=-1)
    used = std > 0
    student_log_std = action_log_std(pred.pi_mean[:-1], pred.pi_log_std[:-1])
    student = torch.cat([pred.pi_mean[:-1], torch.where(used, student_log_std, 0.0)], -1)
    target = torch.cat([mean, torch.where(used, std.log(), 0.0)], -1)
    return distill_loss(student, target, cfg)


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
    d_coef: float = distill_term(
        "reward", "world", "distill_loss", reward_distill, recipe="d{coef}"
    )
    """Reward distillation coefficient (the paper's best: 0.4-0.45); 0 trains from scratch."""
    latent_d_coef: float = distill_term(
        "latent",
        "world",
        "latent_distill_loss",
        latent_distill,
        recipe="latent-{latent_bridge}{coef}",
        prepare=latent_inputs,
        bridge=latent_bridge,
    )
    """Next-state latent distillation through `latent_bridge` (the paper's latent variants)."""
    latent_bridge: str = distill_setting("linear")
    """`linear` (learned student -> teacher projection) or `pca` (fixed teacher -> student)."""
    pca_samples: int = distill_setting(4096)
    """Teacher latents sampled from the data to fit the `pca` bridge."""
    value_d_coef: float = distill_term("value", "world", "value_distill_loss", value_distill)
    """Value distillation: the student's mean Q vs the teacher's mean Q, MSE of their symlogs."""
    policy_d_coef: float = distill_term("policy", "policy", "policy_distill_loss", policy_distill)
    """Policy distillation: MSE of the student's and the teacher's squashed mean actions."""
    planner_d_coef: float = distill_term(
        "planner", "policy", "planner_distill_loss", planner_distill
    )
    """Planner imitation: the prior's action-space mean and log std vs the teacher's MPPI
    distribution, MSE (`planner_distill`); needs planner labels (`data label --mpc`)."""
    distill_all_steps: bool = distill_setting(False)
    """Distil at every horizon step (rho-weighted) instead of only the first."""

    def terms(self) -> tuple[DistillTerm, ...]:
        """The distillation terms these coefficients turn on (registry order)."""
        return tuple(t for t in DISTILL_TERMS.values() if getattr(self, t.coef) > 0)

    def teacher_terms(self) -> tuple[str, ...]:
        """The teacher outputs those terms need (`model.TEACHER_OUTPUTS` names), once each."""
        return tuple(dict.fromkeys(t.teacher for t in self.terms()))

    def without_distillation(self) -> LossConfig:
        """These coefficients with every distillation term off (training from scratch)."""
        return dataclasses.replace(self, **{t.coef: 0.0 for t in DISTILL_TERMS.values()})

    def bridge_inputs(self, teacher: TeacherProbe) -> dict:
        """What the terms on need fitted before training (`DistillTerm.prepare`), on the
        driver, by the term's name."""
        return {t.name: t.prepare(self, teacher) for t in self.terms() if t.prepare is not None}

    def bridge(self, student_dim: int, inputs: dict) -> LatentBridge | None:
        """The module the terms on compare through (`DistillTerm.bridge`), from what
        `bridge_inputs` fitted; None when no term on needs one. `Predictions` carries one."""
        bridges = [
            t.bridge(self, student_dim, inputs.get(t.name, {})) for t in self.terms() if t.bridge
        ]
        if len(bridges) > 1:
            raise ValueError("at most one distillation term on may compare through a bridge")
        return bridges[0] if bridges else None

    def check(self) -> None:
        """Fail with one line on coefficients or distillation settings that cannot train."""
        for term in DISTILL_TERMS.values():
            if getattr(self, term.coef) < 0:
                raise ValueError(
                    f"{term.coef} must be non-negative, got {getattr(self, term.coef)}"
                )
        if self.latent_bridge not in BRIDGES:
            raise ValueError(f"latent_bridge must be one of {BRIDGES}, not {self.latent_bridge!r}")


DISTILL_TERMS: dict[str, DistillTerm] = {
    f.metadata["distill"].name: dataclasses.replace(f.metadata["distill"], coef=f.name)
    for f in dataclasses.fields(LossConfig)
    if "distill" in f.metadata
}
"""Every distillation term by name, in `LossConfig` order: the one registry."""
DISTILL_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(LossConfig) if "distill_setting" in f.metadata
)
"""The `LossConfig` fields besides the coefficients that only distillation reads."""


@torch.no_grad()
def td_targets(model: WorldModel, next_z: torch.Tensor, reward: torch.Tensor, task: torch.Tensor):
    """reward + discount * min of two target Qs at the next latent and a policy-prior action."""
    action, _ = model.pi(next_z, task)
    discount = model.discount(task).view(1, -1, 1)
    return reward + discount * model.Q(next_z, action, task, "min", target=True)


def _add_terms(
    total: torch.Tensor,
    attach: str,
    pred: Predictions,
    batch: Batch,
    cfg: LossConfig,
    metrics: dict,
) -> torch.Tensor:
    """`total` plus every `attach` term with a positive coefficient (a zero one computes
    nothing), their losses recorded in `metrics`."""
    for term in DISTILL_TERMS.values():
        coef = getattr(cfg, term.coef)
        if term.attach == attach and coef > 0:
            loss = term.loss(pred, _teacher(batch, term), cfg)
            total = total + coef * loss
            metrics[term.metric] = loss
    return total


def world_model_loss(
    model: WorldModel, batch: Batch, cfg: LossConfig, bridge: LatentBridge | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Total world-model loss, the rolled-out latents [H+1, B, L] (for the policy) and metrics.

    Consistency (MSE of rolled-out vs encoded next latents), reward and value (soft cross-entropy
    on two-hot targets) are averaged over the horizon with rho**t weights, as TD-MPC2; then every
    world-model distillation term with a positive coefficient is added (`DISTILL_TERMS`).
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
    pred = Predictions(model, zs, reward_logits, qs, bridge)
    total = _add_terms(total, "world", pred, batch, cfg, metrics)
    metrics["total_loss"] = total
    return total, zs, metrics


def _teacher(batch: Batch, term: DistillTerm) -> torch.Tensor:
    if term.teacher not in batch.teacher:
        raise ValueError(
            f"this recipe distils the teacher's {term.teacher} but the batch has none "
            "(a teacher actor, or data labelled for this term, is needed)"
        )
    return batch.teacher[term.teacher]


def policy_loss(
    model: WorldModel,
    zs: torch.Tensor,
    batch: Batch,
    scale,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict]:
    """TD-MPC2's policy-prior loss on detached latents: -(entropy bonus + scaled Q), rho-weighted,
    plus every policy distillation term with a positive coefficient (`DISTILL_TERMS`).

    `scale` is the running Q scale; it is updated from the first step's Q values here.
    """
    action, info = model.pi(zs, batch.task)
    qs = model.Q(zs, action, batch.task, "avg", detach=True)
    scale.update(qs[0])
    qs = scale(qs)
    rho = _rho_weights(cfg, zs.shape[0], zs.device)
    loss = (-(cfg.entropy_coef * info["scaled_entropy"] + qs).mean(dim=(1, 2)) * rho).mean()
    metrics = {"pi_entropy": info["entropy"].mean(), "pi_scale": scale.value[0]}
    pred = Predictions(model, zs, None, None, pi_mean=info["mean"], pi_log_std=info["log_std"])
    loss = _add_terms(loss, "policy", pred, batch, cfg, metrics)
    return loss, {"pi_loss": loss, **metrics}
