"""Running an exported controller inside tdmpc_ray: its noise, drawn as `Planner` draws it, and a
`Policy` for the evaluation's lockstep runner.

A robot needs none of this (see the README an export writes); evaluation and the parity test
do: `planner_noise` draws every random input of a step from a generator in exactly the order and
shapes `tdmpc_ray.planning.Planner` draws them (block by block of `env_block` environments), so
an exported controller and a `Planner` with the same seed see the same noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tdmpc_ray.deploy.controller import NoiseShapes
from tdmpc_ray.planning import PlannerConfig

MANIFEST = "manifest.json"
Program = Callable[..., tuple[torch.Tensor, ...]]


def _blocks(num_envs: int, env_block: int) -> list[int]:
    return [min(env_block, num_envs - s) for s in range(0, num_envs, env_block)]


def planner_noise(
    generator: torch.Generator,
    cfg: PlannerConfig,
    num_envs: int,
    action_dim: int,
    num_q: int,
    eval_mode: bool,
) -> dict[str, torch.Tensor]:
    """The random inputs of one MPPI step (`NoiseShapes`), drawn as `Planner.act` draws them on
    CPU; `action_noise` is zeros in eval_mode (the Planner then draws none)."""
    H, A, S, P, E = cfg.horizon, action_dim, cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites
    parts: dict[str, list[torch.Tensor]] = {n: [] for n, _ in NoiseShapes.of(cfg, 1, A).items()}
    for b in _blocks(num_envs, cfg.env_block or 2):
        if P > 0:
            parts["pi_noise"].append(torch.stack([_randn(generator, b, P, A) for _ in range(H)]))
        sample, value = [], []
        for _ in range(cfg.iterations):
            sample.append(_randn(generator, H, b, S - P, A))
            torch.randperm(num_q, generator=generator)
            value.append(_randn(generator, b, S, A))
        parts["sample_noise"].append(torch.stack(sample))
        parts["value_noise"].append(torch.stack(value))
        parts["gumbel"].append(-torch.empty(b, E).exponential_(generator=generator).log())
        parts["action_noise"].append(torch.zeros(b, A) if eval_mode else _randn(generator, b, A))
    env_dim = {"pi_noise": 1, "sample_noise": 2, "value_noise": 1, "gumbel": 0, "action_noise": 0}
    return {name: torch.cat(p, env_dim[name]) for name, p in parts.items()}


def prior_noise(
    generator: torch.Generator, cfg: PlannerConfig, num_envs: int, action_dim: int, eval_mode: bool
) -> torch.Tensor:
    """The prior's noise [B, A] as `Planner.act` with mpc=False draws it (zeros in eval_mode)."""
    eps = torch.cat(
        [_randn(generator, b, 1, action_dim) for b in _blocks(num_envs, cfg.env_block or 2)]
    ).squeeze(1)
    return eps * (not eval_mode)


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder; one clear line when it is missing or unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a `tdmpc-ray export` folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def load_program(path: str | Path) -> Program:
    """A callable running the program file `path` (`.pt2` through torch.export, `.onnx` through
    ONNX Runtime, one thread) on torch tensors and returning torch tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such program file")
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()

        def run_torch(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = module(*args)
            return out if isinstance(out, tuple) else (out,)

        return run_torch
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
            return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))

        return run_onnx
    raise ValueError(f"{path}: unknown program type {path.suffix!r} (expected .pt2 or .onnx)")


class ExportedPolicy:
    """An exported controller as an evaluation `Policy`: carries each environment's plan between
    steps and draws its noise like a `Planner` seeded with `seed`.

    `variant` names one of the manifest's programs (e.g. `mppi-fp32`, `prior-fp32`).
    """

    def __init__(self, folder: str | Path, variant: str, seed: int = 0):
        self.manifest = read_manifest(folder)
        programs = self.manifest["programs"]
        if variant not in programs:
            raise ValueError(f"{folder}: no program {variant!r}; it has {', '.join(programs)}")
        entry = programs[variant]
        self.mpc = entry["kind"] == "mppi"
        self.cfg = PlannerConfig(**self.manifest["planner"])
        self.num_envs = self.manifest["num_envs"]
        self.action_dim = self.manifest["model"]["action_dim"]
        self.num_q = self.manifest["model"]["num_q"]
        self.run = load_program(Path(folder) / entry["file"])
        self.generator = torch.Generator().manual_seed(seed)
        self.plan = torch.zeros(self.num_envs, self.cfg.horizon, self.action_dim)

    def reset(self, envs: list[int] | None = None) -> None:
        """Forget the plans of `envs` (all when None)."""
        if envs is None:
            self.plan.zero_()
        else:
            self.plan[torch.as_tensor(envs, dtype=torch.long)] = 0

    @torch.no_grad()
    def act(self, obs: torch.Tensor, task: torch.Tensor, eval_mode: bool = False) -> torch.Tensor:
        """Actions [B, A] for observations [B, O] and task ids [B]."""
        obs, task = obs.float(), torch.as_tensor(task).long()
        if obs.shape[0] != self.num_envs or task.shape != (self.num_envs,):
            raise ValueError(f"expected obs [{self.num_envs}, D] and task [{self.num_envs}]")
        B, A = self.num_envs, self.action_dim
        if not self.mpc:
            eps = prior_noise(self.generator, self.cfg, B, A, eval_mode)
            return self.run(obs, task, eps)[0]
        noise = planner_noise(self.generator, self.cfg, B, A, self.num_q, eval_mode)
        action, self.plan = self.run(obs, task, self.plan, *noise.values())
        return action
