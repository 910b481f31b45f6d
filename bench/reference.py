"""The public TD-MPC2 reference as a same-run baseline, on one CPU core.

Nothing of the reference is in this repository. `cpu_copy` copies a checkout the user gives
(`git clone https://github.com/nicklashansen/tdmpc2`) into a temporary folder and, in that copy
only, points its hard-coded `cuda:0` at the CPU and turns off its capturable Adam (which needs
CUDA). `python bench/reference.py update|plan ...` then runs the reference's own agent, built
from its own `config.yaml`, and prints per-call times as JSON. It imports only the reference's
own dependencies (torch, tensordict 0.8.x, hydra, omegaconf), so it runs in the reference's
virtual environment:

    python3 -m venv REFVENV && REFVENV/bin/pip install torch==2.13.0 \\
        tensordict==0.8.3 hydra-core omegaconf numpy

(tensordict 0.8.x: newer ones fail on the reference's checkpoint conversion; the environment
the test fixtures were made in: tests/fixtures/README.md.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

CPU_EDITS = {
    "tdmpc2/tdmpc2.py": (
        ("torch.device('cuda:0')", "torch.device('cpu')"),
        ("device='cuda:0'", "device='cpu'"),
        ("capturable=True", "capturable=False"),
    ),
    "tdmpc2/common/scale.py": (("torch.device('cuda:0')", "torch.device('cpu')"),),
}
"""File -> (text, replacement) edits that move the reference to the CPU; each must match."""
MT30_ACTION_DIMS = [
    6,
    6,
    6,
    6,
    2,
    2,
    1,
    1,
    1,
    1,
    1,
    1,
    2,
    2,
    2,
    2,
    5,
    4,
    4,
    6,
    6,
    6,
    6,
    6,
    6,
    4,
    3,
    3,
    2,
    1,
]
"""Action dims of the MT30 tasks in the reference's task order (filled in by its env factory)."""


def cpu_copy(checkout: Path, dst: Path) -> Path:
    """A copy of the reference checkout in `dst` with `CPU_EDITS` applied; fails with one line
    when `checkout` is not one (or a file no longer holds a text the edits expect)."""
    checkout = Path(checkout)
    if not (checkout / "tdmpc2" / "tdmpc2.py").is_file():
        raise FileNotFoundError(
            f"{checkout}: not a checkout of nicklashansen/tdmpc2 (no tdmpc2/tdmpc2.py)"
        )
    shutil.copytree(checkout / "tdmpc2", dst / "tdmpc2", ignore=shutil.ignore_patterns("*.pyc"))
    for name, edits in CPU_EDITS.items():
        path = dst / name
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                raise ValueError(f"{checkout / name}: expected {old!r}; another reference version?")
            text = text.replace(old, new)
        path.write_text(text)
    return dst


def agent(copy: Path, batch_size: int):
    """The reference's TDMPC2 agent for MT30 at model size 1 on the CPU, eager (its `compile`
    off), with the config fields its environment factory would fill in."""
    sys.path.insert(0, str(copy / "tdmpc2"))
    import hydra.utils
    from omegaconf import OmegaConf

    hydra.utils.get_original_cwd = lambda: str(copy)
    from common.parser import parse_cfg
    from tdmpc2 import TDMPC2

    cfg = OmegaConf.load(copy / "tdmpc2" / "config.yaml")
    cfg.task, cfg.model_size, cfg.batch_size, cfg.compile = "mt30", 1, batch_size, False
    cfg = parse_cfg(cfg)
    cfg.obs_shape = {"state": (24,)}
    cfg.obs_shapes = [(24,)] * 30
    cfg.action_dim, cfg.action_dims = 6, MT30_ACTION_DIMS
    cfg.episode_length, cfg.episode_lengths = 500, [500] * 30
    cfg.seed_steps = 1000
    return TDMPC2(cfg)


def call_times(fn, calls: int, warmup: int) -> list[float]:
    """Wall times of `calls` calls of `fn()` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("update", "plan"))
    parser.add_argument("--copy", type=Path, required=True, help="a cpu_copy of the reference")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = agent(args.copy, args.batch)
    gen = torch.Generator().manual_seed(0)
    task = torch.randint(0, 30, (args.batch,), generator=gen)
    if args.what == "update":
        H = ref.cfg.horizon
        obs = torch.randn(H + 1, args.batch, 24, generator=gen)
        action = (torch.rand(H, args.batch, 6, generator=gen) * 2 - 1) * ref.model._action_masks[
            task
        ]
        reward = torch.rand(H, args.batch, 1, generator=gen)
        done = torch.zeros(H, args.batch, 1)
        fn = lambda: ref._update(obs, action, reward, done, task)  # noqa: E731
    else:
        obs = torch.randn(1, 24, generator=gen)
        one = torch.tensor([1])
        fn = lambda: ref.plan(obs, t0=False, eval_mode=False, task=one)  # noqa: E731
    times = call_times(fn, args.calls, args.warmup)
    print(json.dumps({"seconds": times}))


if __name__ == "__main__":
    main()
