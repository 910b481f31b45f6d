"""Checkpoint IO: every published layout loads; bad files fail with one line naming file and key."""

from __future__ import annotations

import pickle

import pytest
import torch

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
    def __reduce__(self):
        return (print, ("a checkpoint must never run code",))


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    torch.save({"model": _Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_world_model(tmp_path / "evil.pt")


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
