"""Helpers shared by the benchmarks: timing, machine description and result files."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tdmpc_ray.atomic import write_json
from tdmpc_ray.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM throughput this machine reaches with `threads` threads (the practical peak)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        seconds = median_seconds(lambda: a @ b, repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def machine() -> dict:
    """CPU model, core count, load and torch threading: the context of every number."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "torch_threads_default": torch.get_num_threads(),
    }


def write_result(name: str, result: dict) -> Path:
    """Write `bench/results/<name>.json` with machine and provenance attached."""
    path = write_json(RESULTS / f"{name}.json", {**result, **provenance(), "machine": machine()})
    print(f"wrote {path}")
    return path
