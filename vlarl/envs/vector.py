"""The CPU vector backend: worker processes that hold the envs.

``physx_cpu`` refuses ``num_envs > 1``, so CPU parallelism is processes: each env is its own
in-process backend (``ManiSkillVecEnv``, ``num_envs=1``; the chunked stepping, rendering
policy and episode bookkeeping are literally the same code as on the GPU) and each worker
process holds one env or a contiguous block of them (``env.num_workers``), stepping its block
in order. Env i keeps seed stream ``seed + i`` and its own simulator wherever it lives, so the
episodes do not depend on how the envs are spread over processes. Workers are started
together and every receive polls with a liveness check, so a worker that raises sends its
traceback and a worker that dies (killed, segfault) raises here instead of hanging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from vlarl.config import EnvConfig
from vlarl.envs.base import VecEnv
from vlarl.envs.maniskill import SeedStream, check_actions, check_seeds
from vlarl.types import ChunkStep, Obs

POLL_S = 0.2
"""How often a waiting parent checks that its workers are alive."""


class WorkerError(RuntimeError):
    """A worker raised (message holds its traceback) or died (message holds its exit code)."""


def _worker(conn: Connection, cfg_dict: dict, indices: list[int],
            child_env: dict[str, str]) -> None:
    """Worker main loop: build the envs of global indices ``indices``, then serve
    ``(command, local env, argument)`` requests in the order they arrive."""
    os.environ.update(child_env)  # before the env (and llvmpipe) starts, see worker_env
    torch.set_num_threads(1)  # two cores shared by N workers: avoid oversubscription
    # Ctrl-C reaches the whole process group: the parent decides when to stop (it checkpoints
    # first, see vlarl.runtime.preemption) and closes the workers; they must not die on SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from vlarl.envs.block import build_block

        envs = build_block(EnvConfig(**cfg_dict), indices)
        conn.send(("ok", (envs[0].action_dim, envs[0].state_dim)))
    except BaseException:  # noqa: BLE001  (any failure goes to the parent with its traceback)
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, j, arg = conn.recv()
        except EOFError:  # parent went away
            break
        try:
            if cmd == "close":
                for env in envs:
                    env.close()
                conn.send(("ok", None))
                break
            if cmd == "rebuild":  # another config on the same block (an evaluation's next split)
                for env in envs:
                    env.close()
                envs = build_block(EnvConfig(**arg), indices)
                conn.send(("ok", (envs[0].action_dim, envs[0].state_dim)))
                continue
            out: Any = getattr(envs[j], cmd)(*arg)
            conn.send(("ok", out))
        except BaseException:  # noqa: BLE001  (the parent raises it; the worker keeps serving)
            conn.send(("error", traceback.format_exc()))


WORKER_RENDER_THREADS = "1"
"""``LP_NUM_THREADS`` of each worker (Mesa llvmpipe's rasteriser threads) unless the user set
it. Measured on 2 cores (PushCube, 64 px, ``python -m vlarl.envs.bench``): llvmpipe's default
(one thread per core) in every worker oversubscribes the cores; one thread each gives 52 vs
47 env steps/s with 2 workers at chunk 1, and one process alone 42 vs 37 raw steps/s."""


def worker_env() -> dict[str, str]:
    """Environment variables a worker sets for itself, unless the user set them: the forkserver
    copies the parent's environment once, when it starts, not at each worker's start."""
    return {} if "LP_NUM_THREADS" in os.environ else {"LP_NUM_THREADS": WORKER_RENDER_THREADS}


WORKER_PRELOAD = ["vlarl.envs.maniskill", "mani_skill.envs"]
"""Modules the forkserver imports once (torch, vlarl's env layer, ManiSkill's task registry,
SAPIEN); each worker is forked from it with them imported. Importing creates no render device
and no thread pool, so the fork is clean; the envs themselves are built in the worker. Most
of a worker's start is its first camera picture: SAPIEN computes its BRDF lookup table with a
compute shader, ~10 s of one core on llvmpipe whatever the image size (``perf``: 95 % of the
time in llvmpipe's JIT-compiled shader code); further envs in the same process take ~0.4 s.
Measured on 2 cores (``vlarl bench workers``, docs/bench/2026-12-07-cpu2-workers.json):
8 workers up in 33.3 s instead of 41.2 with spawn (1.24x; a second start in one process
1.41x) and 3.89 GB tree PSS instead of 4.84."""


def _context(start_method: str | None = None) -> mp.context.BaseContext:
    """``forkserver`` with :data:`WORKER_PRELOAD` on Linux (the default start method from Python
    3.14; a ``fork`` of the parent would copy its torch threads and model), ``spawn``
    elsewhere (macOS system frameworks are not fork-safe). ``vlarl bench workers`` compares
    the two."""
    if start_method is None:
        start_method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    if start_method != "forkserver":
        return mp.get_context(start_method)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def _start_hint(ctx) -> str:
    """What most often kills a worker before it answers: a script, without a ``__main__``
    guard, that builds envs at import time. Spawned and forkserver workers import the script
    again (Python's ``multiprocessing``) and so start envs of their own, which Python refuses."""
    if ctx.get_start_method() == "fork":
        return ""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script or getattr(main, "__spec__", None) is not None:  # python -m
        return ""
    try:
        if "__main__" in Path(script).read_text(errors="ignore"):  # guarded: another cause
            return ""
    except OSError:
        return ""
    return (f"\n(worker processes start by importing {script} again: build envs under "
            "`if __name__ == \"__main__\":` there; the worker's traceback is above)")


def worker_blocks(num_envs: int, num_workers: int) -> list[range]:
    """The global env indices each of ``num_workers`` worker processes holds: contiguous blocks
    whose sizes differ by at most one."""
    if not 0 < num_workers <= num_envs:
        raise ValueError(f"env.num_workers={num_workers} must be in [1, env.num_envs={num_envs}]")
    bounds = [num_envs * w // num_workers for w in range(num_workers + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


class CpuVecEnv(VecEnv):
    """Worker processes holding ``physx_cpu`` ManiSkill envs; same semantics as inline."""

    def __init__(self, cfg: EnvConfig, timeout_s: float = 600.0, start_method: str | None = None):
        self.cfg, self.task, self.split = cfg, cfg.task, cfg.split
        self.num_envs, self.max_episode_steps = cfg.num_envs, cfg.max_episode_steps
        self.timeout_s = timeout_s
        self._seeds = SeedStream(cfg.seed)
        self._blocks = worker_blocks(cfg.num_envs, cfg.num_workers or cfg.num_envs)
        self._home = [(w, i - block.start) for w, block in enumerate(self._blocks) for i in block]
        """env i -> (its worker, its index in that worker)"""
        ctx = _context(start_method)
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._closed = False
        for w, block in enumerate(self._blocks):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker,
                               args=(child, dataclasses.asdict(cfg), list(block), worker_env()),
                               name=f"vlarl-env-{w}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            deadline = time.monotonic() + self.timeout_s
            with self._stop_all_on_error("start"):
                dims = [self._recv_worker(w, deadline) for w in range(len(self._blocks))]
        except WorkerError as err:
            self.close()
            raise WorkerError(f"{err}{_start_hint(ctx)}") from err
        except BaseException:
            self.close()
            raise
        self.action_dim, self.state_dim = dims[0]

    def rebuild(self, cfg: EnvConfig) -> None:
        """Make the envs of ``cfg`` (another split or task, same ``num_envs`` and worker
        layout) in the running workers: each closes its envs and builds the new ones in ~0.4 s
        per env, its renderer already up, where a new worker spends ~10 s of one core on its
        first picture (``vlarl.envs.maniskill.keep_cpu_renderer``). Episodes are those of a
        new ``CpuVecEnv(cfg)``: fresh simulators, seed streams from ``cfg.seed``."""
        blocks = worker_blocks(cfg.num_envs, cfg.num_workers or cfg.num_envs)
        if blocks != self._blocks:
            raise ValueError(f"rebuild keeps the worker layout: env.num_envs={cfg.num_envs}, "
                             f"env.num_workers={cfg.num_workers} gives {len(blocks)} workers "
                             f"of {[len(b) for b in blocks]} envs, this env has "
                             f"{[len(b) for b in self._blocks]}")
        with self._stop_all_on_error("rebuild"):
            for conn in self._conns:
                conn.send(("rebuild", 0, dataclasses.asdict(cfg)))
            deadline = time.monotonic() + self.timeout_s
            dims = [self._recv_worker(w, deadline) for w in range(len(self._blocks))]
        self.cfg, self.task, self.split = cfg, cfg.task, cfg.split
        self.max_episode_steps = cfg.max_episode_steps
        self._seeds = SeedStream(cfg.seed)
        self.action_dim, self.state_dim = dims[0]

    # ------------------------------------------------------------------ transport
    def _worker_name(self, w: int, pid: bool = False) -> str:
        block = self._blocks[w]
        envs = "" if len(self._blocks) == self.num_envs else (
            f"envs {block.start}-{block.stop - 1}, " if len(block) > 1 else f"env {block.start}, ")
        pid_s = f"pid {self._procs[w].pid}, " if pid else ""
        return f"env worker {w} ({pid_s}{envs}{self.task})"

    def _recv_worker(self, w: int, deadline: float) -> Any:
        """The next answer of worker ``w`` (answers come in the order of its requests)."""
        conn, proc = self._conns[w], self._procs[w]
        while True:
            eof = False
            if conn.poll(POLL_S):
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):  # the pipe closed: the worker is gone
                    eof = True
                else:
                    if status == "ok":
                        return payload
                    raise WorkerError(f"{self._worker_name(w)} raised:\n{payload}")
            if eof or not proc.is_alive():
                if not eof and conn.poll(0):  # it answered just before exiting: read that
                    continue
                proc.join(2.0)
                raise WorkerError(f"{self._worker_name(w, pid=True)} died with exit code "
                                  f"{proc.exitcode}")
            if time.monotonic() > deadline:
                raise WorkerError(f"{self._worker_name(w)} did not answer within "
                                  f"{self.timeout_s} s")

    def _call(self, cmd: str, args: list[tuple], envs: range | None = None) -> list[Any]:
        self._send(cmd, args, envs)
        return self._receive(cmd, envs)

    def _send(self, cmd: str, args: list[tuple], envs: range | None = None) -> None:
        """Send ``cmd`` to the envs ``envs`` (all by default) without waiting."""
        if self._closed:
            raise RuntimeError("this CpuVecEnv is closed")
        with self._stop_all_on_error(cmd):
            for i, a in zip(envs or range(self.num_envs), args):
                w, j = self._home[i]
                self._conns[w].send((cmd, j, a))

    def _receive(self, cmd: str, envs: range | None = None) -> list[Any]:
        """The answers of ``envs`` in env order: each worker answers its envs in the order they
        were sent, and sends and receives both go in increasing env order."""
        deadline = time.monotonic() + self.timeout_s
        with self._stop_all_on_error(cmd):
            return [self._recv_worker(self._home[i][0], deadline)
                    for i in envs or range(self.num_envs)]

    @contextlib.contextmanager
    def _stop_all_on_error(self, cmd: str):
        try:
            yield
        except (WorkerError, BrokenPipeError, OSError) as err:
            self.close()  # a half-answered batch leaves workers out of step: stop them all
            if isinstance(err, WorkerError):
                raise
            raise WorkerError(f"lost contact with an env worker during {cmd!r}: {err!r}") from err

    # ------------------------------------------------------------------ VecEnv
    def reset(self, seeds: list[int] | None = None) -> Obs:
        seeds = check_seeds(seeds, self.num_envs) or self._seeds.take(self.num_envs)
        return Obs.cat(self._call("reset", [([s],) for s in seeds]))

    def step_chunk(self, actions: torch.Tensor, reset_seeds: list[int] | None = None) -> ChunkStep:
        envs = range(self.num_envs)
        self.step_chunk_start(actions, reset_seeds, envs)
        return self.step_chunk_finish(envs)

    supports_overlap = True  # a worker answers its envs' requests in the order they came
    resets_each_env_alone = True

    def step_chunk_start(self, actions: torch.Tensor, reset_seeds: list[int] | None,
                         envs: range) -> None:
        if envs.step != 1 or envs.start < 0 or envs.stop > self.num_envs or not len(envs):
            raise ValueError(f"envs={envs} must be a non-empty contiguous range in "
                             f"[0, {self.num_envs})")
        n = len(envs)
        actions = check_actions(actions, n, self.action_dim)
        seeds = check_seeds(reset_seeds, n, "reset_seeds") or self._seeds.take(n)
        self._send("step_chunk", [(actions[j:j + 1], [seeds[j]]) for j in range(n)], envs)

    def step_chunk_finish(self, envs: range) -> ChunkStep:
        return ChunkStep.cat(self._receive("step_chunk", envs))

    def expert_actions(self) -> torch.Tensor:
        return torch.cat(self._call("expert_actions", [()] * self.num_envs))

    def render_frames(self) -> torch.Tensor:
        return torch.cat(self._call("render_frames", [()] * self.num_envs))

    @property
    def blocks(self) -> list[range]:
        """The global env indices of each worker (:func:`worker_blocks`)."""
        return list(self._blocks)

    @property
    def pids(self) -> list[int]:
        """Worker process ids (for diagnostics and the dead-worker test)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def close(self) -> None:
        """Ask workers to stop, then terminate any that do not within 5 s."""
        if self._closed:
            return
        self._closed = True
        for conn, proc in zip(self._conns, self._procs):
            if proc.is_alive():
                try:
                    conn.send(("close", 0, ()))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        for conn in self._conns:
            conn.close()

    def __del__(self) -> None:
        try:  # interpreter shutdown: best effort only (module globals may already be None)
            self.close()
        except Exception:  # noqa: BLE001, S110
            pass
