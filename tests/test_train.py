"""Training: TD-MPC2 losses and update, reward distillation, data-parallel averaging, the shared
teacher actor, and Ray Train runs that evaluate asynchronously and survive a killed worker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tdmpc_ray.config import build_config, config_dict
from tdmpc_ray.data.episode_store import Batch, EpisodeStore
from tdmpc_ray.evaluate.config import PeriodicEvalConfig
from tdmpc_ray.model import WorldModel, model_config, predicted_reward
from tdmpc_ray.planning import PlannerConfig
from tdmpc_ray.train.config import TrainConfig
from tdmpc_ray.train.losses import LossConfig
from tdmpc_ray.train.teacher import get_teacher
from tdmpc_ray.train.update import Learner
from tests.helpers import (
    near_deterministic,
    registered_checkpoints,
    run_with_one_file_changed,
    shared_checkpoint,
)

TASKS = "cartpole-balance,walker-walk"


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory) -> Path:
    """Random-policy rollouts made by `data generate`: 2 tasks x 3 episodes of 24 steps."""
    from tdmpc_ray.data.generate import GenerateConfig, generate

    dst = tmp_path_factory.mktemp("data") / "episodes"
    generate(
        GenerateConfig(tasks=TASKS, episodes_per_task=3, max_steps=24, seed=0), dst, progress=False
    )
    return dst


def _batch(data: Path, size: int = 32, seed: int = 0) -> Batch:
    store = EpisodeStore.load(data)
    return store.sample(size, 3, torch.Generator().manual_seed(seed))


def _model(seed: int = 0, **overrides) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(model_config(1, "mt30", **overrides))


@pytest.mark.slow
def test_losses_fall_on_a_fixed_batch(tiny_data):
    batch = _batch(tiny_data)
    learner = Learner(_model())
    first = learner.update(batch)
    for _ in range(40):
        last = learner.update(batch)
    for name in ("consistency_loss", "reward_loss", "value_loss", "total_loss"):
        assert last[name] < first[name], name
    assert learner.step == 41


def test_d_coef_zero_is_the_from_scratch_update_and_distillation_changes_it(tiny_data):
    batch = _batch(tiny_data)
    labelled = batch._replace(teacher={"reward": torch.randn_like(batch.reward)})

    def params_after(b: Batch, d_coef: float) -> torch.Tensor:
        learner = Learner(_model(), LossConfig(d_coef=d_coef))
        torch.manual_seed(1)
        metrics = learner.update(b)
        assert ("distill_loss" in metrics) == (d_coef > 0)
        return torch.cat([p.detach().flatten() for p in learner.model.parameters()])

    scratch = params_after(batch, 0.0)
    torch.testing.assert_close(params_after(labelled, 0.0), scratch, atol=0, rtol=0)
    assert not torch.equal(params_after(labelled, 0.4), scratch)
    with pytest.raises(ValueError, match="distils the teacher's reward"):
        params_after(batch, 0.4)


def _rank_update(rank: int, world: int, init_file: str, batch: Batch, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    share = batch.obs.shape[1] // world
    part = slice(rank * share, (rank + 1) * share)
    local = Batch(
        batch.obs[:, part], batch.action[:, part], batch.reward[:, part], batch.task[part], {}
    )
    learner = Learner(near_deterministic(_model(dropout=0.0)))
    learner.update(local)
    if rank == 0:
        torch.save(learner.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_workers_update_like_one_worker_on_the_union_batch(tiny_data, tmp_path):
    batch = _batch(tiny_data, size=64)
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_update, args=(2, str(tmp_path / "pg"), batch, str(out)), nprocs=2, join=True)
    single = Learner(near_deterministic(_model(dropout=0.0)))
    single.update(batch)
    two = torch.load(out, weights_only=True)
    for key, value in single.state_dict()["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=2e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(two["scale"]["value"], single.scale.value)


@pytest.mark.slow
def test_teacher_actor_is_shared_and_coalesces_concurrent_requests(ray_session):
    import ray

    checkpoint = str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))

    @ray.remote(num_cpus=0)
    def actor_id(path: str) -> str:
        return get_teacher(path)._actor_id.hex()

    teacher = get_teacher(checkpoint)
    assert set(ray.get([actor_id.remote(checkpoint) for _ in range(2)])) == {
        teacher._actor_id.hex()
    }
    gen = torch.Generator().manual_seed(0)
    rows = [
        (
            torch.randn(64, 24, generator=gen),
            torch.rand(64, 6, generator=gen) * 2 - 1,
            torch.randint(0, 30, (64,), generator=gen),
        )
        for _ in range(32)
    ]
    before = ray.get(teacher.info.remote())["passes"]
    answers = ray.get([teacher.outputs.remote(*r) for r in rows])
    info = ray.get(teacher.info.remote())
    assert info["passes"] - before <= len(rows) // 2
    from tdmpc_ray.model import load_world_model

    model = load_world_model(checkpoint)
    for (obs, action, task), answer in zip(rows, answers, strict=True):
        torch.testing.assert_close(
            answer["reward"], predicted_reward(model, obs, action, task), atol=1e-5, rtol=1e-5
        )


def _fit(cfg: TrainConfig) -> dict:
    from tdmpc_ray.train.trainer import train

    return train(cfg)


@pytest.mark.slow
def test_distillation_run_with_teacher_actor_and_async_evaluation(tiny_data, tmp_path):
    cfg = TrainConfig(
        data=str(tiny_data),
        teacher=str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")),
        steps=12,
        batch_size=16,
        num_workers=2,
        checkpoint_every=6,
        log_every=3,
        evaluation=PeriodicEvalConfig(
            eval_freq=12,
            eval_tasks="cartpole-balance",
            eval_episodes=1,
            eval_max_steps=5,
            eval_mpc=False,
        ),
        out=str(tmp_path / "runs"),
        name="distill",
    )
    summary = _fit(cfg)
    assert summary["metrics"]["step"] == 12
    assert summary["metrics"]["distill_loss"] >= 0
    assert Path(summary["student"]).is_file()
    from tdmpc_ray.model import load_world_model

    assert load_world_model(summary["student"]).cfg.model_size == 1
    assert any(score is not None for score, _ in summary.get("scores", []))
    assert summary["metrics"]["eval_episodes"] == 1 and "normalized_score" in summary["metrics"]
    run = tmp_path / "runs" / "distill"
    assert (run / "run.json").is_file() and (run / "summary.json").is_file()
    evaluation = json.loads((run / "evals" / "step_000000012.json").read_text())
    assert evaluation["step"] == 12 and evaluation["tasks"]["cartpole-balance"]["env_seeds"]


@pytest.mark.slow
def test_richer_terms_read_cached_labels_and_ask_the_actor_for_latents(tiny_data, tmp_path):
    from tdmpc_ray.data.label import label

    teacher = str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))
    labelled = tmp_path / "labelled"
    label(tiny_data, teacher, labelled, progress=False)
    cfg = build_config(
        TrainConfig,
        None,
        dict(
            data=str(labelled),
            teacher=teacher,
            steps=6,
            batch_size=16,
            cpus_per_worker=0.5,
            checkpoint_every=6,
            log_every=3,
            out=str(tmp_path / "runs"),
            name="richer",
            enc_dim=128,
            mlp_dim=160,
            latent_dim=64,
            latent_d_coef=1.0,
            latent_bridge="pca",
            pca_samples=128,
            value_d_coef=0.1,
            policy_d_coef=1.0,
        ),
    )
    summary = _fit(cfg)
    for name in (
        "distill_loss",
        "latent_distill_loss",
        "value_distill_loss",
        "policy_distill_loss",
    ):
        assert summary["metrics"][name] >= 0, name
    import json

    record = json.loads((tmp_path / "runs" / "richer" / "run.json").read_text())
    assert record["teacher_source"] == {
        "reward": "labels",
        "latent": "actor",
        "value": "labels",
        "policy": "labels",
    }
    from tdmpc_ray.model import load_world_model

    assert load_world_model(summary["student"]).cfg.latent_dim == 64


def _train_worker_pids(session_dir: str) -> list[int]:
    """PIDs of this Ray session's Train worker processes (their parent raylet names the session)."""

    def read(pid: int | str, name: str) -> bytes:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes()
        except OSError:
            return b""

    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and b"RayTrainWorker" in read(entry.name, "cmdline"):
            parent = read(entry.name, "stat").rsplit(b")", 1)[-1].split()[1].decode()
            if session_dir.encode() in read(parent, "cmdline"):
                pids.append(int(entry.name))
    return pids


def _kill_worker_once_a_checkpoint_is_registered(
    run_dir: Path, session_dir: str, killed: list[int]
) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and registered_checkpoints(run_dir) < 1:
        time.sleep(0.1)
    for pid in _train_worker_pids(session_dir):
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(tiny_data, tmp_path):
    cfg = TrainConfig(
        data=str(tiny_data),
        steps=300,
        batch_size=128,
        checkpoint_every=50,
        log_every=50,
        cpus_per_worker=0.5,
        out=str(tmp_path / "runs"),
        name="resume",
        max_failures=2,
    )
    import ray

    session_dir = ray._private.worker._global_node.get_session_dir_path()
    killed: list[int] = []
    run_dir = tmp_path / "runs" / "resume"
    killer = threading.Thread(
        target=_kill_worker_once_a_checkpoint_is_registered, args=(run_dir, session_dir, killed)
    )
    killer.start()
    summary = _fit(cfg)
    killer.join()
    assert killed, "no training worker was found to kill"
    assert summary["metrics"]["step"] == 300
    assert summary["metrics"]["resumed_from"] >= 50


def test_flat_keys_set_the_composed_loss_and_optimiser_configs():
    cfg = build_config(
        TrainConfig,
        None,
        [
            "data=d",
            "d_coef=0.4",
            "lr=1e-3",
            "value_d_coef=0.2",
            "compile=true",
            "precision=bf16",
            "steps=10",
        ],
    )
    assert (cfg.loss.d_coef, cfg.loss.value_d_coef, cfg.optim.lr, cfg.optim.compile) == (
        0.4,
        0.2,
        1e-3,
        True,
    )
    assert cfg.optim.precision == "bf16" and cfg.steps == 10
    assert build_config(TrainConfig).loss.d_coef == 0.45, "TrainConfig's own default of d_coef"
    assert build_config(TrainConfig, None, config_dict(cfg)) == cfg
    assert build_config(TrainConfig, None, config_dict(cfg, flat=False)) == cfg
    with pytest.raises(
        ValueError, match="^unknown config key 'd_cof' for TrainConfig; did you mean 'd_coef'"
    ):
        build_config(TrainConfig, None, ["d_cof=0.4"])
    with pytest.raises(ValueError, match="^lr: expected float"):
        build_config(TrainConfig, None, ["lr=fast"])


def test_the_periodic_evaluation_plans_and_acts_as_configured():
    cfg = build_config(
        TrainConfig,
        None,
        ["data=d", "eval_planner=iterations=2,num_samples=128", "eval_mode=false"],
    )
    evaluation = cfg.evaluation.eval_config(cfg.seed)
    assert evaluation.planner == PlannerConfig(iterations=2, num_samples=128)
    assert evaluation.eval_mode is False and evaluation.seed == cfg.seed
    assert build_config(TrainConfig, None, config_dict(cfg)) == cfg
    assert build_config(TrainConfig, None, config_dict(cfg, flat=False)) == cfg
    prior = dataclasses.replace(cfg.evaluation, eval_mpc=False).eval_config(1).planner
    assert prior.mpc is False and prior.iterations == 2
    assert build_config(TrainConfig).evaluation.eval_config(1).planner == PlannerConfig()
    for pairs, message in (
        ("iters=2", "eval_planner: unknown config key 'iters' for PlannerConfig"),
        ("iterations=two", "eval_planner: iterations: expected int"),
        ("mpc=false", "set the policy prior with eval_mpc"),
    ):
        with pytest.raises(ValueError, match=message):
            build_config(TrainConfig, None, ["data=d", f"eval_planner={pairs}"]).check()


def test_the_teacher_is_hashed_once_by_the_driver_and_handed_down(tmp_path):
    from tdmpc_ray.model import checkpoint_hash

    teacher = shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")
    cfg = TrainConfig(data=str(tmp_path), teacher=str(teacher)).resolved()
    assert cfg.teacher_sha256 == checkpoint_hash(teacher)
    handed = TrainConfig(data=str(tmp_path), teacher=str(teacher), teacher_sha256="f" * 64)
    assert handed.resolved().teacher_sha256 == "f" * 64
    assert TrainConfig(data=str(tmp_path)).resolved().teacher_sha256 is None


def test_teacher_replicas_share_the_queries_and_report_the_handed_down_hash(ray_session):
    import ray

    from tdmpc_ray.train.teacher import teacher_pool

    checkpoint = str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))
    pool = teacher_pool(checkpoint, "ab" * 32, num_gpus=0.0, replicas=2)
    assert len({actor._actor_id for actor in pool.actors}) == 2
    gen = torch.Generator().manual_seed(0)
    obs, action = torch.randn(32, 24, generator=gen), torch.rand(32, 6, generator=gen) * 2 - 1
    task = torch.randint(0, 30, (32,), generator=gen)
    answers = ray.get([pool.outputs(obs, action, task, ("reward",)) for _ in range(4)])
    info = pool.info()
    assert [i["rows"] for i in info] == [64, 64]
    assert {i["hash"] for i in info} == {"ab" * 32}
    for answer in answers[1:]:
        torch.testing.assert_close(answer["reward"], answers[0]["reward"])


def test_a_bf16_teacher_answers_in_float32_close_to_fp32(ray_session):
    import ray

    from tdmpc_ray.train.teacher import teacher_pool

    checkpoint = str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))
    gen = torch.Generator().manual_seed(0)
    obs, action = torch.randn(64, 24, generator=gen), torch.rand(64, 6, generator=gen) * 2 - 1
    task = torch.randint(0, 30, (64,), generator=gen)
    terms = ("reward", "value", "policy")
    full, half = (
        ray.get(
            teacher_pool(checkpoint, "cd" * 32, num_gpus=0.0, precision=p).outputs(
                obs, action, task, terms
            )
        )
        for p in ("fp32", "bf16")
    )
    for term in terms:  # bf16 keeps 8 bits: single entries may be off by a few %, not the whole
        assert half[term].dtype == torch.float32
        error = (half[term] - full[term]).abs().mean() / full[term].abs().mean()
        pair = torch.stack([half[term].flatten(), full[term].flatten()])
        assert error < 0.05 and torch.corrcoef(pair)[0, 1] > 0.99, term


@pytest.mark.slow
def test_a_317m_teacher_in_the_reference_layout_loads_and_serves_reward_labels_on_cpu(
    ray_session, tmp_path
):
    import ray

    from bench.common import write_random_checkpoint
    from tdmpc_ray.model import checkpoint_hash
    from tdmpc_ray.train.teacher import teacher_pool

    path = write_random_checkpoint(tmp_path / "mt30-317M.pt", 317)
    pool = teacher_pool(str(path), checkpoint_hash(path), num_gpus=0.0)
    gen = torch.Generator().manual_seed(0)
    obs, action = torch.randn(512, 24, generator=gen), torch.rand(512, 6, generator=gen) * 2 - 1
    task = torch.randint(0, 30, (512,), generator=gen)
    ray.get(pool.outputs(obs[:8], action[:8], task[:8], ("reward",)))
    start = time.perf_counter()
    reward = ray.get(pool.outputs(obs, action, task, ("reward",)))["reward"]
    seconds = time.perf_counter() - start
    info = pool.info()[0]
    print(
        f"317M teacher on CPU: {512 / seconds:.0f} rows/s, peak RSS {info['max_rss_bytes'] / 2**30:.2f} GiB"
    )
    assert reward.shape == (512, 1) and torch.isfinite(reward).all()
    assert info["latent_dim"] == 1376 and info["rows"] == 520


EVAL_SETTING = '''    eval_envs_per_actor: int | None = passed_as("envs_per_actor", None)
    """Episodes one evaluation actor steps together."""
'''
EVAL_SCRIPT = """
from pathlib import Path
from tdmpc_ray.config import build_config, config_dict, format_fields
from tdmpc_ray.sweep.spec import load_spec
from tdmpc_ray.train.config import TrainConfig

cfg = build_config(TrainConfig, None, ["data=d", "eval_freq=5", "eval_envs_per_actor=4"])
assert cfg.evaluation.eval_config(cfg.seed).envs_per_actor == 4
assert build_config(TrainConfig, None, config_dict(cfg, flat=False)) == cfg
assert "eval_envs_per_actor: int | None = None" in format_fields(TrainConfig)
Path("spec.yaml").write_text("base: {data: d, eval_envs_per_actor: 6}\\n")
[trial] = load_spec("spec.yaml").trial_configs()
assert trial.evaluation.eval_config(1).envs_per_actor == 6
"""


def test_an_added_evaluation_setting_is_declared_in_one_place(tmp_path):
    """A copy of the package whose only change is one more field of `PeriodicEvalConfig`: the
    setting has its key (flat, in YAML and sweep specs) and help line and reaches the
    `EvalConfig` each periodic evaluation runs with."""
    after = 'comparable to 500 steps."""'
    run_with_one_file_changed(tmp_path, "evaluate/config.py", after, EVAL_SETTING, EVAL_SCRIPT)


def test_train_and_sweep_trials_evaluate_through_one_periodic_evaluation(tiny_data, tmp_path):
    """`training_run` hands every run's checkpoints to a `PeriodicEvaluation` in the Train
    controller (not Ray Train's validation), the sweep's `EvaluateAndReport` is one, and what an
    evaluation keeps in the run's `evals/` reads back as the metrics it reported."""
    from tdmpc_ray.evaluate.report import save_json, training_metrics
    from tdmpc_ray.sweep.runner import EvaluateAndReport
    from tdmpc_ray.train.evaluation import PeriodicEvaluation, read_evaluation, step_file
    from tdmpc_ray.train.trainer import check_config_and_teacher, training_run

    cfg = TrainConfig(
        data=str(tiny_data), steps=10, out=str(tmp_path), evaluation=PeriodicEvalConfig(eval_freq=4)
    )
    cfg = check_config_and_teacher(cfg)
    assert [step for step in range(1, 11) if cfg.evaluation.due(step, cfg.steps)] == [4, 8, 10]
    with training_run(cfg) as (trainer, record):
        evaluations = [c for c in trainer.run_config.callbacks if isinstance(c, PeriodicEvaluation)]
        assert len(evaluations) == 1 and trainer.validation_config is None
        assert evaluations[0].evals_dir == cfg.evals_dir() == f"{tmp_path}/{cfg.run_name()}/evals"
    assert issubclass(EvaluateAndReport, PeriodicEvaluation)
    result = {
        "normalized_score": 12.5,
        "normalized_score_low": 10.0,
        "normalized_score_high": 15.0,
        "iqm": 12.0,
        "episodes_per_task": 6,
        "tasks": {"cartpole-balance": {"mean": 125.0}},
    }
    save_json(step_file(cfg.evals_dir(), 8), {"step": 8, "checkpoint": "c", **result})
    expected = {**training_metrics(result), "eval_file": step_file(cfg.evals_dir(), 8)}
    assert read_evaluation(cfg.evals_dir(), 8) == expected
    assert read_evaluation(cfg.evals_dir(), 4) is None


def test_a_runs_teacher_is_one_spec_whose_actors_live_for_its_serve_block(ray_session):
    import ray

    from tdmpc_ray.train.teacher import TeacherSpec, teacher_name

    checkpoint = str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt"))
    digest = "ef" * 32
    cfg = TrainConfig(
        data="d", teacher=checkpoint, teacher_sha256=digest, teacher_replicas=2, teacher_gpus=0.0
    )
    spec = cfg.teacher_spec()
    assert spec == TeacherSpec(checkpoint, digest, "mt30", None, 2, "fp32")
    assert len({spec, dataclasses.replace(cfg, teacher_gpus=1.0).teacher_spec()}) == 1
    assert TrainConfig(data="d").teacher_spec() is None
    names = {teacher_name(digest, "fp32", replica) for replica in range(2)}

    def running() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)} & names

    with spec.serve() as pool:
        assert [info["hash"] for info in pool.info()] == [digest, digest]
        assert running() == names
    assert pool.actors == []
    deadline = time.time() + 30
    while running() and time.time() < deadline:
        time.sleep(0.2)
    assert not running(), "the teacher's actors outlived the serve block"


def test_serve_waits_out_a_teacher_that_is_going_away(ray_session, monkeypatch):
    """Ray may hand out a named actor for a moment after its last handle went (ray#44083): a
    run right after another in the same driver would get the previous run's teacher as it dies."""
    import ray

    from tdmpc_ray.train import teacher as teacher_module

    @ray.remote(num_cpus=0)
    class Gone:
        def info(self) -> dict:
            return {}

    gone = Gone.remote()
    ray.get(gone.info.remote())
    ray.kill(gone)
    options, handed = teacher_module.TeacherActor.options, []

    class FirstGone:
        def __init__(self, **kwargs):
            self.real = options(**kwargs)

        def remote(self, *args):
            handed.append(gone if not handed else self.real.remote(*args))
            return handed[-1]

    monkeypatch.setattr(teacher_module.TeacherActor, "options", FirstGone)
    digest = "ab" * 32
    spec = teacher_module.TeacherSpec(
        str(shared_checkpoint("mt30_1M_steps_045dist_fp16.pt")), digest
    )
    with spec.serve() as pool:
        assert len(handed) == 2 and pool.actors == handed[1:]
        assert [info["hash"] for info in pool.info()] == [digest]
