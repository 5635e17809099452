"""One PPO and one GRPO update under ``torchrun --nproc_per_node 2``, compared with one
process updating on the union of both ranks' data; tests/integration/test_ddp.py reads the dumps.

    torchrun --nproc_per_node 2 tests/scripts/ddp_update_check.py OUT

A fixed rollout of 4 envs x 6 decisions (the real MLP student acting on fixed privileged
observations; episodes of unequal length, so the ranks hold 8 and 12 valid decisions) is
split by env: rank 0 holds envs 0-1, rank 1 envs 2-3. For each algorithm the script writes
``OUT/rank{r}.pt`` with the gradients of one optimizer step (one epoch, one minibatch):

* ``global``: the trainer's ``update_context`` (batch statistics summed over ranks);
* ``local``: the same with ``all_reduce_sum`` replaced by the identity (per-rank advantage
  normalisation and per-rank loss means: what vlarl did before);
* ``single`` (rank 0 only): one process, no DDP, on all 4 envs.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from vlarl.algorithms import ALGORITHMS, UpdateContext
from vlarl.algorithms.advantages import local_sum
from vlarl.config import AlgoConfig
from vlarl.policies import MLPStudentConfig
from vlarl.policies.mlp_student.modeling_mlp_student import MLPStudentPolicy
from vlarl.rollout import RolloutBuffer
from vlarl.runtime.runlock import launch_env
from vlarl.trainer import _DDPView, update_context
from vlarl.types import ChunkStep, Obs

T, N, K, A, P = 6, 4, 2, 3, 16
LENGTHS = [2, 6, 6, 6]      # decisions per env's episode: rank 0 has 8 valid, rank 1 has 12
SUCCESS = [1, 0, 0, 1]      # one success and one failure per GRPO group of 2


def _obs(t: int, priv: torch.Tensor) -> Obs:
    return Obs(torch.zeros(N, 1, 8, 8, 3, dtype=torch.uint8), torch.zeros(N, 4),
               ["push the cube"] * N, priv[t])


def rollout(policy: MLPStudentPolicy, cols: list[int]) -> RolloutBuffer:
    """The fixed global rollout, restricted to the envs ``cols``."""
    g = torch.Generator().manual_seed(0)
    priv = torch.randn(T + 1, N, P, generator=g)
    rewards = (torch.rand(T, N, K, generator=g) < 0.3).float()
    idx = torch.tensor(cols)
    buf = RolloutBuffer(T, len(cols), K)
    with torch.no_grad():
        for t in range(T):
            obs = _obs(t, priv)
            out = policy.act(obs, generator=torch.Generator().manual_seed(100 + t))
            end = torch.tensor([t == n - 1 for n in LENGTHS])
            succ = end & torch.tensor([bool(s) for s in SUCCESS])
            step = ChunkStep(obs=obs.index(idx), rewards=rewards[t][idx], terminated=end[idx],
                             truncated=torch.zeros(len(cols), dtype=torch.bool),
                             success=succ[idx], success_once=succ[idx],
                             steps=torch.full((len(cols),), K))
            valid = torch.tensor([t < n for n in LENGTHS])[idx]
            buf.add(t, obs.index(idx), out.values[idx], out.log_probs[idx],
                    {k: v[idx] for k, v in out.stored.items()}, step, valid)
        buf.last_values.copy_(policy.value(_obs(T, priv))[idx])
    return buf


def grads(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in policy.named_parameters()
            if p.requires_grad and p.grad is not None}


def one_update(algo_cfg: AlgoConfig, policy, trainable, init, cols: list[int], ctx) -> dict:
    """Gradients of one update from ``init`` on the envs ``cols`` of the fixed rollout."""
    policy.load_state_dict(init)
    buffer = rollout(policy, cols)
    algo = ALGORITHMS.get(algo_cfg.name)(algo_cfg)
    algo.process(buffer, policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    metrics = algo.update(trainable, optimizer, buffer, ctx, 0, torch.Generator().manual_seed(0))
    assert metrics["optimizer_steps"] == 1, metrics
    return grads(policy)


def main() -> int:
    out = Path(sys.argv[1])
    rank = launch_env("RANK", 0)
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(
        find_unused_parameters=True)])
    torch.manual_seed(0)
    pcfg = MLPStudentConfig(chunk_size=K, action_dim=A, value_head=True,
                        student_input="privileged", privileged_dim=P)
    policy = MLPStudentPolicy(pcfg)
    init = copy.deepcopy(policy.state_dict())
    single = copy.deepcopy(policy)
    wrapped = acc.prepare(policy)
    trainable = _DDPView(wrapped, policy)
    mine = [2 * rank, 2 * rank + 1]
    ctx = update_context(acc, wrapped)
    local_ctx = dataclasses.replace(ctx, all_reduce_sum=local_sum)
    dump: dict = {"world_size": acc.num_processes}
    for algo_cfg in (AlgoConfig(name="ppo", num_ppo_epochs=1, num_mini_batches=1,
                                max_grad_norm=1e6),
                     AlgoConfig(name="grpo", num_generations=2, num_ppo_epochs=1,
                                num_mini_batches=1, max_grad_norm=1e6)):
        res = {"global": one_update(algo_cfg, policy, trainable, init, mine, ctx),
               "local": one_update(algo_cfg, policy, trainable, init, mine, local_ctx)}
        if rank == 0:
            res["single"] = one_update(algo_cfg, single, single, init, list(range(N)),
                                       UpdateContext())
        dump[algo_cfg.name] = res
    torch.save(dump, out / f"rank{rank}.pt")
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
