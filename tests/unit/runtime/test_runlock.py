"""One writer per run directory and per cache entry (docs/guarantees.md), with real processes:
two `vlarl train` into one directory, a held directory refused by `vlarl sft` and `vlarl eval
--out`, `kill -9` of a holder, two processes building one cache entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import run_cpu_timed

from vlarl.runtime import runlock

ROOT = Path(__file__).resolve().parents[3]
VLARL = [sys.executable, "-m", "vlarl"]
TINY_TRAIN = ["--config", "recipes/cpu/quickstart.yaml", "--env.image_size", "32",
              "--env.backend", "inline", "--env.num_envs", "1", "--algo.name", "ppo",
              "--policy.value_head", "true", "--algo.num_mini_batches", "1",
              "--env.max_episode_steps", "12", "--train.rollout_steps", "3",
              "--train.eval_every", "0", "--train.save_every", "1"]
"""A small training run in one process (no env workers), so the second command's start-up
competes with as little as possible on 2 cores."""


def _holder(directory: Path, inside: bool = True) -> subprocess.Popen:
    """A real process that takes ``directory``'s lock and sleeps; returns once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from vlarl.runtime import runlock
        runlock.hold({str(directory)!r}, "test dir", inside={inside})
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _wait_for_lock_holder(lock: Path, pid: int, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if runlock.holder(lock).get("pid") == pid:
            return
        time.sleep(0.2)
    raise AssertionError(f"{lock} never named pid {pid}")


def test_second_train_into_one_dir_fails_fast_and_first_stays_clean(tmp_path):
    out = tmp_path / "run"
    cmd = VLARL + ["train", *TINY_TRAIN, "--train.num_updates", "4", "--train.output_dir", str(out)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_holder(out / runlock.LOCK_NAME, first.pid)
        second, took = run_cpu_timed(cmd, cwd=ROOT, timeout=60)
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and str(out) in second.stderr, second.stderr
        # the refusal comes from preflight, before torch, envs or models start
        assert took < 5.0, f"refusal took {took:.1f} CPU s"
        # a resume of the held directory is refused the same way
        again = subprocess.run(cmd + ["--train.resume", "true"], check=False, cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode != 0 and f"pid {first.pid}" in again.stderr
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        first.kill()
    steps = [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert max(p.name for p in (out / "checkpoints").iterdir()
                  if p.name.startswith("update_")) == "update_000004"


@pytest.mark.parametrize("command", ["sft", "eval"])
def test_sft_and_eval_refuse_a_held_output_dir(tmp_path, command):
    out = tmp_path / "out"
    if command == "sft":
        holder = _holder(out, inside=False)  # SFT output is replaced by a rename: lock beside
        args = ["sft", "--config", "recipes/cpu/quickstart.yaml", "--sft.output_dir", str(out),
                "--data.num_episodes", "2"]
    else:
        holder = _holder(out)
        args = ["eval", str(tmp_path / "ckpt"), "--config",
                "recipes/cpu/quickstart.yaml", "--eval.out", str(out)]
        (tmp_path / "ckpt").mkdir()
    try:
        t0 = time.monotonic()
        res = subprocess.run(VLARL + args, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode != 0
    assert f"pid {holder.pid}" in res.stderr, res.stderr[-2000:]
    assert took < 30, took


def test_kill_9_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    with pytest.raises(runlock.LockedError, match=f"pid {holder.pid}"):
        runlock.hold(out, "output_dir")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    runlock.hold(out, "output_dir")  # at once: the kernel dropped the dead holder's lock
    try:
        assert time.monotonic() - t0 < 1.0
        assert runlock.holder(out / runlock.LOCK_NAME)["pid"] == os.getpid()
    finally:
        runlock.release(out)
    assert runlock.hold_count(out) == 0


def test_hold_is_reentrant_in_one_process_and_released_with_the_last(tmp_path):
    runlock.hold(tmp_path, "d")
    runlock.hold(tmp_path, "d")
    runlock.release(tmp_path)
    assert runlock.hold_count(tmp_path) == 1
    runlock.release(tmp_path)
    assert runlock.hold_count(tmp_path) == 0
    holder = _holder(tmp_path)  # another process can take it now
    holder.kill()
    holder.wait()


def test_two_processes_building_one_cache_entry_end_with_one_complete_entry(tmp_path):
    entry, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from vlarl.policies.tokenizer import build_once
        def build(tmp):
            with open({str(log)!r}, "a") as f:
                f.write("build\\n")
            time.sleep(1.5)                     # the other process arrives mid-build
            (tmp / "weights.bin").write_bytes(b"x" * 1000)
            (tmp / "done.json").write_text("{{}}")
        print(build_once(Path({str(entry)!r}), "done.json", build), flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [str(entry)] * 2
    assert log.read_text().count("build") == 1  # the second waited and reused the first's
    assert sorted(f.name for f in entry.iterdir()) == ["done.json", "weights.bin"]
    assert (entry / "weights.bin").stat().st_size == 1000
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_rank_refuses_a_dir_held_by_another_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    code = textwrap.dedent(f"""
        import time
        from vlarl.runtime import runlock
        runlock.hold({str(tmp_path)!r}, "d")
        print("held", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "MASTER_PORT": "29511"})
    try:
        assert holder.stdout.readline().strip() == "held"
        runlock.check_held_by_launch(tmp_path, "train.output_dir")  # same launch: fine
        monkeypatch.setenv("MASTER_PORT", "29512")
        with pytest.raises(runlock.LockedError, match="not held by this launch"):
            runlock.check_held_by_launch(tmp_path, "train.output_dir")
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setenv("MASTER_PORT", "29511")
    with pytest.raises(runlock.LockedError, match="does not hold its lock"):
        runlock.check_held_by_launch(tmp_path, "train.output_dir")  # holder died
