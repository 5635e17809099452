"""Run the tiny RL trainer on 2 processes (``accelerate launch`` or ``torchrun``) and dump, per rank, what
tests/integration/test_ddp.py compares.

    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml tests/scripts/ddp_check.py OUT [--nan-rank R --nan-from U]

At every checkpoint each rank writes ``OUT/rank{r}_update{u}.pt`` with its trainable
parameters, their gradients from the last optimizer step and a hash of its own rollout
batch (ranks use different env seeds, so equal parameters after an update prove the
gradients were all-reduced). ``--nan-rank R`` makes rank R's loss NaN from update ``U`` on
(0-based), to check that both ranks skip the step and stop together.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from vlarl import trainer
from vlarl.config import load_config
from vlarl.runtime.runlock import launch_env

TINY = ["--env.backend", "inline", "--env.num_envs", "1", "--env.image_size", "32",
        "--env.max_episode_steps", "8", "--env.reward_mode", "normalized_dense",
        "--policy.chunk_size", "4", "--train.rollout_steps", "2",
        "--algo.num_mini_batches", "1", "--algo.num_ppo_epochs", "1", "--train.save_every", "1",
        "--train.keep_last", "5", "--train.learning_rate", "1e-3"]


def _buffer_hash(buffer) -> str:
    h = hashlib.sha256()
    for name in ("log_probs", "rewards", "values"):
        t = getattr(buffer, name, None)
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--nan-rank", type=int, default=None)
    ap.add_argument("--nan-from", type=int, default=1)
    ap.add_argument("--max-nan-strikes", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    rank = launch_env("RANK", 0)  # torchrun: RANK; mpirun: its own variables
    cfg = load_config(None, TINY + ["--train.output_dir", str(out / "run"),
                                    "--train.num_updates", str(args.updates),
                                    "--algo.max_nan_strikes", str(args.max_nan_strikes)])
    real_save = trainer.save

    def save_and_dump(run, update: int) -> None:
        named = {n: p for n, p in run.policy.named_parameters() if p.requires_grad}
        torch.save({"params": {n: p.detach().clone() for n, p in named.items()},
                    "grads": {n: None if p.grad is None else p.grad.detach().clone()
                              for n, p in named.items()},
                    "buffer_hash": _buffer_hash(run.buffer),
                    "world_size": run.accelerator.num_processes,
                    "wrapped": type(getattr(run.trainable, "_wrapped", run.trainable)).__name__},
                   out / f"rank{rank}_update{update}.pt")
        real_save(run, update)

    trainer.save = save_and_dump
    if args.nan_rank is not None and rank == args.nan_rank:
        from vlarl.algorithms.ppo import PPO

        real_loss = PPO.loss

        def nan_loss(self, policy, batch, ctx, update_idx):
            loss, parts = real_loss(self, policy, batch, ctx, update_idx)
            return (loss * float("nan") if update_idx >= args.nan_from else loss), parts

        PPO.loss = nan_loss
    trainer.train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
