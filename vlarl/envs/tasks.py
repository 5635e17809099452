"""The task suite: which ManiSkill tasks vlarl trains on and what they are called in words.

Pure Python (no ManiSkill import) so config validation and the CLI stay instant. Each task
names the actors that define its layout (used by the OOD variants in ``variants.py``) and
two disjoint pools of instruction paraphrases: ``train`` ones seen during training and
``heldout`` ones kept for the ``unseen_instruction`` split. Templates hold ``{color}``
so the words follow the object's colour (the ``unseen_color`` split recolours it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    """ManiSkill id, e.g. ``PickCube-v1``."""
    obj_attr: str
    """Attribute of the unwrapped env holding the manipulated object (recoloured by ``unseen_color``)."""
    layout_attrs: tuple[str, ...]
    """Actors shifted together by ``wide_pose`` (object + goal keep their relative geometry)."""
    color: str
    """Colour word of the object in the original task."""
    train: tuple[str, ...]
    """Training paraphrases (``{color}`` is filled in)."""
    heldout: tuple[str, ...]
    """Held-out paraphrases, never used by the ``train`` split."""
    target_colors: tuple[str, ...] = ()
    """Colour-target tasks (``color_tasks.py``): the colours the seeded reset picks the
    target from; the instruction names the picked one. Empty: one fixed object."""


TASKS: dict[str, TaskSpec] = {
    "PickCube-v1": TaskSpec(
        "PickCube-v1", "cube", ("cube", "goal_site"), "red",
        train=("pick up the {color} cube and move it to the goal",
               "grasp the {color} cube and lift it to the green target",
               "pick the {color} block and bring it to the goal position"),
        heldout=("raise the {color} cube up to where the green marker is",
                 "take hold of the {color} block and carry it to the target point"),
    ),
    "PushCube-v1": TaskSpec(
        "PushCube-v1", "obj", ("obj", "goal_region"), "blue",
        train=("push the {color} cube to the target",
               "slide the {color} cube onto the red and white target",
               "push the {color} block forward onto the goal"),
        heldout=("nudge the {color} cube until it sits on the bullseye",
                 "shove the {color} block over to the target region"),
    ),
    "StackCube-v1": TaskSpec(
        "StackCube-v1", "cubeA", ("cubeA", "cubeB"), "red",
        train=("stack the {color} cube on top of the green cube",
               "put the {color} cube on the green cube",
               "place the {color} block onto the green block"),
        heldout=("set the {color} cube down on top of the green one",
                 "build a tower by putting the {color} block on the green block"),
    ),
    "PullCube-v1": TaskSpec(
        "PullCube-v1", "obj", ("obj", "goal_region"), "blue",
        train=("pull the {color} cube to the target",
               "drag the {color} cube back onto the red and white target",
               "pull the {color} block towards the goal"),
        heldout=("draw the {color} cube toward you until it reaches the bullseye",
                 "bring the {color} block back to the target region"),
    ),
    "PlaceSphere-v1": TaskSpec(
        "PlaceSphere-v1", "obj", ("obj", "bin"), "blue",
        train=("place the {color} ball into the bin",
               "pick up the {color} sphere and put it in the bin",
               "put the {color} ball in the container"),
        heldout=("drop the {color} sphere inside the little bin",
                 "move the {color} ball into the box"),
    ),
    "PokeCube-v1": TaskSpec(
        "PokeCube-v1", "cube", ("peg", "cube", "goal_region"), "red",
        train=("use the peg to push the {color} cube onto the target",
               "pick up the stick and poke the {color} cube to the goal",
               "grab the peg and push the {color} block forward with it"),
        heldout=("take the blue peg and nudge the {color} cube until it sits on the bullseye",
                 "with the tool in hand, shove the {color} block over to the target region"),
    ),
    "PickCube-Color-v1": TaskSpec(
        "PickCube-Color-v1", "cube", ("cube", "cube_yellow", "goal_site"), "red",
        train=("pick up the {color} cube and move it to the goal",
               "grasp the {color} cube and lift it to the green target",
               "pick the {color} block and bring it to the goal position"),
        heldout=("raise the {color} cube up to where the green marker is",
                 "take hold of the {color} block and carry it to the target point"),
        target_colors=("red", "yellow"),
    ),
}

COLOR_TASK_SPLITS = ("train", "unseen_instruction", "wide_pose", "wide_pose_far")
"""Splits a colour-target task supports: the others recolour the object (``unseen_color``)
or add a yellow cube (``distractor``), which would change what the instruction means."""


def get_task(task_id: str) -> TaskSpec:
    """The spec of ``task_id``; unknown ids name the known ones."""
    if task_id not in TASKS:
        raise ValueError(f"unknown task {task_id!r}; allowed: {sorted(TASKS)} (to add a "
                         "ManiSkill task: docs/adding_a_task.md)")
    return TASKS[task_id]


def instruction(task_id: str, pool: str, seed: int, color: str | None = None) -> str:
    """The instruction of the episode started from ``seed``: a paraphrase from ``pool``
    (``train``/``heldout``) chosen by the seed, so equal seeds give equal words too."""
    spec = get_task(task_id)
    if pool not in ("train", "heldout"):
        raise ValueError(f"instruction pool {pool!r} is not allowed; choose one of ['heldout', 'train']")
    templates = spec.train if pool == "train" else spec.heldout
    return random.Random(int(seed)).choice(templates).format(color=color or spec.color)
