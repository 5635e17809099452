#!/usr/bin/env python
"""What RL changed in a token VLA's action distribution: its mode, or its spread around it.

    python scripts/greedy_vs_sampler.py BASE RL [--config recipes/cpu/quickstart.yaml]
        [--episodes 40] [--eval-seed S] [--other RL2] [--json out.json]

RL samples at ``policy.temperature`` and is scored greedily. A policy gradient can raise the
sampled success in two ways: by moving the mode (the greedy action changes where it failed), or
by concentrating the distribution on the mode it already had (the sampled policy comes closer to
the greedy one and no greedy action changes). This measures which, on the observations both
policies visit when run greedily on ``--episodes`` evaluation seeds (the config's ``eval.seed``
onwards, the seeds ``vlarl eval`` uses). On every such observation, both policies are
teacher-forced on the *base's* greedy chunk (so every token has the same prefix) and report,
per action token at the rollout temperature:

- ``argmax_agree``: the share of tokens whose argmax is the base's;
- ``p_mode``: the probability of the base's greedy token (how often sampling picks the mode);
- ``entropy``: nats per token;
- ``kl_rl_base``: KL(RL || base) per token;
- ``rl_mode_shift_bins``: where RL's argmax is not the base's, how many bins it moved (mean);

and, decoding freely, ``chunk_agree``: the share of decisions whose whole greedy chunk is the
base's. With ``--other RL2`` (a second run from the same base, another training seed): how many
tokens both runs moved, against the share expected if their moves were independent, and where
both moved, how often to the same bin and to the same side of the base's token; and the base's
margin (probability of its top token minus its runner-up's, at the rollout temperature) on all
tokens and on the moved ones, and how often a move lands on the base's runner-up. Runs that
follow a common signal move the same tokens the same way; runs that drift do not. The script
only reads checkpoints; it trains nothing.
"""

from __future__ import annotations

import argparse
import json
import time


def greedy_visits(policy, env, seeds: list[int]):
    """Run ``policy`` greedily, one episode per seed in batches of ``env.num_envs``; return the
    observation of every decision (a list of ``Obs``) and the successes."""
    import torch

    visits, wins = [], []
    n = env.num_envs
    for start in range(0, len(seeds), n):
        batch = seeds[start:start + n]
        batch = batch + [batch[0]] * (n - len(batch))
        obs = env.reset(batch)
        alive = torch.ones(n, dtype=torch.bool)
        alive[len(seeds[start:start + n]):] = False
        won = torch.zeros(n, dtype=torch.bool)
        while alive.any():
            visits.append(obs.index(alive.nonzero().squeeze(-1)))
            with torch.no_grad():
                out = policy.act(obs, deterministic=True)
            step = env.step_chunk(out.actions, reset_seeds=batch)
            won |= step.success_once & alive
            alive &= ~step.done
            obs = step.obs
        wins += won[: len(seeds[start:start + n])].int().tolist()
    return visits, wins


def tempered_logp(pol, obs, tokens):
    """``pol``'s log-probabilities over the action bins at its temperature, teacher-forced on
    ``tokens``: the forward the update uses (``evaluate``), kept whole instead of gathered."""
    import torch

    out, _, _ = pol._teacher_forced(obs, tokens)
    return torch.log_softmax(pol._masked_logits(out.logits), dim=-1)  # [N, T, bins]


def compare_on(base, rl, obs) -> dict:
    """Per-token statistics of both policies on ``obs``, teacher-forced on the base's greedy
    chunk; sums (divide by ``tokens`` / ``decisions``)."""
    import torch

    with torch.no_grad():
        ref = base.act(obs, deterministic=True).stored["tokens"]
        mine = rl.act(obs, deterministic=True).stored["tokens"]
        stats = {"decisions": len(obs), "tokens": ref.numel(),
                 "chunk_agree": int((mine == ref).all(-1).sum())}
        logp = {"base": tempered_logp(base, obs, ref), "rl": tempered_logp(rl, obs, ref)}
        for name, lp in logp.items():
            stats[f"{name}_argmax_agree"] = int((lp.argmax(-1) == ref).sum())
            stats[f"{name}_p_mode"] = float(lp.gather(-1, ref[..., None]).exp().sum())
            stats[f"{name}_entropy"] = float(-(lp.exp() * lp).sum(-1).sum())
        moved = logp["rl"].argmax(-1) != ref
        stats["moved_tokens"] = int(moved.sum())
        stats["moved_bins"] = int((logp["rl"].argmax(-1) - ref).abs()[moved].sum())
        stats["kl_rl_base"] = float((logp["rl"].exp() * (logp["rl"] - logp["base"])).sum(-1).sum())
    return stats


def compare_runs(base, rl, other, obs) -> dict:
    """How often two RL runs from ``base`` moved the same argmax tokens on ``obs`` (teacher-
    forced on the base's greedy chunk), where to, and the base's margin on them; sums."""
    import torch

    with torch.no_grad():
        ref = base.act(obs, deterministic=True).stored["tokens"]
        a = tempered_logp(rl, obs, ref).argmax(-1)
        b = tempered_logp(other, obs, ref).argmax(-1)
        # the base's margin: are the moved tokens the ones it barely decided?
        top2 = tempered_logp(base, obs, ref).exp().topk(2, dim=-1)
    margin = top2.values[..., 0] - top2.values[..., 1]
    runner_up = top2.indices[..., 1]
    moved_a, moved_b = a != ref, b != ref
    both = moved_a & moved_b
    return {"tokens": ref.numel(), "moved_rl": int(moved_a.sum()), "moved_other": int(moved_b.sum()),
            "moved_both": int(both.sum()), "same_bin_both": int((both & (a == b)).sum()),
            "same_side_both": int((both & ((a > ref) == (b > ref))).sum()),
            "margin_all": float(margin.sum()), "margin_moved_rl": float(margin[moved_a].sum()),
            "margin_moved_both": float(margin[both].sum()),
            "runner_up_rl": int((a == runner_up)[moved_a].sum()),
            "runner_up_other": int((b == runner_up)[moved_b].sum())}


def summed(fn, obs, batch: int = 32) -> dict:
    """``fn`` on ``obs`` in batches, its statistics summed."""
    sums: dict = {}
    for i in range(0, len(obs), batch):
        for k, v in fn(obs.index(slice(i, i + batch))).items():
            sums[k] = sums.get(k, 0) + v
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("rl")
    ap.add_argument("--config", default="recipes/cpu/quickstart.yaml")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--eval-seed", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--other", default=None,
                    help="a second RL checkpoint from BASE: do the two runs move the same tokens?")
    args = ap.parse_args()

    import torch

    from vlarl.config import load_config
    from vlarl.envs import make_env
    from vlarl.policies import load_policy
    from vlarl.types import Obs

    cfg = load_config(args.config)
    torch.manual_seed(0)
    pols = {"base": load_policy(args.base), "rl": load_policy(args.rl)}
    for p in pols.values():
        p.eval()
    first = cfg.eval.seed if args.eval_seed is None else args.eval_seed
    seeds = list(range(first, first + args.episodes))
    report: dict = {"base": args.base, "rl": args.rl, "seeds": [seeds[0], seeds[-1]],
                    "temperature": pols["rl"].cfg.temperature, "on": {}}
    t0 = time.perf_counter()
    with make_env(cfg.env) as env:
        visited = {}
        for who, pol in pols.items():
            visits, wins = greedy_visits(pol, env, seeds)
            obs = visited[who] = Obs.cat(visits)
            sums = summed(lambda o: compare_on(pols["base"], pols["rl"], o), obs)
            tok, dec = sums.pop("tokens"), sums.pop("decisions")
            moved, bins = sums.pop("moved_tokens"), sums.pop("moved_bins")
            row = {"greedy_successes": sum(wins), "episodes": len(wins), "decisions": dec,
                   "chunk_agree": sums.pop("chunk_agree") / dec,
                   "rl_mode_shift_bins": bins / max(moved, 1)}
            row.update({k: v / tok for k, v in sums.items()})
            report["on"][f"{who}_greedy_states"] = row
            print(f"states visited by the {who} policy (greedy, {sum(wins)}/{len(wins)} successes, "
                  f"{dec} decisions):", flush=True)
            for k, v in row.items():
                if isinstance(v, float):
                    print(f"  {k:>22}: {v:.4f}")
        if args.other:
            other = load_policy(args.other).eval()
            sums = summed(lambda o: compare_runs(pols["base"], pols["rl"], other, o),
                          visited["base"])
            tok, both = sums["tokens"], max(sums["moved_both"], 1)
            row = {"other": args.other, "tokens": tok,
                   "moved_rl": sums["moved_rl"] / tok, "moved_other": sums["moved_other"] / tok,
                   "moved_both": sums["moved_both"] / tok,
                   "moved_both_if_independent": sums["moved_rl"] * sums["moved_other"] / tok**2,
                   "same_bin_given_both": sums["same_bin_both"] / both,
                   "same_side_given_both": sums["same_side_both"] / both,
                   "base_margin_all_tokens": sums["margin_all"] / tok,
                   "base_margin_moved_by_rl": sums["margin_moved_rl"] / max(sums["moved_rl"], 1),
                   "base_margin_moved_by_both": sums["margin_moved_both"] / both,
                   "rl_moves_to_base_runner_up": sums["runner_up_rl"] / max(sums["moved_rl"], 1),
                   "other_moves_to_base_runner_up":
                       sums["runner_up_other"] / max(sums["moved_other"], 1)}
            report["two_runs_on_base_greedy_states"] = row
            print("two RL runs from one base, on the base's greedy states:")
            for k, v in row.items():
                if isinstance(v, float):
                    print(f"  {k:>26}: {v:.4f}")
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
