"""Which tensor each quantization mode stores how, and the per-channel int8 encoding.

Modes, applied to a state dict in our key layout:
- `fp16`: every floating tensor in float16.
- `mixed` (the paper's): the Q ensembles (`_Qs.*`, `_target_Qs.*`, weights, biases and LayerNorm)
  as the paper's qint8, the rest float16, as in the published `*_mixed.pt`.
- `int8-paper` (the paper's): every floating tensor as the paper's qint8, as in `*_int8.pt`.
- `int8`: weights of linear layers as symmetric per-output-channel int8 (`torch.int8` values and
  their scales under `key + SCALE_SUFFIX`); embeddings, LayerNorm, biases and buffers float16.
`dequantize_state_dict` (in `tdmpc_ray.model.checkpoint`, so loading needs no import of this
part) inverts all four.
"""

from __future__ import annotations

import torch

from tdmpc_ray.model.checkpoint import SCALE_SUFFIX
from tdmpc_ray.quantize import MODES
from tdmpc_ray.quantize.paper import paper_qint8

_Q_ENSEMBLES = ("_Qs.", "_target_Qs.")


def is_matmul_weight(key: str) -> bool:
    """True for the weight of a linear layer (ensemble members included): the tensors that mode
    `int8` stores as int8. Embedding rows, LayerNorm gains, biases and buffers are not."""
    return key.endswith(".weight") and ".ln." not in key and not key.startswith("_task_emb.")


def int8_per_channel(
    weight: torch.Tensor, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a weight [..., out, in].

    Returns int8 values in [-127, 127] and scales [..., out, 1] in `scale_dtype` such that
    `values * scales` approximates `weight` to within half a scale; each row's largest magnitude
    maps to 127. All-zero rows get scale 1.
    """
    amax = weight.float().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(scale_dtype)
    values = torch.round(weight.float() / scale.float()).clamp_(-127, 127).to(torch.int8)
    return values, scale


def quantize_state_dict(
    sd: dict[str, torch.Tensor], mode: str, scale_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The tensors of `sd` (our key layout, any float dtype) encoded as `mode` stores them.

    `scale_dtype` is the dtype of mode `int8`'s scales. Non-floating tensors are kept as they are.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if not tensor.is_floating_point():
            out[key] = tensor
        elif mode == "int8-paper" or (mode == "mixed" and key.startswith(_Q_ENSEMBLES)):
            out[key] = paper_qint8(tensor)
        elif mode == "int8" and is_matmul_weight(key):
            out[key], out[key + SCALE_SUFFIX] = int8_per_channel(tensor, scale_dtype)
        else:
            out[key] = tensor.half()
    return out
