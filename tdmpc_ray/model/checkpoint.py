"""Reading and writing world-model checkpoints in every layout found in the wild.

Layouts read by `load_world_model`:
- TD-MPC2 old layout: Q ensembles as flat `_Qs.params.N` / `_target_Qs.params.N` lists.
- TD-MPC2 new layout: `_Qs.params.K.weight`, `_detach_Qs_params.*`, `_target_Qs_params.*`, plus
  tensordict bookkeeping entries (`__batch_size`, `__device`) and `log_std_*` buffers.
- Our own format: `{"format": "tdmpc_ray", "config": ..., "model": ...}` written by
  `save_checkpoint`.
Each may be wrapped as `{"model": state_dict}` or be a bare state dict, in fp32, fp16, or the
paper's `torch.qint8` tensors; everything is dequantized to fp32 on load. Files are always read
with `weights_only=True`: a checkpoint can never run code. Before `torch.load`, an archive with
compressed or overlapping records is refused (zip bombs); after it, tensors holding more than a
few times the file's bytes (repeated views) are refused before anything is cast.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import torch

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.model.config import MODEL_SIZES, ModelConfig, model_config
from tdmpc_ray.model.published import resolve_checkpoint, sha256_file
from tdmpc_ray.model.world_model import WorldModel
from tdmpc_ray.provenance import provenance
from tdmpc_ray.tasks.task_sets import TASK_SETS

FORMAT = "tdmpc_ray"
FORMAT_VERSION = 1
_LAYER_NAMES = ("weight", "bias", "ln.weight", "ln.bias")
_OLD_Q = re.compile(r"^_(target_)?Qs\.params\.(\d+)$")
SCALE_SUFFIX = ".__scale"
"""Key suffix of an int8 weight's per-output-channel scales: weight = int8 values * scales."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as a world model; the message names file and problem."""


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
_ALIAS_LIMIT = 4


def _format_problem(path: Path) -> str | None:
    """Why `path` cannot be a `torch.save` file, judged from its first bytes and, for an
    archive, its record table (None: it may be)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty file, not a checkpoint"
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                names = [i.filename for i in infos]
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            return f"damaged zip archive (truncated?): {err}"
        if not any(name.endswith("/data.pkl") for name in names):
            return f"a zip archive but not a PyTorch checkpoint (no data.pkl among {len(names)} entries)"
        return _archive_problem(infos, path.stat().st_size)
    if not head.startswith(_PICKLE_PROTO):
        return "not a PyTorch checkpoint (neither a torch.save archive nor a pickle)"
    return None


def _archive_problem(infos: list[zipfile.ZipInfo], file_size: int) -> str | None:
    """Why a torch.save archive's records cannot be loaded safely (None: they can). torch.save
    stores records uncompressed, so a compressed one is tampering (a zip bomb inflates in
    torch.load); stored records occupy the file, so declaring more bytes than the file holds
    means records overlap (the same bytes loaded many times)."""
    compressed = next((i for i in infos if i.compress_type != zipfile.ZIP_STORED), None)
    if compressed is not None:
        return (
            f"refused: record {compressed.filename} is compressed ({compressed.file_size} bytes "
            "inflated; torch.save never compresses: a zip bomb?)"
        )
    declared = sum(i.file_size for i in infos)
    if declared > file_size:
        return f"refused: records declare {declared} bytes, more than the file's {file_size}"
    return None


def _tensor_bytes_problem(obj: object, file_size: int) -> str | None:
    """Why the tensors of a loaded checkpoint would outgrow the file (None: they do not). Views
    can repeat one storage (stride 0, or many tensors on one record), and casting them to fp32
    would allocate every repeat; a real checkpoint holds at most `_ALIAS_LIMIT` times its file
    (TD-MPC2's new layout saves its Q parameters twice)."""
    total, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    limit = _ALIAS_LIMIT * file_size + (1 << 20)
    if total > limit:
        return (
            f"refused: its tensors hold {total / 2**20:.0f} MiB, more than {_ALIAS_LIMIT}x the "
            f"file's {file_size / 2**20:.1f} MiB (repeated views of the same bytes)"
        )
    return None


def _load_problem(err: Exception) -> str:
    """One line for an error of `torch.load(..., weights_only=True)`."""
    text = str(err)
    refused = _GLOBAL.search(text)
    if refused:
        return (
            f"refused: loading it would call {refused.group(1)} (a checkpoint may hold only "
            "tensors and plain values; nothing was run)"
        )
    detail = _UNPICKLER.search(text)
    first = detail.group(1) if detail else (text.strip().splitlines() or ["no detail"])[0]
    return f"not a readable PyTorch checkpoint (truncated or corrupted?): {type(err).__name__}: {first}"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file on the CPU without running code (`weights_only=True`); anything
    else (text, random bytes, a foreign zip, a pickle that would call code) fails with one line
    naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    problem = _format_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=".*(TypedStorage|quantized tensor creation|Detected pickle protocol).*",
            )
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only: nothing ran; any failure is the file's
        raise CheckpointError(f"{path}: {_load_problem(err)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    problem = _tensor_bytes_problem(obj, path.stat().st_size)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    return obj


def _to_float(t: torch.Tensor) -> torch.Tensor:
    if t.is_quantized:
        t = t.dequantize()
    return t.float() if t.is_floating_point() else t


def dequantize_state_dict(sd: dict, path: str | os.PathLike = "<state dict>") -> dict:
    """`sd` with every tensor in fp32: int8 weights times their `key + SCALE_SUFFIX` scales (the
    per-channel int8 that `tdmpc_ray.quantize` writes), `torch.qint8` tensors dequantized, fp16
    cast; non-tensor entries are kept as they are.
    """
    out = {}
    for key, value in sd.items():
        if key.endswith(SCALE_SUFFIX):
            if key[: -len(SCALE_SUFFIX)] not in sd:
                raise CheckpointError(f"{path}: scales {key} belong to no weight")
            continue
        is_int8 = isinstance(value, torch.Tensor) and value.dtype == torch.int8
        scale = sd.get(key + SCALE_SUFFIX)
        if scale is not None:
            if not is_int8 or scale.shape != (*value.shape[:-1], 1):
                raise CheckpointError(
                    f"{path}: {key}: expected an int8 weight [..., out, in] with scales "
                    f"[..., out, 1], found {getattr(value, 'dtype', type(value).__name__)} "
                    f"{list(getattr(value, 'shape', []))} with scales {list(scale.shape)}"
                )
            out[key] = value.float() * scale.float()
        elif is_int8:
            raise CheckpointError(f"{path}: {key}: int8 tensor without scales {key}{SCALE_SUFFIX}")
        else:
            out[key] = _to_float(value) if isinstance(value, torch.Tensor) else value
    return out


def canonical_state_dict(raw: dict, path: str | os.PathLike = "<state dict>") -> dict:
    """Map any supported layout onto our key names, tensors dequantized to fp32.

    Non-tensor entries (tensordict bookkeeping), duplicate detached Q parameters and
    meta-device placeholders are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in dequantize_state_dict(raw, path).items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith("_detach_Qs_params.") or key.startswith("_Qs.module."):
            continue
        if value.device.type == "meta":
            continue
        old = _OLD_Q.match(key)
        if old:
            layer, slot = divmod(int(old.group(2)), 4)
            prefix = "_target_Qs" if old.group(1) else "_Qs"
            key = f"{prefix}.params.{layer}.{_LAYER_NAMES[slot]}"
        elif key.startswith("_target_Qs_params."):
            key = "_target_Qs.params." + key[len("_target_Qs_params.") :]
        out[key] = value
    if not any(k.startswith("_Qs.params.") for k in out):
        raise CheckpointError(f"{path}: no Q-ensemble weights found: not a TD-MPC2 world model")
    return out


def _shape(sd: dict, key: str, path) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{path}: missing key {key}")
    return sd[key].shape


def infer_config(sd: dict, task_set: str | None = None, path="<state dict>") -> ModelConfig:
    """Read the model's dimensions off its tensor shapes (canonical keys)."""
    if "_task_emb.weight" in sd:
        num_tasks, task_dim = sd["_task_emb.weight"].shape
        by_count = {len(tasks): name for name, tasks in TASK_SETS.items()}
        if task_set is None:
            if num_tasks not in by_count:
                raise CheckpointError(
                    f"{path}: {num_tasks} task embeddings match no known task set"
                )
            task_set = by_count[num_tasks]
    else:
        task_dim = 0
        if task_set is None:
            raise CheckpointError(f"{path}: single-task checkpoint: pass task_set=<task name>")
    enc0 = _shape(sd, "_encoder.state.0.weight", path)
    dyn0 = _shape(sd, "_dynamics.0.weight", path)
    latent = _shape(sd, "_dynamics.2.weight", path)[0]
    enc_layers = sum(1 for k in sd if re.fullmatch(r"_encoder\.state\.\d+\.weight", k))
    dims = {
        "enc_dim": enc0[0],
        "mlp_dim": dyn0[0],
        "latent_dim": latent,
        "num_enc_layers": max(enc_layers, 2),
        "num_q": _shape(sd, "_Qs.params.0.weight", path)[0],
    }
    size = next(
        (s for s, preset in MODEL_SIZES.items() if all(dims[k] == preset[k] for k in preset)),
        None,
    )
    if size is None and dims["latent_dim"] == 512 and task_set == "mt30":
        size = 19 if dims["enc_dim"] == MODEL_SIZES[19]["enc_dim"] else None
    return ModelConfig(
        task_set=task_set,
        model_size=size,
        obs_dim=enc0[1] - task_dim,
        action_dim=dyn0[1] - latent - task_dim,
        task_dim=task_dim,
        num_bins=_shape(sd, "_reward.2.weight", path)[0],
        **dims,
    )


def _check_against(model: WorldModel, sd: dict, path) -> None:
    """Fail on the first missing, unexpected or mis-shaped key, naming it."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key == "_action_masks" and key not in sd:
            continue
        if key not in sd:
            raise CheckpointError(f"{path}: missing key {key} (expected shape {list(ref.shape)})")
        if sd[key].shape != ref.shape:
            raise CheckpointError(
                f"{path}: {key}: expected shape {list(ref.shape)}, found {list(sd[key].shape)}"
            )
    extra = sorted(set(sd) - set(expected) - {"log_std_min", "log_std_dif"})
    if extra:
        raise CheckpointError(f"{path}: unexpected key {extra[0]} ({len(extra)} unexpected)")
    if "_action_masks" in sd and not torch.equal(sd["_action_masks"], expected["_action_masks"]):
        raise CheckpointError(f"{path}: _action_masks do not match task set {model.cfg.task_set}")
    bounds = {
        "log_std_min": model.cfg.log_std_min,
        "log_std_dif": model.cfg.log_std_max - model.cfg.log_std_min,
    }
    for key, value in bounds.items():
        if key in sd and float(sd[key]) != value:
            raise CheckpointError(f"{path}: {key} is {float(sd[key])}, expected {value}")


def load_world_model(
    path: str | os.PathLike,
    task_set: str | None = "mt30",
    model_size: int | None = None,
    device: str | torch.device = "cpu",
) -> WorldModel:
    """Load any supported checkpoint as an fp32 `WorldModel` in eval mode.

    `path` may also name a published student (`mt30-1M-fp16`, ...: `tdmpc_ray.model.published`),
    fetched on first use. The size is inferred from tensor shapes unless `model_size` is given,
    in which case a checkpoint of another size fails with the key and both shapes. `task_set`
    None takes the task set from the number of task embeddings. Anything that is not a world
    model fails with one line naming the file.
    """
    path = resolve_checkpoint(path)
    raw = read_checkpoint(path)
    try:
        cfg, sd = _config_and_state(raw, task_set, model_size, path)
        model = WorldModel(cfg)
        _check_against(model, sd, path)
    except CheckpointError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: not a TD-MPC2 world model checkpoint ({type(err).__name__}: {first})"
        ) from None
    sd = {k: v for k, v in sd.items() if k not in ("log_std_min", "log_std_dif")}
    model.load_state_dict(sd, strict=False)
    return model.to(device).eval()


def _state_dict(obj: object, path, where: str) -> dict:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: {where} is not a state dict of named tensors")
    return obj


def _config_and_state(
    raw: dict, task_set: str | None, model_size: int | None, path
) -> tuple[ModelConfig, dict]:
    """The model config and canonical state dict of a checkpoint's contents."""
    if raw.get("format") == FORMAT:
        cfg = ModelConfig.from_dict(raw["config"])
        if task_set is not None and cfg.task_set != task_set:
            raise CheckpointError(
                f"{path}: checkpoint is for task set {cfg.task_set}, not {task_set}"
            )
        sd = canonical_state_dict(_state_dict(raw.get("model"), path, "its 'model' entry"), path)
    else:
        where = "its 'model' entry" if "model" in raw else "its content"
        sd = canonical_state_dict(_state_dict(raw.get("model", raw), path, where), path)
        cfg = infer_config(sd, task_set, path)
    if model_size is not None:
        cfg = model_config(model_size, cfg.task_set)
    return cfg, sd


def save_checkpoint(
    model: WorldModel,
    path: str | os.PathLike,
    metadata: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write `model` in our format (state dict + config + provenance), atomically.

    `state_dict` overrides the tensors written (e.g. a quantized copy); `metadata` is stored
    alongside the provenance (versions, git commit, time).
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "model": state_dict if state_dict is not None else model.state_dict(),
        "metadata": {**provenance(), **(metadata or {})},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file: identifies a teacher for cached labels."""
    return sha256_file(path)
