#!/usr/bin/env python
"""Env steps and wall time until each run's success rate first reached a threshold.

    python scripts/time_to_target.py RUN_DIR [RUN_DIR ...] --threshold 0.3 [--window 10]
        [--key rollout/success_rate | eval/success_rate]

Compare loops (e.g. two decodings or thread settings) by this, not by steps/s alone: a
faster loop that learns less reaches the target later or never. Wall time is the sum of the
logged ``time/update_s`` (in-training evals included), so runs taken on a shared machine say so.
"""

from __future__ import annotations

import argparse

from vlarl.eval.curves import read_metrics, time_to_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--threshold", type=float, required=True, help="success rate in [0, 1]")
    ap.add_argument("--window", type=int, default=10, help="trailing mean over this many updates")
    ap.add_argument("--key", default="rollout/success_rate")
    args = ap.parse_args()
    print(f"| run | updates | reached {args.threshold:.2f} at update | env steps | wall (min) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        rows = read_metrics(run)
        hit = time_to_target(rows, args.threshold, args.window, args.key)
        if hit is None:
            print(f"| {run} | {len(rows)} | never | - | - |")
        else:
            print(f"| {run} | {len(rows)} | {hit['update']} | {hit['env_steps']} | "
                  f"{hit['wall_s'] / 60:.1f} |")


if __name__ == "__main__":
    main()
