"""Out-of-distribution scene variants: small subclasses of the ManiSkill tasks.

Each variant is a mixin placed in front of the original task class and registered with
ManiSkill's ``register_env`` under a new id (``PickCube-v1`` + ``distractor`` ->
``PickCube-Distractor-v1``), so ``gym.make`` builds it like any other task and every
scripted expert keeps working (the subclass keeps the task's attributes). Classes are made
on first use in whichever process builds the env (workers included), so importing this
module stays cheap. All randomness uses ``torch.rand``, which ManiSkill seeds from the
episode seed during ``reset(seed=...)``: a variant is as reproducible as its base task.
"""

from __future__ import annotations

import torch

from vlarl.envs.splits import DISTRACTOR_RGBA, UNSEEN_COLOR_2_RGBA, UNSEEN_COLOR_RGBA
from vlarl.envs.tasks import TaskSpec, get_task

WIDE_SHIFT = 0.05
"""Max extra xy shift (m) of the whole layout: object range grows from +-0.10 to +-0.15 m."""
WIDE_FAR_SHIFT = 0.10
"""``wide_pose_far``: object range +-0.20 m."""
DISTRACTOR_HALF_SIZE = 0.02


def _pose(p: torch.Tensor, q: torch.Tensor | None = None):
    from mani_skill.utils.structs.pose import Pose

    return Pose.create_from_pq(p=p, q=q)


class _Recolor:
    """Recolours the manipulated object after the task built it (render material only:
    physics, and therefore the expert, are unchanged)."""

    _vlarl_task: TaskSpec
    rgba: tuple[float, ...] = UNSEEN_COLOR_RGBA

    def _load_scene(self, options: dict) -> None:
        import sapien

        super()._load_scene(options)  # type: ignore[misc]
        actor = getattr(self, self._vlarl_task.obj_attr)
        for entity in actor._objs:
            body = entity.find_component_by_type(sapien.render.RenderBodyComponent)
            for shape in body.render_shapes:
                shape.material.base_color = list(self.rgba)


class _RecolorBlack(_Recolor):
    rgba = UNSEEN_COLOR_2_RGBA


class _Distractor:
    """Adds a yellow cube on the table, on the opposite side (in y) of the object, so it
    never overlaps the object's or the goal's spawn region (both within +-0.1 m)."""

    _vlarl_task: TaskSpec

    def _load_scene(self, options: dict) -> None:
        import sapien
        from mani_skill.utils.building import actors

        super()._load_scene(options)  # type: ignore[misc]
        self.distractor = actors.build_cube(
            self.scene, half_size=DISTRACTOR_HALF_SIZE, color=list(DISTRACTOR_RGBA),
            name="distractor", initial_pose=sapien.Pose(p=[0.3, 0.3, DISTRACTOR_HALF_SIZE]))

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict) -> None:
        super()._initialize_episode(env_idx, options)  # type: ignore[misc]
        with torch.device(self.device):
            b = len(env_idx)
            obj_y = getattr(self, self._vlarl_task.obj_attr).pose.p[env_idx, 1]
            side = torch.where(obj_y >= 0, -1.0, 1.0)
            xyz = torch.zeros((b, 3))
            xyz[:, 0] = torch.rand(b) * 0.2 - 0.1
            xyz[:, 1] = side * (0.15 + torch.rand(b) * 0.05)
            xyz[:, 2] = DISTRACTOR_HALF_SIZE
            self.distractor.set_pose(_pose(xyz))


class _Wide:
    """Shifts the whole task layout (object and goal together) by a random xy offset, so
    the object starts in a wider range while the task geometry stays solvable."""

    _vlarl_task: TaskSpec
    shift: float = WIDE_SHIFT

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict) -> None:
        super()._initialize_episode(env_idx, options)  # type: ignore[misc]
        with torch.device(self.device):
            offset = (torch.rand((len(env_idx), 2)) * 2 - 1) * self.shift
            for attr in self._vlarl_task.layout_attrs:
                actor = getattr(self, attr)
                p = actor.pose.p[env_idx].clone()
                p[:, :2] += offset
                actor.set_pose(_pose(p, actor.pose.q[env_idx].clone()))


class _WideFar(_Wide):
    shift = WIDE_FAR_SHIFT


VARIANTS: dict[str, tuple[type, str]] = {
    "color": (_Recolor, "UnseenColor"),
    "color_black": (_RecolorBlack, "UnseenColorBlack"),
    "distractor": (_Distractor, "Distractor"),
    "wide": (_Wide, "WidePose"),
    "wide_far": (_WideFar, "WidePoseFar"),
}


def variant_env_id(task_id: str, variant: str | None) -> str:
    """The ManiSkill id to ``gym.make`` for ``task_id`` under ``variant``; registers the
    subclass with ManiSkill on first call (in this process)."""
    import mani_skill.envs  # noqa: F401  (registers the original tasks with gymnasium)

    from vlarl.envs import color_tasks

    color_tasks.register()  # vlarl's own tasks, in every process that builds an env
    spec = get_task(task_id)
    if variant is None:
        return task_id
    if variant not in VARIANTS:
        raise ValueError(f"unknown scene variant {variant!r}; allowed: {sorted(VARIANTS)}")
    from mani_skill.utils.registration import REGISTERED_ENVS, register_env

    mixin, word = VARIANTS[variant]
    stem, version = task_id.rsplit("-", 1)
    uid = f"{stem}-{word}-{version}"
    if uid not in REGISTERED_ENVS:
        base = REGISTERED_ENVS[task_id]
        cls = type(f"{base.cls.__name__}{word}", (mixin, base.cls), {"_vlarl_task": spec})
        register_env(uid, max_episode_steps=base.max_episode_steps)(cls)
    return uid
