"""`vlarl bench [env] [policy] [loop] [--json PATH]`: throughput and memory, side by side.

Absolute CPU timings are noisy on shared machines, so every part reports ratios of figures
measured in the same run (medians over repeats):

* env: raw ManiSkill vs vlarl's env layer, decision-step rendering at chunk 1/4/8, 1 vs 2
  CPU workers (``vlarl.envs.bench``);
* policy: actions/s of the tiny token VLA and tiny pi0 at batch 1 and 16, parameters,
  trainable fraction with LoRA;
* loop: the full PPO loop (rollout + update) with the tiny token VLA vs vlarl's env alone
  with random actions and the same chunking (loop/sim), and vs raw per-step rendering;
* pipeline: the quickstart's GRPO rollout with ``train.pipeline_groups`` 1, 2, 4 (the policy
  acting for one env group while the others step);
* workers: start-up of the CPU backend's env workers (first and second start in one process),
  the tree's memory and random-action steps/s; 8 envs in one worker each vs one worker per
  core (``env.num_workers``); and 2 workers ``forkserver`` (preloaded imports, the default on
  Linux) vs ``spawn``;
* contention: SFT steps and greedy act (an eval step) of the tiny token VLA in one process
  alone vs two processes at once, with torch's default threads, OpenMP's ``PASSIVE`` wait
  policy and one intra-op thread (:mod:`vlarl.tools.contention`; the settings
  :mod:`vlarl.runtime.threads` chooses from).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlarl.config import Config, load_config
from vlarl.runtime.system import peak_rss_mb


def _median_rate(fn, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_policy(quick: bool = False) -> dict:
    """Actions/s of the tiny VLAs (batch 1 and 16, chunk 4, a 16-value state) and their
    parameter counts; the token VLA with LoRA adapters (as RL runs it) and without
    (``token_vla_no_lora``: what the adapters' extra modules cost the autoregressive decoder),
    and with the state as text bins instead of the default embedding (``token_vla_text_state``:
    16 more prompt tokens)."""
    from vlarl.policies import build_policy, default_device
    from vlarl.types import Obs

    out: dict = {}
    repeats = 3 if quick else 5
    for row_name, name, tiny, decoding, lora, state in (
            ("token_vla", "token_vla", "paligemma", "autoregressive", True, "embedding"),
            ("token_vla_no_lora", "token_vla", "paligemma", "autoregressive", False, "embedding"),
            ("token_vla_text_state", "token_vla", "paligemma", "autoregressive", True, "text"),
            ("token_vla_parallel", "token_vla", "paligemma", "parallel", True, "embedding"),
            ("flow_vla", "flow_vla", "pi0", "autoregressive", True, "embedding")):
        token = {"policy.decoding": decoding, "policy.state_input": state} \
            if name == "token_vla" else {}
        cfg = load_config(None, {"policy.name": name, "policy.tiny": tiny, "policy.chunk_size": 4,
                                 "policy.value_head": True, "policy.use_lora": lora, **token})
        policy = build_policy(cfg.policy).eval().to(default_device())
        n_all = sum(p.numel() for p in policy.parameters())
        n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        row = {"params": n_all, "trainable": n_train, "trainable_fraction": n_train / n_all}
        for batch in (1, 16):
            obs = Obs(torch.randint(0, 255, (batch, 1, 64, 64, 3), dtype=torch.uint8),
                      torch.zeros(batch, 16), ["pick up the red cube"] * batch)
            with torch.no_grad():
                policy.act(obs)  # warm-up

            def step(policy=policy, obs=obs, batch=batch):
                with torch.no_grad():
                    policy.act(obs)
                return batch * policy.chunk_size

            row[f"actions_per_s_b{batch}"] = _median_rate(step, repeats)
        out[row_name] = row
        del policy
    out["token_vla_lora_slowdown_b1"] = (out["token_vla_no_lora"]["actions_per_s_b1"]
                                         / out["token_vla"]["actions_per_s_b1"])
    for b in (1, 16):
        out[f"token_vla_embedding_speedup_b{b}"] = (out["token_vla"][f"actions_per_s_b{b}"]
                                                    / out["token_vla_text_state"][f"actions_per_s_b{b}"])
    out["peak_rss_mb"] = peak_rss_mb(children=True)
    return out


def _loop_cfg(quick: bool, decoding: str = "autoregressive") -> Config:
    return load_config(None, [
        "--env.num_envs", "2", "--env.image_size", "64", "--env.max_episode_steps", "48",
        "--env.reward_mode", "normalized_dense", "--policy.chunk_size", "8",
        "--policy.decoding", decoding,
        "--train.rollout_steps", "6", "--algo.num_mini_batches", "2",
        "--algo.num_ppo_epochs", "1", "--train.output_dir", "/tmp/vlarl-bench-loop",
        "--train.overwrite", "true", "--train.save_every", "1000",
        "--train.num_updates", "2" if quick else "4"])


def bench_loop(quick: bool = False) -> dict:
    """The loop with both token decodings (autoregressive, parallel), same env, one run."""
    rows = {d: _bench_loop(quick, d) for d in ("autoregressive", "parallel")}
    out = dict(rows["autoregressive"])
    for k in ("loop_steps_per_s", "loop_over_sim", "update_fraction", "rollout_s"):
        out[f"parallel_{k}"] = rows["parallel"][k]
    out["parallel_env_only_steps_per_s"] = rows["parallel"]["env_only_steps_per_s"]
    out["peak_rss_mb"] = peak_rss_mb(children=True)
    return out


def bench_pipeline(quick: bool = False) -> dict:
    """The quickstart recipe's GRPO rollout (8 CPU worker envs, groups of G = 4, chunk 4, tiny
    token VLA) with ``train.pipeline_groups`` 1, 2 and 4, each with torch's default intra-op
    threads and with one (an overlapped policy shares the cores with the stepping workers),
    interleaved repeats: env steps/s of each, the ratio to 1 group at the default threads, and
    the fraction of the rollout's wall time spent in ``policy.act`` (the rest is the envs'
    stepping and the rollout's bookkeeping)."""
    from vlarl.envs import make_env
    from vlarl.policies import build_policy
    from vlarl.rollout import RolloutBuffer, collect

    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes" / "cpu" / "quickstart.yaml",
                      ["--env.backend", "cpu"])
    torch.manual_seed(0)
    policy = build_policy(cfg.policy).eval()
    env = make_env(cfg.env)
    default_threads = torch.get_num_threads()
    runs = [(g, t) for g in (1, 2, 4) for t in dict.fromkeys((default_threads, 1))]
    steps, secs, act_s = ({r: 0.0 for r in runs} for _ in range(3))
    act, current = policy.act, [runs[0]]

    def timed_act(*args, **kw):  # the policy's share of the rollout's wall time
        t0 = time.perf_counter()
        out = act(*args, **kw)
        act_s[current[0]] += time.perf_counter() - t0
        return out

    policy.act = timed_act
    try:
        for rep in range(2 if quick else 4):
            for g, threads in runs:
                current[0] = (g, threads)
                torch.set_num_threads(threads)
                buf = RolloutBuffer(2 if quick else cfg.train.rollout_steps, env.num_envs)
                t0 = time.perf_counter()
                stats = collect(env, policy, buf, base_seed=rep, update=0, mode="episodic",
                                group_size=cfg.algo.num_generations, pipeline_groups=g,
                                generator=torch.Generator().manual_seed(rep))
                secs[g, threads] += time.perf_counter() - t0
                steps[g, threads] += stats["env_steps"]
    finally:
        torch.set_num_threads(default_threads)
        env.close()
    out: dict = {"num_envs": cfg.env.num_envs, "chunk": cfg.policy.chunk_size,
                 "default_threads": default_threads}
    base = steps[runs[0]] / secs[runs[0]]
    for g, threads in runs:
        key = f"groups_{g}_threads_{threads}"
        out[f"{key}_steps_per_s"] = steps[g, threads] / secs[g, threads]
        out[f"{key}_over_1_group_default"] = out[f"{key}_steps_per_s"] / base
        out[f"{key}_act_fraction"] = act_s[g, threads] / secs[g, threads]
    out["peak_rss_mb"] = peak_rss_mb(children=True)
    return out


def _bench_loop(quick: bool, decoding: str) -> dict:
    """Full PPO loop env-steps/s vs env-only random-action stepping with the same chunking."""
    from vlarl.algorithms import UpdateContext
    from vlarl.rollout import collect
    from vlarl.trainer import setup

    cfg = _loop_cfg(quick, decoding)
    run = setup(cfg)
    env, k = run.env, cfg.policy.chunk_size
    try:
        # env alone, random actions, same chunk size and reset pattern as the rollout
        def env_only():
            env.reset(list(range(env.num_envs)))
            steps = 0
            for _ in range(cfg.train.rollout_steps):
                a = torch.rand(env.num_envs, k, env.action_dim) * 2 - 1
                steps += int(env.step_chunk(a).steps.sum())
            return steps

        env_only()  # warm-up
        sim = _median_rate(env_only, 2 if quick else 3)
        ctx = UpdateContext()
        phases = {"rollout_s": 0.0, "update_s": 0.0}

        def loop():
            steps = 0
            for u in range(cfg.train.num_updates):
                t0 = time.perf_counter()
                stats = collect(env, run.policy, run.buffer, base_seed=1, update=u,
                                mode="continuous")
                t1 = time.perf_counter()
                run.algo.process(run.buffer, run.policy)
                run.algo.update(run.policy, run.optimizer, run.buffer, ctx, u, run.generator)
                phases["rollout_s"] += t1 - t0
                phases["update_s"] += time.perf_counter() - t1
                steps += int(stats["env_steps"])
            return steps

        full = _median_rate(loop, 1)
    finally:
        env.close()
    total = phases["rollout_s"] + phases["update_s"]
    return {"chunk": k, "num_envs": cfg.env.num_envs, "image_size": cfg.env.image_size,
            "env_only_steps_per_s": sim, "loop_steps_per_s": full, "loop_over_sim": full / sim,
            "update_fraction": phases["update_s"] / total, "rollout_s": phases["rollout_s"],
            "peak_rss_mb": peak_rss_mb(children=True)}


WORKERS_CHILD = r"""
import dataclasses, json, sys, time, torch
from vlarl.config import load_config
from vlarl.envs.vector import CpuVecEnv
from vlarl.runtime.system import tree_peak_rss_mb
method, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = load_config("recipes/cpu/quickstart.yaml", [f"--env.num_envs={n}",
                                                   f"--env.num_workers={workers}"]).env
out = {}
for start in ("first", "second"):
    t0 = time.perf_counter()
    env = CpuVecEnv(cfg, start_method=method)
    env.reset(list(range(n)))
    out[f"{start}_start_s"] = time.perf_counter() - t0
    if start == "first":
        out["tree_pss_mb"] = tree_peak_rss_mb()["tree_pss_now"]
        gen, chunks = torch.Generator().manual_seed(0), 12
        t0 = time.perf_counter()
        for _ in range(chunks):
            env.step_chunk(torch.rand(n, 4, env.action_dim, generator=gen) * 2 - 1)
        out["steps_per_s"] = n * 4 * chunks / (time.perf_counter() - t0)
        t0 = time.perf_counter()  # an evaluation's next split, in the same workers
        env.rebuild(dataclasses.replace(cfg, split="unseen_color"))
        env.reset(list(range(n)))
        out["next_split_s"] = time.perf_counter() - t0
    env.close()
print(json.dumps(out), flush=True)
"""


def _workers_child(method: str, n: int, workers: int) -> dict:
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", WORKERS_CHILD, method, str(n), str(workers)],
                         cwd=root, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"bench workers ({method}, {n} envs, {workers} workers) failed:\n"
                           f"{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_workers(quick: bool = False) -> dict:
    """Seconds from ``CpuVecEnv(...)`` to the first observations (the first and the second
    time in a fresh process), seconds to rebuild the envs for another split in the running
    workers (``CpuVecEnv.rebuild``, as an evaluation's next split), the tree's PSS with the
    workers up and random-action steps/s (chunks of 4): per start method with one env per worker, and for N envs in one worker per
    env (the default) vs one per core (``env.num_workers``), forkserver."""
    out: dict = {}
    keys = ("first_start_s", "second_start_s", "next_split_s", "tree_pss_mb", "steps_per_s")
    for method in ("spawn", "forkserver"):
        for k, v in _workers_child(method, 2, 2).items():
            out[f"2_workers.{method}.{k}"] = v
    for k in keys:
        out[f"2_workers.spawn_over_forkserver.{k}"] = (out[f"2_workers.spawn.{k}"]
                                                       / out[f"2_workers.forkserver.{k}"])
    n = 4 if quick else 8
    from vlarl.runtime.threads import usable_cores

    cores = min(n, usable_cores())
    for label, workers in (("per_env", n), ("per_core", cores)):
        for k, v in _workers_child("forkserver", n, workers).items():
            out[f"{n}_envs.{label}.{k}"] = v
        out[f"{n}_envs.{label}.workers"] = workers
        out[f"{n}_envs.{label}.new_workers_over_rebuild"] = (
            out[f"{n}_envs.{label}.second_start_s"] / out[f"{n}_envs.{label}.next_split_s"])
    for k in keys:
        out[f"{n}_envs.per_env_over_per_core.{k}"] = (out[f"{n}_envs.per_env.{k}"]
                                                      / out[f"{n}_envs.per_core.{k}"])
    return out


PARTS = ("env", "policy", "loop", "pipeline", "contention", "workers")
"""Every part ``vlarl bench`` can run (the module docstring says what each measures)."""


def run_bench(parts: list[str], json_path: str | None = None, quick: bool = False,
              extra: list[str] | None = None) -> dict:
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown bench part(s) {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    results: dict = {"machine": _machine()}
    if "env" in parts:
        from vlarl.envs.bench import bench_env

        results["env"] = bench_env(steps=24 if quick else 48, repeats=2 if quick else 3)
    if "policy" in parts:
        results["policy"] = bench_policy(quick)
    if "contention" in parts:
        from vlarl.tools.contention import bench_contention

        results["contention"] = bench_contention(quick)
    if "pipeline" in parts:
        results["pipeline"] = bench_pipeline(quick)
    if "workers" in parts:
        results["workers"] = bench_workers(quick)
    if "loop" in parts:
        results["loop"] = bench_loop(quick)
        raw = results.get("env", {}).get("raw_maniskill")  # steps/s, renders every step
        if raw:
            loop = results["loop"]
            loop["loop_over_raw_per_step_render"] = loop["loop_steps_per_s"] / raw
            loop["parallel_loop_over_raw_per_step_render"] = loop["parallel_loop_steps_per_s"] / raw
    _print(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
        print(f"wrote {json_path}")
    return results


def _machine() -> dict:
    import platform

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _print(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vlarl bench")
    table.add_column("part")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for part, figures in results.items():
        if not isinstance(figures, dict):
            continue
        for key, value in _flatten(figures):
            table.add_row(part, key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
