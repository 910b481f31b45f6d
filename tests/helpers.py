"""Paths and small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_CHECKPOINTS = REPO.parent / "shared" / "checkpoints"
FP16_STUDENT = SHARED_CHECKPOINTS / "mt30_1M_steps_045dist_fp16.pt"


def shared_checkpoint(name: str) -> Path:
    """A file of ../shared/checkpoints, or skip the test with the reason."""
    path = SHARED_CHECKPOINTS / name
    if not path.is_file():
        pytest.skip(
            f"shared checkpoint {path} is absent (../shared/checkpoints not beside the repo)"
        )
    return path


def near_deterministic(model):
    """`model` with its policy std at the floor (e^-10), so sampled actions equal the mean to
    ~1e-5: updates on different splits of a batch then draw the same actions."""
    import torch

    with torch.no_grad():
        half = model.cfg.action_dim
        model._pi[-1].weight[half:].zero_()
        model._pi[-1].bias[half:].fill_(-100.0)
    return model
