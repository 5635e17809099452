"""Pure math of the stochastic flow sampler (Flow-Noise / ReinFlow), kept free of models.

A flow-matching policy integrates a velocity field from noise (t = 1) to actions (t = 0)
in K Euler steps. Deterministic Euler steps give no likelihood, so RL fine-tuning
(ReinFlow, arXiv:2505.22094; pi_RL / Flow-Noise, arXiv:2510.25889) injects Gaussian noise
into every step::

    x_{i+1} = x_i + v_theta(x_i, t_i) * dt + sigma * eps_i,   eps_i ~ N(0, I)

so each transition is ``N(mu_i, sigma^2 I)`` with ``mu_i = x_i + v_theta(x_i, t_i) * dt``
and the chunk's log-probability is the sum of the K transition log-densities. The initial
noise ``x_0 ~ N(0, I)`` does not depend on theta, so it cancels in every ratio and is left out.
Tensors follow pi0's layout: ``x_traj [N, K+1, chunk, A_pad]``.
"""

from __future__ import annotations

import math

import torch

from vlarl.policies.sampling import randn


def time_grid(num_steps: int) -> tuple[torch.Tensor, float]:
    """pi0's integration grid: times ``t_i = 1 - i / K`` for i < K (float32 ``[K]``) and ``dt = -1/K``."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    dt = -1.0 / num_steps
    return 1.0 + dt * torch.arange(num_steps, dtype=torch.float32), dt


def action_mask(chunk: int, a_pad: int, k: int, a: int, device: torch.device | None = None) -> torch.Tensor:
    """float32 ``[chunk, a_pad]``: 1 on the executed actions (first ``k``) and real dims (first ``a``).

    Padding dims and unexecuted chunk positions carry no noise and no likelihood: they only
    condition the velocity field (pi0 pads actions to ``max_action_dim``).
    """
    if not (1 <= k <= chunk and 1 <= a <= a_pad):
        raise ValueError(f"need 1 <= k={k} <= chunk={chunk} and 1 <= a={a} <= a_pad={a_pad}")
    mask = torch.zeros(chunk, a_pad, device=device)
    mask[:k, :a] = 1.0
    return mask


def noisy_euler_step(x: torch.Tensor, velocity: torch.Tensor, dt: float, sigma: float,
                     mask: torch.Tensor, generator: torch.Generator | None = None,
                     deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One transition: returns ``(x_next, mean)``, both float32 like ``x`` ``[N, chunk, A_pad]``.

    Noise goes only where ``mask`` is 1; ``deterministic`` returns the mean (plain ODE step).
    """
    mean = x + dt * velocity.float()
    if deterministic or sigma == 0.0:
        return mean, mean
    eps = randn(mean.shape, generator, mean.device, mean.dtype)
    return mean + sigma * eps * mask, mean


def transition_log_prob(x_next: torch.Tensor, mean: torch.Tensor, sigma: float,
                        mask: torch.Tensor) -> torch.Tensor:
    """Gaussian log-density of ``x_next`` under ``N(mean, sigma^2)``, summed over masked dims.

    ``x_next, mean [N, ..., chunk, A_pad]`` -> ``[N]``. ``sigma`` must be > 0.
    """
    if sigma <= 0.0:
        raise ValueError(f"sigma={sigma} must be > 0 for a likelihood (policy.noise_level)")
    z = (x_next.float() - mean.float()) / sigma
    per_dim = -0.5 * z.pow(2) - math.log(sigma) - 0.5 * math.log(2.0 * math.pi)
    return (per_dim * mask).flatten(1).sum(-1)


def chunk_entropy(sigma: float, num_steps: int, mask: torch.Tensor, n: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """Entropy ``[N]`` of the K Gaussian transitions (constant given sigma): K * dims * H(N(0, sigma^2))."""
    if sigma <= 0.0:
        return torch.zeros(n, device=device)
    per_dim = 0.5 * math.log(2.0 * math.pi * math.e * sigma**2)
    return torch.full((n,), per_dim * num_steps * float(mask.sum()), device=device)
