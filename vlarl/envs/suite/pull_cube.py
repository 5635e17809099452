"""PullCube-v1: pull the cube back onto the target."""

from __future__ import annotations

from vlarl.envs.experts import Slide, register_expert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PullCube-v1", "obj", ("obj", "goal_region"), "blue",
    train=("pull the {color} cube to the target",
           "drag the {color} cube back onto the red and white target",
           "pull the {color} block towards the goal"),
    heldout=("draw the {color} cube toward you until it reaches the bullseye",
             "bring the {color} block back to the target region"),
))


@register_expert("PullCube-v1")
class PullCubeExpert(Slide):
    """Pull the cube -x onto the target (goal = cube - 0.2 m in x)."""

    side = 1.0
