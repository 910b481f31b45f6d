"""The scalar maths of TD-MPC2: symlog, discrete (two-hot) regression and the squashed Gaussian."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_HALF_LOG_2PI = 0.9189385175704956


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes symmetrically."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def bin_centers(num_bins: int, vmin: float, vmax: float, like: torch.Tensor) -> torch.Tensor:
    """Centres of the regression bins in symlog space."""
    return torch.linspace(vmin, vmax, num_bins, device=like.device, dtype=like.dtype)


def two_hot(x: torch.Tensor, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0):
    """Soft two-hot encoding of scalars `x` [..., 1] in symlog space -> [..., num_bins]."""
    bin_size = (vmax - vmin) / (num_bins - 1)
    pos = (torch.clamp(symlog(x), vmin, vmax) - vmin) / bin_size
    low = torch.floor(pos)
    frac = pos - low
    low = low.long()
    out = torch.zeros(*x.shape[:-1], num_bins, device=x.device, dtype=x.dtype)
    out.scatter_(-1, low, 1 - frac)
    return out.scatter_add_(-1, (low + 1) % num_bins, frac)


def two_hot_inv(
    logits: torch.Tensor, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0
) -> torch.Tensor:
    """Expected scalar of a categorical over the regression bins: logits [..., bins] -> [..., 1]."""
    probs = F.softmax(logits, dim=-1)
    centers = bin_centers(num_bins, vmin, vmax, probs)
    return symexp((probs * centers).sum(-1, keepdim=True))


def soft_ce(logits: torch.Tensor, target: torch.Tensor, num_bins: int, vmin: float, vmax: float):
    """Cross-entropy between predicted logits and the two-hot encoding of scalar targets."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(two_hot(target, num_bins, vmin, vmax) * log_probs).sum(-1, keepdim=True)


def scaled_log_std(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map an unbounded network output into [low, high] with a tanh."""
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1)


def gaussian_log_prob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of `mean + eps * std` under N(mean, std), summed over the last dim."""
    return (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1, keepdim=True)


def squash(mean: torch.Tensor, action: torch.Tensor, log_prob: torch.Tensor):
    """Tanh-squash mean and sample, correcting the sample's log-probability."""
    action = torch.tanh(action)
    correction = torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return torch.tanh(mean), action, log_prob - correction


def discount_for(episode_length: int, denom: float = 5, low: float = 0.95, high: float = 0.995):
    """TD-MPC2's discount heuristic: (L/denom - 1) / (L/denom), clipped to [low, high]."""
    frac = episode_length / denom
    return min(max((frac - 1) / frac, low), high)
