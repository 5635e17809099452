"""Batched data types shared by every stage (env -> rollout -> policy -> algorithm).

This module imports only torch, so the env package (ManiSkill) and the policy package
(transformers/peft) can both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Obs:
    """A batch of N language-conditioned observations.

    images: uint8 ``[N, cams, H, W, 3]``; state: float32 ``[N, D]`` (proprioception);
    instructions: ``list[str]`` of length N; privileged: float32 ``[N, P]`` or None - the
    simulator's full state for an asymmetric critic or a state-based expert, filled only when
    ``env.privileged_state`` is on (never fed to a VLA actor).
    """

    images: torch.Tensor
    state: torch.Tensor
    instructions: list[str]
    privileged: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def index(self, idx: torch.Tensor | list[int] | slice) -> Obs:
        """Sub-batch by integer indices, a bool mask or a slice."""
        priv = self.privileged
        if isinstance(idx, slice):
            return Obs(self.images[idx], self.state[idx], self.instructions[idx],
                       None if priv is None else priv[idx])
        idx_t = torch.as_tensor(idx)
        if idx_t.dtype == torch.bool:
            idx_t = idx_t.nonzero(as_tuple=True)[0]
        ids = idx_t.tolist()
        return Obs(self.images[idx_t], self.state[idx_t], [self.instructions[i] for i in ids],
                   None if priv is None else priv[idx_t.to(priv.device)])

    def to(self, device: torch.device | str) -> Obs:
        return Obs(self.images.to(device), self.state.to(device), self.instructions,
                   None if self.privileged is None else self.privileged.to(device))

    @staticmethod
    def cat(items: list[Obs]) -> Obs:
        privs = [o.privileged for o in items]
        if any(p is None for p in privs) and not all(p is None for p in privs):
            raise ValueError("Obs.cat: some observations carry privileged state and some do not")
        return Obs(
            torch.cat([o.images for o in items]),
            torch.cat([o.state for o in items]),
            [s for o in items for s in o.instructions],
            None if privs[0] is None else torch.cat(privs),  # type: ignore[arg-type]
        )


@dataclass
class ChunkStep:
    """What the vector env returns for one decision (a chunk of k control steps) of N envs.

    Envs whose episode ends inside the chunk ignore the rest of the chunk's actions
    (their ``rewards`` are 0 after the end) and are auto-reset; ``obs`` then holds the
    first observation of the new episode, and ``final_obs`` the true last observation
    of the old one (for bootstrapping truncated episodes).
    """

    obs: Obs
    """Observation at the next decision point, ``N`` envs."""
    rewards: torch.Tensor
    """float32 ``[N, k]``: per-control-step rewards inside the chunk (0 after episode end)."""
    terminated: torch.Tensor
    """bool ``[N]``: the episode ended by the task (success or failure) inside this chunk."""
    truncated: torch.Tensor
    """bool ``[N]``: the episode hit its time limit inside this chunk (and did not terminate)."""
    success: torch.Tensor
    """bool ``[N]``: the task's success flag at the last executed step of the chunk."""
    success_once: torch.Tensor
    """bool ``[N]``: success was reached at any executed step of the chunk."""
    steps: torch.Tensor
    """int64 ``[N]``: control steps actually executed in this chunk (k unless the episode ended)."""
    final_obs: Obs | None = None
    """Last observation of the episodes that ended (rows of ``done`` envs valid; others copy ``obs``)."""
    info: dict = field(default_factory=dict)
    """Extra per-env tensors (e.g. ``elapsed_steps``, ``episode_return``)."""

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated

    @staticmethod
    def cat(items: list[ChunkStep]) -> ChunkStep:
        """Env groups' steps, in order, as one step of all their envs."""
        if len(items) == 1:
            return items[0]
        cat = torch.cat
        finals = [p.final_obs for p in items]
        return ChunkStep(
            obs=Obs.cat([p.obs for p in items]), rewards=cat([p.rewards for p in items]),
            terminated=cat([p.terminated for p in items]),
            truncated=cat([p.truncated for p in items]),
            success=cat([p.success for p in items]),
            success_once=cat([p.success_once for p in items]),
            steps=cat([p.steps for p in items]),
            final_obs=None if any(f is None for f in finals) else Obs.cat(finals),  # type: ignore[arg-type]
            info={k: cat([p.info[k] for p in items]) for k in items[0].info})


@dataclass
class ActOutput:
    """What a policy returns for one decision of N envs."""

    actions: torch.Tensor
    """float32 ``[N, k, A]``: continuous actions of the chunk, in the env's action space."""
    log_probs: torch.Tensor
    """float32 ``[N]``: log-probability of the whole sampled chunk (sum over tokens / steps)."""
    values: torch.Tensor | None
    """float32 ``[N]`` or None (policies without a value head)."""
    stored: dict[str, torch.Tensor]
    """Tensors the rollout must keep so ``evaluate`` can recompute log-probs exactly
    (e.g. action token ids ``[N, k*A]`` or a flow policy's denoising trajectory)."""

    @staticmethod
    def cat(items: list[ActOutput]) -> ActOutput:
        """Env groups' outputs, in order, as one output of all their envs."""
        if len(items) == 1:
            return items[0]
        values = [o.values for o in items]
        return ActOutput(
            actions=torch.cat([o.actions for o in items]),
            log_probs=torch.cat([o.log_probs for o in items]),
            values=None if any(v is None for v in values) else torch.cat(values),  # type: ignore[arg-type]
            stored={k: torch.cat([o.stored[k] for o in items]) for k in items[0].stored})
