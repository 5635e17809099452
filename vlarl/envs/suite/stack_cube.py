"""StackCube-v1: put the red cube on the green one."""

from __future__ import annotations

import numpy as np

from vlarl.envs.experts import PickAndPlace, position, register_expert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "StackCube-v1", "cubeA", ("cubeA", "cubeB"), "red",
    train=("stack the {color} cube on top of the green cube",
           "put the {color} cube on the green cube",
           "place the {color} block onto the green block"),
    heldout=("set the {color} cube down on top of the green one",
             "build a tower by putting the {color} block on the green block"),
))


@register_expert("StackCube-v1")
class StackCubeExpert(PickAndPlace):
    """Pick cubeA, put it on cubeB (2 half sizes higher), release, back off."""

    release = True
    place_tol = 0.006

    def obj(self, env):
        return env.cubeA

    def place_target(self, env):
        return position(env.cubeB) + np.array([0.0, 0.0, 0.04])

    def obstacles(self, env) -> list:
        return [env.cubeB]
