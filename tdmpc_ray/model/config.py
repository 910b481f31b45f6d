"""World-model configuration: TD-MPC2's size presets and the task-set quirks of its checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tdmpc_ray.tasks.task_sets import get_task_set

# TD-MPC2's model-size presets (number of parameters in millions -> dimensions).
MODEL_SIZES: dict[int, dict[str, int]] = {
    1: {"enc_dim": 256, "mlp_dim": 384, "latent_dim": 128, "num_enc_layers": 2, "num_q": 2},
    5: {"enc_dim": 256, "mlp_dim": 512, "latent_dim": 512, "num_enc_layers": 2, "num_q": 5},
    19: {"enc_dim": 1024, "mlp_dim": 1024, "latent_dim": 768, "num_enc_layers": 3, "num_q": 5},
    48: {"enc_dim": 1792, "mlp_dim": 1792, "latent_dim": 768, "num_enc_layers": 4, "num_q": 5},
    317: {"enc_dim": 4096, "mlp_dim": 4096, "latent_dim": 1376, "num_enc_layers": 5, "num_q": 8},
}


@dataclass(frozen=True)
class ModelConfig:
    """Every number that fixes the shape and the semantics of a TD-MPC2 world model."""

    task_set: str = "mt30"
    """Task-set name (`mt30`, `mt80`) or a single task name."""
    model_size: int | None = 1
    """TD-MPC2 size preset in millions of parameters, or None for a custom size."""
    obs_dim: int = 24
    """Padded observation dimension."""
    action_dim: int = 6
    """Padded action dimension."""
    task_dim: int = 96
    """Task-embedding dimension (0 for a single task)."""
    enc_dim: int = 256
    mlp_dim: int = 384
    latent_dim: int = 128
    num_enc_layers: int = 2
    num_q: int = 2
    num_bins: int = 101
    """Bins of the discrete (two-hot) regression of rewards and values."""
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    dropout: float = 0.01
    """Dropout on the first layer of each Q-function."""
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    @property
    def tasks(self) -> tuple[str, ...]:
        return get_task_set(self.task_set).tasks

    @property
    def multitask(self) -> bool:
        return get_task_set(self.task_set).multitask

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


def model_config(model_size: int, task_set: str = "mt30", **overrides: object) -> ModelConfig:
    """The config TD-MPC2 builds for `model_size` on `task_set`, with its checkpoint quirks.

    Multi-task task_dim is 96 for mt80 and for sizes 1 and 317, else 64; the MT30 19M
    checkpoint uses latent 512.
    """
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size}; choose one of {sorted(MODEL_SIZES)}")
    tasks = get_task_set(task_set)
    dims = dict(MODEL_SIZES[model_size])
    if task_set == "mt30" and model_size == 19:
        dims["latent_dim"] = 512
    if not tasks.multitask:
        task_dim = 0
    elif task_set == "mt80" or model_size in (1, 317):
        task_dim = 96
    else:
        task_dim = 64
    cfg = ModelConfig(
        task_set=task_set,
        model_size=model_size,
        obs_dim=tasks.obs_dim,
        action_dim=tasks.action_dim,
        task_dim=task_dim,
        **dims,
    )
    return cfg.replace(**overrides) if overrides else cfg
