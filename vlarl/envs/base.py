"""The batched, language-conditioned vector-env interface every backend implements.

The rollout, eval, data collection and distillation code see only this interface (and
``vlarl.types``), never ManiSkill. Seeds are always chosen by the caller, so a run is
reproducible and resumable: ``reset(seeds)`` starts env i from ``seeds[i]`` (equal seeds
give equal initial states: that is how GRPO's grouped resets are made), and
``step_chunk(actions, reset_seeds)`` uses ``reset_seeds[i]`` if env i auto-resets.
"""

from __future__ import annotations

import torch

from vlarl.types import ChunkStep, Obs


class VecEnv:
    num_envs: int
    """N."""
    action_dim: int
    """A (7 for pd_ee_delta_pose: 3 pos + 3 rot + gripper)."""
    state_dim: int
    """D of ``Obs.state``."""
    max_episode_steps: int
    """Control steps before truncation."""
    task: str
    """Task id (or ``multi``)."""
    split: str
    """Split name."""

    def reset(self, seeds: list[int]) -> Obs:
        """Reset all N envs; env i from ``seeds[i]``. Returns the first observations."""
        raise NotImplementedError

    def step_chunk(self, actions: torch.Tensor, reset_seeds: list[int] | None = None) -> ChunkStep:
        """Execute a chunk ``actions`` float32 ``[N, k, A]`` (k >= 1), rendering only the
        observation after the chunk. Envs that end inside the chunk stop executing it and
        auto-reset (with ``reset_seeds[i]`` when given)."""
        raise NotImplementedError

    resets_each_env_alone: bool = False
    """Whether ``reset(seeds)`` gives env i the initial state of ``seeds[i]`` whatever the
    other envs' seeds and N (one env per worker process; ``env.reset_each_env``; one env), so
    an evaluation on this env is paired with one on any other layout, and a run may evaluate
    on its training env (every rollout starts from ``reset(seeds)``). Initial states only:
    the simulator keeps some state across resets, so once objects are pushed an episode can
    differ at 1e-5 with the env's history (docs/guarantees.md, section 1)."""

    supports_overlap: bool = False
    """Whether :meth:`step_chunk_start` returns before the envs have stepped (worker
    processes), so the policy can infer for other envs meanwhile (``train.pipeline_groups``)."""

    def step_chunk_start(self, actions: torch.Tensor, reset_seeds: list[int] | None,
                         envs: range) -> None:
        """Start stepping the envs ``envs`` (a contiguous range) with ``actions [len(envs), k,
        A]``; :meth:`step_chunk_finish` of the same range returns their :class:`ChunkStep`.
        Backends without overlap step here (all N envs at once is the only way a single
        simulator steps) and return the step at finish."""
        if envs != range(self.num_envs):
            raise ValueError(f"{type(self).__name__} steps all {self.num_envs} envs at once "
                             f"(env.backend=cpu overlaps groups of envs); got envs {envs}")
        self._pending = self.step_chunk(actions, reset_seeds)

    def step_chunk_finish(self, envs: range) -> ChunkStep:
        """The step started by :meth:`step_chunk_start` for ``envs``."""
        step, self._pending = self._pending, None
        return step

    def expert_actions(self) -> torch.Tensor:
        """Privileged scripted-expert action ``[N, A]`` for the current state (demonstrations)."""
        raise NotImplementedError

    def render_frames(self) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` of the current state (videos); renders if needed."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
