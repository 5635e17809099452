"""The policy protocol: the only surface the rollout, algorithms, eval and distill code use.

"The policy acts, the algorithm updates it" (Stable-Baselines3). Algorithms see tensors
and this protocol, never a concrete model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vlarl.types import ActOutput, Obs


class Policy(nn.Module):
    """Base class of every vlarl policy (VLA actors and small students).

    Subclasses set ``chunk_size`` (k) and ``action_dim`` (A) and implement the methods.
    """

    chunk_size: int
    action_dim: int

    def act(self, obs: Obs, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        """Sample (or take the mode of) one action chunk per env. Call under ``torch.no_grad``."""
        raise NotImplementedError

    def evaluate(self, obs: Obs, stored: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Re-score stored chunks: ``(log_probs [N], entropy [N], values [N] | None)``, with grad.
        A token policy also takes ``per_token=True``: log-probs ``[N, k*A]``, one per action
        token (``algo.importance_sampling_level: token``)."""
        raise NotImplementedError

    def forward(self, obs: Obs, stored: dict[str, torch.Tensor], **kw):
        """``forward`` is ``evaluate``, so a DDP-wrapped policy syncs gradients of the update."""
        return self.evaluate(obs, stored, **kw)

    def value(self, obs: Obs) -> torch.Tensor | None:
        """Value estimates ``[N]`` (None without a value head)."""
        return None

    def prompt_features(self, obs: Obs) -> torch.Tensor:
        """Features ``[N, H]`` of the observation before any action (a VLA's prompt state), with
        grad: what grounding pre-training (``sft.grounding_scenes``) reads the layout from."""
        raise NotImplementedError(f"{type(self).__name__} has no prompt features")

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Context in which the policy is the reference policy (LoRA adapters disabled)."""
        yield

    def policy_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the actor (adapters / action heads)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and "value_head" not in n]

    def value_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the critic (value head)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and "value_head" in n]

    def save_pretrained(self, path: str | Path) -> None:
        """Write a directory that ``from_pretrained`` (and ``vlarl eval``) can load."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> Policy:
        raise NotImplementedError
