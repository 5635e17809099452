"""PickCube-v1: pick the red cube up and hold it at the goal."""

from __future__ import annotations

from vlarl.envs.experts import PickAndPlace, position, register_expert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PickCube-v1", "cube", ("cube", "goal_site"), "red",
    train=("pick up the {color} cube and move it to the goal",
           "grasp the {color} cube and lift it to the green target",
           "pick the {color} block and bring it to the goal position"),
    heldout=("raise the {color} cube up to where the green marker is",
             "take hold of the {color} block and carry it to the target point"),
))


@register_expert("PickCube-v1")
class PickCubeExpert(PickAndPlace):
    """Pick the red cube and hold it at the green goal (success needs the robot static)."""

    def obj(self, env):
        return env.cube

    def place_target(self, env):
        return position(env.goal_site)

    def lift_clearance(self) -> float:
        return 0.0
