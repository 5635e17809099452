"""PickCube-Color-v1: two cubes; the instruction names the one to pick (``color_tasks.py``)."""

from __future__ import annotations

from vlarl.envs.experts import register_expert
from vlarl.envs.suite.pick_cube import PickCubeExpert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PickCube-Color-v1", "cube", ("cube", "cube_yellow", "goal_site"), "red",
    train=("pick up the {color} cube and move it to the goal",
           "grasp the {color} cube and lift it to the green target",
           "pick the {color} block and bring it to the goal position"),
    heldout=("raise the {color} cube up to where the green marker is",
             "take hold of the {color} block and carry it to the target point"),
    target_colors=("red", "yellow"),
))


@register_expert("PickCube-Color-v1")
class PickCubeColorExpert(PickCubeExpert):
    """Pick the cube the instruction names (``env.target``) while keeping a finger off the
    other cube (``color_tasks.py``)."""

    def obj(self, env):
        return env.cubes[int(env.target[0])]

    def obstacles(self, env) -> list:
        return [env.cubes[1 - int(env.target[0])]]
