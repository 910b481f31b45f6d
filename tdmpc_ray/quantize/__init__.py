"""Post-training quantization of world-model checkpoints for deployment.

- `codec`: which tensor each mode stores how; the per-channel int8 encoding.
- `paper`: the paper's per-tensor qint8 (scale 1.0), the one use of PyTorch's deprecated
  quantized tensors, kept to reproduce the published files.
- `export`: `quantize_checkpoint(src, out, mode)` writes our format and reports sizes and errors.
- `measure`: file and tensor sizes, output errors against the source model on a fixed batch.
- `inference`: the precision the matmuls of a loaded (dequantized) model run in.
- `commands`: `tdmpc-ray quantize CKPT --mode MODE --out PATH`.
`load_world_model` reads every mode back through `tdmpc_ray.model.checkpoint.dequantize_state_dict`.
This file imports nothing, so the CLI's `--help` stays fast.
"""

MODES = ("fp16", "mixed", "int8", "int8-paper")
"""`fp16`; per-channel `int8`; the paper's `mixed` and `int8-paper` (see `codec`)."""
