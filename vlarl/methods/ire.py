"""iRe-VLA: alternate RL phases (backbone frozen, LoRA trained) with supervised phases on the
successful RL rollouts plus the demonstrations (Guo et al. 2025, arXiv:2501.16664).

Data flow of round r (``<ire.output_dir>/round_<r>/``)::

    start policy (round 0: policy.path; then round r-1's sft)
      -> rl/         vlarl.trainer.train, ire.rl_updates updates, fresh LoRA adapters, the env
                     wrapped in SuccessRecorder (vlarl.envs.recorder)
      -> successes/  the round's successful episodes, in the demonstrations' format
      -> sft/        rl/policy with its adapters merged (peft merge_and_unload), then every
                     weight fine-tuned by vlarl.methods.sft.fit_sft for ire.sft_steps steps on
                     demos + successes of rounds 0..r
    <ire.output_dir>/policy = the last round's sft;  summary.json = per-round accounting

Nothing of the RL or SFT loop is copied: the trainer and ``fit_sft`` are called as they are.
Env steps are the trainer's own ``train/env_steps`` (the counter a plain ``vlarl train`` run
logs), summed over rounds, so "at equal env steps" compares like with like; the recorder's
independent count of the same steps is logged next to it. Round r's RL uses train seed
``train.seed + r`` (the trainer's episode seeds restart with the update index each call, so
an unchanged seed would replay round 0's initial states). Single process only; no resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from vlarl.config import Config, ConfigError, save_config

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def round_dir(cfg: Config, r: int) -> Path:
    return Path(cfg.ire.output_dir).expanduser() / f"round_{r}"


def rl_config(cfg: Config, r: int, start: str | None) -> Config:
    """The trainer's config of round r: LoRA from ``start``, ``ire.rl_updates`` updates."""
    return dataclasses.replace(
        cfg, policy=dataclasses.replace(cfg.policy, path=start, use_lora=True),
        train=dataclasses.replace(cfg.train, output_dir=str(round_dir(cfg, r) / "rl"),
                                  # (>= 1: the control arm's config is only preflighted)
                                  num_updates=max(cfg.ire.rl_updates, 1), seed=cfg.train.seed + r,
                                  resume=False, overwrite=False))


def check_ire_config(cfg: Config) -> Path:
    """Every check before any model loads or env starts; returns the demonstrations dir.
    Clears ``ire.output_dir`` only with ``train.overwrite``."""
    from vlarl.data import DatasetError, dataset_path, read_info
    from vlarl.runtime.preflight import preflight
    from vlarl.runtime.rundir import prepare_run_dir
    from vlarl.runtime.runlock import launch_env

    cfg.resolve().validate()
    if not cfg.sft.full_finetune:
        raise ConfigError("sft.full_finetune=false is not allowed for vlarl ire: its SFT phase "
                          "merges the RL adapters and trains every weight (set it true)")
    from vlarl.algorithms import ALGORITHMS, check_config

    check_config(cfg)
    if ALGORITHMS.get(cfg.algo.name).needs_teacher:
        allowed = [n for n in ALGORITHMS.names() if not ALGORITHMS.get(n).needs_teacher]
        raise ConfigError(f"algo.name={cfg.algo.name!r} needs a teacher (vlarl distill); "
                          f"choose one of {allowed} for vlarl ire")
    if cfg.train.resume:
        raise ConfigError("train.resume is not supported by vlarl ire (rerun with "
                          "--train.overwrite true)")
    if getattr(cfg.env, "obs_mode", "rgb") != "rgb":
        raise ConfigError(f"env.obs_mode={cfg.env.obs_mode!r}: vlarl ire records camera images "
                          "for SFT; use env.obs_mode rgb")
    if launch_env("WORLD_SIZE", 1) > 1:
        raise ConfigError("vlarl ire runs in one process (WORLD_SIZE > 1 found)")
    demos = dataset_path(cfg)
    try:
        info = read_info(demos)
    except DatasetError as err:
        raise ConfigError(f"data.dataset_dir={cfg.data.dataset_dir!r}: {err}") from None
    for key, data_value, want in (
            ("policy.action_dim", info["action_dim"], cfg.policy.action_dim),
            ("env.control_mode", info.get("control_mode"), cfg.env.control_mode),
            ("env.image_size", info.get("image_size"), cfg.env.image_size)):
        if data_value != want:
            raise ConfigError(f"{key}={want!r} but the demonstrations at {demos} have "
                              f"{data_value!r}; they must match")
    root = Path(cfg.ire.output_dir).expanduser()
    if root.is_dir() and any(root.iterdir()) and not cfg.train.overwrite:
        raise ConfigError(f"ire.output_dir={cfg.ire.output_dir!r} is not empty; pass "
                          "--train.overwrite true to delete it (vlarl ire cannot resume)")
    if cfg.ire.rl_updates == 0 and not cfg.policy.path:
        raise ConfigError("ire.rl_updates=0 (SFT-only control) needs policy.path: the SFT "
                          "phases fine-tune that checkpoint")
    prepare_run_dir(root, resume=False, overwrite=cfg.train.overwrite)
    preflight(rl_config(cfg, 0, cfg.policy.path))  # env + policy source, round_0/rl dir
    return demos


def run_ire(cfg: Config) -> Path:
    """Run ``ire.rounds`` rounds of RL -> SFT; return ``<ire.output_dir>/policy``."""
    demos = check_ire_config(cfg)
    root = Path(cfg.ire.output_dir).expanduser()
    save_config(cfg, root / "config.yaml")
    datasets, rounds, start = [demos], [], cfg.policy.path
    t_start = time.perf_counter()
    for r in range(cfg.ire.rounds):
        t0 = time.perf_counter()
        rl = rl_phase(cfg, r, start) if cfg.ire.rl_updates else _no_rl(cfg, r, start)
        if rl["dataset"] is not None:
            datasets.append(Path(rl["dataset"]))
        t1 = time.perf_counter()
        sft = sft_phase(cfg, r, Path(rl["policy"]), datasets, round_dir(cfg, r) / "sft")
        start = str(round_dir(cfg, r) / "sft")
        rounds.append({"round": r, **rl, "sft": sft, "sft_policy": start,
                       "rl_wall_time_s": round(t1 - t0, 1),
                       "sft_wall_time_s": round(time.perf_counter() - t1, 1),
                       "wall_time_s": round(time.perf_counter() - t0, 1)})
        _write_summary(root, rounds, t_start, final=None)
        log.info("ire round %d: %d env steps, %d successes recorded, SFT loss %s", r,
                 rl["env_steps"], rl["successes_recorded"], sft.get("final_loss"))
    final = root / "policy"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(start, final)
    _write_summary(root, rounds, t_start, final=final)
    return final


def _no_rl(cfg: Config, r: int, start: str) -> dict:
    """The SFT-only control arm's round (``ire.rl_updates=0``): no env, nothing recorded; the
    SFT phase fine-tunes ``start`` on the demonstrations alone. Separates iRe-VLA's gain from
    that of its extra SFT steps on the same demos."""
    return {"start_policy": start, "policy": start, "rl_updates": 0,
            "train_seed": cfg.train.seed + r, "env_steps": 0, "rl_episodes": 0,
            "rl_successes": 0, "successes_recorded": 0, "recorder": None, "dataset": None}


def rl_phase(cfg: Config, r: int, start: str | None) -> dict:
    """Round r's RL through the trainer, the env wrapped in a recorder; the successful
    episodes are written to ``round_<r>/successes``. Returns the round's accounting."""
    from vlarl.algorithms import ALGORITHMS
    from vlarl.envs.recorder import SuccessRecorder, write_episodes
    from vlarl.trainer import build_env, train

    recorders: list[SuccessRecorder] = []
    # one episode per env per update (group baselines): only each env's first episode counts
    episodic = ALGORITHMS.get(cfg.algo.name).rollout_mode == "episodic"

    def make_env(env_cfg):
        recorders.append(SuccessRecorder(build_env(env_cfg), first_episode_only=episodic))
        return recorders[-1]

    rl_cfg = rl_config(cfg, r, start)
    run_dir = train(rl_cfg, make_env_fn=make_env)
    rec = recorders[-1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    episodes = sum(int(x.get("rollout/num_episodes", 0)) for x in rows)
    successes = sum(round(x["rollout/success_rate"] * x["rollout/num_episodes"]) for x in rows
                    if x.get("rollout/num_episodes"))
    out = write_episodes(rec.episodes, round_dir(cfg, r) / "successes", rl_cfg,
                         chunk_size=rec.chunk_size or cfg.policy.chunk_size,
                         fps=float(getattr(rec, "control_freq", 20.0) or 20.0))
    return {"start_policy": start, "policy": str(run_dir / "policy"), "rl_updates": len(rows),
            "train_seed": rl_cfg.train.seed,
            "env_steps": int(rows[-1]["train/env_steps"]) if rows else 0,
            "rl_episodes": episodes, "rl_successes": successes,
            "successes_recorded": len(rec.episodes), "recorder": rec.stats(),
            "dataset": None if out is None else str(out)}


def sft_phase(cfg: Config, r: int, rl_policy: Path, datasets: list[Path], out: Path) -> dict:
    """Merge ``rl_policy``'s adapters, fine-tune every weight on ``datasets`` for
    ``ire.sft_steps`` steps (0: merge only), save to ``out``; return the loss stats."""
    from vlarl.methods.sft import fit_sft, sft_dataset
    from vlarl.policies import load_policy

    policy = load_policy(rl_policy, use_lora=False)  # peft merge_and_unload, all trainable
    chunks, sizes = sft_dataset(datasets, policy.chunk_size, policy.action_dim)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    stats: dict = {"steps": 0}
    if cfg.ire.sft_steps:
        sft_cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, seed=cfg.sft.seed + r))
        stats = fit_sft(policy, chunks, sft_cfg, max_steps=cfg.ire.sft_steps,
                        metrics_path=out / "metrics.jsonl")
    policy.save_pretrained(out)
    return {**stats, "samples_demos": sizes[0], "samples_rl": sum(sizes[1:]),
            "datasets": [str(p) for p in datasets]}


def _write_summary(root: Path, rounds: list[dict], t_start: float, final: Path | None) -> None:
    steps = [x["env_steps"] for x in rounds]
    summary = {
        "method": "iRe-VLA", "complete": final is not None,
        "policy": None if final is None else str(final),
        "total_env_steps": sum(steps), "total_rl_updates": sum(x["rl_updates"] for x in rounds),
        "total_rl_episodes": sum(x["rl_episodes"] for x in rounds),
        "total_successes_recorded": sum(x["successes_recorded"] for x in rounds),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "rounds": [{**x, "env_steps_cumulative": sum(steps[:i + 1])}
                   for i, x in enumerate(rounds)],
    }
    tmp = root / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, root / SUMMARY_FILE)

