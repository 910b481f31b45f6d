"""Running 5-95 percentile scale of Q-values, TD-MPC2's normaliser for the policy loss."""

from __future__ import annotations

import torch


class RunningScale:
    """Exponential moving average of the spread between the 5th and 95th percentile (at least 1)."""

    def __init__(self, tau: float = 0.01, device: torch.device | str = "cpu"):
        self.tau = tau
        self.value = torch.ones(1, device=device)
        self.levels = torch.tensor([0.05, 0.95], device=device)
        """The percentiles, made once: a tensor made from Python numbers per update is a copy
        from the host (and a wait) on a GPU."""

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """95th minus 5th percentile over the batch (dim 0), with linear interpolation, clamped >= 1."""
        q = torch.quantile(x.detach().flatten(1).float(), self.levels, dim=0)
        return torch.clamp(q[1] - q[0], min=1.0).reshape(-1)[:1]

    def update(self, x: torch.Tensor) -> None:
        """Move the scale toward the spread of `x` [batch, ...]."""
        self.value.lerp_(self.spread(x), self.tau)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value

    def state_dict(self) -> dict:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value.copy_(state["value"])
