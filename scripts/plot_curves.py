#!/usr/bin/env python
"""Plot learning curves of vlarl runs: success vs env steps, from each run's metrics.jsonl.

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out docs/img/curves.png [--window 20]
        [--labels NAME ...]

Runs given the same label are seeds of one setting: their curves are averaged (band: the
lowest to the highest seed).

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


def _smoothed(rows: list[dict], window: int) -> tuple[np.ndarray, np.ndarray, int]:
    steps = np.array([r["train/env_steps"] for r in rows])
    succ = np.array([r.get("rollout/success_rate", np.nan) for r in rows], dtype=float)
    w = max(1, min(window, len(succ)))
    smooth = np.convolve(np.nan_to_num(succ), np.ones(w) / w, mode="valid")
    return steps[w - 1:], 100 * smooth, w


def _plot_run(ax, rows: list[dict], label: str, window: int) -> None:
    x, y, w = _smoothed(rows, window)
    line, = ax.plot(x, y, label=f"{label}: rollout (moving avg {w})")
    ev = [r for r in rows if "eval/success_rate" in r]
    if ev:
        ex = [r["train/env_steps"] for r in ev]
        ey = np.array([r["eval/success_rate"] for r in ev])
        lo = np.array([r["eval/success_ci_low"] for r in ev])
        hi = np.array([r["eval/success_ci_high"] for r in ev])
        ax.errorbar(ex, 100 * ey, yerr=[100 * (ey - lo), 100 * (hi - ey)], fmt="o", capsize=3,
                    color=line.get_color(), label=f"{label}: eval n={ev[0].get('eval/n')}")


def _plot_seeds(ax, runs: list[list[dict]], label: str, window: int) -> None:
    """Runs sharing a label (seeds): mean of their smoothed curves on a common env-step grid,
    shaded between the lowest and highest seed; in-training evals as the mean over seeds."""
    curves = [_smoothed(rows, window) for rows in runs]
    grid = np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), 200)
    ys = np.stack([np.interp(grid, x, y) for x, y, _ in curves])
    line, = ax.plot(grid, ys.mean(0), label=f"{label}: rollout, mean of {len(runs)} seeds "
                                            f"(moving avg {curves[0][2]}; band: min-max)")
    ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    evals = [{r["update"]: (r["train/env_steps"], r["eval/success_rate"]) for r in rows
              if "eval/success_rate" in r} for rows in runs]
    common = sorted(set.intersection(*(set(e) for e in evals)))
    if common:
        ex = [np.mean([e[u][0] for e in evals]) for u in common]
        ey = [100 * np.mean([e[u][1] for e in evals]) for u in common]
        n = next(r.get("eval/n") for r in runs[0] if "eval/success_rate" in r)
        ax.plot(ex, ey, "o", color=line.get_color(),
                label=f"{label}: eval, mean of {len(runs)} seeds (n={n} each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--window", type=int, default=20, help="moving-average window (updates)")
    ap.add_argument("--labels", nargs="*", default=None)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    groups: dict[str, list[Path]] = {}
    for run, label in zip(args.runs, labels):
        groups.setdefault(label, []).append(run)
    for label, runs in groups.items():
        if len(runs) == 1:
            _plot_run(ax, load(runs[0]), label, args.window)
        else:
            _plot_seeds(ax, [load(r) for r in runs], label, args.window)
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
