#!/usr/bin/env python
"""What an in-training evaluation costs on a freshly built env and on the idle training env.

    python scripts/eval_on_training_env.py CHECKPOINT [--config recipes/cpu/quickstart.yaml]
        [--repeats 2]

Builds the recipe's training env once, then alternates ``evaluate_on_ranks`` (the
``train.eval_episodes`` greedy episodes ``vlarl train`` runs every ``train.eval_every``
updates) on an env it builds for the purpose and on the training env; prints wall seconds,
success and mean return of each.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="recipes/cpu/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from accelerate import Accelerator

    from vlarl.config import load_config
    from vlarl.envs import make_env
    from vlarl.eval.evaluate import evaluate_on_ranks
    from vlarl.policies import load_policy

    cfg = load_config(args.config)
    acc = Accelerator(cpu=True)
    policy = load_policy(args.checkpoint)
    with make_env(cfg.env) as train_env:
        for rep in range(args.repeats):
            fresh = evaluate_on_ranks(policy, cfg, acc, make_env)
            reused = evaluate_on_ranks(policy, cfg, acc, make_env, env=train_env)
            for name, r in (("fresh env", fresh), ("training env", reused)):
                print(f"repeat {rep + 1}, {name}: {r['wall_s']:.1f} s, success "
                      f"{r['success_rate'] * r['n']:.0f} / {r['n']}, return {r['episode_return']:.4f}")


if __name__ == "__main__":
    main()
