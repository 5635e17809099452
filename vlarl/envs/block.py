"""A block of CPU envs: single-env ManiSkill simulators held by one process, stepped in turn.

``physx_cpu`` holds one env per simulator, so N CPU envs are N simulators. A worker process of
the ``cpu`` backend holds a block of them (``vector.py``); ``env.backend: inline`` with
``num_envs > 1`` and no CUDA holds all N here, in the calling process (:class:`BlockVecEnv`).
Env i is built by :func:`build_block` with seed stream ``seed + i`` in either place, so a
block steps the same episodes as worker processes, bit for bit.

Why a block in this process: a process's first camera picture costs ~10 s of one core on the
software renderer (SAPIEN's BRDF lookup table, computed once per process;
docs/experiments/2026-12-07-env-worker-start.md), and every further env in the process ~0.4
s. Worker processes pay it once each, at every env start; this process pays it once for every
env set it builds (an evaluation's splits, a test session). It steps no env in parallel.
"""

from __future__ import annotations

import dataclasses

import torch

from vlarl.config import EnvConfig
from vlarl.envs.base import VecEnv
from vlarl.envs.maniskill import ManiSkillVecEnv, SeedStream, check_actions, check_seeds
from vlarl.types import ChunkStep, Obs


def build_block(cfg: EnvConfig, indices: range | list[int]) -> list[ManiSkillVecEnv]:
    """The single-env CPU simulators of global env indices ``indices``: env i has seed stream
    ``cfg.seed + i``. Without CUDA the CPU renderer is asked for by name (ManiSkill's default
    asks for ``sapien_cuda`` and warns once per env that it fell back)."""
    render = None if torch.cuda.is_available() else "sapien_cpu"
    envs: list[ManiSkillVecEnv] = []
    try:
        for i in indices:
            one = dataclasses.replace(cfg, num_envs=1, num_workers=0, seed=cfg.seed + i)
            envs.append(ManiSkillVecEnv(one, sim_backend="physx_cpu", num_envs=1,
                                        render_backend=render))
    except BaseException:
        for env in envs:
            env.close()
        raise
    return envs


class BlockVecEnv(VecEnv):
    """``cfg.num_envs`` CPU simulators in this process, stepped one after another; the same
    semantics (and episodes) as the ``cpu`` backend's worker processes."""

    resets_each_env_alone = True

    def __init__(self, cfg: EnvConfig):
        self.cfg, self.task, self.split = cfg, cfg.task, cfg.split
        self.num_envs, self.max_episode_steps = cfg.num_envs, cfg.max_episode_steps
        self._seeds = SeedStream(cfg.seed)
        self._envs = build_block(cfg, range(cfg.num_envs))
        self.action_dim, self.state_dim = self._envs[0].action_dim, self._envs[0].state_dim

    def reset(self, seeds: list[int] | None = None) -> Obs:
        seeds = check_seeds(seeds, self.num_envs) or self._seeds.take(self.num_envs)
        return Obs.cat([env.reset([s]) for env, s in zip(self._envs, seeds)])

    def step_chunk(self, actions: torch.Tensor, reset_seeds: list[int] | None = None) -> ChunkStep:
        actions = check_actions(actions, self.num_envs, self.action_dim)
        seeds = check_seeds(reset_seeds, self.num_envs, "reset_seeds") or \
            self._seeds.take(self.num_envs)
        return ChunkStep.cat([env.step_chunk(actions[i:i + 1], [seeds[i]])
                              for i, env in enumerate(self._envs)])

    def expert_actions(self) -> torch.Tensor:
        return torch.cat([env.expert_actions() for env in self._envs])

    def render_frames(self) -> torch.Tensor:
        return torch.cat([env.render_frames() for env in self._envs])

    def close(self) -> None:
        envs, self._envs = self._envs, []
        for env in envs:
            env.close()
