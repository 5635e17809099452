"""vlarl.eval.curves.time_to_target on hand-computed curves."""

import math

import pytest

from vlarl.eval.curves import time_to_target


def _rows(rates, steps_per_update=400, seconds=5.0):
    return [{"update": u + 1, "train/env_steps": (u + 1) * steps_per_update,
             "time/update_s": seconds, "rollout/success_rate": r} for u, r in enumerate(rates)]


def test_trailing_mean_reaches_the_threshold_at_the_hand_computed_update():
    rows = _rows([0.0, 0.5, 0.25, 0.5, 0.75, 0.0])
    # windows of 3: (0, .5, .25) .25; (.5, .25, .5) .4167; (.25, .5, .75) .5 -> update 5
    hit = time_to_target(rows, 0.5, window=3)
    assert hit == {"update": 5, "env_steps": 2000, "wall_s": 25.0, "value": 0.5}
    assert time_to_target(rows, 0.51, window=3) is None
    assert time_to_target(rows, 0.75, window=1)["update"] == 5


def test_updates_without_finished_episodes_are_skipped_and_bad_window_refused():
    rows = _rows([0.6, math.nan, 0.6])
    rows[1].pop("rollout/success_rate")
    rows[2]["rollout/success_rate"] = 0.6
    hit = time_to_target(rows, 0.6, window=2)
    assert hit["update"] == 3 and hit["wall_s"] == 15.0
    eval_rows = [{"update": 50, "train/env_steps": 20000, "time/update_s": 1.0,
                  "eval/success_rate": 0.31}]
    assert time_to_target(eval_rows, 0.3, window=1, key="eval/success_rate")["env_steps"] == 20000
    with pytest.raises(ValueError, match="window=0"):
        time_to_target(rows, 0.5, window=0)
