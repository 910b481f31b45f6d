"""Building blocks of the TD-MPC2 world model: NormedLinear MLPs, SimNorm, and a batched Q ensemble."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimNorm(nn.Module):
    """Simplicial normalization: a softmax over each consecutive group of `dim` features."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def mish_fusible(x: torch.Tensor) -> torch.Tensor:
    """Mish as y * n / (n + 2), n = e^y (e^y + 2) (in float32): one exp instead of exp, log1p and
    tanh, equal to float32 rounding. Meant for torch.compile, which fuses it with its neighbours
    into one pass (forward and backward)."""
    y = x.float()
    e = torch.exp(y.clamp(max=20.0))
    n = e * (e + 2)
    return (y * n / (n + 2)).to(x.dtype)


def mish(x: torch.Tensor) -> torch.Tensor:
    """TD-MPC2's activation: exactly `F.mish` when run eagerly, `mish_fusible` inside
    torch.compile (a compiled update or planner)."""
    if torch.compiler.is_compiling():
        return mish_fusible(x)
    return F.mish(x)


class Mish(nn.Module):
    """`mish` as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)


class NormedLinear(nn.Linear):
    """Linear -> (dropout) -> LayerNorm -> activation (Mish unless given)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act=None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: list[int], out_dim: int, act=None, dropout: float = 0.0):
    """TD-MPC2's MLP: NormedLinear hidden layers (dropout on the first) and a plain or normed output."""
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0)
        for i in range(len(dims) - 2)
    ]
    layers.append(
        NormedLinear(dims[-2], dims[-1], act=act) if act else nn.Linear(dims[-2], dims[-1])
    )
    return nn.Sequential(*layers)


class _StackedLayerNorm(nn.Module):
    """Affine parameters of one LayerNorm per ensemble member."""

    def __init__(self, num: int, features: int, requires_grad: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num, features), requires_grad=requires_grad)
        self.bias = nn.Parameter(torch.zeros(num, features), requires_grad=requires_grad)


class _StackedLinear(nn.Module):
    """Weights of one linear layer per ensemble member: weight [Q, out, in], bias [Q, out]."""

    def __init__(self, num: int, in_f: int, out_f: int, normed: bool, requires_grad: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, out_f, in_f), requires_grad=requires_grad)
        self.bias = nn.Parameter(torch.zeros(num, out_f), requires_grad=requires_grad)
        self.ln = _StackedLayerNorm(num, out_f, requires_grad) if normed else None


class QEnsemble(nn.Module):
    """`num_q` Q-function MLPs evaluated together with batched matmuls (no vmap, no tensordict).

    Parameter names follow TD-MPC2's new checkpoint layout: `params.K.{weight,bias,ln.weight,ln.bias}`
    with a leading ensemble dimension, so checkpoints map onto it key for key.
    """

    def __init__(self, num_q, in_dim, hidden, out_dim, dropout=0.0, requires_grad=True):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.dropout = dropout
        self.params = nn.ModuleList(
            _StackedLinear(num_q, dims[i], dims[i + 1], i < len(dims) - 2, requires_grad)
            for i in range(len(dims) - 1)
        )

    def __len__(self) -> int:
        return self.params[0].weight.shape[0]

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Logits of every member: x [..., in] -> [Q, ..., out]."""
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1])
        for i, layer in enumerate(self.params):
            w, b = layer.weight, layer.bias
            if detach:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b.unsqueeze(1), h.expand(w.shape[0], -1, -1), w.transpose(1, 2))
            if layer.ln is not None:
                if i == 0 and self.dropout and self.training:
                    h = F.dropout(h, self.dropout, training=True)
                ln_w, ln_b = layer.ln.weight, layer.ln.bias
                if detach:
                    ln_w, ln_b = ln_w.detach(), ln_b.detach()
                h = F.layer_norm(h, h.shape[-1:]) * ln_w.unsqueeze(1) + ln_b.unsqueeze(1)
                h = mish(h)
        return h.reshape(h.shape[0], *lead, h.shape[-1])

    @torch.no_grad()
    def copy_from(self, other: QEnsemble) -> None:
        """Overwrite these weights with `other`'s."""
        for p, q in zip(self.parameters(), other.parameters(), strict=True):
            p.copy_(q)

    @torch.no_grad()
    def lerp_from(self, other: QEnsemble, tau: float) -> None:
        """Polyak update toward `other`: p <- p + tau * (q - p)."""
        for p, q in zip(self.parameters(), other.parameters(), strict=True):
            p.lerp_(q, tau)


def init_weights(module: nn.Module) -> None:
    """TD-MPC2's initialisation: truncated normal (std 0.02) weights, zero biases, small embeddings."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.uniform_(module.weight, -0.02, 0.02)
    elif isinstance(module, _StackedLinear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
