"""Quantization of the published student: sizes, output errors and CPU inference speed, written to
bench/results/quantize.json.

    python bench/quantize.py [--source mt30-1M-fp16|PATH] [--threads 1]

1. Quantizes the source (the paper's published FP16 student) in every mode, and `int8` once more
   with fp16 scales: file and tensor MiB, output errors against the source on the 256-row probe
   batch, time to load (dequantize) each file. For the paper's modes, also the published file's
   size and how many stored values differ from it.
2. Speed on CPU, every ratio against fp32 eager in the same run: `Planner.act` for 2 environments
   (TD-MPC2's MPPI defaults) and one call of every head on 1024 rows, for the source model and
   each mode's fast path (`inference_autocast` auto: the dequantized fp32 model), then bf16 and
   fp16 autocast; and one 384x384 linear layer in fp32, bf16 and int8 (dynamic per-row activation
   quantization + `torch._int_mm`) at 1, 32 and 1024 rows, with its error.
3. Output errors of bf16/fp16 autocast against fp32 on the probe batch, for comparison with int8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from tdmpc_ray.model import WorldModel, checkpoint_hash, load_world_model  # noqa: E402
from tdmpc_ray.model.published import find_published, resolve_checkpoint  # noqa: E402
from tdmpc_ray.planning import Planner, PlannerConfig  # noqa: E402
from tdmpc_ray.quantize import MODES  # noqa: E402
from tdmpc_ray.quantize.export import quantize_checkpoint  # noqa: E402
from tdmpc_ray.quantize.inference import inference_autocast  # noqa: E402
from tdmpc_ray.quantize.measure import OUTPUTS, probe_batch, probe_outputs  # noqa: E402

PUBLISHED = {"mixed": "mt30-1M-mixed", "int8-paper": "mt30-1M-int8"}


def _interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median and best of `repeats` timed calls of each function, in ms, after one warm-up call
    each. The functions take turns, so a load change on a shared machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()
    }


def _with_speedups(timings: dict[str, dict], base: str) -> dict[str, dict]:
    """`timings` with each entry's speed-up over entry `base` added, from the best times (other
    jobs on a shared machine only ever add time)."""
    for t in timings.values():
        t["speedup_vs_fp32"] = timings[base]["min_ms"] / t["min_ms"]
    return timings


def _stored_value_mismatches(ours: Path, published: Path) -> int:
    """Values that differ between our file and the published one, both dequantized."""
    a, b = load_world_model(ours).state_dict(), load_world_model(published).state_dict()
    return sum(int((a[k] != b[k]).sum()) for k in b)


def bench_modes(source: Path, tmp: Path) -> dict:
    """Sizes and errors of every mode (and int8 with fp16 scales), and the time to load each
    file (read + dequantize to fp32) against loading the source."""
    variants = {mode: (mode, torch.float32) for mode in MODES}
    variants["int8-fp16-scales"] = ("int8", torch.float16)
    out = {}
    for name, (mode, scale_dtype) in variants.items():
        report = quantize_checkpoint(source, tmp / f"{name}.pt", mode, scale_dtype=scale_dtype)
        out[name] = {k: v for k, v in report.to_dict().items() if k not in ("source", "out")}
        published = find_published(PUBLISHED[name]) if name in PUBLISHED else None
        if published is not None:
            out[name]["published_file_mib"] = published.stat().st_size / 2**20
            out[name]["value_mismatches_vs_published"] = _stored_value_mismatches(
                tmp / f"{name}.pt", published
            )
    loads = {name: lambda p=tmp / f"{name}.pt": load_world_model(p) for name in variants}
    loads["source"] = lambda: load_world_model(source)
    for name, timing in _interleaved_ms(loads, 10).items():
        out.setdefault(name, {})["load"] = timing
    return out


def _planner_act(model: WorldModel, precision: str) -> Callable[[], object]:
    planner = Planner(model, PlannerConfig(), num_envs=2, seed=0)
    obs = torch.randn(2, model.cfg.obs_dim, generator=torch.Generator().manual_seed(0))
    task = torch.tensor([0, 5])

    def act() -> torch.Tensor:
        with inference_autocast("cpu", precision):
            return planner.act(obs, task, eval_mode=True)

    return act


def _heads(model: WorldModel, precision: str) -> Callable[[], object]:
    batch = probe_batch(model, rows=1024, seed=1)

    def heads() -> dict:
        with inference_autocast("cpu", precision):
            return probe_outputs(model, batch)

    return heads


def bench_speed(source: Path, tmp: Path, repeats: int) -> dict:
    """Planner and heads timings: source fp32, each mode's fast path, bf16/fp16 autocast."""
    runs = [("fp32 eager (source)", source, "fp32")]
    runs += [(f"{mode} fast path (auto)", tmp / f"{mode}.pt", "auto") for mode in MODES]
    runs += [("bf16 autocast (source)", source, "bf16"), ("fp16 autocast (source)", source, "fp16")]
    models = {name: (load_world_model(path), precision) for name, path, precision in runs}
    planner = {name: _planner_act(m, precision) for name, (m, precision) in models.items()}
    heads = {name: _heads(m, precision) for name, (m, precision) in models.items()}
    base = runs[0][0]
    return {
        "planner_act_2_envs": _with_speedups(_interleaved_ms(planner, repeats), base),
        "heads_1024_rows": _with_speedups(_interleaved_ms(heads, 3 * repeats), base),
    }


def _int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """Linear with int8 weights and per-row dynamically quantized int8 activations."""
    x_scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    xq = torch.round(x / x_scale).to(torch.int8)
    return torch._int_mm(xq, q.t()).float() * x_scale * scale.t() + bias


def bench_linear(repeats: int) -> dict:
    """One 384x384 linear layer in fp32, bf16 and int8 matmuls: time and error against fp32."""
    gen = torch.Generator().manual_seed(0)
    w, bias = torch.randn(384, 384, generator=gen) * 0.05, torch.randn(384, generator=gen) * 0.1
    scale = w.abs().amax(-1, keepdim=True) / 127
    q = torch.round(w / scale).to(torch.int8)
    wb, bb = w.bfloat16(), bias.bfloat16()
    out = {}
    for rows in (1, 32, 1024):
        x = torch.randn(rows, 384, generator=gen)
        fns = {
            "fp32": lambda x=x: F.linear(x, w, bias),
            "bf16": lambda x=x: F.linear(x.bfloat16(), wb, bb).float(),
            "int8": lambda x=x: _int8_linear(x, q, scale, bias),
        }
        entry = _with_speedups(_interleaved_ms(fns, 20 * repeats), "fp32")
        for name, fn in fns.items():
            entry[name]["max_abs_err"] = (fn() - fns["fp32"]()).abs().max().item()
        out[f"{rows}_rows"] = entry
    return out


def autocast_errors(source: Path) -> dict:
    """Output errors of bf16 and fp16 autocast against fp32 on the probe batch."""
    model = load_world_model(source)
    batch = probe_batch(model)
    ref = probe_outputs(model, batch)
    out = {}
    for precision in ("bf16", "fp16"):
        with inference_autocast("cpu", precision):
            got = probe_outputs(model, batch)
        out[precision] = {}
        for name in OUTPUTS:
            err = (got[name].float() - ref[name]).abs()
            out[precision][name] = {"max_abs": err.max().item(), "mean_abs": err.mean().item()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    source = args.source
    if not source.is_file():
        raise SystemExit(f"{source}: no such checkpoint")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tdmpc_ray_bench_quantize_") as tmp:
        modes = bench_modes(source, Path(tmp))
        speed = bench_speed(source, Path(tmp), args.repeats)
    result = {
        "source": {"path": source.name, "sha256": checkpoint_hash(source)},
        "modes": modes,
        "cpu_speed": speed,
        "linear_384x384": bench_linear(args.repeats),
        "autocast_errors_vs_fp32": autocast_errors(source),
        "cpu_features": {
            "torch_threads": args.threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_bf16_supported": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        },
    }
    write_result("quantize", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
