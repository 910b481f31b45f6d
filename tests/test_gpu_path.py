"""The GPU path, checked on CPU (issue 24): each failure a review of the CUDA code found,
reproduced with what a CPU has. `meta` tensors stand for a GPU's (device mismatches, and any
read of a value, which on a GPU waits for it); a dispatch mode counts host-device traffic and
tensors made from Python numbers; resource checks run with logical GPUs; Dynamo lists the
compiled update's graph breaks."""

from __future__ import annotations

import collections
import dataclasses
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tdmpc_ray.data.episode_store import Batch
from tdmpc_ray.model import WorldModel, model_config
from tdmpc_ray.planning import Planner, PlannerConfig
from tdmpc_ray.resources import ResourceError, check_evaluation, check_training
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.loop import STATE_FILE, resume
from tdmpc_ray.train.losses import LossConfig
from tdmpc_ray.train.teacher import _Request, answers
from tdmpc_ray.train.trainer import torch_config
from tdmpc_ray.train.update import Learner, OptimConfig, compile_options, uses_cuda_graphs
from tests.test_update_compile import SMALL, _batch, _learner

ONE_GPU = {"CPU": 8.0, "GPU": 1.0}


class HostTraffic(TorchDispatchMode):
    """Counts, by op, what makes a GPU's host wait or copy: tensors made from Python data
    (`torch.tensor`), copies between devices, reads of a value (`.item()`, which on a GPU is a
    sync) of a tensor off the host, and indexing by a boolean mask (a `nonzero`: a sync)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        out = func(*args, **kwargs)
        outputs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        devices = {x.device for x in tensors + outputs if x.dim() > 0}
        name = func.overloadpacket.__name__
        off_host = any(x.device.type != "cpu" for x in tensors)
        masked = "index" in name and any(x.dtype == torch.bool for x in tensors)
        if (
            name in ("lift_fresh", "lift_fresh_copy", "nonzero")
            or len(devices) > 1
            or (name == "_local_scalar_dense" and off_host)
            or masked
        ):
            self.ops[name] += 1
        return out


def _on(device: str, batch: Batch) -> Batch:
    move = lambda x: x.to(device)  # noqa: E731
    return Batch(*(move(x) for x in batch[:4]), {k: move(v) for k, v in batch.teacher.items()})


def _meta_learner() -> Learner:
    """A learner whose model, optimiser state and Q scale live on the `meta` device: a GPU's
    stand-in that refuses to hand a value to the host."""
    student = WorldModel(model_config(1, "mt30", **SMALL)).to("meta")
    return Learner(student, LossConfig(d_coef=0.45))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_an_eager_update_neither_copies_between_host_and_device_nor_waits(device):
    """On the CPU the mode sees tensors made from Python data (on `meta` it does not); on
    `meta` copies from and reads to the host."""
    learner = _learner("cpu") if device == "cpu" else _meta_learner()
    batch = _on(device, _batch())
    learner.update(batch)  # the first update creates the optimiser state
    with HostTraffic() as traffic:
        learner.update(batch)
    assert traffic.ops == {}


def test_the_planner_neither_copies_tensors_from_python_nor_indexes_by_masks():
    torch.manual_seed(0)
    cfg = PlannerConfig(iterations=2, num_samples=32, num_elites=4, num_pi_trajs=4)
    planner = Planner(WorldModel(model_config(1, "mt30", **SMALL)), cfg, num_envs=3)
    obs, task = torch.randn(3, 24), torch.tensor([0, 5, 7])
    planner.act(obs, task)  # the next steps start warm
    with HostTraffic() as traffic:
        planner.act(obs, task)
        planner.act(obs, task, eval_mode=True)
    assert traffic.ops == {}


def test_a_checkpoint_resumes_onto_another_device_with_the_generator_on_the_host(tmp_path):
    saved = _learner("cpu")
    saved.update(_batch())
    generator = torch.Generator().manual_seed(3)
    states = [torch.Generator().manual_seed(1).get_state(), generator.get_state()]
    torch.save({"learner": saved.state_dict(), "generators": states}, tmp_path / STATE_FILE)
    on_device, resumed = _meta_learner(), torch.Generator()
    resume(on_device, resumed, tmp_path, rank=1)  # read onto the device, set_state would fail
    assert torch.equal(resumed.get_state(), generator.get_state()) and on_device.step == 1
    on_host = _learner("cpu")
    resume(on_host, torch.Generator(), tmp_path, rank=0)
    for key, value in saved.state_dict()["model"].items():
        assert torch.equal(on_host.model.state_dict()[key], value), key


def test_optimiser_state_saved_on_another_device_follows_this_one():
    saved = _learner("cpu")
    saved.update(_batch())
    state = saved.state_dict()
    for name in ("world_optim", "pi_optim"):  # as a GPU saves it
        for group in state[name]["param_groups"]:
            group["capturable"] = True
    learner = _learner("cpu")
    learner.load_state_dict(state)
    for optimizer in (learner.world_optim, learner.pi_optim):
        assert not any(group["capturable"] for group in optimizer.param_groups)
        assert all(entry["step"].device.type == "cpu" for entry in optimizer.state.values())
    learner.update(_batch(seed=1))  # Adam refuses capturable state on the CPU


def test_teacher_replies_own_their_rows():
    out = {"reward": torch.randn(3000, 1), "latent": torch.randn(3000, 64)}
    requests = [
        _Request(None, None, torch.zeros(n), terms, None)
        for n, terms in ((1000, ("reward",)), (2000, ("reward", "latent")))
    ]
    first, second = answers(out, requests)
    assert first.keys() == {"reward"} and second.keys() == {"reward", "latent"}
    torch.testing.assert_close(second["latent"], out["latent"][1000:])
    for reply in (first, second):
        for value in reply.values():
            assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
    assert len(pickle.dumps(first)) < 1000 * 4 + 1000  # its own 1000 rows, not the pass's 3000


def test_the_papers_recipe_on_labelled_data_fits_one_gpu():
    cfg = TrainConfig(data="d", teacher="t.pt", use_gpu=True)  # reward distillation, 1 worker
    check_training(cfg, ONE_GPU, cached=("reward",))  # no teacher actor starts
    with pytest.raises(ResourceError, match=r"needs 2 GPUs \(1 worker x 1 \+ teachers 1\)"):
        check_training(cfg, ONE_GPU)  # asked of the actor: a GPU for it


def test_workers_sharing_a_gpu_reduce_with_gloo_not_nccl():
    shared = TrainConfig(data="d", use_gpu=True, num_workers=2, gpus_per_worker=0.5)
    check_training(shared, ONE_GPU)
    assert torch_config(shared).backend == "gloo"
    assert torch_config(dataclasses.replace(shared, gpus_per_worker=1.0)).backend is None
    assert torch_config(dataclasses.replace(shared, use_gpu=False)).backend is None


def test_evaluation_counts_the_gpus_of_its_actors():
    check_evaluation(2, 1.0, ONE_GPU, gpus_per_actor=0.5)
    with pytest.raises(ResourceError) as err:
        check_evaluation(4, 1.0, ONE_GPU, gpus_per_actor=0.5)
    assert str(err.value) == (
        "evaluation needs 2 GPUs (4 actors x 0.5), the cluster has 1: use at most 2 actor(s), "
        "or 0.25 GPUs per actor"
    )
    with pytest.raises(ResourceError, match=r"the cluster has 0: set gpus_per_actor=0$"):
        check_evaluation(1, 1.0, {"CPU": 8.0}, gpus_per_actor=1.0)


def test_every_mode_that_graphs_with_cuda_is_treated_as_such():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for mode, graphs in (
        ("reduce-overhead", True),
        ("max-autotune", True),
        ("max-autotune-no-cudagraphs", False),
        ("default", False),
    ):
        options = compile_options(OptimConfig(compile=True, compile_mode=mode), cuda)
        assert uses_cuda_graphs(options, cuda) == graphs, mode
        assert not uses_cuda_graphs(options, cpu)
    assert uses_cuda_graphs(compile_options(OptimConfig(compile=True), cuda), cuda)


def test_fp16_is_refused_in_a_compiled_update():
    with pytest.raises(ValueError, match="precision=fp16 runs eager only"):
        OptimConfig(compile=True, precision="fp16").check()


def test_an_fp16_gradient_that_outlives_its_step_is_rescaled_with_the_loss_scale():
    full, half = _learner("cpu"), _learner("cpu", OptimConfig(precision="fp16"))
    half.scaler = torch.amp.GradScaler("cpu", growth_interval=1)  # the scale doubles every step
    full.update(_batch())
    half.update(_batch())
    leaked = half.model._task_emb.weight.grad / half.scaler.get_scale()
    torch.testing.assert_close(leaked, full.model._task_emb.weight.grad, rtol=0.05, atol=1e-6)


EXPECTED_BREAKS = {"Unsupported Tensor.backward() call": 2, "torch._dynamo.graph_break()": 2}
"""Dynamo does not trace `backward()` (one per optimiser), and torch's optimisers break the
graph around their step on purpose (pytorch#104053). Nothing else may break it: no `.item()`,
host sync or data-dependent Python."""


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_compiled_update_breaks_only_at_backward_and_the_optimiser_steps(precision):
    learner = _learner("cpu", OptimConfig(precision=precision))
    learner.model.train()
    explained = torch._dynamo.explain(learner._update_step)(_batch())
    reasons = collections.Counter()
    for brk in explained.break_reasons:
        found = [key for key in EXPECTED_BREAKS if key in brk.reason]
        assert found, brk.reason
        reasons[found[0]] += 1
    assert reasons == EXPECTED_BREAKS
    assert (explained.graph_count, explained.graph_break_count) == (7, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_updates_of_a_multitask_student_keep_the_task_embeddings_gradient():
    batches = [_batch(seed=s, device="cuda") for s in range(3)]
    eager, graphed = _learner("cuda"), _learner("cuda", OptimConfig(compile=True))
    with torch._inductor.config.patch(fallback_random=True):
        for step, batch in enumerate(batches):
            torch.manual_seed(step)
            eager.update(batch)
            torch.manual_seed(step)
            graphed.update(batch)  # the second step accumulated into an overwritten gradient
    want, got = eager.model._task_emb.weight.grad, graphed.model._task_emb.weight.grad
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
