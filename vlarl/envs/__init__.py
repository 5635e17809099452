"""The env layer: batched, language-conditioned ManiSkill3 tasks behind ``VecEnv``.

``make_env(cfg)`` is the one entry point. It validates the config first (in
milliseconds, before any process or simulator starts), then picks a backend:

* ``gpu``    - one ``physx_cuda`` ManiSkill env batching all N envs (``maniskill.py``);
* ``inline`` - this process: on GPU that class; on CPU one ``physx_cpu`` simulator per env,
  stepped in turn (``block.py``): no parallelism, one renderer start for every env set;
* ``cpu``    - worker processes (forkserver on Linux), one per env or ``env.num_workers``
  blocks, each holding its envs as ``block.py`` builds them (``vector.py``);
* ``auto``   - ``gpu`` if CUDA is available, else ``cpu``.

Only this package imports ManiSkill / SAPIEN / gymnasium, and only lazily.
"""

from __future__ import annotations

from vlarl.config import EnvConfig
from vlarl.envs import suite  # noqa: F401  (registers the shipped tasks and their experts)
from vlarl.envs.base import VecEnv
from vlarl.envs.splits import SPLITS, SplitSpec, get_split
from vlarl.envs.tasks import COLOR_TASK_SPLITS, TASKS, TaskSpec, get_task, instruction

BACKENDS = ("auto", "cpu", "gpu", "inline")
REWARD_MODES = ("sparse", "dense", "normalized_dense")
CONTROL_MODES = ("pd_ee_delta_pose", "pd_ee_delta_pos", "pd_joint_delta_pos", "pd_joint_pos")

__all__ = ["BACKENDS", "SPLITS", "TASKS", "SplitSpec", "TaskSpec", "VecEnv", "check_env",
           "get_split", "get_task", "instruction", "make_env", "remake_env", "resolve_backend",
           "validate_env_config"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def validate_env_config(cfg: EnvConfig) -> None:
    """Raise ``ValueError`` naming the bad value and the allowed ones (no heavy imports)."""
    spec = get_task(cfg.task)
    get_split(cfg.split)
    if spec.target_colors and cfg.split not in COLOR_TASK_SPLITS:
        raise ValueError(f"env.split={cfg.split!r} is not allowed for the colour-target task "
                         f"{cfg.task!r}; choose one of {list(COLOR_TASK_SPLITS)}")
    for key, allowed in (("backend", BACKENDS), ("reward_mode", REWARD_MODES),
                         ("control_mode", CONTROL_MODES)):
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"env.{key}={getattr(cfg, key)!r} is not allowed; choose one of {list(allowed)}")
    for key in ("num_envs", "image_size", "max_episode_steps"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"env.{key}={v!r} must be an int > 0")
    w = cfg.num_workers
    if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= cfg.num_envs:
        raise ValueError(f"env.num_workers={w!r} must be 0 (one per env) or an int in "
                         f"[1, env.num_envs={cfg.num_envs}]")
    if w and cfg.backend == "inline":
        raise ValueError(f"env.num_workers={w} spreads the envs over worker processes, but "
                         "env.backend='inline' holds them in this process: set "
                         "env.num_workers=0 or env.backend=cpu")


def resolve_backend(cfg: EnvConfig) -> str:
    """The concrete backend (``gpu``/``cpu``/``inline``) ``make_env`` will build."""
    backend = cfg.backend
    if backend == "auto":
        return "gpu" if _cuda() else "cpu"
    if backend == "gpu" and not _cuda():
        raise ValueError("env.backend='gpu' needs CUDA, which torch does not see; "
                         "allowed here: ['auto', 'cpu', 'inline']")
    return backend


def make_env(cfg: EnvConfig) -> VecEnv:
    """Build the vector env that ``cfg`` describes (see the module docstring)."""
    validate_env_config(cfg)
    backend = resolve_backend(cfg)
    if backend == "cpu":
        from vlarl.envs.vector import CpuVecEnv

        return CpuVecEnv(cfg)
    if backend == "inline" and cfg.num_envs > 1 and not _cuda():
        from vlarl.envs.block import BlockVecEnv

        return BlockVecEnv(cfg)
    from vlarl.envs.maniskill import ManiSkillVecEnv

    if backend == "gpu" or _cuda():
        import torch

        sim, render = gpu_backends(torch.cuda.current_device())
    else:  # the CPU renderer, asked for by name: ManiSkill would otherwise try sapien_cuda
        sim, render = "physx_cpu", "sapien_cpu"  # and warn once per env that it fell back
    return ManiSkillVecEnv(cfg, sim_backend=sim, render_backend=render, num_envs=cfg.num_envs)


def remake_env(env: VecEnv | None, cfg: EnvConfig) -> VecEnv:
    """The env ``cfg`` describes, made from ``env`` where it can be: CPU worker processes of the
    same layout rebuild their envs (``CpuVecEnv.rebuild``: ~0.4 s per env instead of ~10 s of
    one core per new worker); anything else is closed and a new env made (in-process CPU
    envs start in ~0.4 s too, the renderer being kept). ``env`` is no longer usable after."""
    validate_env_config(cfg)
    if env is not None and resolve_backend(cfg) == "cpu":
        from vlarl.envs.vector import CpuVecEnv, worker_blocks

        if isinstance(env, CpuVecEnv) and \
                env.blocks == worker_blocks(cfg.num_envs, cfg.num_workers or cfg.num_envs):
            env.rebuild(cfg)
            return env
    if env is not None:
        env.close()
    return make_env(cfg)


def gpu_backends(device_index: int) -> tuple[str, str]:
    """ManiSkill's ``sim_backend`` / ``render_backend`` for one CUDA device. Without the index
    SAPIEN puts every process's simulator and renderer on GPU 0 (SAPIEN issues #139 / #247,
    ManiSkill PR #1160); under ``accelerate launch`` each rank's current device is its local
    GPU (accelerate sets it), so each rank simulates and renders on its own GPU."""
    return f"physx_cuda:{device_index}", f"sapien_cuda:{device_index}"


def check_env(env: VecEnv, seed: int = 0, chunk: int = 2):
    """Run a reset and a chunk of random actions; assert shapes, dtypes and semantics.
    Returns a summary dict (see ``vlarl.envs.check``)."""
    from vlarl.envs.check import check_env as _check

    return _check(env, seed=seed, chunk=chunk)
