"""``check_env``: assert a ``VecEnv`` keeps the contract the rollout relies on.

Cheap enough for ``vlarl doctor`` and for every backend's tests: one reset, one chunk of
random actions, checks on every field of ``Obs`` and ``ChunkStep``.
"""

from __future__ import annotations

import time

import torch

from vlarl.envs.base import VecEnv
from vlarl.types import ChunkStep, Obs


def _check_obs(obs: Obs, env: VecEnv, where: str) -> None:
    n = env.num_envs
    assert obs.images.dtype == torch.uint8, f"{where}.images dtype {obs.images.dtype} != uint8"
    assert obs.images.ndim == 5 and obs.images.shape[0] == n and obs.images.shape[-1] == 3, \
        f"{where}.images shape {tuple(obs.images.shape)} != [N={n}, cams, H, W, 3]"
    assert obs.state.dtype == torch.float32, f"{where}.state dtype {obs.state.dtype} != float32"
    assert tuple(obs.state.shape) == (n, env.state_dim), \
        f"{where}.state shape {tuple(obs.state.shape)} != [{n}, {env.state_dim}]"
    assert torch.isfinite(obs.state).all(), f"{where}.state has NaN/inf"
    assert len(obs.instructions) == n and all(isinstance(s, str) and s for s in obs.instructions), \
        f"{where}.instructions must be {n} non-empty strings, got {obs.instructions!r}"


def _check_step(out: ChunkStep, env: VecEnv, k: int) -> None:
    n = env.num_envs
    _check_obs(out.obs, env, "step.obs")
    assert out.final_obs is not None, "step.final_obs is None"
    _check_obs(out.final_obs, env, "step.final_obs")
    assert out.rewards.dtype == torch.float32 and tuple(out.rewards.shape) == (n, k), \
        f"rewards {out.rewards.dtype} {tuple(out.rewards.shape)} != float32 [{n}, {k}]"
    for name in ("terminated", "truncated", "success", "success_once"):
        t = getattr(out, name)
        assert t.dtype == torch.bool and tuple(t.shape) == (n,), f"{name} {t.dtype} {tuple(t.shape)} != bool [{n}]"
    assert not (out.terminated & out.truncated).any(), "terminated and truncated both set"
    assert out.steps.dtype == torch.int64 and ((out.steps >= 1) & (out.steps <= k)).all(), \
        f"steps {out.steps.tolist()} must be int64 in [1, {k}]"
    assert (out.steps[~out.done] == k).all(), "an env that did not end executed fewer than k steps"
    after = torch.arange(k)[None, :] >= out.steps[:, None]
    assert (out.rewards[after] == 0).all(), "rewards after an episode ended must be 0"
    assert (out.success <= out.success_once).all(), "success without success_once"


def check_env(env: VecEnv, seed: int = 0, chunk: int = 2) -> dict:
    """Reset with seeds ``seed..seed+N-1``, step one chunk of uniform random actions, and
    assert the contract. Returns shapes and timings for reports."""
    n = env.num_envs
    for attr in ("num_envs", "action_dim", "state_dim", "max_episode_steps", "task", "split"):
        assert hasattr(env, attr), f"env has no attribute {attr!r}"
    t0 = time.perf_counter()
    obs = env.reset(list(range(seed, seed + n)))
    t_reset = time.perf_counter() - t0
    _check_obs(obs, env, "reset")
    actions = torch.rand(n, chunk, env.action_dim) * 2 - 1
    t0 = time.perf_counter()
    out = env.step_chunk(actions, list(range(seed + n, seed + 2 * n)))
    t_step = time.perf_counter() - t0
    _check_step(out, env, chunk)
    frames = env.render_frames()
    assert frames.dtype == torch.uint8 and frames.shape[0] == n and frames.ndim == 4, \
        f"render_frames {frames.dtype} {tuple(frames.shape)} != uint8 [N, H, W, 3]"
    return {
        "task": env.task, "split": env.split, "num_envs": n, "action_dim": env.action_dim,
        "state_dim": env.state_dim, "image_shape": list(obs.images.shape[1:]),
        "instruction": obs.instructions[0], "reset_s": round(t_reset, 3),
        "chunk": chunk, "step_chunk_s": round(t_step, 3),
        "rewards_sum": float(out.rewards.sum()), "done": int(out.done.sum()),
    }
