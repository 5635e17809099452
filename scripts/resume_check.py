#!/usr/bin/env python
"""Exact resume on a real recipe: N updates straight vs K updates, stop, resume to N.

    python scripts/resume_check.py OUT_DIR --config recipes/cpu/quickstart.yaml \
        [--updates 4] [--stop-after 2] [--section.field value ...]

Trains ``OUT_DIR/straight`` for ``--updates`` updates, and ``OUT_DIR/resumed`` for
``--stop-after`` updates, then resumes it (``--train.resume true``) to the end. Prints whether
the final trainable tensors are bit-identical, their largest absolute difference, and the
per-update rollout figures of both runs side by side. The test suite checks the same on one
inline env with 8-step episodes (``tests/integration/test_trainer.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--config", default="recipes/cpu/quickstart.yaml")
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--stop-after", type=int, default=2)
    args, overrides = ap.parse_known_args()

    import torch

    from vlarl.checkpoint import load
    from vlarl.config import load_config
    from vlarl.trainer import train

    def cfg(run: Path, *extra: str):
        return load_config(args.config, [*overrides, "--train.num_updates", str(args.updates),
                                         "--train.save_every", str(args.stop_after),
                                         "--train.output_dir", str(run), *extra])

    out = Path(args.out)
    straight, resumed = out / "straight", out / "resumed"
    train(cfg(straight))
    train(cfg(resumed), stop_after=args.stop_after)
    train(cfg(resumed, "--train.resume", "true"))
    last = f"checkpoints/update_{args.updates:06d}"
    a = load(straight / last).tensors["trainable"]
    b = load(resumed / last).tensors["trainable"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"bit-identical: {same}; largest absolute difference of a trainable tensor: {diff:.3g}")
    keys = ("rollout/env_steps", "rollout/success_rate", "algo/approx_kl")
    print("| update | " + " | ".join(f"{k} straight / resumed" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    rows = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (straight, resumed)]
    for x, y in zip(*rows):
        print(f"| {x['update']} | " + " | ".join(f"{x.get(k)} / {y.get(k)}" for k in keys) + " |")


if __name__ == "__main__":
    main()
