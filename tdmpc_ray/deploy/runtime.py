"""Running an exported controller inside tdmpc_ray: its noise, drawn as `Planner` draws it, and a
`Policy` for the evaluation's lockstep runner.

A robot needs none of this (see the README an export writes); evaluation and the parity test
do: `planner_noise` draws every random input of a step from a generator in exactly the order and
shapes `tdmpc_ray.planning.Planner` draws them (block by block of `env_block` environments), so
an exported controller and a `Planner` with the same seed see the same noise.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.export.pt2_archive._package import PT2ArchiveReader

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


class ControllerError(ValueError):
    """A controller folder or program that is refused; the message names the file and why."""


PT2_OPS = frozenset(
    f"torch.ops.aten.{op}"
    for op in (
        "_assert_tensor_metadata.default abs.default add.Tensor argmax.default cat.default "
        "chunk.default clamp.default div.Tensor exp.default expand.default expm1.default "
        "flatten.using_ints full_like.default gather.default index.Tensor layer_norm.default "
        "linspace.default log.default matmul.default max.dim mean.dim mish.default mul.Tensor "
        "nan_to_num.default pow.Tensor_Scalar select.int sign.default slice.Tensor softmax.int "
        "sqrt.default squeeze.dim stack.default sub.Tensor sum.dim_IntList tanh.default "
        "to.dtype topk.default transpose.int unbind.int unsqueeze.default view.default "
        "zeros_like.default"
    ).split()
)
"""The operators a `.pt2` program may call: those `export_controller` emits (pure tensor math).
Anything else (a Python callable, a file-reading op like `aten.from_file`) is refused."""
_PT2_FIXED = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/sample_inputs/model.pt",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
}
_PT2_PAYLOAD = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MANIFEST_LIMIT = 16 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_in_folder(folder: Path, name: object, limit: int) -> bytes:
    """The bytes of file `name` directly inside `folder`: a plain file name (no path, no `..`),
    a regular file of at most `limit` bytes, not a symlink (opened with O_NOFOLLOW, so it cannot
    be swapped for one)."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise ControllerError(f"{folder / MANIFEST}: {name!r} is not a file name in the folder")
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as err:
        why = f"{err.strerror}; symlinks are not followed"
        raise ControllerError(f"{path}: refused ({why})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ControllerError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ControllerError(f"{path}: {info.st_size} bytes, more than the {limit} expected")
        return f.read(limit)


def read_manifest(folder: str | Path, sha256: str | None = None) -> dict:
    """The manifest of an export folder, checked against the pinned digest `sha256` when given;
    one clear line when it is missing, unreadable or not the pinned one."""
    folder = Path(folder)
    data = _read_in_folder(folder, MANIFEST, _MANIFEST_LIMIT)
    if sha256 is not None and _sha256(data) != sha256.lower():
        raise ControllerError(
            f"{folder / MANIFEST}: sha256 {_sha256(data)[:16]}... is not the pinned "
            f"{sha256[:16]}...: refusing the folder"
        )
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ControllerError(f"{folder / MANIFEST}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("programs"), dict):
        raise ControllerError(f"{folder / MANIFEST}: no 'programs' table (not an export folder?)")
    return manifest


def _program_entry(folder: Path, manifest: dict, name: str) -> dict:
    programs = manifest["programs"]
    entry = programs.get(name)
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
    ):
        raise ControllerError(
            f"{folder / MANIFEST}: no program {name!r} with sha256 and bytes; "
            f"it has {', '.join(programs)}"
        )
    return entry


def _verified_program(folder: Path, manifest: dict, name: str, pinned: bool) -> Program:
    """Program `name` of the folder: its file read from inside the folder, refused unless it is
    `.onnx` or the folder is `pinned` (a `.pt2` is code), its bytes checked against the
    manifest's sha256, then loaded from those same bytes (`load_program`)."""
    entry = _program_entry(folder, manifest, name)
    file = entry.get("file", name)
    data = _read_in_folder(folder, file, entry["bytes"])
    if not pinned and Path(file).suffix != ".onnx":
        raise ControllerError(
            f"{folder / file}: unpinned, only .onnx loads (a .pt2 is code; pass sha256= the "
            "digest `tdmpc-ray export` printed)"
        )
    if _sha256(data) != entry["sha256"]:
        raise ControllerError(
            f"{folder / file}: sha256 {_sha256(data)[:16]}... is not the manifest's "
            f"{entry['sha256'][:16]}...: refusing it"
        )
    return load_program(folder / file, data)


def _open_controller(folder: Path, program: str | None, sha256: str | None) -> tuple[dict, Program]:
    """The manifest of `folder`, checked against the pin `sha256`, and its program `program`
    (None: the first MPPI one, an `.onnx` one when unpinned) through `_verified_program`: the
    one path by which `load_controller` and `ExportedPolicy` load a program."""
    manifest = read_manifest(folder, sha256)
    if program is None:
        programs = manifest["programs"].items()
        mppi = [n for n, e in programs if isinstance(e, dict) and e.get("kind") == "mppi"]
        usable = mppi if sha256 is not None else [n for n in mppi if n.endswith(".onnx")]
        if not usable:
            raise ControllerError(
                f"{folder}: no MPPI .onnx program; pin the folder (sha256=...) to load a .pt2"
            )
        program = usable[0]
    return manifest, _verified_program(folder, manifest, program, pinned=sha256 is not None)


def load_controller(
    folder: str | Path, program: str | None = None, *, sha256: str | None = None
) -> Program:
    """A program of a controller folder, loaded without running anything from the folder.

    `sha256` pins the folder: the digest of its manifest.json, which `tdmpc-ray export` prints
    (the manifest holds each program's sha256, so the pin covers every program). Unpinned, only
    `.onnx` programs load: a `.pt2` is a torch.export program, and torch's loader builds Python
    from it, so it is treated as code (docs/security.md). `program` None picks the folder's first
    MPPI program (an `.onnx` one when unpinned).
    """
    return _open_controller(Path(folder), program, sha256)[1]


def check_pt2(data: bytes, path: str | Path) -> None:
    """Refuse a `.pt2` archive whose loading could run code or leave the tensor-math world:
    entries other than torch.export's own (AOTInductor libraries, legacy pickles, custom objects),
    compressed entries, weights or constants stored as pickles, sample inputs that need more
    than a weights-only unpickler, guard code, operators outside `PT2_OPS`, and control
    characters in the graph's strings (torch generates Python source from them)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
        reader = PT2ArchiveReader(io.BytesIO(data))
        names = reader.get_file_names()
    except (zipfile.BadZipFile, RuntimeError, ValueError) as err:
        raise ControllerError(f"{path}: not a torch.export archive ({err})") from None
    if sorted(names) != sorted(i.filename.partition("/")[2] for i in infos):
        raise ControllerError(f"{path}: its zip directory reads differently to torch and Python")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise ControllerError(f"{path}: compressed entries (torch.export.save writes none)")
    if sum(i.file_size for i in infos) > len(data):
        raise ControllerError(f"{path}: entries declare more bytes than the file holds")
    foreign = [n for n in names if n not in _PT2_FIXED and not _PT2_PAYLOAD.fullmatch(n)]
    if foreign or "models/model.json" not in names:
        raise ControllerError(f"{path}: unexpected entry {(foreign or ['(no model)'])[0]}")
    try:
        for config in (
            "data/weights/model_weights_config.json",
            "data/constants/model_constants_config.json",
        ):
            entries = json.loads(reader.read_string(config))["config"] if config in names else {}
            if any(e["use_pickle"] is not False for e in entries.values()):
                raise ControllerError(f"{path}: {config} stores pickled tensors (code could run)")
        graph = json.loads(reader.read_string("models/model.json"))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, ControllerError):
            raise
        raise ControllerError(f"{path}: malformed archive JSON ({type(err).__name__})") from None
    _check_graph(graph, path)
    try:
        torch.load(io.BytesIO(reader.read_bytes("data/sample_inputs/model.pt")), weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only: nothing ran; any failure refuses
        first = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise ControllerError(
            f"{path}: data/sample_inputs/model.pt is not plain tensors (it could run code): {first}"
        ) from None


def _check_graph(program: dict, path: str | Path) -> None:
    """`models/model.json` of a `.pt2`: no guard code, operators from `PT2_OPS` only, no control
    characters in any string."""
    if not isinstance(program, dict):
        raise ControllerError(f"{path}: models/model.json is not a JSON object")
    if program.get("guards_code"):
        raise ControllerError(f"{path}: carries guard code (Python that torch would run)")
    stack: list[object] = [program]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                stack.append(value)
            elif key in ("target", "as_operator") and value not in PT2_OPS:
                raise ControllerError(f"{path}: calls {str(value)[:80]!r}, not an allowed operator")
            elif isinstance(value, str) and _CONTROL.search(value):
                raise ControllerError(f"{path}: control characters in the graph's text")


def check_onnx(data: bytes, path: str | Path) -> None:
    """Refuse an `.onnx` model that reads tensors from other files (external data)."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf parsing only; nothing runs
        raise ControllerError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    tensors, graphs, nodes = [], [model.graph], [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            tensors += graph.initializer
            tensors += [t for s in graph.sparse_initializer for t in (s.values, s.indices)]
            nodes += graph.node
            continue
        for attr in nodes.pop().attribute:
            tensors += [attr.t, *attr.tensors]
            tensors += [
                t for s in (attr.sparse_tensor, *attr.sparse_tensors) for t in (s.values, s.indices)
            ]
            graphs += [attr.g, *attr.graphs]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise ControllerError(f"{path}: reads tensors from external files (refused)")


def load_program(path: str | Path, data: bytes | None = None) -> Program:
    """A callable running program `path` (`.pt2` through torch.export after `check_pt2`,
    `.onnx` through ONNX Runtime after `check_onnx`, one thread) on torch tensors, returning
    torch tensors. `data` is the file's bytes when already read (and checked): what is checked
    is what is loaded."""
    path = Path(path)
    if path.suffix not in (".pt2", ".onnx"):
        raise ControllerError(f"{path}: unknown program type {path.suffix!r} (not .pt2 or .onnx)")
    if data is None:
        data = _read_in_folder(path.parent, path.name, path.stat().st_size)
    if path.suffix == ".pt2":
        check_pt2(data, path)
        module = torch.export.load(io.BytesIO(data)).module(check_guards=False)

        def run_torch(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = module(*args)
            return out if isinstance(out, tuple) else (out,)

        return run_torch
    import onnxruntime as ort

    check_onnx(data, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run_onnx(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))

    return run_onnx


class ExportedPolicy:
    """An exported controller as an evaluation `Policy`: carries each environment's plan between
    steps and draws its noise like a `Planner` seeded with `seed`.

    `variant` names one of the manifest's programs (e.g. `mppi-fp32.pt2`, `prior-int8.onnx`).
    It is loaded exactly as `load_controller` loads it: a `.pt2` only when `sha256` pins the
    folder (the digest `export_controller` returns and `tdmpc-ray export` prints).
    """

    def __init__(self, folder: str | Path, variant: str, seed: int = 0, sha256: str | None = None):
        self.manifest, self.run = _open_controller(Path(folder), variant, sha256)
        self.mpc = self.manifest["programs"][variant]["kind"] == "mppi"
        self.cfg = PlannerConfig(**self.manifest["planner"])
        self.num_envs = self.manifest["num_envs"]
        self.action_dim = self.manifest["model"]["action_dim"]
        self.num_q = self.manifest["model"]["num_q"]
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
