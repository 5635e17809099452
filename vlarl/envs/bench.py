"""Env throughput, measured side by side in one run: what decision-step rendering buys.

Rows (env control steps per second, median over ``repeats``; random actions):

* ``raw_maniskill``       - ``gym.make(task, obs_mode="rgb")`` + ``env.step``: renders every step;
* ``inline_every_step_k1`` - vlarl inline backend, ``render_every_step=True`` (same work as raw);
* ``inline_k{1,4,8}``     - vlarl inline backend rendering only at decision steps, chunk k;
* ``cpu_{w}w_k{k}``       - the worker-process backend with ``w`` workers (default 1 and 2; total
  env steps/s), at chunk ``vector_chunk`` (default 1: a render and a parent round trip every
  step) and 8.

Ratios are against ``raw_maniskill``; ``scaling_{w}w_k{k}`` is ``w`` workers over 1. Peak RSS is
this process's and its (finished) children's. Usage::

    python -m vlarl.envs.bench --task PickCube-v1 --image-size 64 --steps 48 --repeats 3
    python -m vlarl.envs.bench --task PushCube-v1 --vector-chunk 4 --workers 1 2 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time

import torch

from vlarl.config import EnvConfig


def _rate(run, steps: int, repeats: int) -> float:
    """Median env steps/s of ``run()`` (which executes ``steps`` env steps) over repeats."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def _raw(task: str, image_size: int, steps: int, repeats: int) -> float:
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401

    env = gym.make(task, obs_mode="rgb", control_mode="pd_ee_delta_pose",
                   sensor_configs={"width": image_size, "height": image_size})
    env.reset(seed=0)

    def run() -> None:
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if bool(term.any() or trunc.any()):
                env.reset()

    try:
        return _rate(run, steps, repeats)
    finally:
        env.close()


def vlarl_steps_per_s(env, k: int, steps: int, repeats: int) -> float:
    n = env.num_envs
    env.reset(list(range(n)))
    chunks = max(1, steps // k)

    def run() -> None:
        for _ in range(chunks):
            env.step_chunk(torch.rand(n, k, env.action_dim) * 2 - 1)

    return _rate(run, chunks * k * n, repeats)


def bench_env(task: str = "PickCube-v1", image_size: int = 64, steps: int = 48,
              repeats: int = 3, vector_chunk: int = 1, workers: tuple[int, ...] = (1, 2)) -> dict:
    """Measure every row of the module docstring; returns ``{row: steps/s, ...}`` plus
    ratios and peak RSS in MiB."""
    from vlarl.envs import make_env

    cfg = EnvConfig(task=task, image_size=image_size, num_envs=1, backend="inline")
    out: dict = {"task": task, "image_size": image_size, "steps": steps, "repeats": repeats}
    out["raw_maniskill"] = _raw(task, image_size, steps, repeats)
    env = make_env(cfg)
    try:
        env.cfg.render_every_step = True  # type: ignore[attr-defined]
        out["inline_every_step_k1"] = vlarl_steps_per_s(env, 1, steps, repeats)
        env.cfg.render_every_step = False  # type: ignore[attr-defined]
        for k in (1, 4, 8):
            out[f"inline_k{k}"] = vlarl_steps_per_s(env, k, steps, repeats)
    finally:
        env.close()
    chunks = sorted({vector_chunk, 8})
    counts = sorted({1, *workers})
    for w in counts:
        venv = make_env(dataclasses.replace(cfg, backend="cpu", num_envs=w, num_workers=w))
        try:
            for k in chunks:
                out[f"cpu_{w}w_k{k}"] = vlarl_steps_per_s(venv, k, max(steps, 8 * k), repeats)
        finally:
            venv.close()
    raw = out["raw_maniskill"]
    out["ratios_vs_raw"] = {k: round(v / raw, 2) for k, v in out.items()
                            if isinstance(v, float) and k != "raw_maniskill"}
    for w in counts[1:]:
        for k in chunks:
            out[f"scaling_{w}w_k{k}"] = round(out[f"cpu_{w}w_k{k}"] / out[f"cpu_1w_k{k}"], 2)
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib, 1)
    out["peak_rss_children_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib, 1)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="PickCube-v1")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vector-chunk", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="worker-process counts to measure (1 is always measured: the baseline)")
    a = p.parse_args(argv)
    print(json.dumps(bench_env(a.task, a.image_size, a.steps, a.repeats, a.vector_chunk,
                               tuple(a.workers)), indent=2))


if __name__ == "__main__":
    main()
