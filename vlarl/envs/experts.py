"""Scripted experts: privileged-state state machines that emit ``pd_ee_delta_pose`` actions.

They exist to make demonstrations (SFT warm start, distillation targets) without motion
planning: ManiSkill's planners need mplib, which segfaults under numpy 2 (see
docs/troubleshooting.md). Each expert reads the simulator state of a single env
(``num_envs=1``: ``env`` is the gym env's ``.unwrapped``) and walks through waypoints:

    action[:3]  = clip((target - tcp) / POS_SCALE, -1, 1)   # Panda pos delta limit 0.1 m
    action[3:6] = rotation back to "gripper down, yaw aligned with the object" / ROT_SCALE
    action[6]   = +1 open / -1 close

The 0.1 m and 0.1 rad scales are ``pos_lower/upper`` and ``rot_lower/upper`` of
``arm_pd_ee_delta_pose`` in ``mani_skill/agents/robots/panda/panda.py``; translation is in
the robot root frame, which is world-aligned in the tabletop tasks (rotation: see
``Expert._rot_action``). Holding the orientation actively (instead of a zero rotation
delta) matters: contacts twist the hand and a zero delta would keep whatever twist it got;
turning the fingers to the cube's faces makes grasps of yawed cubes reliable.

Measured with ``max_episode_steps=50`` (every task's default), ``physx_cpu``, 100 seeds
(0-99) each: PickCube 100/100 (mean 25.8 steps), PushCube 100/100 (13.1), PullCube
100/100 (13.3), StackCube 100/100 (33.6), PlaceSphere 100/100 (33.1), PickCube-Color
(``color_tasks.py``: the cube the instruction names, next to a second one) 100/100 (26.6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlarl.registry import Registry

if TYPE_CHECKING:  # scipy loads in ~0.4 s: only when an expert acts (every env worker imports this)
    from scipy.spatial.transform import Rotation

POS_SCALE = 0.1
"""Metres per unit of normalised position action (Panda ``pos_upper``)."""
ROT_SCALE = 0.1
"""Radians per unit of normalised rotation action (Panda ``rot_upper``)."""
OPEN, CLOSE = 1.0, -1.0
"""Normalised gripper commands (Panda: 1 -> 0.04 m open, -1 -> fully closed)."""
ACTION_DIM = 7

EXPERTS: Registry[type[Expert]] = Registry("expert")


def position(actor) -> np.ndarray:
    """World position ``[3]`` of a ManiSkill actor/link of env 0."""
    return actor.pose.p[0].detach().cpu().numpy().astype(np.float64)


def orientation(actor) -> Rotation:
    """World orientation of env 0 (ManiSkill stores wxyz quaternions, scipy wants xyzw)."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = actor.pose.q[0].detach().cpu().numpy().astype(np.float64)
    return Rotation.from_quat([x, y, z, w])


def yaw_of(actor) -> float:
    return float(orientation(actor).as_euler("xyz")[2])


class Expert:
    """A waypoint state machine over privileged state; one instance per env.

    Subclasses implement :meth:`plan`, which returns ``(tcp target, gripper, reached)`` for the
    current phase; ``reached`` advances to the next phase. ``reset`` must be called at every
    episode start because the phase and the reference orientation are per-episode.
    """

    task_id: str = ""
    """The ManiSkill env id this expert solves (set by :func:`register_expert`)."""
    reach_tol: float = 0.01
    """Metres within which a waypoint counts as reached."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = 0
        self.phase_steps = 0
        self._down: Rotation | None = None
        self.rot_err = 0.0
        """Radians between the hand and its reference orientation (set by ``act``)."""
        self._last_elapsed = 0

    def restart(self) -> None:
        """Go back to phase 0 (e.g. after a missed grasp); the orientation reference stays."""
        self.phase, self.phase_steps = 0, -1

    def act(self, env) -> np.ndarray:
        """float32 ``[7]`` action for the current state of ``env`` (an unwrapped ManiSkill env).

        Querying without executing the action (DAgger-style relabelling) is fine: every
        phase change is decided from the state. A reset the caller forgot to pass on is
        noticed from ``env.elapsed_steps`` going down.
        """
        elapsed = int(env.elapsed_steps[0])
        if elapsed < self._last_elapsed:
            self.reset()
        self._last_elapsed = elapsed
        tcp = env.agent.tcp
        if self._down is None:
            # The initial hand orientation points the gripper down; keep it up to yaw.
            self._down = orientation(tcp)
        rot_action = self._rot_action(orientation(tcp), self.yaw(env))
        target, gripper, reached = self.plan(env, position(tcp))
        action = np.zeros(ACTION_DIM, dtype=np.float64)
        action[:3] = np.clip((target - position(tcp)) / POS_SCALE, -1.0, 1.0)
        action[3:6] = rot_action
        action[6] = gripper
        self.phase_steps += 1
        if reached:
            self.phase += 1
            self.phase_steps = 0
        return action.astype(np.float32)

    def plan(self, env, tcp: np.ndarray) -> tuple[np.ndarray, float, bool]:
        raise NotImplementedError

    def yaw(self, env) -> float:
        """Extra world-z rotation of the hand relative to its initial orientation (radians)."""
        return 0.0

    def _rot_action(self, current: Rotation, yaw: float) -> np.ndarray:
        # Measured (not what the controller source suggests): a rotation action r turns the
        # hand by about -0.39 * r * ROT_SCALE per step as a *world-frame* rotation vector, for
        # each of x, y, z. So to turn by ``ref * current^-1`` the expert commands its negative.
        assert self._down is not None
        from scipy.spatial.transform import Rotation

        ref = Rotation.from_euler("z", yaw) * self._down
        rotvec = -(ref * current.inv()).as_rotvec() / ROT_SCALE
        self.rot_err = float(np.linalg.norm(rotvec)) * ROT_SCALE
        return rotvec / max(float(np.linalg.norm(rotvec)), 1.0)

    def _near(self, a: np.ndarray, b: np.ndarray, tol: float | None = None) -> bool:
        return bool(np.linalg.norm(a - b) < (self.reach_tol if tol is None else tol))


def grasp_yaw(reference: Rotation, obj) -> float:
    """Hand yaw (relative to ``reference``) that puts the fingers on two faces of a cube.

    The fingers close along the hand's y axis; a cube is symmetric under 90-degree turns
    about z, so the smallest turn lies in [-45, 45] degrees.
    """
    finger = reference.apply([0.0, 1.0, 0.0])
    rel = yaw_of(obj) - np.arctan2(finger[1], finger[0])
    return float((rel + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def register_expert(task_id: str):
    def deco(cls: type[Expert]) -> type[Expert]:
        cls.task_id = task_id
        return EXPERTS.register(task_id)(cls)

    return deco


class PickAndPlace(Expert):
    """Shared pick-and-place: above object -> down -> close -> lift -> carry -> (release).

    Subclasses say which actor to pick (:meth:`obj`) and where its centre must end up
    (:meth:`place_target`); ``release`` opens the gripper at the end (StackCube, PlaceSphere
    require the object not to be grasped).
    """

    hover: float = 0.06
    """Height above the object to approach from (m), so fingers do not hit it sideways."""
    close_steps: int = 3
    """Control steps to hold still while the gripper closes."""
    release: bool = False
    place_tol: float = 0.01

    def obj(self, env):
        raise NotImplementedError

    def place_target(self, env) -> np.ndarray:
        raise NotImplementedError

    def yaw(self, env) -> float:
        # Align the fingers with the object until it is held; then keep the yaw of the grasp.
        if self.phase <= 1:
            self._held_yaw = grasp_yaw(self._down, self.obj(env))
        return self._held_yaw

    def obstacles(self, env) -> list:
        """Actors an open finger could land on next to the object (StackCube: cubeB)."""
        return []

    def grasp_point(self, env, obj: np.ndarray) -> np.ndarray:
        """The object centre, shifted along the finger axis away from a nearby obstacle.

        The open Panda hand is 8 cm wide and a cube 4 cm, so the hand may sit up to 2 cm
        off-centre along the finger axis and still close on the cube; 1.5 cm of that keeps
        a finger off a neighbour that would otherwise stop the descent.
        """
        assert self._down is not None
        from scipy.spatial.transform import Rotation

        finger = (Rotation.from_euler("z", self._held_yaw) * self._down).apply([0.0, 1.0, 0.0])
        finger[2] = 0.0
        finger /= np.linalg.norm(finger)
        for other in self.obstacles(env):
            rel = position(other) - obj
            along = float(rel @ finger)
            across = float(np.linalg.norm(rel[:2] - along * finger[:2]))
            if across < 0.045 and abs(along) < 0.09:
                return obj - np.sign(along) * 0.015 * finger
        return obj

    def plan(self, env, tcp):
        obj = position(self.obj(env))
        grasp = self.grasp_point(env, obj)
        above_obj = grasp + np.array([0.0, 0.0, self.hover])
        if self.phase == 0:  # hover above the object, open, fingers turning to its faces
            aligned = self.rot_err < 0.35
            return above_obj, OPEN, aligned and self._near(tcp[:2], grasp[:2], 0.01)
        if self.phase == 1:  # descend onto it (the turn finishes on the way down)
            return grasp, OPEN, self._near(tcp, grasp, 0.008) or self.phase_steps > 8
        if self.phase == 2:  # close
            return grasp, CLOSE, self.phase_steps + 1 >= self.close_steps
        goal = self.place_target(env)
        # Carry the grasp point so that the *object* lands on the goal.
        offset = tcp - obj
        if tcp[2] - obj[2] > 0.03:  # missed or dropped it: the object is below the fingers
            self.restart()
            return above_obj, OPEN, False
        if self.phase == 3:  # lift clear before moving sideways
            lift = obj.copy()
            lift[2] = goal[2] + self.lift_clearance()
            return lift + offset, CLOSE, obj[2] > lift[2] - 0.015
        if self.phase == 4:  # above the goal
            above = goal.copy()
            above[2] = goal[2] + self.lift_clearance() * 0.5
            return above + offset, CLOSE, self._near(obj[:2], goal[:2], 0.006)
        if self.phase == 5:  # down onto the goal
            done = self._near(obj, goal, self.place_tol)
            return goal + offset, CLOSE, done and self.release
        if self.phase == 6:  # open and stay still
            return tcp, OPEN, self.phase_steps >= 2
        # back off upwards so the fingers leave the object
        return tcp + np.array([0.0, 0.0, 0.02]), OPEN, False

    def lift_clearance(self) -> float:
        return 0.05

    def reset(self) -> None:
        super().reset()
        self._held_yaw = 0.0


class Slide(Expert):
    """Push (+x) or pull (-x) the cube along the table with a closed gripper.

    ``side`` is where the hand stands relative to the cube along x: -1 behind it (push
    towards +x), +1 in front of it (pull towards -x).
    """

    side: float = -1.0
    gap: float = 0.035
    """Distance (m) from cube centre to tcp along x while sliding (half size + finger pad)."""
    height: float = 0.02
    """tcp height while sliding: the cube's centre height, so the closed fingers hit its face."""
    overshoot: float = 0.03
    """Slide the cube this far past the goal centre-line (success radius is 0.1 m)."""

    def plan(self, env, tcp):
        cube = position(env.obj)
        goal = position(env.goal_region)
        start = np.array([cube[0] + self.side * self.gap, cube[1], self.height])
        if self.phase == 0:  # above the start point, closed gripper
            above = start + np.array([0.0, 0.0, 0.06])
            return above, CLOSE, self._near(tcp[:2], above[:2], 0.01)
        if self.phase == 1:  # lower beside the cube
            return start, CLOSE, self._near(tcp, start, 0.008) or self.phase_steps > 8
        end_x = goal[0] - self.side * self.overshoot + self.side * self.gap
        end = np.array([end_x, cube[1], self.height])
        done = abs(cube[0] - goal[0]) < 0.03
        return (tcp if done else end), CLOSE, False


def resolve_task(task_id: str, base_task: dict[str, str] | None = None) -> str:
    """Map a task id (possibly an OOD variant) to the id of the expert that solves it.

    Exact ids win; then ``base_task[task_id]``; then the longest registered id whose name
    stem (before ``-v``) starts ``task_id``, so variants named like ``PickCube-v1-colors`` or
    ``PickCubeOOD-v1`` resolve to ``PickCube-v1``.
    """
    if task_id in EXPERTS:
        return task_id
    if base_task and task_id in base_task:
        return resolve_task(base_task[task_id])
    stems = [n for n in EXPERTS.names() if task_id.startswith(n.split("-v")[0])]
    if stems:
        return max(stems, key=len)
    raise ValueError(f"no scripted expert for task {task_id!r}; known tasks: {EXPERTS.names()}; "
                     "to add one, see docs/adding_a_task.md (a TaskSpec and an expert class)")


def get_expert(task_id: str, base_task: dict[str, str] | None = None) -> Expert:
    """A fresh expert for ``task_id`` (see :func:`resolve_task`); unknown -> ValueError."""
    return EXPERTS.get(resolve_task(task_id, base_task))()
