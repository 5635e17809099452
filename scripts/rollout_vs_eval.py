#!/usr/bin/env python
"""One checkpoint's sampled success on the training path and on the evaluation path.

    python scripts/rollout_vs_eval.py CHECKPOINT [--config recipes/cpu/quickstart.yaml]
        [--updates 25] [--base-seed 1] [--eval-seed S] [--json out.json]

Training rollouts (``vlarl.rollout.collect``, episodic, groups of ``algo.num_generations``
envs on one seed) and ``vlarl eval`` (``evaluate_policy``) are separate code paths. This runs
the checkpoint, sampling at its own ``policy.temperature``, through both: ``--updates``
rollouts of ``env.num_envs`` episodes (the seeds of updates 0..U-1 of a run with
``train.seed = --base-seed``), then ``evaluate_policy`` on exactly those episodes' seeds, then
on 100 evaluation seeds from ``--eval-seed`` (default: the config's ``eval.seed``, the seeds
``vlarl eval`` uses). Equal rates (within their CIs) mean a training curve and an
evaluation measure the same policy; a gap would be a defect in one path.
"""

from __future__ import annotations

import argparse
import json
import time


def rate(successes: list[int]) -> dict:
    from vlarl.eval.stats import wilson_interval

    k, n = sum(successes), len(successes)
    lo, hi = wilson_interval(k, n)
    return {"successes": k, "n": n, "rate": k / n, "ci_low": lo, "ci_high": hi}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="recipes/cpu/quickstart.yaml")
    ap.add_argument("--updates", type=int, default=25)
    ap.add_argument("--base-seed", type=int, default=1)
    ap.add_argument("--eval-seed", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from vlarl.config import load_config
    from vlarl.envs import make_env
    from vlarl.eval.evaluate import evaluate_policy
    from vlarl.policies import load_policy
    from vlarl.rollout import RolloutBuffer, collect, episode_seed, seed_slots

    cfg = load_config(args.config)
    torch.manual_seed(0)
    policy = load_policy(args.checkpoint)
    group = cfg.algo.num_generations
    first = cfg.eval.seed if args.eval_seed is None else args.eval_seed
    out: dict = {"checkpoint": args.checkpoint, "temperature": policy.cfg.temperature,
                 "eval_seeds": [first, first + 99]}
    with make_env(cfg.env) as env:
        buf = RolloutBuffer(cfg.train.rollout_steps, env.num_envs)
        slots = seed_slots(env.num_envs, group)
        seeds, wins, t0 = [], [], time.perf_counter()
        for u in range(args.updates):
            collect(env, policy, buf, base_seed=args.base_seed, update=u, mode="episodic",
                    group_size=group)
            for ep in buf.episodes:
                seeds.append(episode_seed(args.base_seed, u, slots[ep.env_idx], 0))
                wins.append(int(ep.success))
        out["rollout"] = {**rate(wins), "wall_s": time.perf_counter() - t0}
        for name, eval_seeds in (("eval_same_seeds", seeds), ("eval_seeds", list(range(first, first + 100)))):
            eps = evaluate_policy(policy, env, eval_seeds, deterministic=False)
            out[name] = rate([int(e["success_once"]) for e in eps])
    for name in ("rollout", "eval_same_seeds", "eval_seeds"):
        r = out[name]
        print(f"{name:16s} {r['successes']:4d} / {r['n']:4d} = {100 * r['rate']:.1f} % "
              f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
