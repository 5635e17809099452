"""RLDG (Xu et al. 2024, "Robotic Generalist Policy Distillation via RL") from vlarl's pieces.

RLDG trains small, fast RL experts on privileged state, rolls them out *with* rendering to
make a dataset, and fine-tunes the generalist (the VLA) on it. Every stage is an existing
command (``scripts/rldg.sh`` runs them in order; ``docs/rldg.md`` has the figures)::

    vlarl train   --config recipes/cpu/rldg_expert.yaml        # mlp_student on Obs.privileged,
                                                               #   env.obs_mode state (no camera)
    vlarl collect --config recipes/cpu/quickstart.yaml --data.expert <run>/policy ...
    vlarl sft     --config recipes/cpu/quickstart.yaml --data.dataset_dir <dataset> ...
    vlarl eval    <scripted-demo SFT> <RLDG SFT> --config recipes/cpu/quickstart.yaml ...

This module adds what the commands do not: :func:`env_speed`, the side-by-side steps/s of
the state env and the rendering env (RLDG's "many steps/s" claim), and :func:`bc_warm_start`,
a behaviour-cloned privileged student from the scripted expert (the RL expert's optional
starting point when PPO from scratch does not learn within the CPU budget).

Usage: ``vlarl rldg speed [--section.field value ...]`` and
``vlarl rldg bc --config recipes/cpu/rldg_expert.yaml --out DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from vlarl.config import Config, EnvConfig, load_config
from vlarl.types import Obs


def env_speed(env_cfg: EnvConfig, steps: int = 400, repeats: int = 2) -> dict[str, float]:
    """Env control steps/s (all envs, random actions, chunks of one action) of ``env_cfg``
    with ``obs_mode`` ``state`` and ``rgb``, measured one after the other in this process by
    ``vlarl bench env``'s timing loop (median of ``repeats``; env start-up excluded)."""
    from vlarl.envs import make_env
    from vlarl.envs.bench import vlarl_steps_per_s

    out: dict[str, float] = {}
    for mode in ("state", "rgb"):
        cfg = dataclasses.replace(env_cfg, obs_mode=mode, privileged_state=mode == "state")
        with make_env(cfg) as env:
            out[f"{mode}_steps_per_s"] = round(vlarl_steps_per_s(env, 1, steps // env.num_envs, repeats), 1)
    out["ratio_state_over_rgb"] = round(out["state_steps_per_s"] / out["rgb_steps_per_s"], 2)
    return out


def scripted_state_data(cfg: Config) -> tuple[Obs, torch.Tensor, dict]:
    """The scripted expert on ``cfg.data.num_episodes`` seeds from ``cfg.data.seed`` (the
    quickstart demos' seeds) in the state env (no rendering): ``(Obs [M] with privileged
    state, action chunks [M, k, A], stats)`` of its successful episodes; chunks are padded
    past an episode's end like :class:`vlarl.data.ChunkDataset` (zero deltas, grasp held)."""
    from vlarl.envs import make_env

    k = cfg.policy.chunk_size
    env_cfg = dataclasses.replace(cfg.env, num_envs=1, num_workers=0, backend="inline", obs_mode="state",
                                  privileged_state=True)
    seeds = list(range(cfg.data.seed, cfg.data.seed + cfg.data.num_episodes))
    obs_rows: list[Obs] = []
    chunks: list[torch.Tensor] = []
    solved = 0
    with make_env(env_cfg) as env:
        for seed in seeds:
            obs, ep_obs, ep_act, success = env.reset([seed]), [], [], False
            while True:
                a = env.expert_actions().float()
                ep_obs.append(obs)
                ep_act.append(a[0])
                step = env.step_chunk(a[:, None, :], reset_seeds=[seed])
                success |= bool(step.success_once[0])
                obs = step.obs
                if bool(step.done[0]):
                    break
            if not success:
                continue
            solved += 1
            acts = torch.stack(ep_act)  # [T, A]
            pad = acts[-1:].repeat(k - 1, 1)
            pad[:, :-1] = 0.0  # "hold": zero deltas, keep the gripper command
            padded = torch.cat([acts, pad])
            chunks += [padded[t:t + k] for t in range(len(acts))]
            obs_rows += ep_obs
    if not obs_rows:
        raise ValueError(f"the scripted expert solved 0 of {len(seeds)} {cfg.env.task} episodes")
    stats = {"episodes": len(seeds), "solved": solved, "frames": len(chunks)}
    return Obs.cat(obs_rows), torch.stack(chunks), stats


def bc_warm_start(cfg: Config, out: Path) -> Path:
    """Behaviour-clone a fresh ``cfg.policy`` (a privileged mlp_student) on the scripted
    expert's state-env episodes (:func:`scripted_state_data`): the student's ``sft_loss``
    through the distillation's fitting loop (:func:`vlarl.methods.distill.fit_student`, i.e.
    ``fit_sft``: ``distill.epochs`` epochs of batch ``distill.batch_size`` at
    ``distill.learning_rate``). Saves it to ``out`` (``--policy.path`` of the RL run) with
    ``bc_report.json`` and the per-step ``bc_metrics.jsonl``."""
    from vlarl.methods.distill import DistillDataset, fit_student
    from vlarl.policies import build_policy

    t0 = time.perf_counter()
    obs, target, stats = scripted_state_data(cfg)
    torch.manual_seed(cfg.train.seed)
    policy = build_policy(dataclasses.replace(cfg.policy, path=None))
    data = DistillDataset()
    data.extend(obs, target)
    out.mkdir(parents=True, exist_ok=True)
    fit = fit_student(policy, data, cfg, out / "bc_metrics.jsonl")
    policy.eval().save_pretrained(out)
    report = {**stats, "epochs": cfg.distill.epochs, "steps": fit["steps"],
              "first_loss": fit["first_loss"], "final_loss": fit["final_loss"],
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    (out / "bc_report.json").write_text(json.dumps(report, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("speed", "bc"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    config = None
    if "--config" in rest:
        i = rest.index("--config")
        config, rest = rest[i + 1], rest[:i] + rest[i + 2:]
    out = None
    if "--out" in rest:
        i = rest.index("--out")
        out, rest = rest[i + 1], rest[:i] + rest[i + 2:]
    cfg: Config = load_config(config, rest)
    if what == "speed":
        print(json.dumps({"task": cfg.env.task, "num_envs": cfg.env.num_envs,
                          "backend": cfg.env.backend, "image_size": cfg.env.image_size,
                          **env_speed(cfg.env)}, indent=2))
    else:
        print(bc_warm_start(cfg, Path(out or "runs/rldg_bc")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
