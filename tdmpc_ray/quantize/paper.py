"""The paper's int8 encoding, reproduced for comparison and used nowhere else.

TD-MPC-Opt's `mixed` and INT8 files hold `torch.qint8` tensors quantized per tensor with scale 1.0
and zero point 0: every value is rounded to the nearest integer in [-128, 127], so most weights
(|w| < 0.5) become 0. That, not the 8 bits, is why the paper's INT8 student scores 5.09 against
28.45 in FP16. PyTorch deprecates quantized tensor creation; this module is the only place in the
package that uses it (tests check this), and it silences that one warning here.
"""

from __future__ import annotations

import warnings

import torch


def paper_qint8(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as the paper's `torch.qint8`: per-tensor, scale 1.0, zero point 0."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        return torch.quantize_per_tensor(tensor.float(), scale=1.0, zero_point=0, dtype=torch.qint8)
