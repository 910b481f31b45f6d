"""Moving tensors from the host to an accelerator without making the host wait.

A copy from pageable host memory to a GPU is synchronous: the host waits until the GPU has run
everything queued before it. Through pinned memory the copy is queued like any other work.
Used by every part that feeds a GPU (the planner, the episode store, the training loop), so it
lives below all of them and imports neither Ray nor the model.
"""

from __future__ import annotations

import torch


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`x` on `device`; a host tensor reaches a GPU through pinned memory, so the copy never makes
    the host wait for the GPU's queued work."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)
