"""The TD-MPC2 world model and its checkpoints. Knows nothing of Ray."""

from tdmpc_ray.model.checkpoint import (
    CheckpointError,
    checkpoint_hash,
    load_world_model,
    save_checkpoint,
)
from tdmpc_ray.model.config import MODEL_SIZES, ModelConfig, model_config
from tdmpc_ray.model.math import two_hot, two_hot_inv
from tdmpc_ray.model.world_model import (
    TEACHER_OUTPUTS,
    TEACHER_TERMS,
    WorldModel,
    predicted_reward,
    teacher_outputs,
)

__all__ = [
    "MODEL_SIZES",
    "TEACHER_OUTPUTS",
    "TEACHER_TERMS",
    "CheckpointError",
    "ModelConfig",
    "WorldModel",
    "checkpoint_hash",
    "load_world_model",
    "model_config",
    "predicted_reward",
    "save_checkpoint",
    "teacher_outputs",
    "two_hot",
    "two_hot_inv",
]
