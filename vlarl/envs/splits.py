"""Named evaluation splits: the in-distribution ``train`` split and out-of-distribution ones.

A split is data, not code: which instruction pool it draws from and which scene variant
(``variants.py``) it builds. Every random choice a split makes (paraphrase, distractor
place, pose offset) is drawn from the episode seed, so a split plus a seed list names a
reproducible evaluation set. Use a split by name from a recipe: ``env.split: distractor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlarl.registry import Registry


@dataclass(frozen=True)
class SplitSpec:
    name: str
    """Registry name (``env.split``)."""
    description: str
    """What is out of distribution, in one line."""
    pool: str = "train"
    """Instruction paraphrase pool: ``train`` or ``heldout``."""
    variant: str | None = None
    """Scene variant in ``variants.VARIANTS`` (None: the original ManiSkill task)."""
    color: str | None = None
    """Colour word of the object when the variant recolours it."""


SPLITS: Registry[SplitSpec] = Registry("env split")

UNSEEN_COLOR_RGBA = (0.6, 0.1, 0.8, 1.0)
"""Purple: a colour none of the suite's manipulated objects has during training."""
UNSEEN_COLOR_2_RGBA = (0.05, 0.05, 0.05, 1.0)
"""Black: a second unseen colour (severity level 2 of the colour axis in ``vlarl diagnose``)."""
DISTRACTOR_RGBA = (1.0, 0.8, 0.0, 1.0)
"""Yellow distractor cube."""

for _spec in (
    SplitSpec("train", "in-distribution: original scenes, training paraphrases"),
    SplitSpec("unseen_instruction", "held-out paraphrases of the instruction", pool="heldout"),
    SplitSpec("unseen_color", "object recoloured purple (instruction says so)",
              variant="color", color="purple"),
    SplitSpec("distractor", "an extra yellow cube on the table", variant="distractor"),
    SplitSpec("wide_pose", "object and goal shifted together: xy range +-0.15 m instead of +-0.1 m",
              variant="wide"),
    # Severity levels for ``vlarl diagnose`` (one more step along two axes).
    SplitSpec("unseen_color_black", "object recoloured black (instruction says so)",
              variant="color_black", color="black"),
    SplitSpec("wide_pose_far", "object and goal shifted together: xy range +-0.2 m instead of +-0.1 m",
              variant="wide_far"),
):
    SPLITS.register(_spec.name)(_spec)


def get_split(name: str) -> SplitSpec:
    """The split called ``name``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; allowed: {SPLITS.names()}")
    return SPLITS.get(name)
