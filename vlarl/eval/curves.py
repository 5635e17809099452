"""Learning curves from a run's ``metrics.jsonl``: when did training first reach a target?

``time_to_target`` is what a speed-up has to be judged by (a faster loop that learns
less is not faster): env steps and wall time until the rollout success rate, smoothed over
``window`` updates, or the greedy in-training eval first reaches ``threshold``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl`` (one per update)."""
    text = Path(run_dir, "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def time_to_target(rows: list[dict], threshold: float, window: int = 10,
                   key: str = "rollout/success_rate") -> dict | None:
    """First update at which ``key`` reaches ``threshold``: its trailing mean over ``window``
    updates (updates without a value, e.g. no finished episode, are skipped), or the value
    itself for ``eval/success_rate`` (logged every ``train.eval_every`` updates; use
    ``window=1``). Returns ``{"update", "env_steps", "wall_s", "value"}`` (wall time summed
    over ``time/update_s``), or None if never reached."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    recent: list[float] = []
    wall = 0.0
    for row in rows:
        wall += float(row.get("time/update_s", 0.0))
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        recent = (recent + [float(value)])[-window:]
        mean = sum(recent) / len(recent)
        if len(recent) == window and mean >= threshold:
            return {"update": int(row["update"]), "env_steps": int(row["train/env_steps"]),
                    "wall_s": round(wall, 1), "value": mean}
    return None
