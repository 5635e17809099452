"""The in-process backend: one ManiSkill batched env stepped in action chunks.

Why not ``env.step``: in mani_skill 3.0.1 ``BaseEnv.step`` is ``_step_action -> get_info
-> get_obs -> get_reward`` and the camera render lives only in ``get_obs`` (~35-40 ms on
CPU against ~3 ms of physics, measured). A chunk of k actions only needs
an image after its last action, so :meth:`ManiSkillVecEnv.step_chunk` calls the same
three non-rendering pieces itself for every control step and ``get_obs`` only at decision
points (or when an episode ends inside the chunk, to return its true final observation).
Reward, success and termination are computed at every step exactly as ``env.step`` would,
and time-limit truncation is vlarl's (it steps ``env.unwrapped``, below gymnasium's wrapper).

The same class serves the GPU (``physx_cuda``, N envs in one process) and, with
``num_envs=1`` on ``physx_cpu``, each worker of the CPU vector backend (``vector.py``).

Observation ``state`` (float32): arm+gripper joint positions ``qpos`` (9 for the Panda)
followed by the task's ``extra`` observations as ManiSkill gives them in ``obs_mode="rgb"``
(flattened in the task's order): the TCP pose (xyz + wxyz) and whatever the task reveals
without privileged object state - e.g. PickCube's ``is_grasped`` + ``goal_pos`` (D=20; the
goal marker is hidden from cameras, so a policy must get it here), PullCube's ``goal_pos``
(D=19), PlaceSphere's ``bin_pos``; PushCube and StackCube show their goals in the image (D=16).
Object poses (privileged) are never included.

``env.privileged_state`` adds ``Obs.privileged``: ``get_state()`` (every actor's and
articulation's pose, velocities, qpos, qvel: 70 values on PushCube/PickCube), the elapsed
fraction of the episode (values depend on the time left before truncation) and, on
colour-target tasks, the target index. ``env.obs_mode: state`` creates the env without
cameras (ManiSkill ``obs_mode="state_dict"``; nothing is rendered): images are empty and
``Obs.state`` is ManiSkill's state observation (object poses included).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import numpy as np
import torch

from vlarl.config import EnvConfig
from vlarl.envs.base import VecEnv
from vlarl.envs.splits import get_split
from vlarl.envs.tasks import get_task, instruction
from vlarl.envs.variants import variant_env_id
from vlarl.types import ChunkStep, Obs

CAMERA = "base_camera"

@functools.cache
def keep_cpu_renderer():
    """Keep SAPIEN's CPU render engine alive for the rest of this process.

    SAPIEN shares one render engine per device among the live render systems and frees it with
    the last one, and with it the BRDF lookup table it computes at the first camera picture:
    ~10 s of one core on the software renderer (llvmpipe). Without a system kept alive, every
    env set a process builds after closing the previous one (an evaluation's splits, the
    grounding scenes, a test session) recomputes it. Measured on 2 cores (PushCube-v1, 32 px,
    build + reset + close, three times in one process): 15.0 / 12.3 / 11.3 s without, 11.8 /
    0.39 / 0.37 s with an empty ``RenderSystem`` kept, same peak RSS (783 MB)."""
    import sapien

    return sapien.render.RenderSystem(sapien.Device("cpu"))  # held by the cache


@contextlib.contextmanager
def sim_noise_off():
    """Silence what ManiSkill 3.0.1 warns on every CPU control step and that says nothing:
    its NaN check runs ``np.isnan`` on the torch action it built itself (NumPy 2's
    ``__array_wrap__`` deprecation; thousands per run). ``VLARL_VERBOSE=1`` shows it."""
    if os.environ.get("VLARL_VERBOSE"):
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array_wrap__ must accept context",
                                category=DeprecationWarning)
        yield


class SeedStream:
    """Episode seeds drawn from ``cfg.seed`` when the caller gives none (auto-resets)."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def take(self, n: int) -> list[int]:
        return [int(s) for s in self._rng.integers(0, 2**31 - 1, size=n)]


def check_seeds(seeds: list[int] | None, n: int, what: str = "seeds") -> list[int] | None:
    """``None`` or a list of n ints; anything else raises naming the value."""
    if seeds is None:
        return None
    seeds = list(seeds)
    if len(seeds) != n or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(f"{what}={seeds!r} must be a list of {n} ints (one per env)")
    return [int(s) for s in seeds]


def check_actions(actions: torch.Tensor, n: int, a: int) -> torch.Tensor:
    """Validate a chunk ``[N, k, A]`` of finite floats; returns it as float32."""
    if not isinstance(actions, torch.Tensor):  # one error type for every bad action
        raise ValueError(  # noqa: TRY004
            f"actions must be a torch.Tensor [N={n}, k, A={a}], got {type(actions).__name__}")
    if not actions.is_floating_point():
        raise ValueError(f"actions dtype {actions.dtype} is not allowed; use a float dtype "
                         "(float32, float64, bfloat16, float16)")
    if actions.ndim != 3 or actions.shape[0] != n or actions.shape[2] != a or actions.shape[1] < 1:
        raise ValueError(f"actions shape {tuple(actions.shape)} is not allowed; expected [N={n}, k>=1, A={a}]")
    if not torch.isfinite(actions).all():
        bad = (~torch.isfinite(actions)).nonzero()[0].tolist()
        raise ValueError(f"actions contain NaN/inf (first at index {bad}); all values must be finite")
    return actions.float()


def copy_rows(seeds: list[int], idx: list[int]) -> tuple[list[int], list[int]]:
    """Which reset envs take another's state so that equal seeds give equal initial states:
    ``(dst, src)``, each later env of a seed's group copying the group's first env. Envs not in
    ``idx`` (still running) never appear."""
    first: dict[int, int] = {}
    dst, src = [], []
    for i, s in zip(idx, seeds):
        j = first.setdefault(s, i)
        if j != i:
            dst.append(i)
            src.append(j)
    return dst, src


class ManiSkillVecEnv(VecEnv):
    """N envs of one ManiSkill batched env in this process (see module docstring)."""

    def __init__(self, cfg: EnvConfig, sim_backend: str = "physx_cpu", num_envs: int | None = None,
                 render_backend: str | None = None):
        import gymnasium as gym

        self.cfg = cfg
        self.task, self.split = cfg.task, cfg.split
        self._spec, self._split = get_task(cfg.task), get_split(cfg.split)
        self.num_envs = num_envs or cfg.num_envs
        self.resets_each_env_alone = cfg.reset_each_env or self.num_envs == 1
        self.max_episode_steps = cfg.max_episode_steps
        env_id = variant_env_id(cfg.task, self._split.variant)
        self._rgb = cfg.obs_mode == "rgb"
        if self._rgb and render_backend == "sapien_cpu":
            keep_cpu_renderer()
        self._privileged = cfg.privileged_state or not self._rgb
        self._env = gym.make(
            env_id, num_envs=self.num_envs, obs_mode="rgb" if self._rgb else "state_dict",
            control_mode=cfg.control_mode,
            reward_mode=cfg.reward_mode, sim_backend=sim_backend,
            **({"render_backend": render_backend} if render_backend else {}),
            sensor_configs={"width": cfg.image_size, "height": cfg.image_size},
            max_episode_steps=cfg.max_episode_steps)
        self.u = self._env.unwrapped
        self.action_dim = int(self.u.single_action_space.shape[0])
        self.state_dim = int(self._state(self.u.get_obs(unflattened=True)).shape[1])
        self._seeds = SeedStream(cfg.seed)
        self._instructions: list[str] = [""] * self.num_envs
        self._return = torch.zeros(self.num_envs)
        self._last: Obs | None = None
        self._experts: list | None = None

    # ------------------------------------------------------------------ observation
    def _state(self, raw: dict) -> torch.Tensor:
        """qpos + the task's non-privileged ``extra`` observations, flattened (see module doc)."""
        n = raw["agent"]["qpos"].shape[0]
        parts = [raw["agent"]["qpos"]] + [v.reshape(n, -1) for v in raw["extra"].values()]
        return torch.cat([p.float() for p in parts], -1).cpu()

    def _privileged_state(self) -> torch.Tensor:
        """Full simulator state + elapsed fraction (+ colour target): the critic's input."""
        parts = [self.u.get_state().float(),
                 (self.u.elapsed_steps.float() / self.max_episode_steps).reshape(-1, 1)]
        if self._spec.target_colors:
            parts.append(self.u.target.float().reshape(-1, 1))
        return torch.cat([p.to(parts[0].device) for p in parts], -1).cpu()

    def layout_positions(self) -> torch.Tensor:
        """float32 ``[N, 3 * L]``: the xyz of the task's layout actors (``TaskSpec.layout_attrs``,
        object first) as they are now: the target of grounding pre-training
        (:mod:`vlarl.methods.grounding`). Never part of the policy's observation."""
        return torch.cat([getattr(self.u, a).pose.p.float() for a in self._spec.layout_attrs],
                         -1).cpu()

    def _obs(self, raw: dict) -> Obs:
        if self._rgb:
            images = raw["sensor_data"][CAMERA]["rgb"].unsqueeze(1).cpu()
        else:
            size = self.cfg.image_size
            images = torch.zeros((self.num_envs, 0, size, size, 3), dtype=torch.uint8)
        priv = self._privileged_state() if self._privileged else None
        return Obs(images, self._state(raw), list(self._instructions), priv)

    def _render(self, info: dict) -> Obs:
        """The only place a step renders: ``get_obs`` updates the render scene and captures."""
        return self._obs(self.u.get_obs(info, unflattened=True))

    # ------------------------------------------------------------------ reset
    def _reset_envs(self, seeds: list[int], idx: list[int]) -> Obs:
        if self.cfg.reset_each_env and self.num_envs > 1:
            first: dict[int, int] = {}
            for i, s in zip(idx, seeds):  # each distinct seed alone; equal seeds copied below
                if first.setdefault(s, i) == i:
                    env_idx = torch.tensor([i], device=self.u.device)
                    raw, _ = self.u.reset(seed=[s], options={"env_idx": env_idx})
        elif len(idx) == self.num_envs:
            raw, _ = self.u.reset(seed=seeds)
        else:
            env_idx = torch.tensor(idx, device=self.u.device)
            raw, _ = self.u.reset(seed=seeds, options={"env_idx": env_idx})
        if self.num_envs > 1 and len(set(seeds)) < len(seeds):
            raw = self._equalize_groups(seeds, idx)
        for i, s in zip(idx, seeds):
            # Colour-target tasks: the reset picked the target; the words must name it.
            color = self.u.target_color(i) if self._spec.target_colors else self._split.color
            self._instructions[i] = instruction(self.task, self._split.pool, s, color)
            self._return[i] = 0.0
            if self._experts is not None:
                self._experts[i].reset()
        self._last = self._obs(raw)
        return self._last

    def _equalize_groups(self, seeds: list[int], idx: list[int]) -> dict:
        """Batched (GPU) resets draw one torch stream for the whole batch, so envs with equal
        seeds would differ; copy the simulator state of each group's first env to the rest."""
        dst, src = copy_rows(seeds, idx)
        if dst:  # only the copied rows: running episodes elsewhere are not touched
            state = self.u.get_state()
            rows = torch.tensor(dst, device=state.device)
            self.u.set_state(state[torch.tensor(src, device=state.device)], env_idx=rows)
            scene = self.u.scene  # controllers reset the rows of the scene's reset mask
            prev = scene._reset_mask.clone()
            scene._reset_mask[:] = False
            scene._reset_mask[rows] = True
            try:
                self.u.agent.controller.reset()  # targets follow the copied joint positions
            finally:
                scene._reset_mask = prev
        return self.u.get_obs(self.u.get_info(), unflattened=True)

    def reset(self, seeds: list[int] | None = None) -> Obs:
        seeds = check_seeds(seeds, self.num_envs) or self._seeds.take(self.num_envs)
        return self._reset_envs(seeds, list(range(self.num_envs)))

    # ------------------------------------------------------------------ step
    def step_chunk(self, actions: torch.Tensor, reset_seeds: list[int] | None = None) -> ChunkStep:
        if self._last is None:
            raise RuntimeError("call reset(seeds) before step_chunk")
        n, dev = self.num_envs, self.u.device
        actions = check_actions(actions, n, self.action_dim).to(dev)
        reset_seeds = check_seeds(reset_seeds, n, "reset_seeds")
        k = actions.shape[1]
        rewards = torch.zeros(n, k, device=dev)
        ended = torch.zeros(n, dtype=torch.bool, device=dev)
        terminated, truncated = ended.clone(), ended.clone()
        success, success_once = ended.clone(), ended.clone()
        steps = torch.zeros(n, dtype=torch.long, device=dev)
        final: Obs | None = None
        obs: Obs | None = None
        for j in range(k):
            active = ~ended
            act = torch.where(active[:, None], actions[:, j], torch.zeros_like(actions[:, j]))
            with sim_noise_off():
                act = self.u._step_action(act)
            self.u._elapsed_steps += 1
            info = self.u.get_info()
            r = self.u.get_reward(obs=None, action=act, info=info).float()
            succ = info.get("success", torch.zeros_like(ended)).bool()
            fail = info.get("fail", torch.zeros_like(ended)).bool()
            rewards[:, j] = torch.where(active, r, 0.0)
            steps += active.long()
            success = torch.where(active, succ, success)
            success_once |= active & succ
            term = active & (fail | (succ & self.cfg.terminate_on_success))
            trunc = active & ~term & (self.u.elapsed_steps >= self.max_episode_steps)
            terminated |= term
            truncated |= trunc
            new_end = term | trunc
            ended |= new_end
            last = j == k - 1 or bool(ended.all())
            obs = None
            if last or new_end.any() or self.cfg.render_every_step:
                obs = self._render(info)
                if new_end.any():
                    final = _merge(final, obs, new_end.cpu())
            if last:
                break
        assert obs is not None
        self._return += rewards.sum(1).cpu()
        out_info = {"elapsed_steps": self.u.elapsed_steps.long().cpu().clone(),
                    "episode_return": self._return.clone()}
        self._last = obs
        done_idx = ended.nonzero().flatten().tolist()
        if done_idx:
            seeds = reset_seeds or self._seeds.take(n)
            obs = self._reset_envs([seeds[i] for i in done_idx], done_idx)
        final_obs = _merge(final, obs, ~ended.cpu()) if final is not None else obs
        return ChunkStep(obs=obs, rewards=rewards.cpu(), terminated=terminated.cpu(),
                         truncated=truncated.cpu(), success=success.cpu(),
                         success_once=success_once.cpu(), steps=steps.cpu(),
                         final_obs=final_obs, info=out_info)

    # ------------------------------------------------------------------ extras
    def expert_actions(self) -> torch.Tensor:
        """The scripted expert's action from the privileged simulator state (single env)."""
        if self.num_envs != 1:
            raise ValueError(f"expert_actions needs num_envs=1 per simulator (got {self.num_envs}); "
                             "use backend='cpu' (one worker per env)")
        if self._experts is None:
            from vlarl.envs.experts import get_expert

            self._experts = [get_expert(self.task)]
        act = np.asarray(self._experts[0].act(self.u), dtype=np.float32)  # pd_ee_delta_pose, 7-D
        if self.action_dim == 4:  # pd_ee_delta_pos: translation + gripper, orientation held
            act = act[[0, 1, 2, 6]]
        elif self.action_dim != act.shape[0]:
            raise ValueError(f"the scripted experts emit pd_ee_delta_pose (or pd_ee_delta_pos) "
                             f"actions; control_mode={self.cfg.control_mode!r} has "
                             f"{self.action_dim}-D actions")
        return torch.as_tensor(act).reshape(1, self.action_dim)

    def render_frames(self) -> torch.Tensor:
        """Frames of the current state: the camera image of the last observation (every
        reset and chunk renders the current state, so nothing has to be rendered again)."""
        if self._last is None:
            raise RuntimeError("call reset(seeds) before render_frames")
        if not self._rgb:
            raise RuntimeError("env.obs_mode=state has no camera: nothing to render")
        return self._last.images[:, 0]

    def close(self) -> None:
        self._env.close()


def _merge(base: Obs | None, new: Obs, rows: torch.Tensor) -> Obs:
    """``base`` with the ``rows`` (bool [N]) replaced by ``new``'s (copies ``new`` if no base)."""
    def clone(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clone()

    if base is None:
        return Obs(new.images.clone(), new.state.clone(), list(new.instructions),
                   clone(new.privileged))
    images, state, priv = base.images.clone(), base.state.clone(), clone(base.privileged)
    images[rows], state[rows] = new.images[rows], new.state[rows]
    if priv is not None and new.privileged is not None:
        priv[rows] = new.privileged[rows]
    instr = [new.instructions[i] if rows[i] else base.instructions[i] for i in range(len(rows))]
    return Obs(images, state, instr, priv)
