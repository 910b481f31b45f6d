"""Paths and small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdmpc_ray.model.published import find_published

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FP16_STUDENT = "mt30_1M_steps_045dist_fp16.pt"


def shared_checkpoint(name: str) -> Path:
    """A verified local copy of the published student `name` (a short or file name, found in the
    download cache or ../shared/checkpoints by `find_published`), or skip the test with the
    reason."""
    path = find_published(name)
    if path is None:
        pytest.skip(
            f"published student {name} not found locally (run `tdmpc-ray download`, or keep "
            "../shared/checkpoints beside the repo)"
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
