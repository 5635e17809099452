"""PokeCube-v1: grasp the peg and push the cube onto the target with it (tool use).

Expert measured with ``vlarl expert --env.task PokeCube-v1 --eval.num_episodes 100`` (2026-12-06,
physx_cpu, 50-step limit, seeds 1000000-1000099): train 100/100 (mean 37.8 steps), wide_pose
95/100, unseen_color 100/100 (docs/adding_a_task.md walks through it).
"""

from __future__ import annotations

import numpy as np

from vlarl.envs.experts import CLOSE, OPEN, Expert, orientation, position, register_expert, yaw_of
from vlarl.envs.tasks import TaskSpec, register_task

register_task(TaskSpec(
    "PokeCube-v1", "cube", ("peg", "cube", "goal_region"), "red",
    train=("use the peg to push the {color} cube onto the target",
           "pick up the stick and poke the {color} cube to the goal",
           "grab the peg and push the {color} block forward with it"),
    heldout=("take the blue peg and nudge the {color} cube until it sits on the bullseye",
             "with the tool in hand, shove the {color} block over to the target region"),
))


@register_expert("PokeCube-v1")
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
            rel = yaw_of(env.peg) + np.pi / 2 - np.arctan2(finger[1], finger[0])
            self._held_yaw = float((rel + np.pi / 2) % np.pi - np.pi / 2)
        return self._held_yaw

    def plan(self, env, tcp):
        peg = position(env.peg) - orientation(env.peg).apply([self.grip_back, 0.0, 0.0])
        head = np.asarray(env.peg_head_pos[0].cpu().numpy(), dtype=np.float64)
        cube, goal = position(env.cube), position(env.goal_region)
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
