#!/usr/bin/env python
"""Plot learning curves of vlarl runs: success vs env steps, from each run's metrics.jsonl.

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out docs/img/curves.png [--window 20]

The rollout success rate (episodes that ended during an update, sampled actions) is smoothed
with a moving average; the in-training evaluation (fixed seeds, greedy actions) is drawn with
its 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def load(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--window", type=int, default=20, help="moving-average window (updates)")
    ap.add_argument("--labels", nargs="*", default=None)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, run in enumerate(args.runs):
        rows = load(run)
        label = args.labels[i] if args.labels else run.name
        steps = np.array([r["train/env_steps"] for r in rows])
        succ = np.array([r.get("rollout/success_rate", np.nan) for r in rows], dtype=float)
        w = max(1, min(args.window, len(succ)))
        smooth = np.convolve(np.nan_to_num(succ), np.ones(w) / w, mode="valid")
        line, = ax.plot(steps[w - 1:], 100 * smooth, label=f"{label}: rollout (moving avg {w})")
        ev = [r for r in rows if "eval/success_rate" in r]
        if ev:
            x = [r["train/env_steps"] for r in ev]
            y = np.array([r["eval/success_rate"] for r in ev])
            lo = np.array([r["eval/success_ci_low"] for r in ev])
            hi = np.array([r["eval/success_ci_high"] for r in ev])
            ax.errorbar(x, 100 * y, yerr=[100 * (y - lo), 100 * (hi - y)], fmt="o", capsize=3,
                        color=line.get_color(), label=f"{label}: eval n={ev[0].get('eval/n')}")
    ax.set_xlabel("env steps (control steps)")
    ax.set_ylabel("success %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
