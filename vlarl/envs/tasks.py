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


TASKS: dict[str, TaskSpec] = {}
"""Registered tasks by ManiSkill id: one module of ``vlarl.envs.suite`` per task registers its
spec here (:func:`register_task`) and its expert in ``vlarl.envs.experts.EXPERTS``."""


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (a second spec for one id is an error)."""
    if spec.task_id in TASKS:
        raise ValueError(f"task {spec.task_id!r} is registered twice")
    TASKS[spec.task_id] = spec
    return spec

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
