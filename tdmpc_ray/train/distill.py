"""Bridges between a teacher's and a student's latent spaces for next-state latent distillation.

The paper matched next-state latents of a 1376-dim teacher and a 128-dim student through a
linear projection or PCA (Table 1). Both are here: `linear` learns W, b jointly with the student
so that W z_student + b predicts the teacher's latent (student -> teacher, so the target is the
frozen teacher latent and the projection cannot collapse it); `pca` fixes a projection of the
teacher latent onto its top principal components, fitted once on teacher latents of a data
sample, and matches the student latent to it.
"""

from __future__ import annotations

import torch
from torch import nn

BRIDGES = ("linear", "pca")


class LatentBridge(nn.Module):
    """Maps (student latent, teacher latent) into one space where they are compared by MSE."""

    def __init__(
        self,
        kind: str,
        student_dim: int,
        teacher_dim: int,
        pca: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        if kind not in BRIDGES:
            raise ValueError(f"latent_bridge must be one of {BRIDGES}, not {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.project = nn.Linear(student_dim, teacher_dim)
        else:
            if pca is None:
                raise ValueError("the pca bridge needs (mean, components) from fit_pca")
            mean, components = pca
            if components.shape != (teacher_dim, student_dim):
                raise ValueError(
                    f"pca components {tuple(components.shape)} do not map the teacher's "
                    f"{teacher_dim}-dim latent to the student's {student_dim}"
                )
            self.register_buffer("mean", mean.float())
            self.register_buffer("components", components.float())

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "linear":
            return self.project(student), teacher
        return student, (teacher - self.mean) @ self.components


def fit_pca(latents: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [L] and top-`dim` principal directions [L, dim] of teacher latents [N, L]."""
    if latents.shape[0] < dim:
        raise ValueError(f"PCA to {dim} dims needs at least {dim} latents, got {latents.shape[0]}")
    latents = latents.double()
    mean = latents.mean(0)
    _, _, vh = torch.linalg.svd(latents - mean, full_matrices=False)
    return mean.float(), vh[:dim].T.float().contiguous()
