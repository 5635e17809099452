"""`vlarl demo` and `vlarl expert`: a task's env and scripted expert, run and reported.

* ``vlarl demo`` makes the env through vlarl's env layer, steps it with the expert until every
  env's first episode has ended (or ``--steps`` decisions), and prints what happened.
* ``vlarl expert`` measures the expert: success over ``eval.num_episodes`` seeded episodes per
  split of ``eval.splits``, with a 95 % Wilson interval and the mean episode length (a new
  task's expert should reach >= 95 / 100 in distribution before demos are collected with it).
"""

from __future__ import annotations

import time

import torch

from vlarl.config import Config


def run_demo(cfg: Config, steps: int | None = None) -> dict:
    """Scripted-expert rollout (chunk 1) on ``cfg.env`` until every env's first episode ended
    (at most ``env.max_episode_steps`` decisions), or ``steps`` decisions; prints a summary."""
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
        ended = torch.zeros(env.num_envs, dtype=torch.bool)
        t1 = time.perf_counter()
        limit = steps if steps is not None else cfg.env.max_episode_steps
        i = -1
        for i in range(limit):
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
            ended |= out.done
            if steps is None and bool(ended.all()):
                break
        dt = time.perf_counter() - t1
        steps = i + 1
    summary.update(steps=steps * env.num_envs, steps_per_s=round(steps * env.num_envs / dt, 1),
                   episodes=episodes, successes=successes)
    print(f"{summary['steps']} control steps in {dt:.1f} s ({summary['steps_per_s']} steps/s), "
          f"{episodes} episodes ended, {successes} successful (scripted expert)")
    return summary


def expert_episodes(env, seeds: list[int]) -> list[dict]:
    """The scripted expert on ``env`` from each seed (batches of ``env.num_envs``): one record
    ``{seed, success, length}`` per episode (success at any step, steps until the end)."""
    records: list[dict] = []
    n = env.num_envs
    for start in range(0, len(seeds), n):
        batch = seeds[start:start + n]
        run = batch + [batch[-1]] * (n - len(batch))  # pad the last batch; extras ignored
        env.reset(run)
        done = torch.zeros(n, dtype=torch.bool)
        success = torch.zeros(n, dtype=torch.bool)
        length = torch.zeros(n, dtype=torch.long)
        for _ in range(env.max_episode_steps):
            out = env.step_chunk(env.expert_actions().unsqueeze(1), reset_seeds=run)
            live = ~done
            length += (out.steps * live).long()
            success |= live & (out.success_once | out.success)
            done |= out.done
            if bool(done.all()):
                break
        records += [{"seed": s, "success": bool(success[i]), "length": int(length[i])}
                    for i, s in enumerate(batch)]
    return records


def run_expert(cfg: Config) -> dict:
    """``vlarl expert``: the task's scripted expert over ``eval.num_episodes`` seeds (from
    ``eval.seed``) per split of ``eval.splits``; prints one row per split and returns them."""
    import dataclasses

    from vlarl.envs import make_env
    from vlarl.eval.stats import wilson_interval

    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.num_episodes))
    rows = {}
    print(f"scripted expert on {cfg.env.task}, {len(seeds)} episodes per split "
          f"(seeds {seeds[0]}..{seeds[-1]}, max {cfg.env.max_episode_steps} steps)")
    print(f"{'split':<20} {'success':>8} {'95% CI':>16} {'mean length':>12}")
    for split in cfg.eval.splits:
        # the expert reads the simulator state: no cameras, nothing rendered
        with make_env(dataclasses.replace(cfg.env, split=split, obs_mode="state")) as env:
            recs = expert_episodes(env, seeds)
        k = sum(r["success"] for r in recs)
        lo, hi = wilson_interval(k, len(recs))
        ok = [r["length"] for r in recs if r["success"]]
        mean_len = sum(ok) / len(ok) if ok else float("nan")
        rows[split] = {"successes": k, "n": len(recs), "success_rate": k / len(recs),
                       "ci_low": lo, "ci_high": hi, "mean_length": mean_len}
        print(f"{split:<20} {k:>4}/{len(recs):<3} [{100 * lo:5.1f}, {100 * hi:5.1f}] % "
              f"{mean_len:>11.1f}", flush=True)
    return rows
