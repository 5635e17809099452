"""What ``vlarl train`` says on the console besides its progress bar: why an update was
skipped and what to try (:func:`skip_advice`), and the end-of-run summary (:class:`RunReport`)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path


def skip_advice(metrics: dict) -> str | None:
    """Why an update was skipped and what to try, from its logged metrics (None: not skipped)."""
    if not metrics.get("algo/skipped_update"):
        return None
    if metrics.get("algo/groups_kept", 1.0) == 0.0:  # group baselines (grpo, rloo) log it
        if metrics.get("rollout/success_rate") == 1.0:  # a good policy: groups of successes
            return ("every rollout succeeded (rollout/success_rate 1), so every group's "
                    "outcomes are equal and no advantage is non-zero; common once the policy "
                    "succeeds most of the time: larger groups (--algo.num_generations) or a "
                    "harder split give the groups failures to rank")
        return ("every group's rollouts had equal outcomes (algo/groups_kept 0), so no "
                "advantage is non-zero; rare while outcomes carry a progress term, common "
                "without one: try larger groups (--algo.num_generations) or a progress term "
                "(--env.reward_mode normalized_dense --algo.shaping_coef 1 --algo.shaping max)")
    return (f"too few training decisions ({metrics.get('algo/train_samples', 0):.0f}) for "
            "algo.num_mini_batches x algo.gradient_accumulation_steps; use more envs or "
            "rollout steps")


class RunReport:
    """What ``vlarl train`` says on the console besides its progress bar: a warning when an
    update is skipped (the first one, then a count every 25 updates), and a summary at the end."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []
        self.skipped: list[int] = []
        self.warned_at = 0
        self.t0 = time.perf_counter()

    def add(self, update: int, metrics: dict) -> str | None:
        self.rows.append((update, {k: v for k, v in metrics.items()
                                   if k.startswith(("rollout/success", "eval/success", "algo/"))}))
        why = skip_advice(metrics)
        if why is None:
            return None
        self.skipped.append(update)
        if len(self.skipped) == 1 or update - self.warned_at >= 25:
            msg = (f"vlarl train: update {update} skipped ({len(self.skipped)} of "
                   f"{len(self.rows)} so far): {why}")
            print(msg, file=sys.stderr, flush=True)
            self.warned_at = update
            return msg
        return None

    def summary(self, run_dir: Path, env_steps: int, memory: dict | None = None) -> str:
        n = len(self.rows)
        rates = [m.get("rollout/success_rate") for _, m in self.rows]
        rates = [r for r in rates if r is not None and not math.isnan(r)]
        k = max(1, len(rates) // 10)
        minutes = (time.perf_counter() - self.t0) / 60
        head = (f"vlarl train: {n} updates, {env_steps} env steps in {minutes:.1f} min; "
                f"skipped updates: {len(self.skipped)}")
        lines = [head]
        if rates:
            lines.append(f"  rollout success: first {k} updates {sum(rates[:k]) / k:.2f}, "
                         f"last {k} {sum(rates[-k:]) / k:.2f}")
        evals = [(u, m["eval/success_rate"]) for u, m in self.rows if "eval/success_rate" in m]
        if evals:
            lines.append("  in-training eval (greedy): " + ", ".join(
                f"update {u}: {r:.2f}" for u, r in evals))
        if memory:
            lines.append(f"  peak RSS: main process {memory['main']:.0f} MB, "
                         f"{memory['num_children']} child processes {memory['children']:.0f} MB "
                         f"(largest {memory['largest_child']:.0f}), tree {memory['tree']:.0f} MB"
                         + (f"; tree PSS at the end {memory['tree_pss_now']:.0f} MB (shared "
                            "pages counted once)" if memory.get("tree_pss_now") else ""))
        lines.append(f"  policy: {run_dir / 'policy'}; metrics: {run_dir / 'metrics.jsonl'}")
        return "\n".join(lines)
