"""`vlarl demo`: make a ManiSkill env through vlarl's env layer, step it, print what happened."""

from __future__ import annotations

import time

import torch

from vlarl.config import Config


def run_demo(cfg: Config, steps: int = 20) -> dict:
    """Scripted-expert rollout of ``steps`` decisions (chunk 1) on ``cfg.env``; prints a summary."""
    from vlarl.envs import make_env

    t0 = time.perf_counter()
    env = make_env(cfg.env)
    made = time.perf_counter() - t0
    seeds = [cfg.env.seed + i for i in range(env.num_envs)]
    summary = {"task": env.task, "num_envs": env.num_envs, "env_create_s": round(made, 2)}
    with env:
        obs = env.reset(seeds)
        print(f"{env.task} [{env.split}] x{env.num_envs}: images {tuple(obs.images.shape)} "
              f"{obs.images.dtype}, state {tuple(obs.state.shape)}, action_dim {env.action_dim}")
        print(f"instruction[0]: {obs.instructions[0]!r}")
        episodes, successes, ret = 0, 0, torch.zeros(env.num_envs)
        t1 = time.perf_counter()
        for i in range(steps):
            actions = env.expert_actions().unsqueeze(1)          # [N, 1, A]
            out = env.step_chunk(actions, reset_seeds=[seeds[j] + 1000 * (i + 1)
                                                        for j in range(env.num_envs)])
            ret += out.rewards.sum(1)
            for j in out.done.nonzero().flatten().tolist():
                episodes += 1
                successes += int(out.success_once[j] or out.success[j])
                print(f"  env {j} episode ended at decision {i + 1}: "
                      f"terminated={bool(out.terminated[j])} truncated={bool(out.truncated[j])} "
                      f"success={bool(out.success[j])} return={ret[j].item():.2f}")
                ret[j] = 0
        dt = time.perf_counter() - t1
    summary.update(steps=steps * env.num_envs, steps_per_s=round(steps * env.num_envs / dt, 1),
                   episodes=episodes, successes=successes)
    print(f"{summary['steps']} control steps in {dt:.1f} s ({summary['steps_per_s']} steps/s), "
          f"{episodes} episodes ended, {successes} successful (scripted expert)")
    return summary
