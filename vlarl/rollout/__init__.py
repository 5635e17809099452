"""The env -> algorithm hand-off: :func:`collect` (``collect.py``) runs an update's rollout of
a ``VecEnv`` and a ``Policy`` into a :class:`RolloutBuffer` (``buffer.py``), which the
algorithm reads as shuffled :class:`Batch` es (:func:`iter_minibatches`)."""

from vlarl.rollout.buffer import Batch, Episode, RolloutBuffer, iter_minibatches
from vlarl.rollout.collect import (
    act_and_step,
    check_pipeline_groups,
    collect,
    episode_seed,
    reduce_rollout_stats,
    seed_slots,
    sum_rollout_stats,
)

__all__ = ["Batch", "Episode", "RolloutBuffer", "act_and_step", "check_pipeline_groups",
           "collect", "episode_seed", "iter_minibatches", "reduce_rollout_stats", "seed_slots",
           "sum_rollout_stats"]
