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


def machine() -> dict:
    """CPU model, core count, load and torch threading: the context of every number."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "torch_threads_default": torch.get_num_threads(),
    }


def stamped(result: dict) -> dict:
    """`result` with what every bench result records about where it ran: versions, git commit,
    host and time (`provenance`) and the machine (`machine`)."""
    return {**result, **provenance(), "machine": machine()}


def write_result(name: str, result: dict) -> Path:
    """Write `bench/results/<name>.json`, `stamped`."""
    path = write_json(RESULTS / f"{name}.json", stamped(result))
    print(f"wrote {path}")
    return path


def write_random_checkpoint(
    path: Path, model_size: int = 317, task_set: str = "mt30", dtype: torch.dtype = torch.float32
) -> Path:
    """A world model with random weights (TD-MPC2's initialisation scales) saved as the public
    TD-MPC2 code saves one (new layout: `_Qs.params`, `_detach_Qs_params` sharing its storage,
    `_target_Qs_params`, tensordict bookkeeping, `log_std_*`): a 317M teacher's shapes and file
    without downloading it. Built tensor by tensor, so it costs only its own memory."""
    from tdmpc_ray.model import WorldModel, model_config
    from tdmpc_ray.tasks import get_task_set

    with torch.device("meta"):
        model = WorldModel(model_config(model_size, task_set))
    gen = torch.Generator().manual_seed(0)
    sd: dict = {}
    for key, meta in model.state_dict().items():
        if key.endswith("ln.weight"):
            value = torch.ones(meta.shape, dtype=dtype)
        elif key.endswith("bias"):
            value = torch.zeros(meta.shape, dtype=dtype)
        elif key == "_action_masks":
            value = torch.zeros(meta.shape)
            for task, dims in enumerate(get_task_set(task_set).action_dims):
                value[task, :dims] = 1.0
        else:
            value = (torch.randn(meta.shape, generator=gen) * 0.02).to(dtype)
        sd[key.replace("_target_Qs.params.", "_target_Qs_params.")] = value
    for key in [k for k in sd if k.startswith("_Qs.params.")]:
        sd["_detach_Qs_params." + key[len("_Qs.params.") :]] = sd[key]
    for group in ("_Qs.params", "_detach_Qs_params", "_target_Qs_params"):
        sd[f"{group}.__batch_size"] = torch.Size([model.cfg.num_q])
        sd[f"{group}.__device"] = None
    sd["log_std_min"], sd["log_std_dif"] = torch.tensor(-10), torch.tensor(12)
    torch.save({"model": sd}, path)
    return path
