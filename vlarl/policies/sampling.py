"""Seeded sampling that works on any device: draws happen on the generator's device.

Evaluation and rollouts pass a CPU ``torch.Generator`` (seeded per episode, the same on every
machine); CUDA sampling functions refuse a CPU generator ("Expected a 'cuda' device type for
generator"), so a GPU policy draws on the CPU and moves the result.
"""

from __future__ import annotations

import torch


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw: a seeded generator's own device (eval and rollouts pass a CPU
    ``torch.Generator``, and CUDA sampling refuses a CPU generator), else the tensors'."""
    return generator.device if generator is not None else torch.device(device)


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """``torch.randn`` drawn on the generator's device and moved to ``device``."""
    out = torch.randn(shape, generator=generator, device=_draw_device(generator, device),
                      dtype=dtype)
    return out.to(device)


def multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One ``torch.multinomial`` draw per row, on the generator's device, moved back."""
    where = _draw_device(generator, probs.device)
    return torch.multinomial(probs.to(where), 1, generator=generator).to(probs.device)


def point_token(logp: torch.Tensor, estimate: str = "mode") -> torch.Tensor:
    """The deterministic bin of each row of ``logp [..., bins]`` (``policy.point_estimate``):
    ``mode`` = the argmax, ``mean`` = the bin nearest the distribution's mean."""
    if estimate == "mode":
        return logp.argmax(-1)
    bins = torch.arange(logp.shape[-1], device=logp.device, dtype=logp.dtype)
    return (logp.exp() * bins).sum(-1).round().long().clamp_(0, logp.shape[-1] - 1)
