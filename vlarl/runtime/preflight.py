"""Start-up checks of a training run: everything that needs no env, model or accelerator, so
bad input fails in about a second naming the key and the allowed values."""

from __future__ import annotations

import re
from pathlib import Path

from vlarl.config import Config, ConfigError, to_dict


def preflight(cfg: Config) -> None:
    """Every check that needs no env, model or accelerator, so bad input fails in about a
    second naming the key and the allowed values (before ManiSkill or transformers start).

    Runs on every rank; only rank 0 (``RANK`` unset or 0) locks, creates and clears the run
    dir. The lock comes right after the pure checks, before anything imports torch, so a
    second writer is refused within about a second of starting; if a later check fails, a
    directory this call created is removed again (bad input leaves nothing behind).
    """
    import shutil

    from vlarl.runtime import runlock

    cfg.validate(("env", "policy", "algo", "train", "eval"))  # what a training run reads
    _check_launcher()
    _check_not_alone()
    t = cfg.train
    run_dir = Path(t.output_dir).expanduser()
    rank0 = runlock.launch_env("RANK", 0) == 0
    existed = run_dir.exists()
    if rank0:
        try:
            runlock.hold(run_dir, "train.output_dir")
        except OSError as err:  # unwritable, or a path under a regular file
            raise ConfigError(f"output_dir {run_dir} is not writable ({err.strerror or err}); "
                              "choose another --train.output_dir") from None
    try:
        _check_env_config(cfg)
        from vlarl.algorithms import check_config as check_algorithm

        check_algorithm(cfg)
        _check_policy_source(cfg)
        from vlarl.checkpoint import CheckpointManager, check_resume_compat
        from vlarl.runtime.rundir import prepare_run_dir

        if rank0:
            prepare_run_dir(run_dir, resume=t.resume, overwrite=t.overwrite)
    except BaseException:
        if rank0:
            runlock.release(run_dir)
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if t.resume:
        # refuse a changed world size / num_envs now, not after minutes of env start-up
        path = CheckpointManager(run_dir / "checkpoints").latest_good_path()
        if path is not None:
            import json

            saved = json.loads((path / "meta.json").read_text())
            check_resume_compat(saved, run_meta(cfg, runlock.launch_env("WORLD_SIZE", 1)))


def _check_launcher() -> None:
    """FSDP and DeepSpeed launches are refused: the rollout calls the policy outside the
    wrapped forward (FSDP keeps its weights sharded there), the update steps, clips and skips
    the optimizer itself (DeepSpeed owns those), and vlarl's Policy wrapper names no layer
    class to shard. LoRA trains a few % of the weights, so a bf16 copy of the backbone per GPU
    fits: DDP + LoRA + ``policy.gradient_checkpointing`` is the multi-GPU path (docs/gpu.md)."""
    import os

    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise ConfigError(f"{name} launches are not supported ({var} is set by the accelerate "
                              "config); use DDP: accelerate launch --config_file "
                              "recipes/accelerate/multi_gpu_ddp.yaml with "
                              "--policy.gradient_checkpointing true (docs/gpu.md)")


def requested_processes(argv: list[str]) -> int | None:
    """How many processes an ``accelerate launch`` command line asks for: ``--num_processes N``
    (or ``=N``), else ``num_processes`` of its ``--config_file``; None if it says nothing."""
    import yaml

    for i, arg in enumerate(argv):
        if arg == "--num_processes" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--num_processes="):
            return int(arg.split("=", 1)[1])
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config_file=") else None)
        if path and Path(path).is_file():
            n = (yaml.safe_load(Path(path).read_text()) or {}).get("num_processes")
            return int(n) if n is not None else None
    return None


def _launcher_argv() -> list[str]:
    """The parent process's command line (Linux ``/proc``), or [] where unreadable."""
    import os

    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode(errors="replace").split("\0") if a]


def _check_not_alone() -> None:
    """``accelerate launch --cpu --num_processes 2`` (and a MULTI_CPU config without mpirun)
    starts ONE plain process with no distributed environment; training would silently run
    alone. Detected from the launcher's own command line and refused, with the fix."""
    import os

    if "MASTER_ADDR" not in os.environ or any(
            v in os.environ for v in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        return  # not launched by accelerate, or launched with a distributed environment
    argv = _launcher_argv()
    if not any(Path(a).name == "accelerate" or a.endswith("accelerate/commands/launch.py")
               or a == "launch" for a in argv[:3]):
        return
    n = requested_processes(argv)
    if n is not None and n > 1:
        raise ConfigError(
            f"accelerate launch asked for {n} processes but started this one alone (on CPU, "
            "accelerate needs mpirun for several processes); launch with --config_file "
            "recipes/accelerate/multi_cpu.yaml (Open MPI: scripts/setup.sh installs it; "
            "`vlarl doctor` checks it) or use torchrun --nproc_per_node N -m vlarl ...")


def _check_env_config(cfg: Config) -> None:
    from vlarl.envs import validate_env_config

    try:
        validate_env_config(cfg.env)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"env: {err.args[0] if err.args else err}") from None


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""``name`` or ``org/name`` (huggingface_hub's repo-id syntax)."""


def _check_policy_source(cfg: Config) -> None:
    """Unknown policy name, a missing local path, a malformed hub id, or a hub id that is
    not cached while ``HF_HUB_OFFLINE=1`` fail here instead of inside ``from_pretrained``."""
    import os

    from vlarl.policies import LAZY_POLICIES, POLICIES

    name = cfg.policy.name
    known = sorted(set(POLICIES.names()) | set(LAZY_POLICIES))
    if name not in known:
        raise ConfigError(f"policy.name={name!r} is not allowed; choose one of {known}")
    path = cfg.policy.path
    if path is None or Path(path).expanduser().exists():
        return
    if path.startswith(("/", ".", "~")) or path.count("/") > 1 or not HUB_ID.match(path):
        raise ConfigError(f"policy.path={path!r}: no such directory, and not a hub id "
                          "('org/name'); pass a save_pretrained directory or a hub id")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ConfigError(f"policy.path={path!r} is a hub id that is not in the local cache "
                              "and HF_HUB_OFFLINE=1 forbids downloading it; download it first "
                              "or pass a local directory")


def run_meta(cfg: Config, world_size: int) -> dict:
    """The settings :func:`vlarl.checkpoint.check_resume_compat` compares on resume."""
    from vlarl import __version__

    return {"world_size": world_size, "num_envs": cfg.env.num_envs,
            "gradient_accumulation_steps": cfg.algo.gradient_accumulation_steps,
            "rollout_steps": cfg.train.rollout_steps,
            "rollouts_per_update": cfg.train.rollouts_per_update, "config": to_dict(cfg),
            "vlarl_version": __version__}
