"""How many intra-op threads each command's torch gets: one per core left free at its start.

torch gives every process one OpenMP thread per core, and OpenMP's idle threads spin before
they sleep. Alone that is the fastest setting; beside a second torch process on the same
cores each parallel region waits for a thread the other process holds. Measured 2026-12-07
on 2 cores (``vlarl bench contention``, docs/bench/2026-12-07-cpu2-threads.json), per
process, two identical processes at once vs one alone:

==========================  ==================  =================  ==================
workload                    torch default (2)   ``PASSIVE``        1 thread
==========================  ==================  =================  ==================
greedy act, batch 8, LoRA   11.7x               0.42x (3.4x        1.27x (1.00x
(an eval / rollout step)                        slower alone)      alone)
SFT step, batch 16          5.6x                1.14x (1.46x       1.12x (1.49x
                                                slower alone)      slower alone)
==========================  ==================  =================  ==================

And ``vlarl eval`` of the quickstart's SFT base (16 episodes, 8 env workers) beside an SFT
run: 24.6 policy actions/s with 2 threads, 176.5 with 1; alone 346.5 and 264.1
(docs/experiments/2026-12-07-threads.md). One thread is the better bet beside another job, two
alone, so :func:`plan_threads` gives a command one thread per core that no other process
keeps busy when it starts (measured over a quarter second), per local process under
torchrun / mpirun, and says on stderr when it took fewer than the cores. The quickstart
decides again at each stage. ``VLARL_TORCH_THREADS=N`` sets the count for any command (a job
that another starts beside later keeps its count); a user's (or torchrun's)
``OMP_NUM_THREADS`` is left to torch; ``VLARL_SHARED_CORES=1`` takes half the cores without
measuring and sets ``OMP_WAIT_POLICY=PASSIVE``.

Env worker processes always take one thread each (:mod:`vlarl.envs.vector`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

SHARED_CORES_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What ``VLARL_SHARED_CORES=1`` sets before torch is imported (unless the user set it). Alone
``PASSIVE`` costs 1.27-1.46x on SFT steps and 1.53x on the quickstart's GRPO update, so it is
not the default (docs/bench/2026-12-06-cpu2-contention.json)."""

TORCH_COMMANDS = frozenset({"train", "sft", "ire", "distill", "quickstart", "rldg", "eval",
                            "collect", "diagnose", "drift", "demo", "expert"})
"""Commands whose own process runs torch work (``bench`` sets threads per measurement)."""

LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
"""How launchers (torchrun, Open MPI, MPICH) tell a process how many ranks share its machine."""


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
    """The intra-op threads a command's torch gets (None: torch's own default) and why."""

    torch_threads: int | None
    reason: str
    shared: bool = False
    """True when other processes kept cores busy at start (or ``VLARL_SHARED_CORES=1``)."""

    @property
    def automatic(self) -> bool:
        """Chosen by the rule (not set by the user): the quickstart re-decides per stage."""
        return self.torch_threads is not None and self.reason != "VLARL_TORCH_THREADS"


def plan_threads(command: str, env: Mapping[str, str], cores: int, busy_cores: float = 0.0
                 ) -> ThreadPlan:
    """Pure: the thread plan of ``command`` given the environment variables ``env``, the
    ``cores`` this process may run on and how many cores other processes kept busy."""
    if env.get("VLARL_TORCH_THREADS", "") != "":
        raw = env["VLARL_TORCH_THREADS"]
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"VLARL_TORCH_THREADS={raw!r}: a positive integer (torch's "
                             f"intra-op threads per process) or unset")
        return ThreadPlan(n, "VLARL_TORCH_THREADS")
    if "OMP_NUM_THREADS" in env:
        return ThreadPlan(None, "OMP_NUM_THREADS set by the user or the launcher")
    if command not in TORCH_COMMANDS:
        return ThreadPlan(None, f"{command}: torch's default")
    local = next((int(env[k]) for k in LOCAL_SIZE_VARS if env.get(k, "").isdigit()), 1)
    per_process = max(1, cores // max(1, local))
    if env.get("VLARL_SHARED_CORES", "") not in ("", "0"):
        return ThreadPlan(max(1, per_process // 2), "VLARL_SHARED_CORES=1", shared=True)
    free = max(1, min(per_process, round((cores - busy_cores) / max(1, local))))
    if free < per_process:
        return ThreadPlan(free, f"{busy_cores:.1f} of {cores} cores busy", shared=True)
    return ThreadPlan(per_process, f"{cores} cores / {local} local process(es)")


def busy_cores(interval_s: float = 0.25) -> float:
    """Cores kept busy by all processes over ``interval_s`` (``/proc/stat``; 0.0 where it is
    unreadable). Called before this process does work of its own."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(interval_s)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _plan_now(command: str, env: Mapping[str, str]) -> ThreadPlan:
    """:func:`plan_threads` with this machine's cores, measuring the busy ones only when the
    rule needs them."""
    measured = ("OMP_NUM_THREADS" not in env and not env.get("VLARL_TORCH_THREADS")
                and command in TORCH_COMMANDS)
    return plan_threads(command, env, usable_cores(), busy_cores() if measured else 0.0)


def _say(command: str, plan: ThreadPlan) -> None:
    if plan.shared and plan.reason != "VLARL_SHARED_CORES=1":
        print(f"vlarl {command}: {plan.reason}: torch uses {plan.torch_threads} thread(s) "
              "(VLARL_TORCH_THREADS=N sets it)", file=sys.stderr)


_PLAN: ThreadPlan | None = None
"""The plan :func:`configure_threads` applied in this process."""


def configure_threads(command: str | None = None) -> ThreadPlan:
    """Apply the plan of ``command`` before torch is imported: ``OMP_NUM_THREADS`` (children
    such as DataLoader workers inherit it), ``torch.set_num_threads`` if torch is already in,
    and with ``VLARL_SHARED_CORES=1`` :data:`SHARED_CORES_ENV` where unset."""
    global _PLAN
    if os.environ.get("VLARL_SHARED_CORES", "") not in ("", "0"):
        for k, v in SHARED_CORES_ENV.items():
            os.environ.setdefault(k, v)
    plan = _plan_now(command or "", os.environ)
    if plan.torch_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(plan.torch_threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(plan.torch_threads)
    _PLAN = plan
    _say(command or "", plan)
    return plan


@contextlib.contextmanager
def stage_threads(stage: str) -> Iterator[None]:
    """One stage of a chained command (the quickstart): the rule applied again at the stage's
    start (another job may have started or ended since), the previous count restored after.
    Nothing changes when the user chose the count or :func:`configure_threads` did not run."""
    if _PLAN is None or not _PLAN.automatic:
        yield
        return
    import torch

    # OMP_NUM_THREADS is the start's own plan, not a user's choice: plan without it
    plan = _plan_now("quickstart", {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    before = torch.get_num_threads()
    torch.set_num_threads(plan.torch_threads or before)
    _say(f"quickstart {stage}", plan)
    try:
        yield
    finally:
        torch.set_num_threads(before)
