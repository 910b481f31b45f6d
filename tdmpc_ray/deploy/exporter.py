"""`export_controller`: a world model as a folder a robot can run with torch (or ONNX Runtime)
alone: the MPPI step and the policy prior as programs, a JSON manifest and a README.

Formats: `.pt2` is a `torch.export` ExportedProgram (fp32 or bf16 matmuls), loaded with
`torch.export.load(path).module()`; `.onnx` (opset 18) is the same graph for ONNX Runtime or
TensorRT, and int8 is ONNX Runtime's dynamic quantization of it (int8 weights per output channel,
activations quantized per call, int8 matmul kernels). Choices and measurements: docs/decisions.md
and docs/results/deploy.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tdmpc_ray.atomic import write_json
from tdmpc_ray.deploy.controller import PRECISIONS, MPPIStep, PriorStep
from tdmpc_ray.deploy.runtime import MANIFEST, load_program
from tdmpc_ray.model import WorldModel, checkpoint_hash, load_world_model
from tdmpc_ray.model.published import resolve_checkpoint
from tdmpc_ray.planning import PlannerConfig
from tdmpc_ray.provenance import provenance
from tdmpc_ray.tasks.task_sets import task_dims

FORMAT = "tdmpc_ray.controller"
FORMAT_VERSION = 1
EXPORT_PRECISIONS = (*PRECISIONS, "int8")
ONNX_OPSET = 18
_ONNX_EXTRA = (
    "ONNX and int8 output need the deploy extra: pip install 'tdmpc-ray[deploy]' "
    "(or --precision fp32)"
)
_ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
"""What writing `.onnx` needs: torch's exporter (onnx, onnxscript) and the int8 quantizer."""


@dataclass(frozen=True)
class ExportConfig:
    """What `export_controller` writes."""

    planner: PlannerConfig = field(default_factory=PlannerConfig)
    """MPPI settings baked into the MPPI program (fixed shapes); `compile`/`env_block` unused."""
    num_envs: int = 1
    """Environments one call controls (a fixed batch dimension)."""
    precisions: tuple[str, ...] = ("fp32",)
    """Matmul precisions: fp32 and bf16 as `.pt2` (torch only), int8 as ONNX Runtime int8 `.onnx`
    (needs the deploy extra)."""
    onnx: bool = False
    """Also write the fp32 programs as `.onnx` (for ONNX Runtime / TensorRT)."""
    prior: bool = True
    """Also export the policy prior (a controller without planning)."""

    def check(self) -> None:
        """Fail with one line on settings that cannot export."""
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {self.num_envs}")
        unknown = [p for p in self.precisions if p not in EXPORT_PRECISIONS]
        if unknown or not self.precisions:
            raise ValueError(
                f"unknown precision {unknown[0] if unknown else '(none)'!r}; "
                f"choose from {', '.join(EXPORT_PRECISIONS)}"
            )
        onnx = self.onnx or "int8" in self.precisions
        if onnx and not all(importlib.util.find_spec(m) for m in _ONNX_MODULES):
            raise ValueError(_ONNX_EXTRA)
        cfg = self.planner
        if not cfg.mpc:
            raise ValueError("planner.mpc must be true (the prior is exported with prior=True)")
        cfg.check()


@dataclass
class _Program:
    kind: str
    precision: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    output_names: tuple[str, ...]
    reference: tuple[torch.Tensor, ...] = ()
    """The fp32 module's outputs on `inputs`."""


def _module(kind: str, model: WorldModel, cfg: ExportConfig, precision: str) -> torch.nn.Module:
    if kind == "mppi":
        return MPPIStep(model, cfg.planner, cfg.num_envs, precision).eval()
    return PriorStep(model, cfg.num_envs, precision).eval()


def _programs(model: WorldModel, cfg: ExportConfig) -> list[_Program]:
    """The modules to export with example inputs and the fp32 module's outputs on them; int8
    programs are the fp32 module (quantized after its ONNX export)."""
    B, O, A = cfg.num_envs, model.cfg.obs_dim, model.cfg.action_dim
    gen = torch.Generator().manual_seed(0)
    task = torch.arange(B) % (len(model.cfg.tasks) if model.cfg.multitask else 1)
    obs = torch.randn(B, O, generator=gen)
    step = MPPIStep(model, cfg.planner, B)
    mppi_inputs = {"obs": obs, "task": task, "plan": torch.zeros(B, cfg.planner.horizon, A)}
    for name, shape in step.noise.items():
        mppi_inputs[name] = torch.randn(*shape, generator=gen)
    mppi_inputs["gumbel"] = (
        -torch.empty(B, cfg.planner.num_elites).exponential_(generator=gen).log()
    )
    kinds = {"mppi": (mppi_inputs, ("action", "next_plan"))}
    if cfg.prior:
        kinds["prior"] = ({"obs": obs, "task": task, "eps": torch.zeros(B, A)}, ("action",))
    out = []
    for kind, (inputs, names) in kinds.items():
        with torch.no_grad():
            reference = _module(kind, model, cfg, "fp32")(*inputs.values())
        reference = reference if isinstance(reference, tuple) else (reference,)
        for precision in cfg.precisions:
            module = _module(kind, model, cfg, "fp32" if precision == "int8" else precision)
            out.append(_Program(kind, precision, module, inputs, names, reference))
    return out


def _export_pt2(program: _Program, path: Path) -> None:
    exported = torch.export.export(program.module, tuple(program.inputs.values()))
    torch.export.save(exported, str(path))


class _DropNotice(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _quiet_onnx_tools() -> Iterator[None]:
    """Hide the ONNX tools' notices that ask nothing of a user, and only those: torch's exporter
    skipping torchvision's operators (a controller has none), ONNX Runtime's advice to
    pre-process a model before quantizing (shape inference and graph optimisation; each int8
    program is checked against the fp32 module without it) and a FutureWarning torch raises
    inside its own exporter."""
    notices = (
        (
            logging.getLogger("torch.onnx._internal.exporter._registration"),
            _DropNotice("torchvision is not installed"),
        ),
        (logging.getLogger(), _DropNotice("Please consider to run pre-processing")),
    )
    for logger, notice in notices:
        logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
            )
            yield
    finally:
        for logger, notice in notices:
            logger.removeFilter(notice)


def _export_onnx(program: _Program, path: Path) -> None:
    with _quiet_onnx_tools():
        torch.onnx.export(
            program.module,
            tuple(program.inputs.values()),
            str(path),
            dynamo=True,
            input_names=list(program.inputs),
            output_names=list(program.output_names),
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )
    _strip_onnx(path)


def _strip_onnx(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (source paths, stack traces, FX text): a third
    of a full-MPPI int8 file, and nothing a runtime reads."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def _quantize_int8(fp32_onnx: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_onnx_tools():
        quantize_dynamic(fp32_onnx, path, per_channel=True, weight_type=QuantType.QInt8)
    _strip_onnx(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensor_spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _entry(program: _Program, path: Path) -> dict:
    """The manifest entry of a written program, after loading it back and running it once on its
    example inputs (its largest difference from the fp32 module's outputs is recorded)."""
    outputs = load_program(path)(*program.inputs.values())
    error = max(float((o - r).abs().max()) for o, r in zip(outputs, program.reference, strict=True))
    return {
        "file": path.name,
        "kind": program.kind,
        "precision": program.precision,
        "format": "torch.export" if path.suffix == ".pt2" else "onnx",
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "inputs": [_tensor_spec(n, t) for n, t in program.inputs.items()],
        "outputs": [_tensor_spec(n, o) for n, o in zip(program.output_names, outputs, strict=True)],
        "max_abs_diff_vs_fp32": error,
    }


def _tasks(model: WorldModel) -> list[dict]:
    masks = model.action_masks.cpu()
    rows = []
    for i, name in enumerate(model.cfg.tasks):
        obs_dim, action_dim = task_dims(name)
        rows.append(
            {
                "id": i if model.cfg.multitask else 0,
                "name": name,
                "obs_dim": obs_dim,
                "action_dim": action_dim,
                "action_mask": masks[i if model.cfg.multitask else 0].tolist(),
            }
        )
    return rows


def export_controller(
    checkpoint: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig | None = None
) -> tuple[dict, str]:
    """Export the world model in `checkpoint` (any layout `load_world_model` reads) as a
    controller folder `out`; return its manifest and the folder's pin, the sha256 of the
    manifest.json written (what `load_controller` and `ExportedPolicy` need to load a `.pt2`).

    `out` must not exist or be empty; the folder appears whole or not at all. Every program is
    loaded back and run once before the folder is published.
    """
    cfg = cfg or ExportConfig()
    cfg.check()
    checkpoint, out = resolve_checkpoint(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder")
    model = load_world_model(checkpoint, task_set=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # 0777 less the umask, as any folder a user makes (mkdtemp's would be 0700)
    try:
        programs = {}
        for program in _programs(model, cfg):
            stem = f"{program.kind}-{program.precision}"
            paths = []
            if program.precision in PRECISIONS:
                _export_pt2(program, tmp / f"{stem}.pt2")
                paths.append(tmp / f"{stem}.pt2")
            if program.precision == "int8" or (cfg.onnx and program.precision == "fp32"):
                fp32_onnx = tmp / f"{program.kind}-fp32.onnx"
                if not fp32_onnx.exists():
                    _export_onnx(program, fp32_onnx)
                if program.precision == "int8":
                    _quantize_int8(fp32_onnx, tmp / f"{stem}.onnx")
                    paths.append(tmp / f"{stem}.onnx")
                    if not cfg.onnx:
                        fp32_onnx.unlink()
                else:
                    paths.append(fp32_onnx)
            for path in paths:
                programs[path.name] = _entry(program, path)
        manifest = _manifest(model, checkpoint, cfg, programs)
        write_json(tmp / MANIFEST, manifest)
        pin = _sha256(tmp / MANIFEST)
        (tmp / "README.md").write_text(readme(manifest))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest, pin


def _manifest(model: WorldModel, checkpoint: Path, cfg: ExportConfig, programs: dict) -> dict:
    planner = {
        k: v
        for k, v in dataclasses.asdict(cfg.planner).items()
        if k not in ("compile", "env_block")
    }
    m = model.cfg
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": {"checkpoint": checkpoint.name, "sha256": checkpoint_hash(checkpoint)},
        "model": {
            "task_set": m.task_set,
            "model_size": m.model_size,
            "obs_dim": m.obs_dim,
            "action_dim": m.action_dim,
            "latent_dim": m.latent_dim,
            "num_q": m.num_q,
            "parameters": model.total_params,
        },
        "tasks": _tasks(model),
        "num_envs": cfg.num_envs,
        "planner": planner,
        "programs": programs,
        "noise": {
            "normal": "every noise input but gumbel is standard normal",
            "gumbel": "standard Gumbel: -log(E), E ~ Exponential(1)",
            "action_noise": "zeros: the plan's action (TD-MPC2 eval_mode); normal: plus the "
            "plan's std as noise (TD-MPC2's evaluate.py)",
            "eps": "prior only: zeros give the mean action",
        },
        "provenance": provenance(),
    }


def readme(manifest: dict) -> str:
    """The README written beside the programs: what they are and the control loop, with torch
    for a `.pt2` program and with ONNX Runtime for an `.onnx` one."""
    p, B = manifest["planner"], manifest["num_envs"]
    files = "\n".join(
        f"| `{name}` | {e['kind']} | {e['precision']} | {e['format']} | {e['bytes'] / 2**20:.2f} |"
        for name, e in manifest["programs"].items()
    )
    mppi = [n for n, e in manifest["programs"].items() if e["kind"] == "mppi"]
    loops = []
    pt2 = next((n for n in mppi if n.endswith(".pt2")), None)
    if pt2:
        loops.append(
            _LOOP.format(program=pt2, load="step = torch.export.load(io.BytesIO(data)).module()")
        )
    onnx = next((n for n in mppi if n.endswith(".onnx")), None)
    if onnx:
        loops.append(_LOOP.format(program=onnx, load=_ORT_LOAD))
    return f"""# TD-MPC2 controller

Exported by `tdmpc-ray export` from `{manifest["source"]["checkpoint"]}`
(sha256 `{manifest["source"]["sha256"][:16]}`). Runs with torch alone (`.pt2`) or ONNX Runtime
(`.onnx`); `manifest.json` holds every input's shape, the tasks with their ids, observation and
action dims and action masks, the MPPI settings and provenance.

| file | kind | precision | format | MiB |
|---|---|---|---|---|
{files}

One call controls {B} environment(s). MPPI: {p["iterations"]} iterations, {p["num_samples"]}
samples, {p["num_elites"]} elites, {p["num_pi_trajs"]} policy trajectories, horizon
{p["horizon"]}. Observations go in zero-padded to {manifest["model"]["obs_dim"]} dims; actions
come out padded to {manifest["model"]["action_dim"]} (apply the task's first `action_dim`). The
step is a pure function: the plan it returns is the next call's warm start (zeros at an
episode's start), and every random draw is an input. The policy prior is one call,
`action = prior(obs, task, eps)`, with `eps` zeros for its mean action.

**Trust.** A `.pt2` file is code: torch's loader unpickles parts of it and generates Python from
it, so load one only from a source you trust. Pin this folder: `sha256sum manifest.json` must
print the digest `tdmpc-ray export` printed (`export_controller` returns it); the manifest holds
every program's sha256, which the loops below check before loading. With tdmpc_ray installed,
`tdmpc_ray.deploy.runtime.load_controller(folder, sha256=...)` (and `ExportedPolicy`, for
evaluation) does both checks and also refuses archives with pickled entries or operators the
exporter never writes; unpinned, both load only the `.onnx` programs. For a folder received from
elsewhere, use the `.onnx` programs (ONNX Runtime runs no Python from the file).

{"".join(loops)}"""


_LOOP = """```python
import hashlib
import io
import json
import torch

manifest = json.load(open("manifest.json"))             # its sha256: the digest you pinned
program = "{program}"
data = open(program, "rb").read()
if hashlib.sha256(data).hexdigest() != manifest["programs"][program]["sha256"]:
    raise SystemExit(f"{{program}}: not the file manifest.json lists; not loading it")
inputs = manifest["programs"][program]["inputs"]
shapes = {{i["name"]: i["shape"] for i in inputs}}
{load}
task = torch.zeros(shapes["task"], dtype=torch.long)  # ids: manifest["tasks"]
plan = torch.zeros(shapes["plan"])                      # warm start: zeros at an episode's start
for t in range(3):                                      # your control loop
    obs = torch.zeros(shapes["obs"])                    # your observation, zero-padded
    noise = {{n: torch.randn(s) for n, s in shapes.items() if n not in ("obs", "task", "plan")}}
    noise["gumbel"] = -torch.empty(shapes["gumbel"]).exponential_().log()
    noise["action_noise"].zero_()                       # the plan's action, no exploration
    action, plan = step(obs, task, plan, *noise.values())
```

"""
_ORT_LOAD = """import onnxruntime
session = onnxruntime.InferenceSession(data)


def step(*args):
    feed = {i["name"]: a.numpy() for i, a in zip(inputs, args)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]

"""
