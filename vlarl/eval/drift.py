"""How far a fine-tuned policy moved from its base on a fixed set of states.

``KL(pi || pi_base)`` estimated on the states of a demonstrations dataset: draw an action
chunk from ``pi`` (its rollout sampler, temperature included), score it under both
policies with ``evaluate`` (the same teacher-forced log-probs the RL losses use), and
average ``log pi(a|s) - log pi_base(a|s)`` - an unbiased Monte-Carlo estimate of the
chunk-level KL that ``algo.beta`` penalises. On the states of a task RL never saw it
measures drift where success rates are too coarse to (the KL forgetting check,
``docs/kl.md``); on the fine-tuned task it says how far RL went. Beside the KL of the
samplers, the greedy actions of both policies on the same states: how often they are equal
(per action value and per whole chunk) and how far apart (mean absolute difference, in action
units). RL can reshape a sampler without moving its mode; then the KL is large and the
greedy actions, what a greedy evaluation runs, stay the same.

    vlarl drift RUN/policy BASE --dataset DEMOS_DIR [--rows 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from vlarl.types import Obs


@torch.no_grad()
def policy_kl(policy, reference, batches: list[Obs], seed: int = 0) -> dict[str, float]:
    """Mean and standard error of ``log pi - log pi_ref`` over chunks sampled from ``policy``
    on ``batches``; ``n`` chunks in all."""
    policy.eval()
    reference.eval()
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for obs in batches:
        out = policy.act(obs, deterministic=False, generator=gen)
        lp, _, _ = policy.evaluate(obs, out.stored)
        lp_ref, _, _ = reference.evaluate(obs, out.stored)
        diffs.append((lp - lp_ref).double().cpu())
    d = torch.cat(diffs)
    sem = float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"kl": float(d.mean()), "kl_sem": sem, "n": len(d)}


@torch.no_grad()
def greedy_agreement(policy, reference, batches: list[Obs]) -> dict[str, float]:
    """How often the two policies' deterministic actions agree on ``batches``: per action value
    (``greedy_value_match``), per chunk (``greedy_chunk_match``: every value equal), and their
    mean absolute difference (``greedy_action_l1``, action units)."""
    policy.eval()
    reference.eval()
    equal, l1, chunks, values = 0.0, 0.0, 0, 0
    chunk_equal = 0
    for obs in batches:
        a = policy.act(obs, deterministic=True).actions.float()
        b = reference.act(obs, deterministic=True).actions.float()
        same = a == b
        equal += float(same.sum())
        chunk_equal += int(same.flatten(1).all(1).sum())
        l1 += float((a - b).abs().sum())
        chunks, values = chunks + len(a), values + a.numel()
    return {"greedy_value_match": equal / values, "greedy_chunk_match": chunk_equal / chunks,
            "greedy_action_l1": l1 / values}


def dataset_batches(path: str | Path, chunk_size: int, rows: int, batch_size: int = 32,
                    seed: int = 0) -> list[Obs]:
    """``rows`` observations drawn without replacement (seeded) from a demonstrations dataset."""
    from vlarl.data import ChunkDataset, collate_chunks, load_demos

    ds = load_demos(path)
    chunks = ChunkDataset(ds, chunk_size)
    pick = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed))[:rows]
    items = [chunks[int(i)] for i in pick]
    return [collate_chunks(items[i:i + batch_size])[0] for i in range(0, len(items), batch_size)]


def main(argv: list[str] | None = None) -> int:
    from vlarl.policies import load_policy

    ap = argparse.ArgumentParser(prog="vlarl drift", description=__doc__.split("\n\n")[0])
    ap.add_argument("policy", help="fine-tuned checkpoint directory")
    ap.add_argument("reference", help="base checkpoint directory")
    ap.add_argument("--dataset", required=True, action="append",
                    help="demonstrations dataset whose states are used (repeatable)")
    ap.add_argument("--rows", type=int, default=256, help="states per dataset")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error(f"--rows={args.rows} must be >= 1")
    policy, reference = load_policy(args.policy), load_policy(args.reference)
    for key in ("temperature", "noise_level"):  # the KL of two samplers, not of two settings
        a, b = getattr(policy.cfg, key, None), getattr(reference.cfg, key, None)
        if a != b:
            raise SystemExit(f"policy.{key} differs: {a} ({args.policy}) vs {b} "
                             f"({args.reference}); the KL would mix sampler settings")
    for path in args.dataset:
        batches = dataset_batches(path, policy.chunk_size, args.rows, seed=args.seed)
        res = {**policy_kl(policy, reference, batches, seed=args.seed),
               **greedy_agreement(policy, reference, batches)}
        task = json.loads((Path(path) / "meta" / "info.json").read_text()).get("task")
        print(json.dumps({"policy": args.policy, "reference": args.reference, "dataset": path,
                          "task": task, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
