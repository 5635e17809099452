"""``vlarl bench contention``: how much a second torch process on the same cores slows one,
per thread setting (the measurement behind :mod:`vlarl.runtime.threads`)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

CONTENTION_CHILD = r"""
import json, sys, time, torch
from vlarl.config import load_config
from vlarl.policies import build_policy
from vlarl.types import Obs
workload, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
lora = workload == "act"  # the act workload is an eval / rollout step: LoRA adapters, greedy
policy = build_policy(load_config(None, {"policy.chunk_size": 4, "policy.use_lora": lora}).policy)
batch = 16 if workload == "sft" else 8
obs = Obs(torch.randint(0, 255, (batch, 1, 64, 64, 3), dtype=torch.uint8), torch.zeros(batch, 16),
          ["push the cube to the goal"] * batch)
if workload == "sft":
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    actions = torch.rand(batch, 4, 7) * 2 - 1

    def step():
        policy.sft_loss(obs, actions).backward()
        opt.step()
        opt.zero_grad()
else:
    policy.eval()

    def step():
        with torch.no_grad():
            policy.act(obs, deterministic=True)
step()
print("ready", flush=True)
sys.stdin.readline()  # the parent starts every process's timed steps at once
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps,
                  "torch_threads": torch.get_num_threads()}), flush=True)
"""


THREAD_SETTINGS = {"openmp_default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
                   "one_thread": {"OMP_NUM_THREADS": "1"}}
"""The thread settings ``bench contention`` compares: torch's default (one intra-op thread per
core, libgomp's idle threads spin ~300k iterations before they sleep), no spinning, and one
intra-op thread (no parallel region to wait in)."""

_THREAD_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "VLARL_TORCH_THREADS")


def _timed_steps(workload: str, n_procs: int, steps: int,
                 settings: dict[str, str]) -> list[dict]:
    """``n_procs`` processes of ``workload`` (``sft``: tiny-VLA SFT steps at batch 16; ``act``:
    greedy chunks at batch 8 with LoRA, as eval and rollouts run) started together with the
    thread ``settings`` (the user's own thread variables removed); each reports its s/step."""
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env.update(settings)
    procs = [subprocess.Popen([sys.executable, "-c", CONTENTION_CHILD, workload, str(steps)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n_procs)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"bench contention child exited with {p.wait()}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def bench_contention(quick: bool = False) -> dict:
    """s/step of each workload (tiny-VLA SFT steps; greedy act at batch 8) alone and with a
    second identical process, under each of :data:`THREAD_SETTINGS`."""
    out: dict = {}
    for workload, steps in (("sft", 8 if quick else 25), ("act", 4 if quick else 12)):
        for label, settings in THREAD_SETTINGS.items():
            alone = _timed_steps(workload, 1, steps, settings)[0]["s_per_step"]
            pair = statistics.mean(r["s_per_step"]
                                   for r in _timed_steps(workload, 2, steps, settings))
            key = f"{workload}.{label}"
            out[f"{key}_alone_s_per_step"] = alone
            out[f"{key}_two_procs_s_per_step"] = pair
            out[f"{key}_slowdown_two_procs"] = pair / alone
        for label in list(THREAD_SETTINGS)[1:]:
            out[f"{workload}.{label}_over_default_alone"] = (
                out[f"{workload}.{label}_alone_s_per_step"]
                / out[f"{workload}.openmp_default_alone_s_per_step"])
    return out
