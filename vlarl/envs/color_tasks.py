"""Tasks where the instruction decides what success means: ``PickCube-Color-v1``.

In the suite's other tasks the scene alone says what to do, so a policy can ignore the
words. Here the table holds two cubes, red (``cube``, ManiSkill's own) and yellow
(``cube_yellow``); each episode the seed picks which one is the target, the instruction
names its colour ("pick up the yellow cube and move it to the goal"), and success, the
dense reward, ``is_grasped`` in the state and the scripted expert all follow the target.
Lifting the other cube to the goal scores 0.

Design choices (each closes a shortcut that would let a policy succeed without language):

* the two cube positions are an exchangeable pair: both uniform in PickCube's
  +-0.1 m square, at least ``MIN_SEPARATION`` apart (rejection over candidate pairs), so
  where a cube stands says nothing about whether it is the target;
* the goal (hidden from the camera, given in the state) is drawn independently of both;
* the target index comes from ``_batched_episode_rng``, ManiSkill's per-env numpy RNG
  seeded by each env's episode seed: equal seeds give equal targets on the CPU backend and
  in a batched GPU env alike (per-env tensor ``target`` [N]; no per-episode recolouring,
  which GPU renderers would not pick up without reconfiguration).

Classes are built on first use (``register``), like ``variants.py``, so importing this
module does not import ManiSkill.
"""

from __future__ import annotations

import numpy as np
import torch

TARGET_COLORS = ("red", "yellow")
"""Colour word of target index 0 (``cube``) and 1 (``cube_yellow``)."""
YELLOW_RGBA = (1.0, 0.8, 0.0, 1.0)
MIN_SEPARATION = 0.09
"""Minimum distance (m) between the cube centres: an open Panda hand is 8 cm wide, so a
finger never lands on the other cube while grasping the target."""
CANDIDATES = 32
"""Candidate position pairs per reset; the first far-enough pair is used (P(no pair) ~ 1e-9)."""

TASK_IDS = ("PickCube-Color-v1",)


def rng_rows(seeded: bool, env_idx: np.ndarray, num_envs: int) -> np.ndarray:
    """Rows of ManiSkill's ``_batched_episode_rng`` that belong to the reset envs ``env_idx``.

    mani_skill 3.0.1 rebuilds that RNG from the seeds of a seeded reset in the caller's order
    (``seeds[k]`` for ``env_idx[k]``), and pads a single seed to ``num_envs`` with random ones;
    an unseeded partial reset updates the RNG in place at ``env_idx``. So a seeded partial
    reset reads rows ``0..len(env_idx)-1`` (indexing by env would read a padded, random
    stream: equal seeds would not give equal targets), every other reset the envs' own rows.
    """
    if seeded and len(env_idx) != num_envs:
        return np.arange(len(env_idx))
    return np.asarray(env_idx)


def _color_mixin():
    """The mixin class (made lazily: its methods use ManiSkill types only at call time)."""
    from mani_skill.utils.structs.pose import Pose

    class _ColorTarget:
        cube_half_size: float
        cube_spawn_half_size: float

        def _load_scene(self, options: dict) -> None:
            import sapien
            from mani_skill.utils.building import actors

            super()._load_scene(options)  # type: ignore[misc]
            self.cube_yellow = actors.build_cube(
                self.scene, half_size=self.cube_half_size, color=list(YELLOW_RGBA),
                name="cube_yellow", initial_pose=sapien.Pose(p=[0.3, 0.3, self.cube_half_size]))
            self.target = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

        @property
        def cubes(self) -> tuple:
            return (self.cube, self.cube_yellow)

        def _set_episode_rng(self, seed, env_idx):
            self._seeded_reset = seed is not None
            super()._set_episode_rng(seed, env_idx)  # type: ignore[misc]

        def _draw_targets(self, env_idx: torch.Tensor) -> torch.Tensor:
            rng = self._batched_episode_rng
            rows = rng_rows(getattr(self, "_seeded_reset", False), env_idx.cpu().numpy(),
                            self.num_envs)
            draws = np.asarray(rng[rows].randint(0, len(TARGET_COLORS)))
            return torch.as_tensor(draws, dtype=torch.long, device=self.device)

        def _initialize_episode(self, env_idx: torch.Tensor, options: dict) -> None:
            super()._initialize_episode(env_idx, options)  # type: ignore[misc]
            self.target[env_idx] = self._draw_targets(env_idx)
            with torch.device(self.device):
                b, h = len(env_idx), self.cube_spawn_half_size
                pairs = (torch.rand((b, CANDIDATES, 2, 2)) * 2 - 1) * h  # [b, K, cube, xy]
                sep = torch.linalg.norm(pairs[:, :, 0] - pairs[:, :, 1], dim=-1)
                ok = sep >= MIN_SEPARATION
                pick = torch.where(ok.any(1), ok.float().argmax(1), sep.argmax(1))
                chosen = pairs[torch.arange(b), pick]  # [b, 2, 2]
                from mani_skill.envs.utils import randomization

                for j, actor in enumerate(self.cubes):
                    xyz = torch.full((b, 3), self.cube_half_size)
                    xyz[:, :2] = chosen[:, j]
                    q = randomization.random_quaternions(b, lock_x=True, lock_y=True)
                    actor.set_pose(Pose.create_from_pq(xyz, q))

        # -------------------------------------------------------------- target view
        def _pick(self, red: torch.Tensor, yellow: torch.Tensor) -> torch.Tensor:
            """Per env: the value of the target cube (``red`` where target == 0)."""
            mask = (self.target == 0).reshape(-1, *([1] * (red.ndim - 1)))
            return torch.where(mask, red, yellow)

        def target_pos(self) -> torch.Tensor:
            return self._pick(self.cube.pose.p, self.cube_yellow.pose.p)

        def target_color(self, i: int) -> str:
            """Colour word of env ``i``'s target (vlarl writes it into the instruction)."""
            return TARGET_COLORS[int(self.target[i])]

        def evaluate(self) -> dict:
            is_obj_placed = (torch.linalg.norm(self.goal_site.pose.p - self.target_pos(), axis=1)
                             <= self.goal_thresh)
            is_grasped = self._pick(self.agent.is_grasping(self.cube),
                                    self.agent.is_grasping(self.cube_yellow))
            is_robot_static = self.agent.is_static(0.2)
            return {"success": is_obj_placed & is_robot_static, "is_obj_placed": is_obj_placed,
                    "is_robot_static": is_robot_static, "is_grasped": is_grasped}

        def _get_obs_extra(self, info: dict) -> dict:
            obs = super()._get_obs_extra(info)  # type: ignore[misc]
            if "state" in self.obs_mode:  # privileged entries: the target's, not the red cube's
                raw = self._pick(self.cube.pose.raw_pose, self.cube_yellow.pose.raw_pose)
                obs.update(obj_pose=raw, tcp_to_obj_pos=raw[:, :3] - self.agent.tcp_pose.p,
                           obj_to_goal_pos=self.goal_site.pose.p - raw[:, :3])
            return obs

        def compute_dense_reward(self, obs, action: torch.Tensor, info: dict) -> torch.Tensor:
            # PickCube's shaping (reach, grasp, place, static) measured on the target cube.
            target = self.target_pos()
            reward = 1 - torch.tanh(5 * torch.linalg.norm(target - self.agent.tcp_pose.p, axis=1))
            is_grasped = info["is_grasped"]
            reward = reward + is_grasped
            place = 1 - torch.tanh(5 * torch.linalg.norm(self.goal_site.pose.p - target, axis=1))
            reward = reward + place * is_grasped
            qvel = self.agent.robot.get_qvel()[..., :-2]  # Panda: arm joints only
            static = 1 - torch.tanh(5 * torch.linalg.norm(qvel, axis=1))
            reward = reward + static * info["is_obj_placed"]
            reward[info["success"]] = 5
            return reward

        def compute_normalized_dense_reward(self, obs, action, info) -> torch.Tensor:
            return self.compute_dense_reward(obs, action, info) / 5

    return _ColorTarget


def register() -> None:
    """Register the colour-target tasks with ManiSkill (once per process)."""
    from mani_skill.utils.registration import REGISTERED_ENVS, register_env

    if all(t in REGISTERED_ENVS for t in TASK_IDS):
        return
    base = REGISTERED_ENVS["PickCube-v1"]
    cls = type("PickCubeColorEnv", (_color_mixin(), base.cls), {})
    register_env("PickCube-Color-v1", max_episode_steps=base.max_episode_steps)(cls)
