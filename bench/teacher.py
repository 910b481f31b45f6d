"""How a training worker's query best reaches the teacher actor on CPU, and what the actor serves.

`transport`: round-trip ms of one query of N rows (obs, action, task) to an actor that answers
with one float per row, per way of passing it: three torch tensors (what `TeacherPool` sends),
one packed float tensor, numpy arrays (Ray's zero-copy pickle-5 buffers), and `ray.put` once then
the reference. `serve`: rows/s of the `TeacherActor` with the published 1M student, fp32 and bf16,
for the paper's query (256 rows) and a large one.

    python bench/teacher.py
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, write_result  # noqa: E402

from tdmpc_ray.model import checkpoint_hash  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.train.teacher import teacher_pool  # noqa: E402

ROWS = (256, 1024, 8192, 65536)


@ray.remote(num_cpus=0)
class Echo:
    """Answers a query with one float per row, like a teacher's reward, without computing."""

    def rows(self, *parts) -> torch.Tensor:
        first = parts[0]
        return torch.as_tensor(first[:, :1]).clone()


def _ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of `fn()` after one warm-up call."""
    return round(1000 * median_seconds(fn, repeats), 3)


def _ways(echo, obs: torch.Tensor, action: torch.Tensor, task: torch.Tensor) -> dict:
    """One query per way of passing the rows."""
    packed = torch.cat([obs, action, task.unsqueeze(1).float()], 1)
    return {
        "tensors": lambda: ray.get(echo.rows.remote(obs, action, task)),
        "packed_tensor": lambda: ray.get(echo.rows.remote(packed)),
        "numpy": lambda: ray.get(echo.rows.remote(obs.numpy(), action.numpy(), task.numpy())),
        "ray_put": lambda: ray.get(echo.rows.remote(ray.put(packed))),
    }


def transport() -> list[dict]:
    echo = Echo.remote()
    rows = []
    for n in ROWS:
        gen = torch.Generator().manual_seed(0)
        obs, action = torch.randn(n, 24, generator=gen), torch.rand(n, 6, generator=gen)
        task = torch.randint(0, 30, (n,), generator=gen)
        row = {"rows": n, "query_bytes": n * 31 * 4}
        row.update({f"{name}_ms": _ms(fn) for name, fn in _ways(echo, obs, action, task).items()})
        rows.append(row)
        print(row, flush=True)
    return rows


def serve(checkpoint: Path) -> list[dict]:
    digest = checkpoint_hash(checkpoint)
    rows = []
    for precision in ("fp32", "bf16"):
        pool = teacher_pool(str(checkpoint), digest, num_gpus=0.0, precision=precision)
        for n in (256, 8192):
            gen = torch.Generator().manual_seed(0)
            obs, action = torch.randn(n, 24, generator=gen), torch.rand(n, 6, generator=gen)
            task = torch.randint(0, 30, (n,), generator=gen)
            ms = _ms(
                lambda pool=pool, o=obs, a=action, t=task: ray.get(
                    pool.outputs(o, a, t, ("reward",))
                ),
                10,
            )
            rows.append(
                {
                    "precision": precision,
                    "rows": n,
                    "ms_per_query": ms,
                    "rows_per_s": round(n / ms * 1000),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(1)
    ray.init(num_cpus=2, logging_level=logging.WARNING)
    checkpoint = resolve_checkpoint("mt30-1M-fp16")
    write_result(
        "teacher",
        {
            "what": "teacher queries on CPU: round-trip ms per way of passing N rows to an actor, and the "
            "TeacherActor's rows/s with the published 1M student (fp32, bf16)",
            "command": "python bench/teacher.py",
            "transport": transport(),
            "serve": serve(checkpoint),
        },
    )


if __name__ == "__main__":
    main()
