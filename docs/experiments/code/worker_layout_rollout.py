"""The quickstart recipe's GRPO rollout (8 CPU envs, groups of G = 4, chunks of 4, the tiny token
VLA untrained, so every episode runs to the step limit) under several ``env.num_workers``,
interleaved repeats; prints env steps/s and the share of the wall time spent in ``policy.act``.

    python docs/experiments/code/worker_layout_rollout.py 8 2 4
"""

import dataclasses
import sys
import time

import torch


def main() -> None:
    from vlarl.config import load_config
    from vlarl.envs import make_env
    from vlarl.policies import build_policy
    from vlarl.rollout import RolloutBuffer, collect

    cfg = load_config("recipes/cpu/quickstart.yaml", ["--env.backend", "cpu"])
    torch.manual_seed(0)
    policy = build_policy(cfg.policy).eval()
    layouts = [int(x) for x in sys.argv[1:]] or [cfg.env.num_envs, 2]
    envs = {w: make_env(dataclasses.replace(cfg.env, num_workers=w)) for w in layouts}
    secs, steps, acts = ({w: 0.0 for w in layouts} for _ in range(3))
    act, current = policy.act, [layouts[0]]

    def timed_act(*args, **kw):
        t0 = time.perf_counter()
        out = act(*args, **kw)
        acts[current[0]] += time.perf_counter() - t0
        return out

    policy.act = timed_act
    try:
        for rep in range(3):
            for w in layouts:
                current[0] = w
                buf = RolloutBuffer(cfg.train.rollout_steps, cfg.env.num_envs)
                t0 = time.perf_counter()
                stats = collect(envs[w], policy, buf, base_seed=rep, update=0, mode="episodic",
                                group_size=cfg.algo.num_generations,
                                generator=torch.Generator().manual_seed(rep))
                secs[w] += time.perf_counter() - t0
                steps[w] += stats["env_steps"]
    finally:
        for env in envs.values():
            env.close()
    for w in layouts:
        print(f"num_workers={w}: {steps[w] / secs[w]:.1f} env steps/s, policy.act "
              f"{acts[w] / secs[w]:.2f} of the wall time, {steps[w]:.0f} steps, "
              f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
