"""Hostile files (issue 27). Controller folders: a tampered export never runs code, never reads
outside its folder, and fails with one line naming the file (the folder here is a tiny
hand-made export, a torch.export `.pt2` and an ONNX program of one matmul, so each case costs a
second). Atomic writes never touch the process umask."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from tdmpc_ray.atomic import write_json
from tdmpc_ray.deploy.runtime import ControllerError, ExportedPolicy, load_controller

PT2, ONNX = "prior-fp32.pt2", "prior-fp32.onnx"


class _Prior(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(24, 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, obs: torch.Tensor, task: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.tanh(obs @ self.w) + eps


class _Marker:
    """Unpickling it creates `path`: the proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx_prior(weight: torch.Tensor) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Add", ["t", "eps"], ["action"]),
        ],
        "prior",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 24]),
            helper.make_tensor_value_info("task", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("eps", TensorProto.FLOAT, [1, 6]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(weight.detach().numpy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def _write_folder(folder: Path, files: dict[str, bytes]) -> str:
    """Write `files` and a manifest listing their sha256s into `folder`; return the pin."""
    folder.mkdir(parents=True, exist_ok=True)
    programs = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entry = {"file": name, "kind": "prior", "sha256": _sha256(data), "bytes": len(data)}
        programs[name] = entry
    manifest = {
        "programs": programs,
        "planner": {},
        "num_envs": 1,
        "model": {"action_dim": 6, "num_q": 2},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return _sha256((folder / "manifest.json").read_bytes())


@pytest.fixture(scope="module")
def programs() -> dict[str, bytes]:
    """The tiny prior as `.pt2` and `.onnx` bytes."""
    pytest.importorskip("onnxruntime")
    module = _Prior()
    inputs = (torch.randn(1, 24), torch.zeros(1, dtype=torch.long), torch.zeros(1, 6))
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, inputs), buffer)
    return {PT2: buffer.getvalue(), ONNX: _onnx_prior(module.w)}


def _rewrite(archive: bytes, entry: str, data: bytes) -> bytes:
    """`archive` with its entry ending in `entry` replaced by `data` (stored, uncompressed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith(entry) else src.read(info))
    return out.getvalue()


def _model_json(archive: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(archive)) as src:
        name = next(n for n in src.namelist() if n.endswith("models/model.json"))
        return json.loads(src.read(name))


def _pickled(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _pickled_sample_inputs(archive: bytes, marker: Path) -> bytes:
    return _rewrite(archive, "data/sample_inputs/model.pt", _pickled((_Marker(marker),)))


def _pickled_weight(archive: bytes, marker: Path) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as src:
        name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(src.read(name))
    for entry in config["config"].values():
        entry["use_pickle"] = True
        archive = _rewrite(archive, "data/weights/" + entry["path_name"], _pickled(_Marker(marker)))
    return _rewrite(archive, "model_weights_config.json", json.dumps(config).encode())


def _guard_code(archive: bytes, marker: Path) -> bytes:
    program = _model_json(archive)
    program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
    return _rewrite(archive, "models/model.json", json.dumps(program).encode())


def _foreign_operator(archive: bytes, marker: Path) -> bytes:
    text = json.dumps(_model_json(archive)).replace("aten.tanh.default", "aten.from_file.default")
    return _rewrite(archive, "models/model.json", text.encode())


def _compressed(archive: bytes, marker: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_pickled_sample_inputs, "data/sample_inputs/model.pt is not plain tensors"),
        (_pickled_weight, "stores pickled tensors"),
        (_guard_code, "carries guard code"),
        (_foreign_operator, "calls 'torch.ops.aten.from_file.default'"),
        (_compressed, "compressed entries"),
    ],
)
def test_tampered_pt2_runs_nothing_and_fails_in_one_line(tmp_path, programs, tamper, problem):
    """The attacker rewrote the program and the manifest's sha256 of it, and the user pinned
    the tampered folder: the archive checks alone must stop it, before torch sees it."""
    marker = tmp_path / "ran"
    pin = _write_folder(tmp_path / "c", {PT2: tamper(programs[PT2], marker)})
    for load in (
        lambda: load_controller(tmp_path / "c", PT2, sha256=pin),
        lambda: ExportedPolicy(tmp_path / "c", PT2, sha256=pin),
    ):
        with pytest.raises(ControllerError) as err:
            load()
        assert problem in str(err.value) and "\n" not in str(err.value)
        assert str(tmp_path / "c" / PT2) in str(err.value)
        assert not marker.exists()


def test_clean_folder_loads_pinned_and_onnx_by_default(tmp_path, programs):
    pin = _write_folder(tmp_path / "c", programs)
    obs, task, eps = torch.randn(1, 24), torch.zeros(1, dtype=torch.long), torch.zeros(1, 6)
    expected = torch.tanh(obs @ _Prior().w).detach()
    (got,) = load_controller(tmp_path / "c", PT2, sha256=pin)(obs, task, eps)
    torch.testing.assert_close(got, expected)
    (got,) = load_controller(tmp_path / "c", ONNX)(obs, task, eps)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ControllerError, match=r"a \.pt2 is code; pass sha256="):
        load_controller(tmp_path / "c", PT2)


def test_exported_policy_loads_a_pt2_only_pinned(tmp_path, programs):
    """`ExportedPolicy` loads by `load_controller`'s path: an unpinned `.pt2` is refused in one
    line, a pinned one acts; a `.pt2` listed under an `.onnx` name is refused unpinned too."""
    folder = tmp_path / "c"
    pin = _write_folder(folder, programs)
    with pytest.raises(ControllerError, match=r"a \.pt2 is code; pass sha256=") as err:
        ExportedPolicy(folder, PT2)
    assert str(folder / PT2) in str(err.value) and "\n" not in str(err.value)
    obs = torch.randn(1, 24)
    got = ExportedPolicy(folder, PT2, sha256=pin).act(obs, torch.zeros(1), True)
    torch.testing.assert_close(got, torch.tanh(obs @ _Prior().w).detach())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["programs"]["disguised.onnx"] = manifest["programs"].pop(PT2)  # file: the .pt2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ControllerError, match=r"a \.pt2 is code; pass sha256="):
        load_controller(folder, "disguised.onnx")


def test_pin_and_manifest_digests_are_checked(tmp_path, programs):
    pin = _write_folder(tmp_path / "c", programs)
    with pytest.raises(ControllerError, match="manifest.json: sha256 .* is not the pinned"):
        load_controller(tmp_path / "c", PT2, sha256="0" * 64)
    (tmp_path / "c" / ONNX).write_bytes(programs[ONNX][:-1] + b"\0")
    with pytest.raises(ControllerError, match=f"{ONNX}: sha256 .* is not the manifest's"):
        load_controller(tmp_path / "c", ONNX, sha256=pin)


@pytest.mark.parametrize("file", ["/etc/hostname", "../outside.onnx", "link.onnx", "fifo.onnx"])
def test_program_paths_stay_in_the_folder(tmp_path, programs, file):
    """Absolute paths, `..`, symlinks (even to a valid program) and FIFOs are refused."""
    folder = tmp_path / "c"
    _write_folder(folder, programs)
    (tmp_path / "outside.onnx").write_bytes(programs[ONNX])
    (folder / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    os.mkfifo(folder / "fifo.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["programs"][ONNX]["file"] = file
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ControllerError) as err:
        load_controller(folder, ONNX)
    assert "\n" not in str(err.value)


def test_onnx_external_data_is_refused(tmp_path, programs):
    import onnx

    model = onnx.load_model_from_string(programs[ONNX])
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../secret.bin")
    _write_folder(tmp_path / "c", {ONNX: model.SerializeToString()})
    with pytest.raises(ControllerError, match="reads tensors from external files"):
        load_controller(tmp_path / "c", ONNX)


def test_atomic_files_get_the_umask_without_changing_it(tmp_path, monkeypatch):
    """Setting the umask (even for a moment) races with every other thread creating files."""

    def refuse(mask: int) -> int:
        raise AssertionError("os.umask called")

    saved = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", refuse)
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        monkeypatch.undo()
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
