"""PlaceSphere-v1: put the blue ball into the bin."""

from __future__ import annotations

import numpy as np

from vlarl.envs.experts import PickAndPlace, position, register_expert
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PlaceSphere-v1", "obj", ("obj", "bin"), "blue",
    train=("place the {color} ball into the bin",
           "pick up the {color} sphere and put it in the bin",
           "put the {color} ball in the container"),
    heldout=("drop the {color} sphere inside the little bin",
             "move the {color} ball into the box"),
))


@register_expert("PlaceSphere-v1")
class PlaceSphereExpert(PickAndPlace):
    """Pick the sphere and release it on the bin floor (centre = bin + radius + floor half)."""

    release = True
    place_tol = 0.006

    def obj(self, env):
        return env.obj

    def place_target(self, env):
        return position(env.bin) + np.array([0.0, 0.0, env.radius + env.block_half_size[0]])

    def yaw(self, env) -> float:
        return 0.0  # a sphere has no faces to align with
