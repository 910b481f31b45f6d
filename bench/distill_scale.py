"""Scale of every loss term on real data, and of the value distillation term before (raw decoded
Q values) and after (their symlogs) issue 15's fix.

Data: rollouts of the published 1M student's policy prior (+ noise) on four MT30 tasks, labelled
by the same student as teacher (`data generate`, `data label`). Student: the study's 0.35M
(enc 128, mlp 160, latent 64), trained with the paper's reward term and the value term
(value_d_coef 0.1); at a few steps, the mean over fixed batches of each coefficient-weighted
term is recorded, the value term both ways from the same predictions.

    python bench/distill_scale.py [--steps 300] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from tdmpc_ray.data.episode_store import EpisodeStore  # noqa: E402
from tdmpc_ray.model import WorldModel, model_config  # noqa: E402
from tdmpc_ray.model.published import resolve_checkpoint  # noqa: E402
from tdmpc_ray.train.losses import LossConfig, distill_loss, world_model_loss  # noqa: E402
from tdmpc_ray.train.update import Learner  # noqa: E402

TASKS = "walker-walk,cheetah-run,cartpole-swingup,finger-spin"
STUDENT = {"enc_dim": 128, "mlp_dim": 160, "latent_dim": 64}


def make_data(directory: Path, teacher: Path) -> Path:
    """Noisy prior rollouts of `teacher` on `TASKS`, labelled by it."""
    from tdmpc_ray.data.generate import GenerateConfig, generate
    from tdmpc_ray.data.label import label

    cfg = GenerateConfig(
        tasks=TASKS, episodes_per_task=2, policy=str(teacher), max_steps=200, seed=0
    )
    generate(cfg, directory, progress=False)
    label(directory, teacher, progress=False)
    return directory


@torch.no_grad()
def term_scales(learner: Learner, batches: list) -> dict[str, float]:
    """Mean coefficient-weighted value of each world-model term over `batches` (eval mode), the
    value distillation term computed on raw values and on their symlogs."""
    model, cfg = learner.model, learner.losses
    sums: dict[str, float] = {}
    for batch in batches:
        _, zs, metrics = world_model_loss(model, batch, cfg)
        qs = model.Q(zs[:-1], batch.action, batch.task, "all")
        raw = distill_loss(model.two_hot_inv(qs).mean(0), batch.teacher["value"], cfg)
        weighted = {
            "consistency": cfg.consistency_coef * metrics["consistency_loss"],
            "reward": cfg.reward_coef * metrics["reward_loss"],
            "value": cfg.value_coef * metrics["value_loss"],
            "reward_distill": cfg.d_coef * metrics["distill_loss"],
            "value_distill_raw": cfg.value_d_coef * raw,
            "value_distill_symlog": cfg.value_d_coef * metrics["value_distill_loss"],
        }
        for name, value in weighted.items():
            sums[name] = sums.get(name, 0.0) + float(value) / len(batches)
    return {name: round(value, 5) for name, value in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=resolve_checkpoint, default="mt30-1M-fp16")
    parser.add_argument("--data", type=Path, help="labelled episodes (made when absent)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="distill-scale-")) / "episodes"
    if not data.exists():
        make_data(data, args.teacher)
    store = EpisodeStore.load(data)
    gen = torch.Generator().manual_seed(0)
    fixed = [store.sample(256, 3, gen) for _ in range(4)]
    torch.manual_seed(0)
    learner = Learner(
        WorldModel(model_config(1, "mt30", **STUDENT)), LossConfig(d_coef=0.45, value_d_coef=0.1)
    )
    teacher_values = torch.cat([b.teacher["value"][0] for b in fixed])
    rows = []
    for step in range(args.steps + 1):
        if step in (0, args.steps // 10, args.steps):
            rows.append({"step": step, **term_scales(learner, fixed)})
            print(rows[-1], flush=True)
        if step < args.steps:
            learner.update(store.sample(256, 3, gen))
    write_result(
        "distill_scale",
        {
            "what": "coefficient-weighted loss terms of a 0.35M student (d_coef 0.45, value_d_coef 0.1) on "
            "labelled rollouts: the value distillation term on raw values (before) and symlogs (after)",
            "command": "python bench/distill_scale.py",
            "tasks": TASKS,
            "teacher": args.teacher.name,
            "teacher_value": {
                "mean": round(float(teacher_values.mean()), 2),
                "max": round(float(teacher_values.max()), 2),
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
