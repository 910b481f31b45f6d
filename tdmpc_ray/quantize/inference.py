"""The fast inference path of a (quantized) student: which precision its matmuls run in.

Every checkpoint is dequantized to fp32 on load (`load_world_model`); speed then comes from the
precision of the matmuls, chosen here as an autocast context around `WorldModel` calls and
`Planner.act`. Autocast rather than fp16 weights: the planner builds its own fp32 tensors, so it
runs unchanged. Measured on CPU in bench/results/quantize.json: fp16 matmuls are several times
slower than fp32 there, bf16 faster only on CPUs with native bf16 (AVX512-BF16/AMX) and at the
price of bf16 rounding, and int8 matmuls would need the planner rewritten around them; so `auto`
keeps fp32 on CPU and bf16 is opt-in. On CUDA `auto` is fp16 (not measured: no GPU here).
This is the in-library path (a loaded model, e.g. evaluation on a GPU); a student deployed on a
robot runs as an exported controller whose matmul precision (fp32, bf16, ONNX Runtime int8) is
fixed in the program: `tdmpc_ray.deploy`.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(device: str | torch.device, precision: str = "auto") -> str:
    """The precision `auto` stands for on `device` (fp16 on CUDA, fp32 elsewhere); others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def inference_autocast(
    device: str | torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager:
    """A context in which world-model and planner matmuls on `device` run at `precision`
    (`resolve_precision`); fp32 is a no-op context."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
