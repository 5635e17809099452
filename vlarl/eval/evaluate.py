"""Seeded evaluation of checkpoints: per-episode records, Wilson CIs, paired comparisons.

Every checkpoint is run on the SAME seeds (``cfg.eval.seed .. + num_episodes``) of every
split, so two checkpoints can be compared seed by seed (``vlarl.eval.stats.paired_comparison``).
Episode -> seed assignment does not depend on timing: env i starts with ``seeds[i]``; an
env that finishes is auto-reset (``step_chunk(reset_seeds=...)``) with the next
unassigned seed; once seeds run out, finishing envs go idle and their results are dropped.
With a deterministic policy on CPU, two runs give identical per-episode vectors.

``run_eval`` writes ``report.json``, ``report.md``, ``success.png``, ``manifest.json``
and optional ``videos/*.mp4`` (see :func:`run_eval`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vlarl.envs.base import VecEnv
from vlarl.policies.base import Policy


class Episodes(list):
    """``list[dict]`` of per-episode records (sorted by seed index) plus run timings.

    A list subclass so callers that only want the records use it as a plain list.
    """

    actions_per_s: float = 0.0
    """Control actions produced per second of ``policy.act`` time (all N envs' rows)."""
    episodes_per_min: float = 0.0
    """Finished, kept episodes per minute of wall time (env + policy)."""
    wall_s: float = 0.0
    frames: dict[int, list[np.ndarray]]
    """seed index -> camera-0 frames at each decision (only the first ``video_episodes``)."""


def evaluate_policy(policy: Policy, env: VecEnv, seeds: list[int], deterministic: bool = True,
                    video_episodes: int = 0) -> Episodes:
    """Run one episode per seed; return records ``seed_index, seed, success_once,
    success_at_end, return, length, instruction`` sorted by seed index.

    Seeds are handed out from a queue of pending seed indices: before each chunk, the
    r-th still-running env (in env order) is offered the r-th pending seed as its
    ``reset_seeds`` entry; only envs that actually finish consume their offer. Which envs
    finish is a function of the (deterministic) env and policy, so the schedule, and
    every episode's seed, is reproducible; every seed runs exactly once.
    """
    if len(seeds) == 0:
        raise ValueError("seeds=[]: evaluation needs at least one seed (eval.num_episodes > 0)")
    n_env = env.num_envs
    slot: list[int] = [i if i < len(seeds) else -1 for i in range(n_env)]  # -1: idle
    pending = list(range(min(n_env, len(seeds)), len(seeds)))
    # Idle envs still step with the others (one batched call); give them a valid seed.
    obs = env.reset([seeds[s] if s >= 0 else seeds[0] for s in slot])
    ret = np.zeros(n_env)
    length = np.zeros(n_env, dtype=np.int64)
    once = np.zeros(n_env, dtype=bool)
    instr = list(obs.instructions)
    records: dict[int, dict] = {}
    frames: dict[int, list[np.ndarray]] = {}
    # Seeded even when deterministic: a flow policy's ODE still starts from drawn noise, and
    # an unseeded draw made a pi0 checkpoint score 20/100 and 16/100 on the same seeds.
    generator = torch.Generator().manual_seed(int(seeds[0]))
    act_s, n_actions, t_start = 0.0, 0, time.perf_counter()
    policy.eval()
    while any(s >= 0 for s in slot):
        for i, s in enumerate(slot):
            if 0 <= s < video_episodes:
                frames.setdefault(s, []).append(obs.images[i, 0].numpy().copy())
        t0 = time.perf_counter()
        with torch.no_grad():
            out = policy.act(obs, deterministic=deterministic, generator=generator)
        act_s += time.perf_counter() - t0
        n_actions += int(out.actions.shape[0] * out.actions.shape[1])
        running = [i for i in range(n_env) if slot[i] >= 0]
        offer = {i: pending[r] for r, i in enumerate(running) if r < len(pending)}
        reset_seeds = [seeds[offer[i]] if i in offer else seeds[0] for i in range(n_env)]
        step = env.step_chunk(out.actions, reset_seeds=reset_seeds)
        ret += step.rewards.sum(dim=1).double().numpy()
        length += step.steps.numpy()
        once |= step.success_once.numpy()
        done = step.done.numpy()
        for i in np.flatnonzero(done):
            s = slot[i]
            if s >= 0:
                records[s] = {"seed_index": s, "seed": int(seeds[s]),
                              "success_once": bool(once[i]),
                              "success_at_end": bool(step.success[i]),
                              "return": float(ret[i]), "length": int(length[i]),
                              "instruction": instr[i]}
                if s < video_episodes and step.final_obs is not None:
                    frames[s].append(step.final_obs.images[i, 0].numpy().copy())
            if i in offer:
                slot[i] = offer[i]
                pending.remove(offer[i])
            else:
                slot[i] = -1
            ret[i], length[i], once[i] = 0.0, 0, False
            instr[i] = step.obs.instructions[i]
        obs = step.obs
    wall = time.perf_counter() - t_start
    result = Episodes(records[s] for s in sorted(records))
    result.actions_per_s = n_actions / act_s if act_s > 0 else float("inf")
    result.episodes_per_min = 60.0 * len(result) / wall if wall > 0 else float("inf")
    result.wall_s = wall
    result.frames = frames
    return result


def aggregate(episodes: list[dict]) -> dict:
    """Success rate (``success_once``) with its Wilson 95 % CI, and mean return / length."""
    from vlarl.eval.stats import success_summary

    s = success_summary([e["success_once"] for e in episodes])
    return {"n": s["n"], "successes": s["successes"], "success_rate": s["rate"],
            "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "success_at_end_rate": float(np.mean([e["success_at_end"] for e in episodes])),
            "mean_return": float(np.mean([e["return"] for e in episodes])),
            "mean_length": float(np.mean([e["length"] for e in episodes]))}


def check_compatible(policy: Policy, env: VecEnv, checkpoint: str) -> None:
    """Raise if the checkpoint's action head cannot drive ``env`` (before any episode runs)."""
    a, k = getattr(policy, "action_dim", None), getattr(policy, "chunk_size", None)
    if a != env.action_dim:
        raise ValueError(f"checkpoint {checkpoint}: action_dim={a} but env {env.task!r} "
                         f"(control mode of env.control_mode) expects action_dim={env.action_dim}")
    cfg = getattr(policy, "cfg", None)
    if cfg is not None:
        from vlarl.policies.common import check_state_size

        check_state_size(cfg, env.state_dim, f"checkpoint {checkpoint}: env {env.task!r}")
    if not isinstance(k, int) or not 1 <= k <= env.max_episode_steps:
        raise ValueError(f"checkpoint {checkpoint}: chunk_size={k} must be an int in "
                         f"[1, env.max_episode_steps={env.max_episode_steps}]")


def validate_inputs(checkpoints: list[str], cfg) -> None:
    """Everything checkable before a policy is loaded or an env process starts."""
    from vlarl.envs import SPLITS, resolve_backend, validate_env_config

    if not checkpoints:
        raise ValueError("checkpoints=[]: pass at least one checkpoint directory")
    for c in checkpoints:
        if not Path(c).exists():
            raise FileNotFoundError(f"checkpoint path {c!r} does not exist")
    if not cfg.eval.splits:
        raise ValueError(f"eval.splits={cfg.eval.splits!r}: choose one or more of {SPLITS.names()}")
    for s in cfg.eval.splits:
        if s not in SPLITS:
            raise ValueError(f"eval.splits contains unknown split {s!r}; allowed: {SPLITS.names()}")
    for s in cfg.eval.splits:
        env_cfg = dataclasses.replace(cfg.env, split=s)
        validate_env_config(env_cfg)
        resolve_backend(env_cfg)
    if cfg.eval.num_episodes <= 0:
        raise ValueError(f"eval.num_episodes={cfg.eval.num_episodes} must be > 0")
    if cfg.eval.video_episodes < 0:
        raise ValueError(f"eval.video_episodes={cfg.eval.video_episodes} must be >= 0")


def _labels(checkpoints: list[str]) -> list[str]:
    """Short unique names: ``parent/name`` of each path, indexed when paths repeat."""
    short = ["/".join(Path(c).resolve().parts[-2:]) for c in checkpoints]
    return [f"{i}:{s}" if short.count(s) > 1 else s for i, s in enumerate(short)]


def needs_privileged_env(policy, env_cfg) -> bool:
    """Whether ``policy`` must be evaluated on an env that returns ``Obs.privileged``: a
    state-based expert (RLDG) reads it to act; a privileged critic does not need it here."""
    return env_cfg.privileged_state or bool(getattr(policy, "needs_privileged_state", False))


def _apply_sampler_overrides(cfg, policy: Policy, ck: str) -> None:
    """``eval.point_estimate`` / ``eval.temperature`` replace a token VLA checkpoint's own
    (eval loads each checkpoint with its saved policy config). Without them, say on stderr
    when the run config's ``policy.<key>`` differs from the checkpoint's for the decoding in
    use: a ``--policy.temperature`` meant for the evaluation would otherwise pass unnoticed."""
    key = "point_estimate" if cfg.eval.deterministic else "temperature"
    for name in ("point_estimate", "temperature"):
        if not hasattr(policy.cfg, name):  # not a token VLA
            continue
        override, used = getattr(cfg.eval, name), getattr(policy.cfg, name)
        want = getattr(cfg.policy, name, None)
        if override is not None:
            policy.cfg = dataclasses.replace(policy.cfg, **{name: override})
        elif name == key and want is not None and want != used:
            print(f"vlarl eval: {ck} samples with its saved policy.{name}={used!r}, not the run "
                  f"config's {want!r} (set --eval.{name} to override it)", file=sys.stderr)


def run_eval(checkpoints: list[str], cfg, out_dir: str | Path | None = None,
             envs: dict | None = None) -> dict:
    """Evaluate every checkpoint on every split of ``cfg.eval.splits`` and write the report.

    Files in ``out_dir`` (default ``<first checkpoint>/eval``): ``report.json`` (version,
    git commit, checkpoint hashes, config, seeds, per-episode results, aggregates with
    Wilson CIs, paired comparison vs the first checkpoint), ``report.md``, ``success.png``,
    ``manifest.json`` (provenance of every number) and ``videos/*.mp4``. Returns the
    report dict.

    ``envs``: a dict the caller owns and closes, ``(split, privileged) -> VecEnv``: the envs
    made here are added to it and left open, and a later ``run_eval`` with the same dict and
    env config reuses them instead of starting new worker processes (every episode starts
    from its own seeded reset, so reuse does not change results). None: made and closed here.
    One env set per ``privileged`` value is held at a time: the next split's envs are rebuilt
    in the same worker processes (``vlarl.envs.remake_env``), so an evaluation of S splits
    starts its workers once and holds 1/S of the memory it would with every split's set open.
    """

    checkpoints = [str(c) for c in checkpoints]
    validate_inputs(checkpoints, cfg)
    out = Path(out_dir) if out_dir is not None else Path(checkpoints[0]) / "eval"
    from vlarl.runtime import runlock

    with runlock.holding(out, "eval --out"):  # one writer per report directory
        if envs is not None:
            return _run_eval(checkpoints, cfg, out, envs)
        envs = {}
        try:
            return _run_eval(checkpoints, cfg, out, envs)
        finally:
            for env in envs.values():
                env.close()


def _run_eval(checkpoints: list[str], cfg, out: Path, envs: dict) -> dict:
    from vlarl.config import to_dict
    from vlarl.envs import remake_env
    from vlarl.eval.report import checkpoint_sha256, vlarl_version
    from vlarl.eval.stats import paired_comparison
    from vlarl.policies import load_policy
    from vlarl.runtime.system import git_commit

    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.num_episodes))
    labels = _labels(checkpoints)
    hashes = [checkpoint_sha256(c, exclude=out) for c in checkpoints]
    results: list[dict] = []
    for ck, label in zip(checkpoints, labels):
        policy = load_policy(ck)
        _apply_sampler_overrides(cfg, policy, ck)
        priv = needs_privileged_env(policy, cfg.env)
        for split in cfg.eval.splits:
            if (split, priv) not in envs:  # one env set at a time: rebuilt in its workers
                held = next((k for k in envs if k[1] == priv), None)
                envs[split, priv] = remake_env(envs.pop(held) if held else None,
                                               dataclasses.replace(  # seed s: one state
                    cfg.env, split=split, privileged_state=priv, reset_each_env=True))
            env = envs[split, priv]
            check_compatible(policy, env, ck)
            eps = evaluate_policy(policy, env, seeds, cfg.eval.deterministic,
                                  cfg.eval.video_episodes)
            results.append({"checkpoint": ck, "label": label, "split": split,
                            "task": env.task, **aggregate(eps),
                            "actions_per_s": eps.actions_per_s,
                            "episodes_per_min": eps.episodes_per_min,
                            "episodes": list(eps), "_frames": eps.frames})
        del policy
    comparisons = []
    for r in results:
        base = next(b for b in results if b["split"] == r["split"])
        if r is not base:
            cmp = paired_comparison([e["success_once"] for e in base["episodes"]],
                                    [e["success_once"] for e in r["episodes"]])
            comparisons.append({"split": r["split"], "baseline": base["checkpoint"],
                                "candidate": r["checkpoint"], **cmp.to_dict()})
    report = {"vlarl_version": vlarl_version(), "git_commit": git_commit(),
              "created_unix": time.time(),
              "checkpoints": [{"path": c, "label": lab, **h}
                              for c, lab, h in zip(checkpoints, labels, hashes)],
              "config": to_dict(cfg), "seeds": seeds,
              "success_metric": "success_once (task success reached at any step)",
              "ci_method": "Wilson score 95%; paired: Newcombe square-and-add + exact McNemar",
              "results": [{k: v for k, v in r.items() if k != "_frames"} for r in results],
              "comparisons": comparisons}
    _write_outputs(report, results, out, cfg, seeds, hashes)
    return report


def _write_outputs(report: dict, results: list[dict], out: Path, cfg, seeds: list[int],
                   hashes: list[dict]) -> None:
    import json

    from vlarl.eval.report import annotate_frame, plot_success, results_table, write_video

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = ["# vlarl evaluation", "",
          (f"vlarl {report['vlarl_version']}, commit {report['git_commit']}; task "
           f"{cfg.env.task}; seeds {seeds[0]}..{seeds[-1]} (n={len(seeds)}); success = "
           "success_once, 95% Wilson CI."), "", results_table(results)]
    if report["comparisons"]:
        md += ["## Paired comparison vs the first checkpoint (same seeds)", "",
               "| candidate | split | difference (pp) [95% CI] | McNemar exact p |",
               "|---|---|---|---|"]
        for c in report["comparisons"]:
            md.append(f"| {c['candidate']} | {c['split']} | {100 * c['difference']:+.1f} "
                      f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | "
                      f"{c['p_value']:.3g} |")
    (out / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[4:]) + f"\n\nreport: {out / 'report.md'} (per-episode records and "
          f"provenance: {out / 'report.json'})", flush=True)
    plot_success(results, out / "success.png", title=f"{cfg.env.task}: success rate")
    sha = {h["path"]: h["sha256"] for h in hashes}
    numbers = []
    for r in results:
        for metric in ("success_rate", "ci_low", "ci_high", "success_at_end_rate",
                       "mean_return", "mean_length", "actions_per_s", "episodes_per_min"):
            numbers.append({"metric": metric, "value": r[metric], "checkpoint": r["checkpoint"],
                            "checkpoint_sha256": sha[r["checkpoint"]], "task": r["task"],
                            "split": r["split"], "n": r["n"], "seeds": seeds,
                            "vlarl_version": report["vlarl_version"]})
    (out / "manifest.json").write_text(json.dumps(
        {"vlarl_version": report["vlarl_version"], "git_commit": report["git_commit"],
         "numbers": numbers}, indent=1))
    for r in results:
        for s, frames in sorted(r["_frames"].items()):
            ep = r["episodes"][s]
            status = "success" if ep["success_once"] else "failure"
            color = (80, 255, 80) if ep["success_once"] else (255, 90, 90)
            shown = [annotate_frame(f, ep["instruction"],
                                    f"decision {t}/{len(frames) - 1}  {status}"
                                    if t == len(frames) - 1 else f"decision {t}",
                                    bottom_color=color if t == len(frames) - 1 else (255,) * 3)
                     for t, f in enumerate(frames)]
            name = f"{r['label'].replace('/', '_').replace(':', '_')}_{r['split']}_seed{ep['seed']}"
            write_video(shown, out / "videos" / f"{name}.mp4")


def evaluate_on_ranks(policy: Policy, cfg, acc, make_env, env: VecEnv | None = None) -> dict:
    """Success (and mean return) of ``policy`` on ``cfg.train.eval_episodes`` fixed seeds (the
    same seeds at every evaluation during training; ``acc``: the run's ``Accelerator``), split
    over the ranks (rank r takes seeds r, r + world, ...) and summed: no rank idles in a
    collective while another evaluates (a long eval on rank 0 alone could outlast the NCCL
    timeout). ``env`` (the run's idle training env) is evaluated on, and left open, when it is
    of the train split and its resets are per env (``VecEnv.resets_each_env_alone``: CPU
    worker processes, or one env), so no second set of env workers starts; otherwise
    ``make_env`` (an ``EnvConfig -> VecEnv`` factory) builds one for the evaluation and closes
    it."""
    from vlarl.eval.stats import wilson_interval

    t0 = time.perf_counter()
    seeds = [cfg.eval.seed + i for i in range(cfg.train.eval_episodes)]
    seeds = seeds[acc.process_index::acc.num_processes]
    k, ret = 0, 0.0
    if seeds:
        own = env is None or env.split != "train" or not getattr(env, "resets_each_env_alone",
                                                                  False)
        if own:
            env = make_env(dataclasses.replace(cfg.env, split="train", reset_each_env=True))
        try:
            records = evaluate_policy(policy, env, seeds, deterministic=cfg.eval.deterministic)
        finally:
            if own:
                env.close()
        k = sum(int(r["success_once"]) for r in records)
        ret = sum(r["return"] for r in records)
    total = acc.reduce(torch.tensor([k, len(seeds), ret], dtype=torch.float64, device=acc.device),
                       reduction="sum").tolist()
    k, n = int(total[0]), int(total[1])
    lo, hi = wilson_interval(k, n)
    return {"success_rate": k / n, "success_ci_low": lo, "success_ci_high": hi, "n": n,
            "episode_return": total[2] / n, "wall_s": time.perf_counter() - t0}
