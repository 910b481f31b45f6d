"""Checkpoint IO: every published layout loads; bad files fail with one line naming file and key."""

from __future__ import annotations

import copy
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from tdmpc_ray import cli
from tdmpc_ray.model import (
    CheckpointError,
    WorldModel,
    checkpoint_hash,
    load_world_model,
    model_config,
    save_checkpoint,
)
from tests.helpers import shared_checkpoint

PUBLISHED = [
    "mt30_1M_steps_045dist_fp16.pt",
    "mt30_1M_steps_045dist_mixed.pt",
    "mt30_1M_steps_045dist_int8.pt",
]


def _outputs(model: WorldModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    obs, task = torch.randn(30, 24, generator=gen), torch.arange(30)
    a = torch.rand(30, 6, generator=gen) * 2 - 1
    with torch.no_grad():
        z = model.encode(obs, task)
        return torch.cat(
            [z, model.reward(z, a, task), model.Q(z, a, task, "all").flatten(0, 1).view(30, -1)], -1
        )


def _new_layout(model: WorldModel) -> dict:
    """The state dict as TD-MPC2's current code saves it (new key layout, tensordict extras)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("_Qs.params."):
            out[key] = value
            out["_detach_Qs_params." + key[len("_Qs.params.") :]] = value
        elif key.startswith("_target_Qs.params."):
            out["_target_Qs_params." + key[len("_target_Qs.params.") :]] = value
        else:
            out[key] = value
    for prefix in ("_Qs.params.", "_detach_Qs_params.", "_target_Qs_params."):
        out[prefix + "__batch_size"] = torch.Size([model.cfg.num_q])
        out[prefix + "__device"] = None
    out["log_std_min"] = torch.tensor(-10)
    out["log_std_dif"] = torch.tensor(12)
    return {"model": out}


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_student_loads_as_fp32_mt30_1M(name):
    model = load_world_model(shared_checkpoint(name))
    assert model.cfg.model_size == 1 and model.cfg.task_set == "mt30"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(_outputs(model)).all()


def test_mixed_checkpoint_keeps_fp16_weights_outside_the_q_ensemble():
    fp16 = load_world_model(shared_checkpoint(PUBLISHED[0]))
    mixed = load_world_model(shared_checkpoint(PUBLISHED[1]))
    torch.testing.assert_close(mixed._dynamics[0].weight, fp16._dynamics[0].weight, atol=0, rtol=0)
    assert not torch.equal(mixed._Qs.params[0].weight, fp16._Qs.params[0].weight)


def test_new_layout_and_own_format_round_trip(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(model_config(1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(_new_layout(model), tmp_path / "new.pt")
    save_checkpoint(model, tmp_path / "ours.pt", metadata={"note": "test"})
    for name in ("new.pt", "ours.pt"):
        torch.testing.assert_close(
            _outputs(load_world_model(tmp_path / name)), _outputs(model), atol=0, rtol=0
        )
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert raw["config"]["model_size"] == 1 and raw["metadata"]["note"] == "test"
    assert "versions" in raw["metadata"] and "git_commit" in raw["metadata"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_bare_state_dict_and_single_task_checkpoints(tmp_path):
    model = WorldModel(model_config(1, "walker-walk"))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="single-task checkpoint: pass task_set"):
        load_world_model(tmp_path / "bare.pt", task_set=None)
    assert load_world_model(tmp_path / "bare.pt", task_set="walker-walk").cfg.task_dim == 0


def test_size_is_inferred_and_a_5M_checkpoint_loaded_as_1M_fails_naming_key_and_shapes(tmp_path):
    model = WorldModel(model_config(5))
    torch.save(_new_layout(model), tmp_path / "five.pt")
    assert load_world_model(tmp_path / "five.pt").cfg.model_size == 5
    with pytest.raises(CheckpointError) as err:
        load_world_model(tmp_path / "five.pt", model_size=1)
    message = str(err.value)
    assert "five.pt: _task_emb.weight: expected shape [30, 96], found [30, 64]" in message
    assert "\n" not in message


def test_checkpoint_for_another_task_set_fails_clearly(tmp_path):
    save_checkpoint(WorldModel(model_config(1, "mt80")), tmp_path / "mt80.pt")
    with pytest.raises(CheckpointError, match="task set mt80, not mt30"):
        load_world_model(tmp_path / "mt80.pt", task_set="mt30")


def test_truncated_and_corrupted_files_fail_with_one_line(tmp_path):
    data = shared_checkpoint(PUBLISHED[0]).read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    corrupted = bytearray(data)
    corrupted[:64] = b"\0" * 64
    (tmp_path / "corrupted.pt").write_bytes(bytes(corrupted))
    for name in ("truncated.pt", "corrupted.pt"):
        with pytest.raises(CheckpointError) as err:
            load_world_model(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_world_model(tmp_path / "missing.pt")


class _Payload:
    """Pickles as a call of `open(marker, "w")`: loading it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/a.txt", "hello")
        archive.writestr("b.txt", "world")


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _bomb(path: Path, inflated: int = 1 << 30) -> None:
    """A checkpoint whose one tensor record is deflated: ~1 MiB on disk, `inflated` bytes of
    zeros once torch.load inflates it (its pickle declares the matching float32 tensor)."""
    small, numel = 123457, inflated // 4
    with zipfile.ZipFile(io.BytesIO(_saved({"w": torch.zeros(small)}))) as src:
        with zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                if info.filename.endswith("data/0"):
                    record = zipfile.ZipInfo(info.filename)
                    record.compress_type = zipfile.ZIP_DEFLATED
                    with dst.open(record, "w", force_zip64=True) as f:
                        for _ in range(inflated >> 20):
                            f.write(bytes(1 << 20))
                    continue
                data = src.read(info)
                small_int, big_int = (struct.pack("<ci", b"J", n) for n in (small, numel))
                dst.writestr(info, data.replace(small_int, big_int))


def _overlapping_records(path: Path) -> None:
    """An uncompressed checkpoint of ten 4 MB tensors whose record table points all ten records
    at the bytes of the first: a 4 MB file that torch.load would read as 40 MB."""
    data = _saved({f"w{k}": torch.zeros(1 << 20) for k in range(10)})
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if not re.fullmatch(r"archive/data/[1-9]", info.filename):
                dst.writestr(info, src.read(info))
        first = dst.getinfo("archive/data/0")
        for k in range(1, 10):
            alias = copy.copy(first)
            alias.filename = f"archive/data/{k}"
            dst.filelist.append(alias)


BAD_FILES = {
    "text": (lambda p: p.write_text("hello, I am a text file\n"), "not a PyTorch checkpoint"),
    "random": (lambda p: p.write_bytes(b"\x17" + os.urandom(4095)), "not a PyTorch checkpoint"),
    "random-pickle-like": (
        lambda p: p.write_bytes(b"\x80\xb8" + os.urandom(4094)),
        "not a readable PyTorch checkpoint",
    ),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "foreign-zip": (_foreign_zip, "a zip archive but not a PyTorch checkpoint"),
    "code": (
        lambda p: torch.save({"model": _Payload(p.with_suffix(".ran"))}, p, pickle_module=pickle),
        "refused: loading it would call io.open",
    ),
    "list": (lambda p: torch.save([torch.zeros(2)], p), "expected a dict, found list"),
    "repeated-views": (
        lambda p: torch.save({"w": torch.zeros(1, dtype=torch.float16).expand(1 << 28)}, p),
        "refused: its tensors hold 512 MiB, more than 4x the file's",
    ),
    "overlapping-records": (_overlapping_records, "refused: records declare"),
    "dict": (
        lambda p: torch.save({"steps": 5, "w": torch.zeros(3)}, p),
        "not a TD-MPC2 world model",
    ),
    "model-entry": (lambda p: torch.save({"model": 5}, p), "'model' entry is not a state dict"),
    "bad-shapes": (
        lambda p: torch.save(
            {"_Qs.params.0.weight": torch.zeros(3), "_task_emb.weight": torch.zeros(3)}, p
        ),
        "not a TD-MPC2 world model checkpoint",
    ),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path) -> tuple[Path, str]:
    """A file that is not a world-model checkpoint, named x.pt, and what its error says."""
    make, message = BAD_FILES[request.param]
    path = tmp_path / "x.pt"
    make(path)
    return path, message


def test_a_file_that_is_not_a_checkpoint_fails_with_one_line_naming_it(bad_file):
    path, message = bad_file
    with pytest.raises(CheckpointError) as err:
        load_world_model(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert not path.with_suffix(".ran").exists()


@pytest.mark.parametrize("verb", ["eval", "quantize"])
def test_the_cli_refuses_a_bad_checkpoint_with_one_line_and_exit_2(bad_file, verb, capsys):
    path, message = bad_file
    argv = {
        "eval": ["eval", "--checkpoint", str(path)],
        "quantize": ["quantize", str(path), "--mode", "fp16", "--out", str(path.with_name("q.pt"))],
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(argv[verb]) == 2
    assert not [str(w.message) for w in caught]
    err = capsys.readouterr().err
    assert err == f"tdmpc-ray {verb}: error: {path}: {err.split(f'{path}: ', 1)[1]}"
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not path.with_name("q.pt").exists() and not path.with_suffix(".ran").exists()


def test_train_checks_its_teacher_before_ray_and_leaves_no_run_folder(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(tmp_path / "evil.ran")}, evil, pickle_module=pickle)
    runs = tmp_path / "runs"
    argv = ["train", f"data={tmp_path / 'data'}", f"teacher={evil}", f"out={runs}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tdmpc-ray train: error: {evil}: refused") and err.count("\n") == 1
    assert not runs.exists() and not (tmp_path / "evil.ran").exists()


def test_missing_key_is_named(tmp_path):
    state = WorldModel(model_config(1)).state_dict()
    del state["_reward.1.ln.bias"]
    torch.save(state, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=r"missing_key.pt: missing key _reward.1.ln.bias"):
        load_world_model(tmp_path / "missing_key.pt")


def test_checkpoint_hash_is_the_file_sha256():
    assert checkpoint_hash(shared_checkpoint(PUBLISHED[0])) == (
        "3e35489756abf6e0e244371698d063487f70ffb5d109e3d8c84ae7dda5955bfb"
    )


_IMPORTS = """
import resource, sys
from tdmpc_ray.model import CheckpointError, load_world_model
"""
_PEAK_MIB = "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
_LOAD = """
try:
    load_world_model(sys.argv[1])
except CheckpointError as err:
    print(err)
"""


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    """1 MiB on disk, 1 GiB inflated: refused in one line; the loading process's peak memory
    stays within 256 MiB of a process that only imports the loader (each measured fresh)."""
    _bomb(tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 2 << 20
    run = subprocess.run(
        [sys.executable, "-c", _IMPORTS + _LOAD + _PEAK_MIB, str(tmp_path / "bomb.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    message, peak_mib = run.stdout.strip().splitlines()
    assert message.startswith(f"{tmp_path / 'bomb.pt'}: refused: record archive/data/0 is ")
    imports = subprocess.run(
        [sys.executable, "-c", _IMPORTS + _PEAK_MIB],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    baseline = int(imports.stdout.strip())
    assert int(peak_mib) < baseline + 256, f"peak RSS {peak_mib} MiB, imports alone {baseline} MiB"
