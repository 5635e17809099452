"""PushCube-v1: push the cube forward onto the target."""

from __future__ import annotations

from vlarl.envs.experts import Slide, register_expert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PushCube-v1", "obj", ("obj", "goal_region"), "blue",
    train=("push the {color} cube to the target",
           "slide the {color} cube onto the red and white target",
           "push the {color} block forward onto the goal"),
    heldout=("nudge the {color} cube until it sits on the bullseye",
             "shove the {color} block over to the target region"),
))


@register_expert("PushCube-v1")
class PushCubeExpert(Slide):
    """Push the cube +x onto the target (goal = cube + 0.2 m in x)."""

    side = -1.0
