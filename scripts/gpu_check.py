"""The GPU acceptance check: every GPU-only check in order, in at most ~10 minutes on one GPU.

    bash scripts/gpu_check.sh [OUT_DIR]          # writes OUT_DIR/gpu_check.json (default ./gpu_check)

Each check prints one PASS / FAIL / SKIP line and adds its figures to the JSON; a failing check
does not stop the later ones. On a machine without CUDA it exits at once with status 2.
Checks (docs/gpu.md, "Acceptance check"):
  render      SAPIEN renders with the GPU, not llvmpipe
  sim         physx_cuda env steps/s at 64 and 256 envs, RGB 64 px, chunk 1 and 4; raw ManiSkill
  groups      grouped resets: identical within a group, different across; seed -> state per env
  truncation  truncation's final observation differs from the reset observation
  ppo         tiny token VLA, 3 PPO updates at lr 0 in fp32 and bf16: ratio 1 +- 1e-3, steps/s,
              peak GPU memory (torch and nvidia-smi)
  act_eval    bf16 act vs evaluate log-probs over prompt lengths and sub-batches (< 1e-2)
  generator   seeded evaluation of the tiny flow VLA on CUDA (a CPU generator for CUDA sampling)
  ddp         2-process DDP: parameters equal across ranks (needs 2 GPUs; else SKIP)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS: dict = {"checks": {}}


def check(name: str):
    def wrap(fn):
        def run():
            t0 = time.perf_counter()
            try:
                status, detail, figures = fn()
            except Exception as err:  # noqa: BLE001 - report and go on to the next check
                status, detail, figures = "FAIL", f"{type(err).__name__}: {err}", {
                    "traceback": traceback.format_exc()[-3000:]}
            figures["seconds"] = round(time.perf_counter() - t0, 1)
            RESULTS["checks"][name] = {"status": status, **figures}
            print(f"[{status}] {name}: {detail}", flush=True)
        return run
    return wrap


def _nvidia_smi_mb() -> list[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             check=False, capture_output=True, text=True, timeout=20).stdout
        return [int(x) for x in out.split()]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


@check("render")
def render():
    from vlarl.tools.doctor import render_device, render_problems

    device, _ = render_device()
    bad = render_problems(device, has_nvidia_gpu=True)
    return ("FAIL" if bad else "PASS", bad[0] if bad else f"renders with {device}",
            {"render_device": device})


def _env(num_envs: int, **kw):
    from vlarl.config import EnvConfig
    from vlarl.envs import make_env

    return make_env(EnvConfig(task="PushCube-v1", backend="gpu", num_envs=num_envs, image_size=64,
                              control_mode="pd_ee_delta_pose", **kw))


@check("sim")
def sim():
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    import torch

    figures = {}
    for n in (64, 256):
        env = _env(n)
        try:
            for k in (1, 4):
                obs = env.reset(list(range(n)))
                assert obs.images.dtype == torch.uint8 and tuple(obs.images.shape) == (n, 1, 64, 64, 3)
                a = torch.rand(n, k, env.action_dim) * 2 - 1
                env.step_chunk(a)
                t0, steps = time.perf_counter(), 0
                for _ in range(20):
                    steps += int(env.step_chunk(torch.rand(n, k, env.action_dim) * 2 - 1).steps.sum())
                figures[f"vlarl_n{n}_k{k}_steps_per_s"] = round(steps / (time.perf_counter() - t0), 1)
        finally:
            env.close()
        raw = gym.make("PushCube-v1", num_envs=n, obs_mode="rgb", sim_backend="physx_cuda",
                       sensor_configs={"width": 64, "height": 64}, control_mode="pd_ee_delta_pose")
        raw.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(20):
            raw.step(torch.rand(n, 6, device="cuda") * 2 - 1)
        figures[f"raw_n{n}_steps_per_s"] = round(20 * n / (time.perf_counter() - t0), 1)
        raw.close()
    figures["peak_torch_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    figures["nvidia_smi_mb"] = _nvidia_smi_mb()
    ok = figures["vlarl_n256_k1_steps_per_s"] > 300  # CPU rendering would be far below
    return ("PASS" if ok else "FAIL",
            ", ".join(f"{k}={v}" for k, v in figures.items() if "steps" in k), figures)


@check("groups")
def groups():

    env = _env(16)
    try:
        a, b = 101, 202
        env.reset([a] * 8 + [b] * 8)
        state = env.u.get_state()
        img = env._last.images.float()
        within = max(float((state[:8] - state[0]).abs().max()), float((state[8:] - state[8]).abs().max()),
                     float((img[:8] - img[0]).abs().max()), float((img[8:] - img[8]).abs().max()))
        across = float((state[0] - state[8]).abs().max())
        env.reset([a] + list(range(1000, 1015)))
        s1 = env.u.get_state()[0].clone()
        env.reset([a] + list(range(2000, 2015)))
        s2 = env.u.get_state()[0].clone()
        env2 = _env(4, reset_each_env=True)
        try:
            env2.reset([7, 8, a, 9])
            pos = float((env2.u.get_state()[2] - s1).abs().max())
        finally:
            env2.close()
    finally:
        env.close()
    figures = {"max_diff_within_group": within, "max_diff_across_groups": across,
               "same_seed_first_position_diff": float((s1 - s2).abs().max()),
               "reset_each_env_other_position_diff": pos}
    ok = within == 0.0 and across > 0 and pos < 1e-5
    return ("PASS" if ok else "FAIL", json.dumps(figures), figures)


@check("truncation")
def truncation():
    import torch

    env = _env(8, max_episode_steps=10)
    try:
        env.reset(list(range(8)))
        outs = [env.step_chunk(torch.zeros(8, 4, env.action_dim)) for _ in range(3)]
    finally:
        env.close()
    last = outs[-1]
    figures = {"truncated": int(last.truncated.sum()), "steps_in_third_chunk": last.steps.tolist()}
    ok = bool(last.truncated.all()) and last.final_obs is not None and bool(
        (last.final_obs.state != last.obs.state).any())
    return ("PASS" if ok else "FAIL", json.dumps(figures), figures)


def _ppo(out: Path, precision: str) -> dict:
    import torch

    from vlarl.config import load_config
    from vlarl.trainer import train

    cfg = load_config(Path("recipes/cpu/ppo_token.yaml"), [
        "--env.backend", "gpu", "--env.num_envs", "64", "--train.num_updates", "3",
        "--train.learning_rate", "0", "--train.value_learning_rate", "0",
        "--train.mixed_precision", precision, "--train.eval_every", "0",
        "--train.output_dir", str(out / f"ppo_{precision}"), "--train.overwrite", "true"])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_dir = train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"ratio_mean": [r.get("algo/ratio_mean") for r in rows],
            "approx_kl": [r.get("algo/approx_kl") for r in rows],
            "env_steps_per_s": round(rows[-1]["train/env_steps"] / wall, 1),
            "peak_torch_mb": round(torch.cuda.max_memory_allocated() / 2**20),
            "nvidia_smi_mb": _nvidia_smi_mb()}


@check("ppo")
def ppo():
    out = Path(RESULTS["out"])
    figures = {p: _ppo(out, p) for p in ("no", "bf16")}
    ok = all(abs(r - 1) <= 1e-3 for f in figures.values() for r in f["ratio_mean"] if r is not None)
    ok = ok and all(k < 1e-3 for f in figures.values() for k in f["approx_kl"] if k is not None)
    return ("PASS" if ok else "FAIL", json.dumps({p: (f["ratio_mean"], f["env_steps_per_s"])
                                                  for p, f in figures.items()}), figures)


@check("act_eval")
def act_eval():
    import torch
    from accelerate import Accelerator

    from vlarl.config import PolicyConfig
    from vlarl.policies import build_policy
    from vlarl.types import Obs

    policy = build_policy(PolicyConfig(chunk_size=4, action_dim=7, value_head=True)).cuda().eval()
    words = ["push", "push the cube", "push the red cube to the goal region on the table please"]
    n = 64
    obs = Obs(torch.randint(0, 256, (n, 1, 64, 64, 3), dtype=torch.uint8), torch.randn(n, 9),
              [words[i % 3] for i in range(n)])
    acc = Accelerator(mixed_precision="bf16")
    with torch.no_grad(), acc.autocast():
        out = policy.act(obs, generator=torch.Generator().manual_seed(0))
        full = policy.evaluate(obs, out.stored)[0]
        parts = torch.cat([policy.evaluate(obs.index(torch.arange(i, i + 16)),
                                           {k: v[i:i + 16] for k, v in out.stored.items()})[0]
                           for i in range(0, n, 16)])
    figures = {"max_act_vs_evaluate": float((out.log_probs - full).abs().max()),
               "max_full_vs_sub_batches": float((parts - full).abs().max())}
    ok = max(figures.values()) < 1e-2
    return ("PASS" if ok else "FAIL", json.dumps(figures), figures)


@check("generator")
def generator():
    from vlarl.config import PolicyConfig
    from vlarl.eval.evaluate import evaluate_policy
    from vlarl.policies import build_policy

    policy = build_policy(PolicyConfig(name="flow_vla", tiny="pi0", chunk_size=4, action_dim=7)).cuda()
    env = _env(4, max_episode_steps=8)
    try:
        recs = evaluate_policy(policy, env, [0, 1, 2, 3], deterministic=False)
    finally:
        env.close()
    return "PASS", f"{len(recs)} seeded episodes of a CUDA flow policy", {"episodes": len(recs)}


@check("ddp")
def ddp():
    import torch

    if torch.cuda.device_count() < 2:
        return "SKIP", f"{torch.cuda.device_count()} GPU (NCCL needs one GPU per rank)", {}
    out = Path(RESULTS["out"]) / "ddp"
    res = subprocess.run(["torchrun", "--nproc_per_node", "2", "tests/scripts/ddp_check.py", str(out)],
                         check=False, capture_output=True, text=True, timeout=300)
    figures = {"returncode": res.returncode, "tail": (res.stdout + res.stderr)[-2000:],
               "nvidia_smi_mb": _nvidia_smi_mb()}
    return ("PASS" if res.returncode == 0 else "FAIL", f"torchrun exit {res.returncode}", figures)


def main() -> int:
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed (run scripts/setup.sh)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check runs "
              "only on a GPU machine - see docs/gpu.md", file=sys.stderr)
        return 2
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.update(out=str(out), device=torch.cuda.get_device_name(0),
                   gpus=torch.cuda.device_count(), torch=torch.__version__,
                   started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    os.environ.setdefault("VLARL_CACHE", tempfile.mkdtemp(prefix="vlarl-gpu-check-"))
    for fn in (render, sim, groups, truncation, ppo, act_eval, generator, ddp):
        fn()
        (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    failed = [k for k, v in RESULTS["checks"].items() if v["status"] == "FAIL"]
    print(f"gpu_check: {len(RESULTS['checks']) - len(failed)} of {len(RESULTS['checks'])} not "
          f"failed; figures in {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
