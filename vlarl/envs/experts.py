"""Scripted experts: privileged-state state machines that emit ``pd_ee_delta_pose`` actions.

They exist to make demonstrations (SFT warm start, distillation targets) without motion
planning: ManiSkill's planners need mplib, which segfaults under numpy 2 (see
/work/shared/FINDINGS.md). Each expert reads the simulator state of a single env
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

import numpy as np
from scipy.spatial.transform import Rotation

from vlarl.registry import Registry

POS_SCALE = 0.1
"""Metres per unit of normalised position action (Panda ``pos_upper``)."""
ROT_SCALE = 0.1
"""Radians per unit of normalised rotation action (Panda ``rot_upper``)."""
OPEN, CLOSE = 1.0, -1.0
"""Normalised gripper commands (Panda: 1 -> 0.04 m open, -1 -> fully closed)."""
ACTION_DIM = 7

EXPERTS: Registry[type[Expert]] = Registry("expert")


def _pos(actor) -> np.ndarray:
    """World position ``[3]`` of a ManiSkill actor/link of env 0."""
    return actor.pose.p[0].detach().cpu().numpy().astype(np.float64)


def _rot(actor) -> Rotation:
    """World orientation of env 0 (ManiSkill stores wxyz quaternions, scipy wants xyzw)."""
    w, x, y, z = actor.pose.q[0].detach().cpu().numpy().astype(np.float64)
    return Rotation.from_quat([x, y, z, w])


def _yaw(actor) -> float:
    return float(_rot(actor).as_euler("xyz")[2])


class Expert:
    """A waypoint state machine over privileged state; one instance per env.

    Subclasses implement :meth:`plan`, which returns ``(tcp target, gripper, reached)`` for the
    current phase; ``reached`` advances to the next phase. ``reset`` must be called at every
    episode start because the phase and the reference orientation are per-episode.
    """

    task_id: str = ""
    """The ManiSkill env id this expert solves (set by :func:`_register`)."""
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
            self._down = _rot(tcp)
        rot_action = self._rot_action(_rot(tcp), self.yaw(env))
        target, gripper, reached = self.plan(env, _pos(tcp))
        action = np.zeros(ACTION_DIM, dtype=np.float64)
        action[:3] = np.clip((target - _pos(tcp)) / POS_SCALE, -1.0, 1.0)
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
        # each of x, y, z. So to turn by ``ref * current^-1`` we command its negative.
        assert self._down is not None
        ref = Rotation.from_euler("z", yaw) * self._down
        rotvec = -(ref * current.inv()).as_rotvec() / ROT_SCALE
        self.rot_err = float(np.linalg.norm(rotvec)) * ROT_SCALE
        return rotvec / max(float(np.linalg.norm(rotvec)), 1.0)

    def _near(self, a: np.ndarray, b: np.ndarray, tol: float | None = None) -> bool:
        return bool(np.linalg.norm(a - b) < (self.reach_tol if tol is None else tol))


def _grasp_yaw(reference: Rotation, obj) -> float:
    """Hand yaw (relative to ``reference``) that puts the fingers on two faces of a cube.

    The fingers close along the hand's y axis; a cube is symmetric under 90-degree turns
    about z, so the smallest turn lies in [-45, 45] degrees.
    """
    finger = reference.apply([0.0, 1.0, 0.0])
    rel = _yaw(obj) - np.arctan2(finger[1], finger[0])
    return float((rel + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def _register(task_id: str):
    def deco(cls: type[Expert]) -> type[Expert]:
        cls.task_id = task_id
        return EXPERTS.register(task_id)(cls)

    return deco


class _PickAndPlace(Expert):
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
            self._held_yaw = _grasp_yaw(self._down, self.obj(env))
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
        finger = (Rotation.from_euler("z", self._held_yaw) * self._down).apply([0.0, 1.0, 0.0])
        finger[2] = 0.0
        finger /= np.linalg.norm(finger)
        for other in self.obstacles(env):
            rel = _pos(other) - obj
            along = float(rel @ finger)
            across = float(np.linalg.norm(rel[:2] - along * finger[:2]))
            if across < 0.045 and abs(along) < 0.09:
                return obj - np.sign(along) * 0.015 * finger
        return obj

    def plan(self, env, tcp):
        obj = _pos(self.obj(env))
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


@_register("PickCube-v1")
class PickCubeExpert(_PickAndPlace):
    """Pick the red cube and hold it at the green goal (success needs the robot static)."""

    def obj(self, env):
        return env.cube

    def place_target(self, env):
        return _pos(env.goal_site)

    def lift_clearance(self) -> float:
        return 0.0


@_register("PickCube-Color-v1")
class PickCubeColorExpert(PickCubeExpert):
    """Pick the cube the instruction names (``env.target``) while keeping a finger off the
    other cube (``color_tasks.py``)."""

    def obj(self, env):
        return env.cubes[int(env.target[0])]

    def obstacles(self, env) -> list:
        return [env.cubes[1 - int(env.target[0])]]


@_register("StackCube-v1")
class StackCubeExpert(_PickAndPlace):
    """Pick cubeA, put it on cubeB (2 half sizes higher), release, back off."""

    release = True
    place_tol = 0.006

    def obj(self, env):
        return env.cubeA

    def place_target(self, env):
        return _pos(env.cubeB) + np.array([0.0, 0.0, 0.04])

    def obstacles(self, env) -> list:
        return [env.cubeB]


@_register("PlaceSphere-v1")
class PlaceSphereExpert(_PickAndPlace):
    """Pick the sphere and release it on the bin floor (centre = bin + radius + floor half)."""

    release = True
    place_tol = 0.006

    def obj(self, env):
        return env.obj

    def place_target(self, env):
        return _pos(env.bin) + np.array([0.0, 0.0, env.radius + env.block_half_size[0]])

    def yaw(self, env) -> float:
        return 0.0  # a sphere has no faces to align with


class _Slide(Expert):
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
        cube = _pos(env.obj)
        goal = _pos(env.goal_region)
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


@_register("PushCube-v1")
class PushCubeExpert(_Slide):
    """Push the cube +x onto the target (goal = cube + 0.2 m in x)."""

    side = -1.0


@_register("PullCube-v1")
class PullCubeExpert(_Slide):
    """Pull the cube -x onto the target (goal = cube - 0.2 m in x)."""

    side = 1.0


@_register("PokeCube-v1")
class PokeCubeExpert(Expert):
    """Tool use: grasp the peg (lying along +x), lift it a little, line its head up behind
    the cube, then push the cube +x onto the target with the peg's head.

    Three things the pick-and-place experts never meet: the fingers must close across the
    peg's width (a quarter turn from a cube's faces); the tool's head, not the hand, is what
    must reach the cube (the hand's target is the head's target minus the measured hand-to-head
    offset, so a grasp off the peg's centre still works); and pushing is rate-limited
    (``push_step`` m per control step): at the controller's full 0.1 m per step the cube is
    thrown past the target or off the table.
    """

    push_step: float = 0.03
    """Largest hand displacement per control step while the peg touches the cube (m)."""
    grip_back: float = 0.07
    """Grasp this far behind the peg's centre (m): the head then reaches 0.19 m ahead of the
    hand, enough for targets near the arm's reach limit (a centre grasp stalled at ~0.78 m
    from the base on 8 of 30 seeds, the cube short of the target)."""
    carry_height: float = 0.035
    """Hand height while carrying and pushing: the peg's axis near the cube's centre height."""
    hover: float = 0.06

    def yaw(self, env) -> float:
        if self.phase <= 1:  # fingers across the peg: their axis perpendicular to its length
            assert self._down is not None
            finger = self._down.apply([0.0, 1.0, 0.0])
            rel = _yaw(env.peg) + np.pi / 2 - np.arctan2(finger[1], finger[0])
            self._held_yaw = float((rel + np.pi / 2) % np.pi - np.pi / 2)
        return self._held_yaw

    def plan(self, env, tcp):
        peg = _pos(env.peg) - _rot(env.peg).apply([self.grip_back, 0.0, 0.0])
        head = np.asarray(env.peg_head_pos[0].cpu().numpy(), dtype=np.float64)
        cube, goal = _pos(env.cube), _pos(env.goal_region)
        half = float(env.cube_half_size)
        if self.phase == 0:  # above the peg's centre, open, fingers turning
            above = peg + np.array([0.0, 0.0, self.hover])
            return above, OPEN, self.rot_err < 0.3 and self._near(tcp[:2], peg[:2], 0.01)
        if self.phase == 1:  # down onto it
            return peg, OPEN, self._near(tcp, peg, 0.008) or self.phase_steps > 10
        if self.phase == 2:  # close
            return peg, CLOSE, self.phase_steps >= 4
        if tcp[2] - peg[2] > 0.03:  # the peg slipped out: start over
            self.restart()
            return peg + np.array([0.0, 0.0, self.hover]), OPEN, False
        offset = tcp - head  # hand relative to the tool's head, as held
        if self.phase == 3:  # lift a little
            lift = tcp.copy()
            lift[2] = self.carry_height
            return lift, CLOSE, tcp[2] > self.carry_height - 0.008
        if self.phase == 4:  # the head behind the cube, on its line of travel
            ready = np.array([cube[0] - half - 0.03, cube[1], head[2]])
            return self._limit(tcp, ready + offset, 0.05), CLOSE, self._near(
                head[:2], ready[:2], 0.008)
        # push: the head follows the cube's centre line until the cube reaches the target
        if abs(cube[0] - goal[0]) < 0.03 or cube[0] > goal[0]:
            return tcp, CLOSE, False  # hold still: success needs a static robot
        push = np.array([cube[0] - half + 0.02, cube[1], head[2]])
        return self._limit(tcp, push + offset, self.push_step), CLOSE, False

    @staticmethod
    def _limit(tcp: np.ndarray, target: np.ndarray, step: float) -> np.ndarray:
        """``target``, but at most ``step`` metres from ``tcp`` (a slower hand)."""
        delta = target - tcp
        norm = float(np.linalg.norm(delta))
        return target if norm <= step else tcp + delta * (step / norm)

    def reset(self) -> None:
        super().reset()
        self._held_yaw = 0.0


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
