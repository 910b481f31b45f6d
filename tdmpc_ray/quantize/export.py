"""Quantize a checkpoint file into our format and report what it cost in size and accuracy."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tdmpc_ray.model.checkpoint import (
    SCALE_SUFFIX,
    checkpoint_hash,
    load_world_model,
    save_checkpoint,
)
from tdmpc_ray.model.published import resolve_checkpoint
from tdmpc_ray.quantize.codec import quantize_state_dict
from tdmpc_ray.quantize.measure import file_mib, output_errors, tensor_mib

_SCHEMES = {
    "fp16": "every tensor float16",
    "mixed": "the paper's: Q ensembles qint8 per tensor (scale 1.0, zero point 0), rest float16",
    "int8": f"linear weights int8, symmetric per output channel, scales under '<key>{SCALE_SUFFIX}'; "
    "embeddings, LayerNorm, biases and buffers float16",
    "int8-paper": "the paper's: every tensor qint8 per tensor (scale 1.0, zero point 0)",
}


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_checkpoint` wrote: sizes in MiB and output errors against the source."""

    mode: str
    source: str
    out: str
    source_file_mib: float
    file_mib: float
    tensor_mib: float
    errors: dict[str, dict[str, float]]
    """Per output (`measure.OUTPUTS`): max_abs, mean_abs, ref_mean_abs on the probe batch."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A short human-readable summary ending with the path written."""
        lines = [
            f"mode {self.mode}: {_SCHEMES[self.mode]}",
            f"size: {self.file_mib:.2f} MiB file ({self.tensor_mib:.2f} MiB of tensors), "
            f"source {self.source_file_mib:.2f} MiB ({self.file_mib / self.source_file_mib:.0%})",
            "output error vs source (max / mean abs; source mean magnitude):",
        ]
        for name, e in self.errors.items():
            lines.append(
                f"  {name:<8} {e['max_abs']:.3g} / {e['mean_abs']:.3g}  ({e['ref_mean_abs']:.3g})"
            )
        lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def quantize_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    mode: str,
    task_set: str | None = "mt30",
    scale_dtype: torch.dtype = torch.float32,
    rows: int = 256,
    seed: int = 0,
) -> QuantizeReport:
    """Quantize the world model in `source` (any checkpoint `load_world_model` reads) as `mode`
    and write it to `out` in our format, atomically; then load it back and measure it.

    The mode and scheme go into the file's metadata under `quantization`. Errors compare the
    reloaded model with the source on `rows` rows of `measure.probe_batch(seed)`.
    """
    source, out = resolve_checkpoint(source), Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"{out}: refusing to overwrite the source checkpoint")
    model = load_world_model(source, task_set)
    sd = quantize_state_dict(model.state_dict(), mode, scale_dtype)
    quantization = {
        "mode": mode,
        "scheme": _SCHEMES[mode],
        "source": source.name,
        "source_sha256": checkpoint_hash(source),
    }
    if mode == "int8":
        quantization["scale_dtype"] = str(scale_dtype).removeprefix("torch.")
    save_checkpoint(model, out, metadata={"quantization": quantization}, state_dict=sd)
    errors = output_errors(model, load_world_model(out, task_set), rows, seed)
    return QuantizeReport(
        mode=mode,
        source=str(source),
        out=str(out),
        source_file_mib=file_mib(source),
        file_mib=file_mib(out),
        tensor_mib=tensor_mib(sd),
        errors=errors,
    )
