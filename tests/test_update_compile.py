"""The update's speed options keep its maths: a compiled update equals the eager one over several
steps (losses, parameters, optimiser state, Q scale, target Qs), also data-parallel; reduced
precision trains; metrics are read only when asked."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model import WorldModel, model_config
from tdmpc_ray.train.losses import LossConfig
from tdmpc_ray.train.update import Learner, OptimConfig, compile_options, read_metrics
from tests.helpers import near_deterministic

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
SMALL = {"enc_dim": 64, "mlp_dim": 64, "latent_dim": 32}
"""A student small enough to compile quickly; the graph is the 1M student's."""


def _batch(size: int = 64, horizon: int = 3, seed: int = 0, device: str = "cpu") -> Batch:
    gen = torch.Generator().manual_seed(seed)
    task = torch.randint(0, 30, (size,), generator=gen)
    batch = Batch(
        obs=torch.randn(horizon + 1, size, 24, generator=gen),
        action=torch.rand(horizon, size, 6, generator=gen) * 2 - 1,
        reward=torch.rand(horizon, size, 1, generator=gen),
        task=task,
        teacher={"reward": torch.rand(horizon, size, 1, generator=gen)},
    )
    return Batch(
        *(x.to(device) for x in batch[:4]), {k: v.to(device) for k, v in batch.teacher.items()}
    )


def _learner(
    device: str, optim: OptimConfig | None = None, deterministic: bool = False, **model
) -> Learner:
    torch.manual_seed(0)
    student = WorldModel(model_config(1, "mt30", **{**SMALL, **model}))
    if deterministic:
        near_deterministic(student)
    return Learner(student.to(device), LossConfig(d_coef=0.45), optim or OptimConfig())


def _assert_same_state(a: Learner, b: Learner, atol: float, rtol: float) -> None:
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[key], value, atol=atol, rtol=rtol, msg=key)
    for name in ("world_optim", "pi_optim"):
        for pa, pb in zip(
            getattr(a, name).state.values(), getattr(b, name).state.values(), strict=True
        ):
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(
                    pb[key].float(),
                    pa[key].float().to(pb[key].device),
                    atol=atol,
                    rtol=rtol,
                    msg=f"{name} {key}",
                )
    torch.testing.assert_close(b.scale.value, a.scale.value, atol=atol, rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_update_equals_the_eager_one(device):
    batches = [_batch(seed=s, device=device) for s in range(3)]
    eager = _learner(device)
    compiled = _learner(device, OptimConfig(compile=True))
    with torch._inductor.config.patch(fallback_random=True):  # eager's random draws, in order
        for step, batch in enumerate(batches):
            torch.manual_seed(step)
            want = read_metrics(eager.update(batch))
            torch.manual_seed(step)
            got = read_metrics(compiled.update(batch))
            assert got.keys() == want.keys()
            for name, value in want.items():
                assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, name)
    _assert_same_state(eager, compiled, atol=1e-5, rtol=1e-4)
    assert compiled.step == eager.step == 3


def test_compiled_updates_use_cuda_graphs_on_cuda_and_torchs_random_draws_on_cpu():
    on = OptimConfig(compile=True)
    static = {"dynamic": False}  # one graph per batch size, never a dynamic-shape one
    assert compile_options(on, torch.device("cuda")) == {"mode": "reduce-overhead", **static}
    assert compile_options(on, torch.device("cpu")) == {
        "options": {"fallback_random": True},
        **static,
    }
    chosen = OptimConfig(compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert compile_options(chosen, torch.device("cuda")) == {
        "mode": "max-autotune-no-cudagraphs",
        **static,
    }


def test_metrics_stay_tensors_until_read():
    learner = _learner("cpu")
    metrics = learner.update(_batch())
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in metrics.values())
    later = learner.update(_batch(seed=1))
    read = read_metrics(metrics)
    assert {"total_loss", "distill_loss", "grad_norm", "pi_scale"} <= read.keys()
    assert read != read_metrics(later)
    assert all(isinstance(v, float) for v in read.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_keeps_fp32_master_weights_and_trains(device, precision):
    batch = _batch(device=device)
    full, reduced = _learner(device), _learner(device, OptimConfig(precision=precision))
    first = read_metrics(reduced.update(batch))
    reference = read_metrics(full.update(batch))
    for name in ("consistency_loss", "reward_loss", "value_loss", "distill_loss"):
        assert first[name] == pytest.approx(reference[name], rel=0.05, abs=1e-3), name
    for _ in range(20):
        last = read_metrics(reduced.update(batch))
    assert last["total_loss"] < first["total_loss"]
    assert all(p.dtype == torch.float32 for p in reduced.model.parameters())
    assert (reduced.scaler is not None) == (precision == "fp16")
    assert ("grad_scaler" in reduced.state_dict()) == (precision == "fp16")


def test_an_unknown_precision_fails_with_one_line():
    with pytest.raises(ValueError, match="precision must be one of"):
        _learner("cpu", OptimConfig(precision="fp8"))


def _rank_update(rank: int, world: int, init_file: str, batch: Batch, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    share = batch.obs.shape[1] // world
    part = slice(rank * share, (rank + 1) * share)
    local = Batch(
        batch.obs[:, part],
        batch.action[:, part],
        batch.reward[:, part],
        batch.task[part],
        {k: v[:, part] for k, v in batch.teacher.items()},
    )
    learner = _learner("cpu", OptimConfig(compile=True), deterministic=True, dropout=0.0)
    with torch._inductor.config.patch(fallback_random=True):
        for step in range(2):
            torch.manual_seed(step)
            learner.update(local)
    if rank == 0:
        torch.save(learner.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_data_parallel_updates_average_gradients_like_one_eager_worker(tmp_path):
    batch = _batch(size=64)
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_update, args=(2, str(tmp_path / "pg"), batch, str(out)), nprocs=2, join=True)
    single = _learner("cpu", deterministic=True, dropout=0.0)
    for step in range(2):
        torch.manual_seed(step)
        single.update(batch)
    two = torch.load(out, weights_only=True)
    for key, value in single.state_dict()["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=5e-5, rtol=1e-3, msg=key)
    torch.testing.assert_close(two["scale"]["value"], single.scale.value, atol=1e-5, rtol=1e-4)
